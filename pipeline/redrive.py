"""Re-drive dead letters onto their source raw topics after a fix (operators: `orderstream dlq replay`),
and parked refund instructions back to the refund agent (`orderstream refunds redrive`).

A run continues where the last one stopped (the group `<ns>orderstream-dlq-replay`'s committed
position); letters skipped by `reason` stay in the topic and can be re-driven later with
`from_beginning`. Each dead letter is re-driven once, by this command or the console, whichever
asks first: both claim it in one shared ledger (pipeline.redrive_ledger) before publishing, and
the second is told who re-drove it and when. `redrive_record` and `LetterRedriver` decide for one
dead letter, without Kafka; `redrive_dead_letters` is the loop over the topic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from . import kafka_io
from .codecs import dead_letter_codec
from .config import Settings
from .contracts import FailedRefundInstruction, RefundAction
from .redrive_ledger import Redrive, RedriveLedger, redis_ledger
from .topics import TopicNames


@dataclass(frozen=True)
class RedriveReport:
    redriven: int
    skipped: int
    dry_run: bool
    already: tuple[str, ...] = ()   # letters somebody re-drove before (console or CLI): who, how, when
    failed: tuple[str, ...] = ()    # letters whose message the broker did not take (their claims released)

    def __str__(self) -> str:
        line = f"re-driven: {self.redriven}, skipped: {self.skipped}"
        if self.already:
            line += f", already re-driven: {len(self.already)}"
        if self.failed:
            line += f", failed: {len(self.failed)}"
        lines = [line + (" (dry run)" if self.dry_run else "")]
        lines += [f"  {why}; not sent again" for why in self.already]
        lines += [f"  {why}" for why in self.failed]
        return "\n".join(lines)


def redrive_record(letter: dict, reason: str, origin: str) -> tuple[str, bytes, bytes, list] | None:
    """(topic, key, value, headers) that re-drives `letter` (decoded DeadLetter) from `origin`
    (its dlq topic:partition:offset), or None when the `reason` filter skips it."""
    if reason and letter["reason_code"] != reason:
        return None
    return letter["source_topic"], letter["key"], letter["payload"], [("redriven_from", origin.encode())]


class LetterRedriver:
    """The CLI's decision per dead letter, without Kafka: filtered out, already re-driven (the shared
    ledger says by whom), or claimed by this run's operator and sent; `delivered` settles a claim
    once the broker answered. Counts what it did for the report."""

    def __init__(self, ledger: RedriveLedger, operator: str, reason: str = "", dry_run: bool = False,
                 clock=time.time) -> None:
        if not dry_run and not operator.strip():
            raise ValueError("a re-drive names its operator (--operator)")
        self.ledger, self.operator, self.reason, self.dry_run, self.clock = ledger, operator.strip(), reason, dry_run, clock
        self.redriven = self.skipped = 0
        self.already: list[str] = []
        self.failed: list[str] = []

    def offer(self, letter: dict, origin: str) -> tuple[tuple[str, bytes, bytes, list], Redrive | None] | None:
        """The record to produce and the claim it settles (None claim on a dry run), or None: nothing to send."""
        record = redrive_record(letter, self.reason, origin)
        if record is None:
            self.skipped += 1
            return None
        if self.dry_run:
            prior = self.ledger.find(origin)
            if prior is not None:
                self.already.append(prior.describe())
            else:
                self.redriven += 1
            return None
        claim = self.ledger.claim(origin, self.operator, "cli", int(self.clock() * 1000))
        if not claim.won:
            self.already.append(claim.record.describe())
            return None
        topic, key, value, headers = record
        return (topic, key, value, [*headers, ("redriven_by", self.operator.encode())]), claim.record

    def delivered(self, claim: Redrive, error) -> None:
        if error is None:
            self.ledger.confirm(claim)
            self.redriven += 1
        else:  # not sent: the letter may be asked again, from here or the console
            self.ledger.release(claim)
            self.failed.append(f"{claim.letter_id} not sent ({error}); its claim was released")

    def report(self) -> RedriveReport:
        return RedriveReport(self.redriven, self.skipped, self.dry_run, tuple(self.already), tuple(self.failed))


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


def redrive_dead_letters(s: Settings, names: TopicNames, operator: str = "", reason: str = "",
                         from_beginning: bool = False, dry_run: bool = False, timeout_s: float = 120.0,
                         ledger: RedriveLedger | None = None) -> RedriveReport:
    """Read the dead-letter topic from the saved position to its current end and re-drive every
    letter `reason` selects (all when empty) that nobody re-drove before (the ledger shared with
    the console, pipeline.redrive_ledger); with dry_run, count only and keep the position."""
    redriver = LetterRedriver(ledger or redis_ledger(s), operator, reason, dry_run)
    codec = dead_letter_codec()
    # manual assignment with the group's committed offsets: no group join to wait for; the saved
    # position spares reading letters again, the ledger is what makes each re-drive once
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
    try:
        deadline = time.monotonic() + timeout_s
        while behind(consumer, names.DLQ, position, ends) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() or msg.offset() >= ends[msg.partition()]:
                    continue
                position[msg.partition()] = msg.offset() + 1
                offer = redriver.offer(codec.decode(msg.value()), f"{msg.topic()}:{msg.partition()}:{msg.offset()}")
                if offer is None:
                    continue
                (topic, key, value, headers), claim = offer
                producer.produce(topic, key=key, value=value, headers=headers,
                                 on_delivery=lambda err, _msg, claim=claim: redriver.delivered(claim, err))
                producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("re-driven messages still unacknowledged after 60 s; their claims stay 'claimed'")
        # a failed letter keeps the position short of it: the next run reads it again
        if not dry_run and not redriver.failed:
            consumer.commit(offsets=[TopicPartition(names.DLQ, p, position[p]) for p in parts], asynchronous=False)
    finally:
        consumer.close()
    return redriver.report()


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
