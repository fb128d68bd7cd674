"""Kafka message -> fact row mapping (pure, with the pipeline's real codecs)."""
import base64
import random
from datetime import datetime, timezone

import pytest

from pipeline.clickhouse.rows import (RowError, ch_time, dead_letter_row, inventory_row, order_row,
                                      risk_row, table_specs)
from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.contracts import (BreakerTransition, ChannelEvent, InventoryEvent, InventoryLine, RiskEvent,
                                SuspectTransition)
from pipeline.kafka_io import Record
from pipeline.topics import TopicNames
from tests.unit.test_clickhouse_chdb import canonical_order

T = 1_773_144_450_123


def msg(value, topic="orders.unique", headers=None, offset=7):
    return Record(topic, 2, offset, b"k", value, headers or {}, T)


def test_ch_time_keeps_milliseconds():
    assert ch_time(T) == "1773144450.123"
    assert ch_time(5) == "0.005"
    assert ch_time(datetime.fromtimestamp(T / 1000, timezone.utc)) == "1773144450.123"
    assert ch_time(None) is None


def test_order_row_maps_the_canonical_order():
    o = canonical_order(random.Random(3), "JD-000001", "JD", T, "PAID", T + 1000, T + 86_400_000)
    row = order_row(msg(order_codec().encode(o), headers={"change": b"update"}))
    assert row["order_id"] == "JD-000001" and row["platform"] == "JD" and row["change"] == "update"
    assert row["total_minor"] == o["amounts"]["total_minor"]
    assert row["units"] == sum(line["quantity"] for line in o["lines"])
    assert row["created_at"] == ch_time(T) and row["updated_at"] == ch_time(T + 1000)
    assert row["ship_by"] == ch_time(T + 86_400_000)
    assert (row["src_topic"], row["src_partition"], row["src_offset"]) == ("orders.unique", 2, 7)
    assert set(row) == set(table_specs(TopicNames())["orders.unique"].columns)


def test_every_row_has_exactly_its_table_columns():
    names = TopicNames()
    samples = {
        names.RISK_EVENTS: RiskEvent("held", "o", "JD", T, approvers=("a",)).encode(),
        names.INVENTORY_EVENTS: InventoryEvent("reserved", "o", "JD", T).encode(),
        names.CHANNEL_CONTROL: ChannelEvent("pause", "s", "JD", 3, 10, T).encode(),
        names.BREAKER_EVENTS: BreakerTransition("closed", "open", 612.5, T, "w").encode(),
        names.SUSPECT: SuspectTransition("o", "JD", "backwards", "SHIPPED", "PAID", T - 5, T, 5).encode(),
    }
    for topic, value in samples.items():
        spec = table_specs(names)[topic]
        assert set(spec.to_row(msg(value, topic))) == set(spec.columns), topic


def test_inventory_lines_fall_back_to_event_warehouse():
    row = inventory_row(msg(InventoryEvent(
        "reserved", "o", "JD", T, warehouse="WH-1", lines=(InventoryLine("a", 2, None), InventoryLine("b", 1, "WH-2")),
        units=3, reason="", latency_ms=12.5).encode(), "inventory.events"))
    assert row["line_warehouses"] == ["WH-1", "WH-2"] and row["line_quantities"] == [2, 1]
    assert row["latency_ms"] == 12.5 and row["warehouse"] == "WH-1"


def test_dead_letter_payload_is_opaque_base64():
    payload = b"'); DROP TABLE x; --\x00\xff"
    row = dead_letter_row(msg(dead_letter_codec().encode({
        "source_topic": "orders.raw.jd", "partition": 1, "offset": 5, "platform": "JD",
        "reason_code": "malformed_json", "reason": "bad", "key": None, "payload": payload, "failed_at": T}), "orders.dlq"))
    assert base64.b64decode(row["payload_b64"]) == payload and row["key_b64"] is None
    assert row["payload_bytes"] == len(payload)


@pytest.mark.parametrize("fn,value", [
    (order_row, b"not avro at all"),
    (order_row, b"\xc3\x01" + b"\x00" * 8 + b"body"),
    (risk_row, b"{broken"),
    (risk_row, b'{"event": "held", "order_id": "o", "at_ms": 1}'),        # JSON is not the contract
    (risk_row, InventoryEvent("reserved", "o", "JD", T).encode()[:-2]),    # truncated
    (inventory_row, RiskEvent("held", "o", "JD", T).encode()),             # another event's schema
    (inventory_row, None),                                                 # a tombstone
    (dead_letter_row, b"plain"),
])
def test_undecodable_input_raises_row_error(fn, value):
    with pytest.raises(RowError):
        fn(msg(value))


def test_suspect_row_keeps_the_rule_and_both_platform_times():
    names = TopicNames()
    e = SuspectTransition("o", "SHOPEE", "too_fast", "PACKED", "SHIPPED", T - 90_000, T, 90_000, limit_ms=180_000,
                          window="packed_to_shipped_3min", reason="r", rules_version=2, detected_by="order_flow/dedupe",
                          detected_at_ms=T + 7)
    row = table_specs(names)[names.SUSPECT].to_row(msg(e.encode(), names.SUSPECT))
    assert (row["rule"], row["from_at"], row["to_at"], row["detected_at"]) == (
        "too_fast", ch_time(T - 90_000), ch_time(T), ch_time(T + 7))
    assert (row["limit_ms"], row["window_id"], row["rules_version"]) == (180_000, "packed_to_shipped_3min", 2)
    # a writer that did not stamp its check time: the broker's time stands in (never the epoch)
    unstamped = SuspectTransition("o", "JD", "backwards", "SHIPPED", "PAID", T - 5, T, 5)
    assert table_specs(names)[names.SUSPECT].to_row(msg(unstamped.encode(), names.SUSPECT))["detected_at"] == ch_time(T)
