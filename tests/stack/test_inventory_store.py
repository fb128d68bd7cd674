"""InventoryStore against the real redis-server: atomic, idempotent reservations and releases."""
from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio

from pipeline.contracts import StockEventError
from pipeline.inventory_store import AsyncInventoryStore, InventoryStore, ReserveRequest, StockLevel

pytestmark = pytest.mark.stack

NOW = 1_700_000_000_000


def _purge(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture()
def make_store(redis_url):
    """InventoryStore(redis_url, prefix, ...): each one closed after the test."""
    made: list[InventoryStore] = []

    def make(prefix: str, **kwargs) -> InventoryStore:
        made.append(InventoryStore(redis_url, prefix=prefix, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture()
def store(make_store, client, redis_prefix):
    yield make_store(redis_prefix)
    _purge(client, redis_prefix)


def reserved_sum(store: InventoryStore, sku: str) -> int:
    return sum(level.reserved for level in store.stock_by_warehouse(sku).values())


# ---------------------------------------------------------------- stock model

def test_presale_and_locked_reduce_availability(store):
    assert store.apply_snapshot("WH-SH", "A", total=20, locked=3, presale=5) == 12
    assert store.stock("WH-SH", "A") == StockLevel(total=20, locked=3, presale=5, reserved=0)
    res = store.reserve("o1", [("A", 13)], ["WH-SH"])
    assert res.outcome == "out_of_stock" and res.short == {"A": 1}
    assert store.reserve("o1", [("A", 12)], ["WH-SH"]).outcome == "reserved"
    assert store.available("WH-SH", "A") == 0


def test_snapshot_overwrites_delta_adds_and_neither_touches_reserved(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    store.reserve("o1", [("A", 4)], ["WH-SH"])
    assert store.apply_delta("WH-SH", "A", total=5, locked=1) == 10 - 4 + 5 - 1
    assert store.apply_snapshot("WH-SH", "A", total=7, presale=2) == 7 - 2 - 4
    assert store.stock("WH-SH", "A") == StockLevel(7, 0, 2, 4)
    # the warehouse may report less than is reserved: shown as negative, never hidden
    assert store.apply_snapshot("WH-SH", "A", total=1) == -3
    assert store.total_available("A") == 0


def test_stock_events_from_the_topic(store):
    assert store.apply_stock_event({"type": "snapshot", "warehouse": "WH-GZ", "sku": "B", "total": 8,
                                    "locked": 1, "presale": 0}) == 7
    assert store.apply_stock_event(json.dumps({"type": "delta", "warehouse": "WH-GZ", "sku": "B",
                                               "total": -2})) == 5
    assert store.apply_stock_event({"type": "snapshot", "warehouse": "WH-SH", "sku": "B", "total": 3}) == 3
    assert store.available_by_warehouse("B") == {"WH-GZ": 5, "WH-SH": 3}
    assert store.total_available("B") == 8
    assert store.warehouses_for(["B", "nothing"]) == ["WH-GZ", "WH-SH"]
    assert store.depth_for(["B"]) == {"WH-GZ": 5, "WH-SH": 3}


@pytest.mark.parametrize("event", [
    {"type": "restock", "warehouse": "W", "sku": "A", "total": 1},
    {"type": "snapshot", "warehouse": "W", "sku": "A"},
    {"type": "snapshot", "warehouse": "W", "sku": "A", "total": -1},
    {"type": "snapshot", "warehouse": "W", "sku": "A", "total": "5"},
    {"type": "delta", "warehouse": "", "sku": "A", "total": 1},
    {"type": "delta", "warehouse": "W", "sku": None, "total": 1},
    {"type": "delta", "warehouse": "W", "sku": "A", "total": True},
    {"type": "delta", "warehouse": "W", "sku": "A", "locked": 1.5},
    "not json", [1, 2],
])
def test_invalid_stock_events_are_rejected_and_change_nothing(store, event):
    with pytest.raises(StockEventError):
        store.apply_stock_event(event)
    assert store.warehouses_for(["A"]) == []


# ---------------------------------------------------------------- reserve

def test_all_or_nothing_one_short_line_reserves_nothing(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    store.apply_snapshot("WH-SH", "B", total=1)
    res = store.reserve("o1", [("A", 5), ("B", 2)], ["WH-SH"])
    assert res.outcome == "out_of_stock"
    assert res.short == {"B": 1} and res.allocations == [] and res.warehouse is None
    assert store.stock("WH-SH", "A").reserved == 0 and store.stock("WH-SH", "B").reserved == 0
    assert store.reservation("o1") is None


def test_out_of_stock_is_not_recorded_so_a_retry_after_restock_succeeds(store):
    store.apply_snapshot("WH-SH", "A", total=1)
    assert store.reserve("o1", [("A", 2)], ["WH-SH"]).outcome == "out_of_stock"
    store.apply_delta("WH-SH", "A", total=5)
    assert store.reserve("o1", [("A", 2)], ["WH-SH"]).outcome == "reserved"


def test_reserve_is_idempotent_by_order_id(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    first = store.reserve("o1", [("A", 3)], ["WH-SH"])
    again = store.reserve("o1", [("A", 3)], ["WH-SH"])
    changed = store.reserve("o1", [("A", 9)], ["WH-SH"])   # a replay with other content still changes nothing
    assert first.outcome == "reserved" and first.allocations == [("WH-SH", "A", 3)] and first.warehouse == "WH-SH"
    assert again.outcome == changed.outcome == "duplicate"
    assert again.allocations == changed.allocations == first.allocations
    assert again.original_outcome == "reserved"
    assert store.available("WH-SH", "A") == 7


def test_next_policy_takes_the_whole_order_from_the_first_candidate_that_can(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    store.apply_snapshot("WH-SH", "B", total=0)
    store.apply_snapshot("WH-GZ", "A", total=2)
    store.apply_snapshot("WH-GZ", "B", total=2)
    store.apply_snapshot("WH-BJ", "A", total=5)
    store.apply_snapshot("WH-BJ", "B", total=5)
    res = store.reserve("o1", [("A", 2), ("B", 1)], ["WH-SH", "WH-GZ", "WH-BJ"])
    assert res.outcome == "reserved" and res.warehouse == "WH-GZ"
    assert sorted(res.allocations) == [("WH-GZ", "A", 2), ("WH-GZ", "B", 1)]
    res2 = store.reserve("o2", [("A", 2), ("B", 1)], ["WH-SH", "WH-GZ", "WH-BJ"])
    assert res2.warehouse == "WH-BJ"


def test_next_policy_does_not_split(store):
    store.apply_snapshot("WH-SH", "A", total=3)
    store.apply_snapshot("WH-GZ", "A", total=3)
    res = store.reserve("o1", [("A", 5)], ["WH-SH", "WH-GZ"], policy="next")
    assert res.outcome == "out_of_stock" and res.short == {"A": 2}
    assert reserved_sum(store, "A") == 0


def test_split_policy_allocates_lines_across_warehouses_in_candidate_order(store):
    store.apply_snapshot("WH-SH", "A", total=3)
    store.apply_snapshot("WH-GZ", "A", total=3)
    store.apply_snapshot("WH-BJ", "A", total=3)
    store.apply_snapshot("WH-BJ", "B", total=1)
    res = store.reserve("o1", [("A", 5), ("B", 1)], ["WH-GZ", "WH-SH", "WH-BJ"], policy="split")
    assert res.outcome == "reserved" and res.warehouse is None
    assert res.allocations == [("WH-GZ", "A", 3), ("WH-SH", "A", 2), ("WH-BJ", "B", 1)]
    assert store.available_by_warehouse("A") == {"WH-BJ": 3, "WH-GZ": 0, "WH-SH": 1}
    # the split is still all or nothing
    short = store.reserve("o2", [("A", 4), ("B", 1)], ["WH-GZ", "WH-SH", "WH-BJ"], policy="split")
    assert short.outcome == "out_of_stock" and short.short == {"B": 1}
    assert store.available_by_warehouse("A") == {"WH-BJ": 3, "WH-GZ": 0, "WH-SH": 1}


def test_split_prefers_a_single_warehouse_when_one_can_ship_everything(store):
    store.apply_snapshot("WH-SH", "A", total=1)
    store.apply_snapshot("WH-GZ", "A", total=4)
    res = store.reserve("o1", [("A", 4)], ["WH-SH", "WH-GZ"], policy="split")
    assert res.allocations == [("WH-GZ", "A", 4)] and res.warehouse == "WH-GZ"


def test_backorder_policy_records_a_backorder_and_reserves_nothing(store):
    store.apply_snapshot("WH-SH", "A", total=1)
    res = store.reserve("o1", [("A", 3)], ["WH-SH"], policy="backorder")
    assert res.outcome == "backorder" and res.short == {"A": 2} and res.allocations == []
    assert store.stock("WH-SH", "A").reserved == 0
    assert store.reservation("o1")["state"] == "backorder"
    replay = store.reserve("o1", [("A", 3)], ["WH-SH"], policy="backorder")
    assert replay.outcome == "duplicate" and replay.original_outcome == "backorder"
    rel = store.release("o1", "cancelled")
    assert rel.released is True and rel.units == 0


def test_no_candidates_means_out_of_stock_for_everything(store):
    res = store.reserve("o1", [("A", 2), ("B", 1)], [])
    assert res.outcome == "out_of_stock" and res.short == {"A": 2, "B": 1}


def test_lines_of_the_same_sku_are_summed(store):
    store.apply_snapshot("WH-SH", "A", total=5)
    assert store.reserve("o1", [("A", 2), ("A", 4)], ["WH-SH"]).short == {"A": 1}
    res = store.reserve("o1", [("A", 2), ("A", 3)], ["WH-SH"])
    assert res.allocations == [("WH-SH", "A", 5)]


@pytest.mark.parametrize("lines", [[], [("A", 0)], [("A", -1)], [("A", 1.0)], [("A", True)], [("", 1)], [("A",)]])
def test_bad_lines_raise_value_error_and_touch_nothing(store, lines):
    store.apply_snapshot("WH-SH", "A", total=5)
    with pytest.raises(ValueError):
        store.reserve("o1", lines, ["WH-SH"])
    assert store.reservation("o1") is None and store.available("WH-SH", "A") == 5


def test_unknown_policy_is_a_value_error(store):
    with pytest.raises(ValueError):
        store.reserve("o1", [("A", 1)], ["WH-SH"], policy="teleport")


# ---------------------------------------------------------------- release

def test_release_gives_the_units_back_once(store):
    store.apply_snapshot("WH-SH", "A", total=5)
    store.apply_snapshot("WH-GZ", "A", total=5)
    store.reserve("o1", [("A", 8)], ["WH-SH", "WH-GZ"], policy="split")
    assert store.total_available("A") == 2
    first = store.release("o1", "cancelled")
    second = store.release("o1", "cancelled")
    assert first.released is True and first.units == 8
    assert sorted(first.allocations) == [("WH-GZ", "A", 3), ("WH-SH", "A", 5)]
    assert second.released is False and second.units == 0
    assert store.total_available("A") == 10 and reserved_sum(store, "A") == 0
    record = store.reservation("o1")
    assert record["state"] == "released" and record["reason"] == "cancelled" and record["released_units"] == 8


def test_a_released_order_is_never_reserved_again(store):
    store.apply_snapshot("WH-SH", "A", total=5)
    store.reserve("o1", [("A", 2)], ["WH-SH"])
    store.release("o1", "refund")
    late = store.reserve("o1", [("A", 2)], ["WH-SH"])
    assert late.outcome == "released" and late.allocations == []
    assert store.available("WH-SH", "A") == 5


def test_release_before_reserve_blocks_the_late_reserve(store):
    store.apply_snapshot("WH-SH", "A", total=5)
    rel = store.release("o1", "risk_rejected")
    assert rel.released is False and rel.units == 0
    assert store.reserve("o1", [("A", 1)], ["WH-SH"]).outcome == "released"
    assert store.available("WH-SH", "A") == 5


def test_reservation_timeouts_are_released_by_the_sweeper(client, redis_prefix, store, make_store):
    short_store = make_store(redis_prefix, reservation_ttl_s=60)
    short_store.apply_snapshot("WH-SH", "A", total=10)
    short_store.reserve("old", [("A", 3)], ["WH-SH"], now_ms=NOW)
    short_store.reserve("new", [("A", 2)], ["WH-SH"], now_ms=NOW + 50_000)
    assert short_store.expired(now_ms=NOW + 59_000) == []
    assert client.ttl(short_store.keys.order("old")) > 60   # the record outlives its deadline
    swept = short_store.release_expired(now_ms=NOW + 61_000)
    assert [(oid, r.released, r.units) for oid, r in swept] == [("old", True, 3)]
    assert short_store.available("WH-SH", "A") == 8
    assert short_store.reservation("old")["reason"] == "timeout"
    assert short_store.release_expired(now_ms=NOW + 61_000) == []


# ---------------------------------------------------------------- batching

def test_reserve_many_matches_one_at_a_time_and_dedupes_within_a_batch(store):
    store.apply_snapshot("WH-SH", "A", total=4)
    results = store.reserve_many([
        ReserveRequest("o1", [("A", 2)], ["WH-SH"]),
        ("o2", [("A", 3)], ["WH-SH"]),
        ("o1", [("A", 2)], ["WH-SH"]),
        ("o3", [("A", 2)], ["WH-SH"], "next"),
    ])
    assert [r.outcome for r in results] == ["reserved", "out_of_stock", "duplicate", "reserved"]
    assert store.available("WH-SH", "A") == 0
    assert store.reserve_many([]) == []


# ---------------------------------------------------------------- channels

def test_channel_paused_flag_changes_exactly_once(store):
    assert store.is_channel_paused("A") is False
    assert store.set_channel_paused("A", True) is True
    assert store.set_channel_paused("A", True) is False
    assert store.is_channel_paused("A") is True
    assert store.set_channel_paused("A", False) is True
    assert store.set_channel_paused("A", False) is False


def test_channel_update_pauses_once_and_resumes_after_restock(store, make_store, redis_prefix):
    store.apply_snapshot("WH-SH", "A", total=12)
    platforms = ["TMALL", "JD", "SHOPIFY"]
    assert store.channel_update("A", 10, platforms, "SHOPIFY", now_ms=NOW) == []
    store.reserve("o1", [("A", 3)], ["WH-SH"])
    other_worker = make_store(redis_prefix)
    paused = store.channel_update("A", 10, platforms, "SHOPIFY", now_ms=NOW)
    assert [(e.event, e.platform, e.available) for e in paused] == [("pause", "TMALL", 9), ("pause", "JD", 9)]
    assert other_worker.channel_update("A", 10, platforms, "SHOPIFY", now_ms=NOW) == []
    store.release("o1", "cancelled")
    resumed = other_worker.channel_update("A", 10, platforms, "SHOPIFY", now_ms=NOW)
    assert [e.event for e in resumed] == ["resume", "resume"]
    assert store.channel_update("A", 10, platforms, "SHOPIFY", now_ms=NOW) == []


def test_channel_flag_race_has_a_single_winner(redis_url, redis_prefix, client):
    from concurrent.futures import ThreadPoolExecutor

    stores = [InventoryStore(redis_url, prefix=redis_prefix) for _ in range(8)]
    try:
        for _ in range(20):
            with ThreadPoolExecutor(8) as pool:
                wins = list(pool.map(lambda s: s.set_channel_paused("HOT", True), stores))
            assert sum(wins) == 1
            with ThreadPoolExecutor(8) as pool:
                wins = list(pool.map(lambda s: s.set_channel_paused("HOT", False), stores))
            assert sum(wins) == 1
    finally:
        for s in stores:
            s.close()
        _purge(client, redis_prefix)


# ---------------------------------------------------------------- async twin

def test_async_store_shares_scripts_and_records(redis_url, redis_prefix, store):
    async def scenario():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            a = AsyncInventoryStore(client, prefix=redis_prefix)
            assert await a.apply_snapshot("WH-SH", "A", total=6, presale=1) == 5
            assert await a.apply_stock_event({"type": "delta", "warehouse": "WH-GZ", "sku": "A", "total": 2}) == 2
            one = await a.reserve("o1", [("A", 4)], ["WH-SH"])
            batch = await a.reserve_many([("o1", [("A", 4)], ["WH-SH"]), ("o2", [("A", 3)], ["WH-SH", "WH-GZ"], "split")])
            rel = await a.release("o2", "cancelled")
            return (one, batch, rel, await a.available_by_warehouse("A"), await a.total_available("A"),
                    await a.warehouses_for(["A"]), await a.set_channel_paused("A", True), await a.is_channel_paused("A"))
        finally:
            await client.aclose()

    one, batch, rel, by_wh, total, whs, flipped, paused = asyncio.run(scenario())
    assert one.outcome == "reserved"
    assert [r.outcome for r in batch] == ["duplicate", "reserved"]
    assert batch[1].allocations == [("WH-SH", "A", 1), ("WH-GZ", "A", 2)]
    assert rel.released and rel.units == 3
    assert by_wh == {"WH-GZ": 2, "WH-SH": 1} and total == 3 and whs == ["WH-GZ", "WH-SH"]
    assert flipped and paused
    # the sync store sees what the async one wrote
    assert store.reserve("o1", [("A", 4)], ["WH-SH"]).outcome == "duplicate"
    assert store.is_channel_paused("A")


def test_stock_levels_reads_every_warehouse_of_every_sku_in_one_call(redis_url, redis_prefix, store):
    store.apply_snapshot("WH-SH", "A", total=6, locked=1, presale=2)
    store.apply_snapshot("WH-GZ", "A", total=3)
    store.apply_snapshot("WH-BJ", "B", total=9, locked=4)
    assert store.reserve("o1", [("A", 2)], ["WH-GZ"]).outcome == "reserved"

    async def levels():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await AsyncInventoryStore(client, prefix=redis_prefix).stock_levels(["A", "B", "NONE", "A"])
        finally:
            await client.aclose()

    got = asyncio.run(levels())
    assert got == {"A": {"WH-GZ": store.stock("WH-GZ", "A"), "WH-SH": store.stock("WH-SH", "A")},
                   "B": {"WH-BJ": store.stock("WH-BJ", "B")}, "NONE": {}}
    assert got["A"]["WH-GZ"] == StockLevel(total=3, locked=0, presale=0, reserved=2)
    assert got["A"]["WH-SH"].available == 3


def test_reserve_many_decides_exactly_as_reserving_one_by_one(client, redis_prefix, make_store):
    requests = [("o1", [("A", 4)], ["WH-SH"]), ("o2", [("A", 3)], ["WH-SH", "WH-GZ"], "split"),
                ("o1", [("A", 4)], ["WH-SH"]), ("o3", [("A", 9), ("B", 1)], ["WH-GZ", "WH-SH"]),
                ("o4", [("B", 2)], ["WH-SH"], "backorder"), ("o5", [("B", 1), ("A", 1)], ["WH-GZ"]),
                ("o6", [("A", 1)], ["WH-SH"])]
    outcomes = []
    for prefix, many in ((redis_prefix + "one", False), (redis_prefix + "many", True)):
        s = make_store(prefix)
        s.apply_snapshot("WH-SH", "A", total=6, presale=1)
        s.apply_snapshot("WH-GZ", "A", total=2)
        s.apply_snapshot("WH-GZ", "B", total=1)
        s.release("o6", "cancelled", now_ms=NOW)  # a cancellation that overtook its order
        got = s.reserve_many(requests, now_ms=NOW) if many else [s.reserve(*r, now_ms=NOW) for r in requests]
        levels = {sku: s.stock_by_warehouse(sku) for sku in ("A", "B")}
        outcomes.append(([(r.outcome, r.allocations, r.short, r.warehouse) for r in got], levels))
        _purge(client, prefix)
    assert outcomes[0] == outcomes[1]
    # o2's split took what WH-GZ had of A, so o5 finds none there
    assert [o for o, *_ in outcomes[1][0]] == ["reserved", "reserved", "duplicate", "out_of_stock", "backorder",
                                                "out_of_stock", "released"]


# ---------------------------------------------------------------- shipment (issue 17)

def cell(store: InventoryStore, wh: str, sku: str) -> tuple[int, int, int, int]:
    """(total, reserved, shipped, available) of one warehouse cell."""
    level = store.stock(wh, sku)
    return level.total, level.reserved, level.shipped, level.available


def test_shipment_takes_total_and_reserved_down_together_once(store):
    store.apply_snapshot("WH-SH", "A", total=10, locked=1, presale=2)
    store.apply_snapshot("WH-SH", "B", total=5)
    assert store.reserve("o1", [("A", 3), ("B", 1)], ["WH-SH"], paid=True).outcome == "reserved"
    assert cell(store, "WH-SH", "A") == (10, 3, 0, 4) and cell(store, "WH-SH", "B") == (5, 1, 0, 4)
    first = store.ship("o1", [("A", 3), ("B", 1)], ["WH-SH"], version_ms=5000, actor="test")
    assert first.outcome == "shipped" and sorted(first.allocations) == [("WH-SH", "A", 3), ("WH-SH", "B", 1)]
    # available did not move: the units were already not available; they left the building
    assert cell(store, "WH-SH", "A") == (7, 0, 3, 4) and cell(store, "WH-SH", "B") == (4, 0, 1, 4)
    # redeliveries, a later shipped-state update, a replay: nothing moves again
    for version in (5000, 5000, 9000):
        again = store.ship("o1", [("A", 3), ("B", 1)], ["WH-SH"], version_ms=version)
        assert again.outcome == "duplicate" and again.original_outcome == "shipped"
        assert again.done_by_version("shipped", 5000) and not again.done_by_version("shipped", 9000)
    assert cell(store, "WH-SH", "A") == (7, 0, 3, 4)
    rec = store.reservation("o1")
    assert rec["state"] == "shipped" and rec["shipped_units"] == 4 and rec["shipped_by"] == "test"
    # every unit accounted for: put in = available + locked + presale + reserved + shipped
    level = store.stock("WH-SH", "A")
    assert level.available + level.locked + level.presale + level.reserved + level.shipped == 10


def test_a_shipped_order_is_not_released_and_a_release_does_not_go_negative(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    store.reserve("o1", [("A", 4)], ["WH-SH"], paid=True)
    store.ship("o1", [("A", 4)], ["WH-SH"], version_ms=1)
    rel = store.release("o1", "order cancelled")
    assert rel.released is False and rel.outcome == "shipped"
    assert cell(store, "WH-SH", "A") == (6, 0, 4, 6)
    assert store.reservation("o1")["state"] == "shipped"


def test_shipment_never_takes_a_figure_below_zero(store):
    store.apply_snapshot("WH-SH", "A", total=10)
    store.reserve("o1", [("A", 4)], ["WH-SH"], paid=True)
    store.apply_snapshot("WH-SH", "A", total=3)   # the warehouse now reports less than is reserved
    refused = store.ship("o1", [("A", 4)], ["WH-SH"], version_ms=1)
    assert refused.outcome == "refused" and "total 3" in refused.record["refused_reason"]
    assert cell(store, "WH-SH", "A") == (3, 4, 0, -1)    # nothing changed, the oversell still shows
    assert store.reservation("o1")["state"] == "reserved"
    store.apply_delta("WH-SH", "A", total=2)
    assert store.ship("o1", [("A", 4)], ["WH-SH"], version_ms=2).outcome == "shipped"
    assert cell(store, "WH-SH", "A") == (1, 0, 4, 1)


def test_shipping_an_order_that_holds_nothing_deducts_nothing_and_blocks_a_later_reserve(store):
    store.apply_snapshot("WH-SH", "A", total=2)
    # shipped while we still held it for risk review (or after it went out of stock): a marker
    first = store.ship("held", [("A", 1)], ["WH-SH"], version_ms=1, actor="order_flow")
    assert first.outcome == "unreserved" and first.allocations == []
    assert store.reservation("held")["state"] == "shipped" and store.reservation("held")["shipped_units"] == 0
    assert store.ship("held", [("A", 1)], ["WH-SH"], version_ms=1).original_outcome == "shipped"
    # the hold is released afterwards: nothing is reserved for goods that already left
    late = store.reserve("held", [("A", 1)], ["WH-SH"], paid=True)
    assert late.outcome == "duplicate" and late.original_outcome == "shipped" and late.allocations == []
    assert store.pay("held", [("A", 1)], ["WH-SH"], version_ms=2).outcome == "duplicate"
    store.reserve("gone", [("A", 1)], ["WH-SH"], paid=True)
    store.release("gone", "order cancelled")
    dup = store.ship("gone", [("A", 1)], ["WH-SH"], version_ms=1)
    assert dup.outcome == "duplicate" and dup.original_outcome == "released"
    assert cell(store, "WH-SH", "A") == (2, 0, 0, 2)


def test_concurrent_shipments_of_one_order_deduct_once(redis_url, redis_prefix, client):
    from concurrent.futures import ThreadPoolExecutor

    stores = [InventoryStore(redis_url, prefix=redis_prefix) for _ in range(6)]
    try:
        stores[0].apply_snapshot("WH-SH", "A", total=50)
        for i in range(10):
            stores[0].reserve(f"o{i}", [("A", 2)], ["WH-SH"], paid=True)
        def ship_all(s: InventoryStore) -> list[str]:  # one thread per store: a store is not thread-safe
            return [s.ship(f"o{i}", [("A", 2)], ["WH-SH"], version_ms=7).outcome for i in range(10)]

        with ThreadPoolExecutor(6) as pool:
            outcomes = [o for per_store in pool.map(ship_all, stores) for o in per_store]
        assert outcomes.count("shipped") == 10 and outcomes.count("duplicate") == 50
        assert cell(stores[0], "WH-SH", "A") == (30, 0, 20, 30)
    finally:
        for s in stores:
            s.close()
        _purge(client, redis_prefix)


def test_a_new_order_reserved_and_shipped_in_one_batch(store):
    store.apply_snapshot("WH-SH", "A", total=5)
    got = store.reserve_many([ReserveRequest("o1", [("A", 2)], ["WH-SH"], paid=True),
                              ReserveRequest("o1", [("A", 2)], ["WH-SH"], mode="ship", version_ms=3)])
    assert [r.outcome for r in got] == ["reserved", "shipped"]
    assert cell(store, "WH-SH", "A") == (3, 0, 2, 3)


# ---------------------------------------------------------------- paid orders and late payment

def test_a_paid_reservation_keeps_its_record_until_it_ships(client, store):
    store.apply_snapshot("WH-SH", "A", total=5)
    store.reserve("paid", [("A", 1)], ["WH-SH"], paid=True)
    store.reserve("unpaid", [("A", 1)], ["WH-SH"])
    assert client.ttl(store.keys.order("paid")) == -1        # holds stock: never vanishes
    assert client.ttl(store.keys.order("unpaid")) > 0
    assert store.expired(now_ms=NOW * 10) == ["unpaid"]      # only the unpaid one is on the schedule
    settled = store.pay("unpaid", [("A", 1)], ["WH-SH"], version_ms=1)
    assert settled.outcome == "settled"
    assert client.ttl(store.keys.order("unpaid")) == -1 and store.expired(now_ms=NOW * 10) == []
    store.ship("paid", [("A", 1)], ["WH-SH"], version_ms=2)
    assert client.ttl(store.keys.order("paid")) > 0          # shipped: a tombstone with the usual TTL


def test_an_order_paid_after_it_expired_is_reserved_again_exactly_once(store, make_store, redis_prefix):
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=5)
    short.apply_snapshot("WH-GZ", "A", total=5)
    assert short.reserve("o1", [("A", 3)], ["WH-SH"], now_ms=NOW).outcome == "reserved"
    swept = short.release_expired(now_ms=NOW + 61_000, actor="timer")
    assert [(oid, r.released, r.outcome, r.units) for oid, r in swept] == [("o1", True, "expired", 3)]
    assert short.reservation("o1")["state"] == "expired" and short.available("WH-SH", "A") == 5
    # a new order's replay does not bring it back; the paid update does, once
    dup = short.reserve("o1", [("A", 3)], ["WH-SH"])
    assert dup.outcome == "duplicate" and dup.original_outcome == "expired" and dup.allocations == [("WH-SH", "A", 3)]
    late = short.pay("o1", [("A", 3)], ["WH-GZ", "WH-SH"], version_ms=777, actor="order_flow")
    assert late.outcome == "rereserved" and late.allocations == [("WH-GZ", "A", 3)] and late.late
    for version in (777, 778):  # the same paid update re-processed, then a later paid update
        again = short.pay("o1", [("A", 3)], ["WH-GZ", "WH-SH"], version_ms=version)
        assert again.outcome == "settled" and again.done_by_version("late", 777)
    assert short.available("WH-GZ", "A") == 2 and short.available("WH-SH", "A") == 5
    assert short.release_expired(now_ms=NOW * 10) == []     # paid: never times out again
    # the original new order's replay still gets what it first reserved
    assert short.reserve("o1", [("A", 3)], ["WH-SH"]).allocations == [("WH-SH", "A", 3)]
    # and it ships from where it is now
    assert short.ship("o1", [("A", 3)], ["WH-SH"], version_ms=900).outcome == "shipped"
    assert cell(short, "WH-GZ", "A") == (2, 0, 3, 2) and cell(short, "WH-SH", "A") == (5, 0, 0, 5)


def test_an_expired_order_shipped_without_a_paid_update_is_reserved_again_and_shipped_at_once(
        store, make_store, redis_prefix):
    # (the default transition rules flag PENDING_PAYMENT -> SHIPPED; a rule file may allow it)
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=5)
    short.reserve("o1", [("A", 2)], ["WH-SH"], now_ms=NOW)
    short.release_expired(now_ms=NOW + 61_000)
    res = short.ship("o1", [("A", 2)], ["WH-SH"], version_ms=44, actor="order_flow")
    assert res.outcome == "shipped" and res.late and res.done_by_version("late", 44)
    assert res.done_by_version("shipped", 44) and res.allocations == [("WH-SH", "A", 2)]
    assert cell(short, "WH-SH", "A") == (3, 0, 2, 3)
    assert short.ship("o1", [("A", 2)], ["WH-SH"], version_ms=44).outcome == "duplicate"
    assert cell(short, "WH-SH", "A") == (3, 0, 2, 3)


def test_a_late_payment_without_stock_gets_out_of_stock_once(store, make_store, redis_prefix):
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=3)
    short.reserve("o1", [("A", 3)], ["WH-SH"], now_ms=NOW)
    short.release_expired(now_ms=NOW + 61_000)
    short.reserve("o2", [("A", 2)], ["WH-SH"], paid=True)   # the freed stock sold meanwhile
    late = short.pay("o1", [("A", 3)], ["WH-SH"], version_ms=5)
    assert late.outcome == "out_of_stock" and late.short == {"A": 2} and late.late
    short.apply_delta("WH-SH", "A", total=10)
    again = short.pay("o1", [("A", 3)], ["WH-SH"], version_ms=6)  # restocked: still not a second attempt
    assert again.outcome == "duplicate" and again.original_outcome == "out_of_stock"
    assert again.done_by_version("late", 5)
    assert short.stock("WH-SH", "A").reserved == 2
    assert short.ship("o1", [("A", 3)], ["WH-SH"], version_ms=7).outcome == "duplicate"  # holds nothing to ship


def test_a_cancelled_order_never_reserves_again_expired_or_not(store, make_store, redis_prefix):
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=5)
    short.reserve("expired-then-cancelled", [("A", 1)], ["WH-SH"], now_ms=NOW)
    short.reserve("cancelled", [("A", 1)], ["WH-SH"], now_ms=NOW + 120_000)
    short.release_expired(now_ms=NOW + 61_000)
    rel = short.release("expired-then-cancelled", "order cancelled")
    assert rel.released is False and rel.outcome == "tombstoned"   # its units went back at the time-out
    assert short.release("cancelled", "order cancelled").released is True
    for oid in ("expired-then-cancelled", "cancelled"):
        for call in (short.pay, short.ship):
            res = call(oid, [("A", 1)], ["WH-SH"], version_ms=9)
            assert res.outcome == "duplicate" and res.original_outcome == "released", (oid, call)
        assert short.reserve(oid, [("A", 1)], ["WH-SH"]).outcome == "released"
    assert short.available("WH-SH", "A") == 5


def test_a_payment_between_the_sweepers_look_and_its_expire_keeps_the_stock(store, make_store, redis_prefix):
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=5)
    short.reserve("o1", [("A", 2)], ["WH-SH"], now_ms=NOW)
    assert short.expired(now_ms=NOW + 61_000) == ["o1"]        # the sweeper looked ...
    short.pay("o1", [("A", 2)], ["WH-SH"], version_ms=1)         # ... the payment came ...
    res = short.expire("o1", now_ms=NOW + 61_000)                # ... then the sweeper acted
    assert res.released is False and res.outcome == "settled"
    assert short.reservation("o1")["state"] == "reserved" and short.available("WH-SH", "A") == 3


def test_paid_while_held_then_reserved_when_the_hold_is_released_never_times_out(client, store, make_store,
                                                                                 redis_prefix):
    short = make_store(redis_prefix, reservation_ttl_s=60)
    short.apply_snapshot("WH-SH", "A", total=5)
    # the payment comes while the order waits for a risk decision: nothing to settle, remembered
    assert short.pay("held", [("A", 1)], ["WH-SH"], version_ms=1, now_ms=NOW).outcome == "absent"
    assert short.reservation("held")["state"] == "paid" and short.available("WH-SH", "A") == 5
    assert short.pay("held", [("A", 1)], ["WH-SH"], version_ms=1, now_ms=NOW).outcome == "absent"   # idempotent
    # the hold is released with the order as it was held (unpaid): reserved as paid all the same
    res = short.reserve("held", [("A", 1)], ["WH-SH"], now_ms=NOW)
    assert res.outcome == "reserved" and short.expired(now_ms=NOW * 10) == []
    assert client.ttl(short.keys.order("held")) == -1
    assert short.release_expired(now_ms=NOW + 120_000) == [] and short.available("WH-SH", "A") == 4
    # and a paid-while-held order cancelled before its release never reserves
    short.pay("other", [("A", 1)], ["WH-SH"], version_ms=1)
    assert short.release("other", "order cancelled").outcome == "tombstoned"
    assert short.reserve("other", [("A", 1)], ["WH-SH"]).outcome == "released"
    assert short.available("WH-SH", "A") == 4


def test_unknown_mode_is_a_value_error(store):
    with pytest.raises(ValueError, match="mode"):
        store.reserve_many([ReserveRequest("o1", [("A", 1)], ["WH-SH"], mode="teleport")])
