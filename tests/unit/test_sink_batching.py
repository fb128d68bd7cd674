"""Batcher: size-or-time flushing and the offset ranges that name a batch (pure, no ClickHouse)."""
import pytest

from pipeline.clickhouse.batching import Batcher, OffsetRange


def test_due_by_size():
    b = Batcher("t", max_rows=3, max_seconds=10)
    for off in range(2):
        b.add({"o": off}, "topic", 0, off, now=0.0)
    assert not b.due(0.0)
    b.add({"o": 2}, "topic", 0, 2, now=0.0)
    assert b.due(0.0)


def test_due_by_age_of_oldest_row():
    b = Batcher("t", max_rows=100, max_seconds=1.0)
    assert not b.due(100.0)  # empty is never due
    b.add({}, "topic", 0, 0, now=5.0)
    b.add({}, "topic", 0, 1, now=5.9)
    assert not b.due(5.99)
    assert b.due(6.0)


def test_take_reports_ranges_and_resets():
    b = Batcher("t", max_rows=100, max_seconds=1.0)
    for p, off in [(0, 10), (1, 3), (0, 11), (1, 7), (0, 15)]:
        b.add({"p": p, "o": off}, "topic", p, off, now=0.0)
    batch = b.take()
    assert [r["o"] for r in batch.rows] == [10, 3, 11, 7, 15]
    assert sorted(batch.ranges, key=lambda r: r.partition) == [OffsetRange("topic", 0, 10, 15),
                                                               OffsetRange("topic", 1, 3, 7)]
    assert len(b) == 0 and not b.due(1e9)
    assert b.take().rows == []


def test_token_names_the_ranges():
    def batch(offsets, table="t"):
        b = Batcher(table)
        for off in offsets:
            b.add({}, "a.topic", 0, off, now=0.0)
        return b.take()
    assert batch([1, 2, 3]).token == batch([1, 2, 3]).token  # a retry carries the same token
    assert batch([1, 2, 3]).token != batch([1, 2, 4]).token
    assert batch([1, 2, 3]).token != batch([1, 2, 3], table="u").token
    assert batch([4, 5]).token.startswith("t|")


def test_token_is_plain_text_even_for_odd_topic_names():
    b = Batcher("order_events")
    b.add({}, "we'ird topic;--", 2, 9, now=0.0)
    token = b.take().token
    assert "'" not in token and ";" not in token and "2:9-9" in token


def test_offsets_must_increase_per_partition():
    b = Batcher("t")
    b.add({}, "x", 0, 5, now=0.0)
    b.add({}, "x", 1, 1, now=0.0)  # other partition: independent
    with pytest.raises(ValueError):
        b.add({}, "x", 0, 5, now=0.0)
