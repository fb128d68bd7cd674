"""One record type for a Kafka message outside Faust: kafka_io.Record, as read_topics and the sink see it."""
from __future__ import annotations

import confluent_kafka

from pipeline.clickhouse.sink import as_record
from pipeline.kafka_io import Record


def confluent_message(**overrides) -> confluent_kafka.Message:
    fields = dict(topic="t.orders.unique", partition=3, offset=41, key=b"JD-1", value=b"\xc3\x01avro",
                  headers=[("change", b"new"), ("src", b"raw:0:7")], timestamp=(1, 1_700_000_000_123))
    return confluent_kafka.Message(**{**fields, **overrides})


def test_a_confluent_message_becomes_a_record_field_by_field():
    assert Record.from_confluent(confluent_message()) == Record(
        "t.orders.unique", 3, 41, b"JD-1", b"\xc3\x01avro", {"change": b"new", "src": b"raw:0:7"}, 1_700_000_000_123)
    bare = Record.from_confluent(confluent_message(key=None, headers=None))
    assert bare.key is None and bare.headers == {}


def test_the_sink_takes_records_as_they_are_and_converts_confluent_messages():
    record = Record("t.risk.events", 0, 9, None, b"{}", {}, 5)
    assert as_record(record) is record
    assert as_record(confluent_message()) == Record.from_confluent(confluent_message())
