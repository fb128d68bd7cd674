"""Re-drive dead letters onto their source raw topics after a fix (operators: `orderstream dlq replay`),
and parked refund instructions back to the refund agent (`orderstream refunds redrive`).

A run continues where the last one stopped (the group `<ns>orderstream-dlq-replay`'s committed
position), so nothing is re-driven twice by accident; letters skipped by `reason` stay in the
topic and can be re-driven later with `from_beginning`. `redrive_record` decides for one dead
letter, without Kafka; `redrive_dead_letters` is the loop over the topic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from . import kafka_io
from .codecs import dead_letter_codec
from .config import Settings
from .contracts import FailedRefundInstruction, RefundAction
from .topics import TopicNames


@dataclass(frozen=True)
class RedriveReport:
    redriven: int
    skipped: int
    dry_run: bool

    def __str__(self) -> str:
        return f"re-driven: {self.redriven}, skipped: {self.skipped}{' (dry run)' if self.dry_run else ''}"


def redrive_record(letter: dict, reason: str, origin: str) -> tuple[str, bytes, bytes, list] | None:
    """(topic, key, value, headers) that re-drives `letter` (decoded DeadLetter) from `origin`
    (its dlq topic:partition:offset), or None when the `reason` filter skips it."""
    if reason and letter["reason_code"] != reason:
        return None
    return letter["source_topic"], letter["key"], letter["payload"], [("redriven_from", origin.encode())]


def behind(consumer, topic: str, position: dict[int, int], ends: dict[int, int]) -> bool:
    """Whether a partition is still short of the end it had when the run started. The last
    message read says so, unless the partition ends in transaction commit markers (the worker
    writes in transactions), which no message reaches: then the consumer's own position, which
    moves past them, does."""
    short = [p for p in ends if position[p] < ends[p]]
    if not short:
        return False
    now = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in short])}
    return any(now.get(p, -1) < ends[p] for p in short)


def redrive_dead_letters(s: Settings, names: TopicNames, reason: str = "", from_beginning: bool = False,
                         dry_run: bool = False, timeout_s: float = 120.0) -> RedriveReport:
    """Read the dead-letter topic from the saved position to its current end and re-drive every
    letter `reason` selects (all when empty); with dry_run, count only and keep the position."""
    codec = dead_letter_codec()
    # manual assignment with the group's committed offsets: no group join to wait for, and each
    # dead letter is re-driven once (the offsets are committed after the producer flushed)
    consumer = kafka_io.consumer(s, group=f"{names.ns}orderstream-dlq-replay")
    parts = consumer.list_topics(names.DLQ, timeout=10).topics[names.DLQ].partitions
    committed = consumer.committed([TopicPartition(names.DLQ, p) for p in parts], timeout=10)
    if from_beginning:
        committed = [TopicPartition(tp.topic, tp.partition, -1) for tp in committed]
    start = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
             for tp in committed]
    ends = {p: consumer.get_watermark_offsets(TopicPartition(names.DLQ, p), timeout=10)[1] for p in parts}
    consumer.assign(start)
    position = {tp.partition: max(tp.offset, 0) for tp in committed}
    producer = kafka_io.producer(s)
    redriven = skipped = 0
    try:
        deadline = time.monotonic() + timeout_s
        while behind(consumer, names.DLQ, position, ends) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() or msg.offset() >= ends[msg.partition()]:
                    continue
                position[msg.partition()] = msg.offset() + 1
                record = redrive_record(codec.decode(msg.value()), reason,
                                        f"{msg.topic()}:{msg.partition()}:{msg.offset()}")
                if record is None:
                    skipped += 1
                    continue
                if not dry_run:
                    topic, key, value, headers = record
                    producer.produce(topic, key=key, value=value, headers=headers)
                redriven += 1
        producer.flush(60)
        if not dry_run:
            consumer.commit(offsets=[TopicPartition(names.DLQ, p, position[p]) for p in parts], asynchronous=False)
    finally:
        consumer.close()
    return RedriveReport(redriven, skipped, dry_run)


# --------------------------------------------------------------------------- refund instructions


def retry_action(failure: FailedRefundInstruction, operator: str, origin: str, at_ms: int) -> RefundAction:
    """The action that asks the refund agent to send a parked instruction again, naming who asked."""
    return RefundAction(refund_id=failure.refund_id, action="retry_instruction", operator=operator, at_ms=at_ms,
                        reason=f"re-drive of {origin}: {failure.error}"[:500])


def redrive_failed_refunds(s: Settings, names: TopicNames, operator: str, platform: str = "",
                           from_beginning: bool = False, dry_run: bool = False,
                           timeout_s: float = 120.0) -> RedriveReport:
    """Read refunds.instructions.failed from the saved position to its current end and ask the
    refund agent to send each parked instruction again (once per refund per run: a refund that
    failed twice is parked twice). The agent sends only what is still failed, and the platform's
    API is idempotent by refund id, so each refund is paid exactly once. `platform` selects one
    platform's failures (the others stay for a later run or --from-beginning)."""
    if not operator.strip():
        raise ValueError("a re-drive names its operator")
    topic = names.REFUND_FAILED
    consumer = kafka_io.consumer(s, group=f"{names.ns}orderstream-refund-redrive")
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    if from_beginning:
        committed = [TopicPartition(tp.topic, tp.partition, -1) for tp in committed]
    start = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
             for tp in committed]
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign(start)
    position = {tp.partition: max(tp.offset, 0) for tp in committed}
    producer = kafka_io.producer(s)
    asked: set[str] = set()
    skipped = 0
    try:
        deadline = time.monotonic() + timeout_s
        while behind(consumer, topic, position, ends) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() or msg.offset() >= ends[msg.partition()]:
                    continue
                position[msg.partition()] = msg.offset() + 1
                failure = FailedRefundInstruction.decode(msg.value())
                if (platform and failure.platform != platform) or failure.refund_id in asked:
                    skipped += 1
                    continue
                asked.add(failure.refund_id)
                if not dry_run:
                    action = retry_action(failure, operator.strip(), f"{msg.topic()}:{msg.partition()}:{msg.offset()}",
                                          int(time.time() * 1000))
                    producer.produce(names.REFUND_ACTIONS, key=failure.refund_id.encode(), value=action.encode())
        producer.flush(60)
        if not dry_run:
            consumer.commit(offsets=[TopicPartition(topic, p, position[p]) for p in parts], asynchronous=False)
    finally:
        consumer.close()
    return RedriveReport(len(asked), skipped, dry_run)
