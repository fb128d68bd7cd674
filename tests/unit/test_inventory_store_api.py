"""One inventory store: AsyncInventoryStore is the implementation, InventoryStore its blocking form,
made from it (no Redis needed here: nothing below reaches the server)."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from pipeline.inventory_store import AsyncInventoryStore, InventoryStore

URL = "redis://127.0.0.1:1/0"  # never connected to


def public_coroutines(cls) -> dict[str, object]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and inspect.iscoroutinefunction(m)}


def test_every_async_method_has_a_blocking_form_with_the_same_signature_and_doc():
    methods = public_coroutines(AsyncInventoryStore)
    assert {"reserve", "reserve_many", "release", "stock_levels", "settle", "channel_update"} <= set(methods)
    for name, method in methods.items():
        blocking = getattr(InventoryStore, name)
        assert not inspect.iscoroutinefunction(blocking), name
        assert inspect.signature(blocking) == inspect.signature(method), name
        assert blocking.__doc__ == method.__doc__, name
    assert not public_coroutines(InventoryStore)


def test_the_blocking_store_returns_and_raises_what_the_async_one_does():
    with InventoryStore(URL, prefix="p", reservation_ttl_s=60) as store:
        assert store.keys.order("o1") == "p:order:o1" and store.store.reservation_ttl_s == 60
        assert store.reserve_many([]) == []            # answered without a round trip
        assert store.settle([]) == 0
        with pytest.raises(ValueError, match="positive int"):
            store.reserve("o1", [("A", 0)], ["WH-SH"])  # validated before Redis
    with pytest.raises(ValueError, match="prefix"):
        InventoryStore(URL, prefix="")


def test_the_blocking_store_refuses_to_run_inside_an_event_loop():
    async def inside():
        store = InventoryStore(URL, prefix="p")
        try:
            with pytest.raises(RuntimeError):
                store.reserve_many([])
        finally:
            store._loop.close()

    asyncio.run(inside())
