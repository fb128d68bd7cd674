"""Refund facts in ClickHouse (embedded chDB): the sink lands refunds.events once per fact, and the
tiers show the refunds in flight, the operators' queue and the parked instructions, as of `now`."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import execution, tactical
from pipeline.contracts import RefundEvent
from pipeline.kafka_io import Record
from pipeline.topics import TopicNames

NOW = datetime(2026, 1, 2, 15, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
MIN = 60_000
NAMES = TopicNames("rv.")


def ev(event: str, refund_id: str, status: str, at_ms: int, cause: str, platform: str = "JD", **kw) -> RefundEvent:
    return RefundEvent(event=event, refund_id=refund_id, order_id=f"O-{refund_id}", platform=platform, status=status,
                       at_ms=at_ms, amount_minor=kw.pop("amount_minor", 10_000), currency="CNY", cause=cause, **kw)


def story() -> list[RefundEvent]:
    t = NOW_MS - 60 * MIN
    return [
        # refunded: the steps of one message share their time and cause
        ev("requested", "A", "requested", t, "r:0:1"), ev("approved", "A", "awaiting_return", t, "r:0:1"),
        ev("returned_to_stock", "A", "returned_to_stock", t + MIN, "a:0:1", warehouse="WH-SH", units=2),
        ev("refunding", "A", "refunding", t + MIN, "a:0:1"), ev("refunded", "A", "refunded", t + MIN, "a:0:1"),
        # waiting for an operator, and an action ignored meanwhile
        ev("requested", "B", "requested", t + 2 * MIN, "r:1:1"),
        ev("reviewing", "B", "reviewing", t + 2 * MIN, "r:1:1", reason="seven_day_no_reason_small: custom item X"),
        ev("ignored", "B", "reviewing", t + 3 * MIN, "a:1:2", reason="cannot receive a refund that is reviewing"),
        # parked: the key was rotated (its failure in the same message as refunding)
        ev("requested", "C", "requested", t, "r:2:1"), ev("approved", "C", "awaiting_return", t, "r:2:1"),
        ev("returned_to_stock", "C", "returned_to_stock", t + 5 * MIN, "a:2:1", units=1),
        ev("refunding", "C", "refunding", t + 5 * MIN, "a:2:1"),
        ev("instruction_failed", "C", "refunding", t + 5 * MIN, "a:2:1", error="Invalid API Key"),
        # parked, then re-driven and paid: not parked any more
        ev("requested", "D", "requested", t, "r:3:1"), ev("approved", "D", "refunding", t, "r:3:1"),
        ev("instruction_failed", "D", "refunding", t, "r:3:1", error="Invalid API Key"),
        ev("refunding", "D", "refunding", t + 9 * MIN, "a:3:9"), ev("refunded", "D", "refunded", t + 9 * MIN, "a:3:9"),
        # rejected (final), and one waiting for its goods on another platform
        ev("requested", "E", "requested", t, "r:0:2"), ev("reviewing", "E", "reviewing", t, "r:0:2"),
        ev("rejected", "E", "rejected", t + MIN, "a:0:3"),
        ev("requested", "F", "requested", t, "r:1:3", platform="TMALL"),
        ev("approved", "F", "awaiting_return", t, "r:1:3", platform="TMALL"),
        # an invalid request (no refund behind it) and a step after `now` that must not count
        RefundEvent(event="invalid", refund_id="JUNK", at_ms=t, reason="not a RefundRequest", cause="r:2:9"),
        ev("approved", "B", "awaiting_return", NOW_MS + 10 * MIN, "a:1:7"),
    ]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("chdb") / "data")
    migrate(b)
    sink = ClickHouseSink(b, NAMES, max_rows=1000, max_seconds=60)
    offsets: dict[int, int] = {}
    for e in story():
        p = sum(e.refund_id.encode()) % 2
        offsets[p] = offsets.get(p, -1) + 1
        sink.add(Record(NAMES.REFUND_EVENTS, p, offsets[p], e.refund_id.encode(), e.encode(), {}, e.at_ms))
    # a re-published copy (a crash before the commit): same fact, new offset
    c = story()[12]
    sink.add(Record(NAMES.REFUND_EVENTS, 0, 99, b"C", c.encode(), {}, c.at_ms))
    sink.flush(force=True)
    yield b
    b.close()


def test_every_refund_fact_lands_once(backend):
    rows = backend.query("SELECT count() AS n, uniqExact(refund_id, event, cause) AS facts FROM refund_events")[0]
    assert int(rows["n"]) == int(rows["facts"]) == len(story())
    [row] = backend.query("SELECT * FROM refund_events WHERE refund_id = 'C' AND event = 'instruction_failed'")
    assert row["error"] == "Invalid API Key" and row["status"] == "refunding" and int(row["amount_minor"]) == 10_000


def test_tactical_shows_refunds_in_flight_and_parked_instructions(backend):
    got = tactical(backend, hours=24, now=NOW)
    refunds = got["refunds"]
    assert refunds["by_state"] == {"requested": 0, "reviewing": 1, "awaiting_return": 1, "returned_to_stock": 0,
                                   "refunding": 1}
    assert refunds["in_flight"] == 3
    assert refunds["parked_instructions"] == [{"platform": "JD", "refunds": 1, "last_error": "Invalid API Key"}]
    assert refunds["refunded_in_window"] == [{"currency": "CNY", "refunds": 2, "amount_minor": 20_000}]
    assert {(r["state"], r["platform"]) for r in refunds["by_state_and_platform"]} == {
        ("reviewing", "JD"), ("awaiting_return", "TMALL"), ("refunding", "JD")}
    assert got["exception_totals"]["refund_instruction_failed"] == 2   # C, and D before its re-drive


def test_execution_lists_the_operators_queue_and_what_waits_for_a_redrive(backend):
    refunds = execution(backend, now=NOW)["refunds"]
    [waiting] = refunds["awaiting_review"]
    assert waiting["refund_id"] == "B" and "custom item X" in waiting["why"]
    assert waiting["age_s"] == pytest.approx(58 * 60)
    [parked] = refunds["parked_instructions"]
    assert (parked["refund_id"], parked["error"]) == ("C", "Invalid API Key")


def test_a_later_now_sees_the_later_approval(backend):
    later = datetime.fromtimestamp((NOW_MS + 20 * MIN) / 1000, tz=timezone.utc)
    refunds = tactical(backend, hours=24, now=later)["refunds"]
    assert refunds["by_state"]["reviewing"] == 0 and refunds["by_state"]["awaiting_return"] == 2
