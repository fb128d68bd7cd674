"""The refunds' Redis effects against the real redis-server: returned goods go back to stock once
per refund (whatever the repeats and races), and the per-order money ledger never lets an order's
refunds exceed what was paid, even when many refunds of one order are committed at once."""
from __future__ import annotations

import asyncio
import threading

import pytest
import redis
import redis.asyncio

from pipeline.inventory_store import InventoryStore, StockLevel
from pipeline.refund_ledger import RefundLedger

pytestmark = pytest.mark.stack


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture()
def store(redis_url, client, redis_prefix):
    s = InventoryStore(redis_url, prefix=redis_prefix)
    yield s
    s.close()
    keys = list(client.scan_iter(f"{redis_prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def test_returned_goods_go_back_to_stock_once_per_refund(store):
    store.apply_snapshot("WH-SH", "TEE-01", total=10)
    assert store.reserve("O1", [("TEE-01", 2)], ["WH-SH"]).outcome == "reserved"
    first = store.return_to_stock("JD:RF1", "O1", [("WH-SH", "TEE-01", 1), ("WH-SH", "TEE-01", 1)])
    assert first.restocked and first.lines == [("WH-SH", "TEE-01", 2)] and first.units == 2
    # a redelivered receipt, a re-processed message, the same refund with other lines: never twice
    for lines in ([("WH-SH", "TEE-01", 2)], [("WH-GZ", "TEE-01", 5)]):
        again = store.return_to_stock("JD:RF1", "O1", lines)
        assert not again.restocked and again.lines == [("WH-SH", "TEE-01", 2)]
    assert store.stock("WH-SH", "TEE-01") == StockLevel(total=12, locked=0, presale=0, reserved=2, returned=2)
    assert store.returned_units("WH-SH", "TEE-01") == 2
    # the batch agents' one-call read sees the returned units too
    assert store.stock_levels(["TEE-01"])["TEE-01"]["WH-SH"].returned == 2
    assert store.stock("WH-GZ", "TEE-01") == StockLevel()
    record = store.returned_record("JD:RF1")
    assert record["order_id"] == "O1" and record["lines"] == [["WH-SH", "TEE-01", 2]]
    # another refund of the same order is its own return
    assert store.return_to_stock("JD:RF2", "O1", [("WH-SH", "TEE-01", 1)]).restocked
    assert store.stock("WH-SH", "TEE-01").total == 13 and store.returned_units("WH-SH", "TEE-01") == 3


def test_a_return_to_a_warehouse_new_to_the_sku_makes_it_a_candidate(store):
    store.return_to_stock("JD:RF3", "O3", [("WH-CD", "MUG-02", 4)])
    assert store.available_by_warehouse("MUG-02") == {"WH-CD": 4}
    assert store.reserve("O4", [("MUG-02", 4)], ["WH-CD"]).outcome == "reserved"


def test_a_warehouse_snapshot_keeps_the_returned_count(store):
    store.return_to_stock("JD:RF4", "O5", [("WH-SH", "CAP-03", 3)])
    store.apply_snapshot("WH-SH", "CAP-03", total=50)     # the warehouse system's own count takes over
    assert store.stock("WH-SH", "CAP-03").total == 50 and store.returned_units("WH-SH", "CAP-03") == 3


@pytest.mark.parametrize("lines, problem", [
    ([], "at least one line"),
    ([("WH:SH", "A", 1)], "warehouse id"),
    ([("WH-SH", "", 1)], "sku"),
    ([("WH-SH", "A", 0)], "positive int"),
    ([("WH-SH", "A")], r"\(warehouse, sku, qty\)"),
])
def test_bad_return_lines_are_refused_before_redis(store, lines, problem):
    with pytest.raises(ValueError, match=problem):
        store.return_to_stock("JD:RF9", "O9", lines)
    assert store.returned_record("JD:RF9") is None


def test_concurrent_receipts_of_one_refund_restock_once(redis_url, store, redis_prefix):
    results = []

    def receive():
        with InventoryStore(redis_url, prefix=redis_prefix) as s:
            results.append(s.return_to_stock("JD:RF5", "O6", [("WH-BJ", "SOCK-04", 3)]).restocked)

    threads = [threading.Thread(target=receive) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 11 + [True]
    assert store.stock("WH-BJ", "SOCK-04").total == 3


# --------------------------------------------------------------------------- the money ledger


def ledger_run(redis_url: str, prefix: str, work):
    async def go():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await work(RefundLedger(client, prefix=prefix))
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_refunds_of_one_order_never_exceed_what_was_paid(redis_url, redis_prefix, client):
    async def work(ledger: RefundLedger):
        out = [await ledger.commit("O1", "R1", 6_000, 10_000, "CNY"),
               await ledger.commit("O1", "R1", 6_000, 10_000, "CNY"),     # the same refund again: counted once
               await ledger.commit("O1", "R2", 4_001, 10_000, "CNY"),     # one fen too many
               await ledger.commit("O1", "R3", 4_000, 10_000, "CNY"),     # exactly what is left
               await ledger.commit("O1", "R4", 1, 10_000, "USD")]
        return out, await ledger.order("O1")

    try:
        (r1, again, over, exact, currency), state = ledger_run(redis_url, redis_prefix, work)
        assert r1.ok and again.ok and exact.ok
        assert not over.ok and "10001" in over.why and "more than the 10000 paid" in over.why
        assert not currency.ok and "refunded in CNY, not USD" in currency.why
        assert (state.paid_minor, state.committed_minor, state.currency) == (10_000, 10_000, "CNY")
    finally:
        client.delete(f"{redis_prefix}:ledger:O1")


def test_a_released_refund_frees_its_amount_once(redis_url, redis_prefix, client):
    async def work(ledger: RefundLedger):
        await ledger.commit("O2", "R1", 7_000, 10_000, "CNY")
        blocked = await ledger.commit("O2", "R2", 5_000, 10_000, "CNY")
        freed = [await ledger.release("O2", "R1"), await ledger.release("O2", "R1"), await ledger.release("O2", "R9")]
        after = await ledger.commit("O2", "R2", 5_000, 10_000, "CNY")
        recommit = await ledger.commit("O2", "R1", 7_000, 10_000, "CNY")   # a released refund stays released
        return blocked, freed, after, recommit, await ledger.order("O2")

    try:
        blocked, freed, after, recommit, state = ledger_run(redis_url, redis_prefix, work)
        assert not blocked.ok and freed == [7_000, 0, 0] and after.ok
        assert not recommit.ok and "rejected or cancelled before" in recommit.why
        assert state.committed_minor == 5_000
    finally:
        client.delete(f"{redis_prefix}:ledger:O2")


def test_concurrent_refunds_of_one_order_are_capped_atomically(redis_url, redis_prefix, client):
    async def work(ledger: RefundLedger):
        # 40 refunds of 1,000 fen each race for an order of 25,000 fen
        results = await asyncio.gather(*(ledger.commit("O3", f"R{i}", 1_000, 25_000, "CNY") for i in range(40)))
        return results, await ledger.order("O3")

    try:
        results, state = ledger_run(redis_url, redis_prefix, work)
        assert sum(r.ok for r in results) == 25 and state.committed_minor == 25_000
    finally:
        client.delete(f"{redis_prefix}:ledger:O3")


def test_amounts_must_be_positive_integer_minor_units(redis_url, redis_prefix):
    async def work(ledger: RefundLedger):
        for bad in (0, -5, 12.5, True):
            with pytest.raises(ValueError, match="positive integer"):
                await ledger.commit("O4", "R1", bad, 10_000, "CNY")
        return await ledger.order("O4")

    assert ledger_run(redis_url, redis_prefix, work) is None
