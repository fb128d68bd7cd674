"""The daily consistency check's comparison (pure) and its ClickHouse reads (embedded chDB)."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from pipeline.consistency import CheckError, _ids, backend_query, day_window, read_sink
from pipeline.contracts import InventoryEvent, InventoryLine
from pipeline.domain.consistency import TARGET_RATIO, Inputs, compare, latest_views
from pipeline.domain.stock_ledger import fold

T = 1_780_000_000_000
MIN = 60_000


def order(oid: str, status: str, at: int, platform: str = "JD") -> dict:
    return {"order_id": oid, "platform": platform, "status": status,
            "updated_at": datetime.fromtimestamp(at / 1000, timezone.utc)}


def inv(kind: str, oid: str, qty: int = 2, wh: str = "WH-SH") -> dict:
    return InventoryEvent(kind, oid, "JD", T, lines=(InventoryLine("A", qty, wh),), units=qty).as_dict()


def test_latest_view_is_the_newest_version_by_the_dedupe_rule():
    views = latest_views([order("o1", "SHIPPED", T + 2 * MIN), order("o1", "PAID", T), order("o1", "DELIVERED", T + 2 * MIN),
                          order("o2", "PAID", T)])
    assert (views["o1"].status, views["o1"].messages) == ("DELIVERED", 3)   # same time: further status wins
    assert views["o2"].status == "PAID"


def consistent_inputs() -> Inputs:
    views = latest_views([order("paid", "PAID", T), order("shipped", "SHIPPED", T), order("gone", "CANCELLED", T),
                          order("oos", "PAID", T, "TMALL")])
    events = [inv("reserved", "paid"), inv("reserved", "shipped"), inv("shipped", "shipped"),
              inv("reserved", "gone"), inv("released", "gone"),
              InventoryEvent("out_of_stock", "oos", "TMALL", T, reason="A short 1").as_dict()]
    records = {"paid": {"state": "reserved", "allocations": [["WH-SH", "A", 2]]},
               "shipped": {"state": "shipped", "allocations": [["WH-SH", "A", 2]]},
               "gone": {"state": "released"}, "oos": None}
    return Inputs(views=views, sink_status={"paid": "PAID", "shipped": "SHIPPED", "gone": "CANCELLED", "oos": "PAID"},
                  ledgers=fold(events), records=records)


def test_everything_agreeing_is_100_percent():
    report = compare(consistent_inputs())
    assert report["total"] == {"orders": 4, "consistent": 4, "ratio": 1.0, "ratio_pct": 100.0, "meets_target": True,
                               "dead_letters": 0, "differences": {}}
    assert set(report["platforms"]) == {"JD", "TMALL"} and report["differences"] == []


def test_each_kind_of_difference_is_found_and_explained():
    inputs = consistent_inputs()
    inputs.views.update(latest_views([order("lost", "PAID", T), order("sus", "PAID", T + 5 * MIN),
                                      order("late", "DELIVERED", T)]))
    inputs.sink_status.update({"sus": "SHIPPED", "late": "PAID"})
    inputs.suspects = {"sus": {("PAID", "backwards")}}
    inputs.ledgers.update(fold([inv("reserved", "sus"), inv("shipped", "sus"), inv("reserved", "late")]))
    inputs.records.update({"sus": {"state": "shipped", "allocations": [["WH-SH", "A", 2]]},
                           "late": {"state": "reserved", "allocations": [["WH-SH", "A", 2]]}})
    inputs.records["paid"] = {"state": "reserved", "allocations": [["WH-GZ", "A", 2]]}   # Redis disagrees
    inputs.extras = {"ghost": "JD"}
    inputs.dead_letters = [("JD", "raw.jd:0:7"), ("JD", "raw.jd:0:8")]
    inputs.dead_letters_landed = {"raw.jd:0:7"}
    report = compare(inputs)
    by_order = {(d.get("order_id", ""), d["kind"]): d for d in report["differences"]}
    assert by_order[("lost", "missing_in_sink")]["platform_status"] == "PAID"
    assert by_order[("sus", "state_differs")]["cause"].startswith("suspect_transition: backwards")
    assert by_order[("late", "state_differs")]["cause"] == "update not applied"
    assert by_order[("paid", "redis_differs_from_events")]["redis_state"] == "reserved"
    assert ("ghost", "extra_in_sink") in by_order
    assert [d for d in report["differences"] if d["kind"] == "dead_letter_missing"][0]["cause"].startswith(
        "raw message raw.jd:0:8")
    jd = report["platforms"]["JD"]
    # paid, lost, sus, late, ghost are inconsistent; shipped, gone consistent
    assert (jd["orders"], jd["consistent"]) == (7, 2) and not jd["meets_target"]
    assert jd["differences"] == {"missing_in_sink": 1, "state_differs": 2, "redis_differs_from_events": 1,
                                 "extra_in_sink": 1, "dead_letter_missing": 1}
    assert report["platforms"]["TMALL"]["meets_target"]


def test_a_shipped_order_still_holding_its_reservation_is_a_stock_difference():
    inputs = Inputs(views=latest_views([order("o", "SHIPPED", T)]), sink_status={"o": "SHIPPED"},
                    ledgers=fold([inv("reserved", "o")]), records={"o": {"state": "reserved",
                                                                          "allocations": [["WH-SH", "A", 2]]}})
    [diff] = compare(inputs)["differences"]
    assert diff["kind"] == "stock_differs_from_state" and diff["events_say"] == "reserved"


def test_the_target_is_the_seeds_99_997_percent():
    assert TARGET_RATIO == 0.99997
    views = latest_views([order(f"o{i}", "PAID", T) for i in range(40_000)])
    inputs = Inputs(views=views, sink_status={oid: "PAID" for oid in views})
    inputs.sink_status["o1"] = "CANCELLED"
    assert compare(inputs)["total"]["meets_target"]          # 1 in 40,000 = 99.9975 %
    inputs.sink_status["o2"] = "CANCELLED"
    assert not compare(inputs)["total"]["meets_target"]      # 2 in 40,000 = 99.995 %


def test_the_business_day_is_china_time_by_default():
    start, end = day_window(date(2026, 11, 11))
    assert datetime.fromtimestamp(start / 1000, timezone.utc) == datetime(2026, 11, 10, 16, tzinfo=timezone.utc)
    assert end - start == 86_400_000
    assert day_window(date(2026, 11, 11), 0)[0] == start + 8 * 3_600_000


def test_ids_that_could_break_out_of_sql_are_refused():
    assert _ids(["JD-00ab", "TM-ff"]) == "'JD-00ab', 'TM-ff'"
    with pytest.raises(CheckError):
        _ids(["x'); DROP TABLE order_events; --"])


def test_read_sink_reads_states_suspects_and_events_through_readonly_sql(tmp_path):
    from pipeline.clickhouse.backends import ChdbBackend
    from pipeline.clickhouse.migrate import migrate
    from pipeline.clickhouse.sink import ClickHouseSink
    from pipeline.codecs import order_codec
    from pipeline.contracts import SuspectTransition
    from pipeline.topics import TopicNames
    from tests.unit.test_clickhouse_chdb import Feed, canonical_order
    import random

    backend = ChdbBackend(tmp_path / "chdb")
    try:
        migrate(backend)
        names, rng = TopicNames("cc."), random.Random(1)
        feed, codec = Feed(names), order_codec()
        for i in range(1205):  # more than one chunk of ids
            oid = f"JD-{i:06d}"
            feed.send(names.UNIQUE, codec.encode(canonical_order(rng, oid, "JD", T, "PAID", T, None)), T, oid,
                      {"change": b"new"})
        feed.send(names.UNIQUE, codec.encode(canonical_order(rng, "JD-000001", "JD", T, "SHIPPED", T + MIN, None)),
                  T, "JD-000001", {"change": b"update"})
        feed.send(names.UNIQUE, codec.encode(canonical_order(rng, "JD-000002", "JD", T, "PENDING_PAYMENT", T + MIN,
                                                             None)), T, "JD-000002", {"change": b"suspect"})
        feed.send(names.SUSPECT, SuspectTransition("JD-000002", "JD", "backwards", "PAID", "PENDING_PAYMENT", T,
                                                   T + MIN, MIN).encode(), T, "JD-000002")
        feed.send(names.INVENTORY_EVENTS, InventoryEvent("shipped", "JD-000001", "JD", T, warehouse="WH-SH",
                                                         lines=(InventoryLine("A", 2, None),), units=2).encode(),
                  T, "JD-000001")
        sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
        for m in feed.messages:
            sink.add(m)
        sink.flush(force=True)
        ids = [f"JD-{i:06d}" for i in range(1205)]
        got = read_sink(backend_query(backend), ids, (T - 1000, T + 1000))
        assert len(got["status"]) == 1205 and got["status"]["JD-000001"] == "SHIPPED"
        assert got["status"]["JD-000002"] == "PAID"       # the suspect update is not the state
        assert got["suspects"] == {"JD-000002": {("PENDING_PAYMENT", "backwards")}}
        assert got["events"] == [{"order_id": "JD-000001", "event": "shipped", "warehouse": "WH-SH", "reason": "",
                                  "lines": [{"sku": "A", "quantity": 2, "warehouse": "WH-SH"}]}]
        # ingest_time is the order's updated_at + 5 ms here: every order was first seen in the window
        assert len(got["first_seen"]) == 1205
    finally:
        backend.close()
