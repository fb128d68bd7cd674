"""Issue 17 in ClickHouse (embedded chDB): shipment lines, suspect transitions, the order state that
does not follow untrusted updates, and the tiers that show them."""
from __future__ import annotations

import random

import pytest

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import discover, migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import execution, tactical
from pipeline.codecs import order_codec
from pipeline.contracts import InventoryEvent, InventoryLine, SuspectTransition
from pipeline.topics import TopicNames
from tests.unit.test_clickhouse_chdb import NOW, NOW_MS, Feed, canonical_order

MIN = 60_000


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("chdb-fulfilment") / "data")
    assert migrate(b) == [m.version for m in discover()]  # every migration, in order
    yield b
    b.close()


def suspect(order_id: str, rule: str, src: str, dst: str, to_ms: int, detected_ms: int) -> bytes:
    return SuspectTransition(order_id, "SHOPEE", rule, src, dst, to_ms - 90_000, to_ms, 90_000,
                             limit_ms=180_000 if rule == "too_fast" else None,
                             window="packed_to_shipped_3min" if rule == "too_fast" else "", reason=f"{src}->{dst}",
                             rules_version=1, detected_by="order_flow/dedupe", detected_at_ms=detected_ms).encode()


@pytest.fixture(scope="module")
def landed(backend):
    names = TopicNames("ful.")
    feed, codec, rng = Feed(names), order_codec(), random.Random(3)
    t0 = NOW_MS - 3 * 3_600_000

    def order(oid: str, status: str, updated: int, change: str) -> None:
        feed.send(names.UNIQUE, codec.encode(canonical_order(rng, oid, "SHOPEE", t0, status, updated, t0 + 48 * 3_600_000)),
                  updated, oid, {"change": change.encode()})

    # A: paid, shipped (trusted), then a backwards PAID (suspect): its state stays SHIPPED
    order("SP-A", "PAID", t0, "new")
    order("SP-A", "SHIPPED", t0 + 30 * MIN, "update")
    order("SP-A", "PAID", t0 + 60 * MIN, "suspect")
    feed.send(names.SUSPECT, suspect("SP-A", "backwards", "SHIPPED", "PAID", t0 + 60 * MIN, NOW_MS - 20 * MIN),
              NOW_MS - 20 * MIN, "SP-A")
    # the same suspect re-emitted after a crash: one fact
    feed.send(names.SUSPECT, suspect("SP-A", "backwards", "SHIPPED", "PAID", t0 + 60 * MIN, NOW_MS - 19 * MIN),
              NOW_MS - 19 * MIN, "SP-A")
    # B: packed, shipped too fast (suspect), then the shipment again in believable time: resolved
    order("SP-B", "PACKED", t0, "new")
    order("SP-B", "SHIPPED", t0 + 1 * MIN, "suspect")
    feed.send(names.SUSPECT, suspect("SP-B", "too_fast", "PACKED", "SHIPPED", t0 + MIN, NOW_MS - 10 * MIN),
              NOW_MS - 10 * MIN, "SP-B")
    order("SP-B", "SHIPPED", t0 + 10 * MIN, "update")
    # C: paid, then a skip to COMPLETED (suspect, still open); and an old suspect outside the window
    order("SP-C", "PAID", t0, "new")
    order("SP-C", "COMPLETED", t0 + 5 * MIN, "suspect")
    feed.send(names.SUSPECT, suspect("SP-C", "illegal_skip", "PAID", "COMPLETED", t0 + 5 * MIN, NOW_MS - 5 * MIN),
              NOW_MS - 5 * MIN, "SP-C")
    feed.send(names.SUSPECT, suspect("SP-OLD", "backwards", "SHIPPED", "PAID", t0, NOW_MS - 30 * 3_600_000),
              NOW_MS - 30 * 3_600_000, "SP-OLD")
    # shipments: A from two warehouses, B from one; a re-published copy of B's lands once
    for oid, lines, at in (("SP-A", (("A", 2, "WH-SH"), ("B", 1, "WH-GZ")), NOW_MS - 50 * MIN),
                           ("SP-B", (("A", 3, "WH-SH"),), NOW_MS - 40 * MIN),
                           ("SP-B", (("A", 3, "WH-SH"),), NOW_MS - 39 * MIN)):
        feed.send(names.INVENTORY_EVENTS, InventoryEvent(
            "shipped", oid, "SHOPEE", at, lines=tuple(InventoryLine(*line) for line in lines),
            units=sum(q for _, q, _ in lines), reason="order shipped", actor="order_flow").encode(), at, oid)
    sink = ClickHouseSink(backend, names, max_rows=50, max_seconds=60.0)
    sink.resume_positions()
    for m in feed.messages:
        sink.add(m)
    sink.flush(force=True)
    assert sink.buffered_rows() == 0, sink.last_error
    return sink


def test_suspect_transitions_land_once_each(backend, landed):
    rows = backend.query("SELECT order_id, rule, from_status, to_status, elapsed_ms, limit_ms, window_id "
                         "FROM suspect_transitions ORDER BY order_id")
    assert [(r["order_id"], r["rule"]) for r in rows] == [("SP-A", "backwards"), ("SP-B", "too_fast"),
                                                          ("SP-C", "illegal_skip"), ("SP-OLD", "backwards")]
    b = rows[1]
    assert (b["from_status"], b["to_status"], b["elapsed_ms"], b["limit_ms"], b["window_id"]) == (
        "PACKED", "SHIPPED", 90_000, 180_000, "packed_to_shipped_3min")
    assert landed.stats["repeated_fact"] == 2   # the re-emitted suspect and the re-published shipment


def test_the_order_state_ignores_untrusted_updates(backend, landed):
    rows = backend.query("SELECT order_id, argMaxMerge(last_status) AS status FROM order_state "
                         "GROUP BY order_id ORDER BY order_id")
    assert {r["order_id"]: r["status"] for r in rows} == {"SP-A": "SHIPPED", "SP-B": "SHIPPED", "SP-C": "PAID"}
    # the suspect rows themselves are kept, marked
    assert backend.query("SELECT count() AS n FROM order_events WHERE change = 'suspect'")[0]["n"] == 3


def test_shipment_lines_say_what_left_which_warehouse(backend, landed):
    rows = backend.query("SELECT order_id, warehouse, sku, quantity FROM shipment_lines ORDER BY order_id, warehouse")
    assert [(r["order_id"], r["warehouse"], r["sku"], r["quantity"]) for r in rows] == [
        ("SP-A", "WH-GZ", "B", 1), ("SP-A", "WH-SH", "A", 2), ("SP-B", "WH-SH", "A", 3)]


def test_tactical_shows_outbound_units_and_suspects_as_exceptions(backend, landed):
    got = tactical(backend, hours=24, now=NOW)
    wh = {r["warehouse"]: r for r in got["warehouses"]}
    assert {k: (r["outbound_orders"], r["outbound_units"]) for k, r in wh.items()} == {
        "WH-SH": (2, 5), "WH-GZ": (1, 1)}
    assert got["exception_totals"]["suspect_transition"] == 3   # the one 30 h ago is outside the window


def test_execution_lists_the_open_suspects(backend, landed):
    got = execution(backend, NOW)["suspect_transitions"]
    assert got["total"] == 3 and got["by_rule"] == {"backwards": 1, "illegal_skip": 1, "too_fast": 1}
    # B's shipment came again in believable time: no longer open
    assert [(r["order_id"], r["rule"], r["trusted_status"]) for r in got["open"]] == [
        ("SP-C", "illegal_skip", "PAID"), ("SP-A", "backwards", "SHIPPED")]
    a = got["open"][1]
    assert (a["from_status"], a["to_status"], a["elapsed_s"], a["limit_s"]) == ("SHIPPED", "PAID", 90.0, None)
