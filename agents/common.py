"""What every stage shares: the order in flight through a batch, headers, clocks and counters."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import metrics
from pipeline.faust_internals.fenced_tables import work_generation
from pipeline.outputs import TransactionalOutputs, TransactionFailed
from pipeline.topics import NAMESPACE, RuleSetText

log = logging.getLogger(__name__)
STOP_GRACE_S = 30.0


@dataclass
class InFlight:
    """One raw message on its way through the hot path's stages, with what each stage decided."""
    event: Any                         # the Faust event (acked by take_events after the batch)
    platform: str
    headers: list[tuple[str, bytes]]   # provenance: src (topic:partition:offset), raw_ts
    order: dict | None = None          # canonical order once normalized
    change: str = ""                   # dedupe: new | update | suspect (duplicates leave the batch)
    suspect: Any = None                # dedupe: why a suspect update is not trusted (SuspectHit)
    verdict: Any = None                # risk verdict (new orders only)
    light: bool = False                # checked without the expensive rules / verifiers
    encoded: bytes = b""               # the Avro order as it leaves the risk stage

    @property
    def order_id(self) -> str:
        return self.order["order_id"]

    @property
    def key(self) -> bytes:
        return self.order["order_id"].encode()


def provenance_headers(msg) -> list[tuple[str, bytes]]:
    """Where an order came from and when it reached the broker: reconciliation and e2e latency use both."""
    return [("src", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
            ("raw_ts", str(int(msg.timestamp * 1000)).encode())]


def headers_of(msg) -> dict[str, bytes]:
    """Faust gives headers as a list of pairs or a dict depending on the path; normalise."""
    raw = msg.headers or {}
    return dict(raw.items() if isinstance(raw, dict) else raw)


def with_header(headers: dict[str, bytes] | list, **extra: str | bytes) -> list[tuple[str, bytes]]:
    out = {**dict(headers), **{k: v if isinstance(v, bytes) else v.encode() for k, v in extra.items()}}
    return list(out.items())


def ms_since_raw(headers: dict[str, bytes]) -> float | None:
    """Milliseconds since the raw message reached the broker (its `raw_ts` header)."""
    raw_ts = headers.get("raw_ts")
    if not raw_ts:
        return None
    return time.time() * 1000 - int(raw_ts)


def now_ms() -> int:
    return int(time.time() * 1000)


def forget_older_than(stamps: dict[str, int], now: int, age_ms: int) -> None:
    """Drop entries stamped `age_ms` or longer ago: the timers' "already requested" guards stay
    bounded over millions of orders instead of growing for the worker's lifetime."""
    for key, at in list(stamps.items()):
        if now - at >= age_ms:
            del stamps[key]


class StageCounts:
    """A batch's in/out counts per (platform, outcome), added to the metrics once per batch."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.ins: Counter = Counter()
        self.outs: Counter = Counter()
        self.others: Counter = Counter()

    def came_in(self, platform: str) -> None:
        self.ins[platform] += 1

    def went_out(self, platform: str, outcome: str) -> None:
        self.outs[(platform, outcome)] += 1

    def count(self, metric, **labels: str) -> None:
        """One more of any labelled counter, added with the batch's other counts."""
        self.others[(metric, tuple(labels.items()))] += 1

    def publish(self) -> None:
        for (metric, labels), n in self.others.items():
            metric.labels(**dict(labels)).inc(n)
        for platform, n in self.ins.items():
            metrics.STAGE_IN.labels(stage=self.stage, platform=platform).inc(n)
        for (platform, outcome), n in self.outs.items():
            metrics.STAGE_OUT.labels(stage=self.stage, platform=platform, outcome=outcome).inc(n)


@contextmanager
def stage(name: str, size: int):
    """Counts for one stage over one batch; its time per message goes to the latency histogram."""
    counts = StageCounts(name)
    start = time.perf_counter()
    yield counts
    if size:
        metrics.STAGE_LATENCY.labels(stage=name).observe((time.perf_counter() - start) / size)
    counts.publish()


async def finish_before_ack(work) -> None:
    """Run `work` (a batch or an event's handling) to its end even when the agent is stopped.

    Faust acks a stream's in-flight events when its agent stops (`take_events` and `events()`
    ack in a `finally`), and the stopping worker then commits what was acked: an interrupted
    batch would be committed without its outputs (seen as lost orders when a worker left the
    group). So a stop waits for the work; work that cannot finish within STOP_GRACE_S ends the
    process before anything is committed, and the messages are read again elsewhere."""
    task = asyncio.ensure_future(work)
    cancelled = False
    deadline = None
    while not task.done():
        try:
            if deadline is None:
                await asyncio.shield(task)
            else:
                await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                if not task.done():
                    log.critical("in-flight work did not finish within %.0fs of the stop: exiting "
                                 "without committing it", STOP_GRACE_S)
                    os._exit(70)
        except asyncio.CancelledError:
            cancelled = True
            deadline = deadline or time.monotonic() + STOP_GRACE_S
    task.result()  # its own exception, if any
    if cancelled:
        raise asyncio.CancelledError()


def transactional_id(settings, flow: str) -> str:
    """Stable per worker and flow: a restarted worker fences its killed predecessor's open transaction."""
    who = settings.worker_id or f"{socket.gethostname()}-{settings.worker_web_port}"
    return f"{NAMESPACE}{settings.app_id}-{flow}-{who}"


class ExactlyOnce:
    """One agent's transactions: each unit of work (a batch, or one event) writes its outputs and
    commits the next offsets of the messages it consumed in one Kafka transaction; on failure
    nothing of it counts and its partitions are read again from their committed offsets.

    `consumer` is the worker's SeekSafeConsumer: it says which messages continue from the
    committed offsets (`take_in_order`), gives the group metadata that fences a zombie, and
    learns what each transaction committed. Faust never commits these inputs itself."""

    def __init__(self, flow: str, txn: TransactionalOutputs, consumer, crash_at: str = "") -> None:
        self.flow, self.txn, self.consumer = flow, txn, consumer
        self._lock = asyncio.Lock()  # one open transaction per producer
        self._crash = crash_point(crash_at, flow)
        self._count = 0

    async def run(self, messages: list, work: Callable[[list[int]], Any]) -> None:
        """`await work(kept)` (indexes into `messages`) inside a transaction, then commit it."""
        # fenced tables' writes carry the generation the messages were fetched in (a zombie's stay old)
        current = self.consumer.app.consumer_generation_id
        fetched_in = min((getattr(m, "generation_id", current) for m in messages), default=current)
        work_generation.set(fetched_in)
        if fetched_in != current:
            # fetched before a rebalance (a zombie waking up, a rejoin): another worker may have
            # done them since; the new assignment reads its partitions from the committed offsets
            metrics.EOS_SKIPPED.labels(flow=self.flow).inc(len(messages))
            return
        kept, offsets = self.consumer.take_in_order(messages)
        if len(kept) < len(messages):
            metrics.EOS_SKIPPED.labels(flow=self.flow).inc(len(messages) - len(kept))
        if kept:
            await self._transaction(offsets, lambda: work(kept), fetched_in)

    def _maybe_crash(self, point: str) -> None:
        if self._crash == (point, self._count):
            log.critical("ORDERSTREAM_CRASH_AT: ending the worker %s transaction %d of %s", point, self._count,
                         self.flow)
            logging.shutdown()
            os._exit(137)

    async def commit_offsets(self, offsets: dict) -> None:
        """A transaction of offsets only (past the commit markers at a partition's end)."""
        await self._transaction(offsets, None)

    async def _transaction(self, offsets: dict, work, generation: int | None = None) -> None:
        """`generation`: the one the work's messages were fetched in; the offsets commit under it,
        so the broker refuses them once the group has moved on (even if this worker rejoined)."""
        async with self._lock:
            self.txn.begin()
            try:
                if work is not None:
                    await work()
                    await self.txn.flush()
                self._count += 1
                self._maybe_crash("before-commit")
                started = time.perf_counter()
                await self.txn.commit({(tp.topic, tp.partition): o for tp, o in offsets.items()},
                                      self.consumer.group_metadata(generation))
                metrics.TRANSACTION_SECONDS.labels(flow=self.flow).observe(time.perf_counter() - started)
                self._maybe_crash("after-commit")
            except TransactionFailed as exc:
                metrics.TRANSACTIONS_ABORTED.labels(flow=self.flow).inc()
                log.error("%s; its messages are read again", exc)
                self.consumer.reread_uncommitted(offsets)
                return
            except BaseException:
                if self.txn.open:
                    await self.txn.abort()
                raise
        self.consumer.committed_in_transaction(offsets)


def crash_point(crash_at: str, flow: str) -> tuple[str, int] | None:
    """(point, n) of a FLOW:POINT:N fault-injection setting meant for `flow`, else None."""
    if not crash_at:
        return None
    name, point, n = crash_at.split(":")
    if point not in ("before-commit", "after-commit"):
        raise ValueError(f"ORDERSTREAM_CRASH_AT={crash_at!r}: the point is before-commit or after-commit")
    return (point, int(n)) if name == flow else None


async def follow_rule_texts(bootstrap: str, topic: str, offer: Callable[[str], object]) -> None:
    """Hand every rule set on a one-partition compacted topic to `offer`, from its beginning and
    then as new versions come (no consumer group: every worker reads it all)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.value:
                        offer(RuleSetText.decode(record.value))
    finally:
        await consumer.stop()


class ActiveRules:
    """The rule set (risk or refund) this worker applies, replaced only by a newer valid version
    from its compacted topic; its version and refusals are exported as metrics."""

    def __init__(self, rules, parse: Callable[[str], Any], error: type[Exception], topic: str,
                 version_gauge, rejected_counter) -> None:
        self.rules, self._parse, self._error, self._topic = rules, parse, error, topic
        self._version, self._rejected = version_gauge, rejected_counter
        version_gauge.set(rules.version)

    def offer(self, text: str) -> bool:
        try:
            candidate = self._parse(text)
        except self._error as exc:
            self._rejected.inc()
            log.error("rejected rules from %s, keeping version %s: %s", self._topic, self.rules.version, exc)
            return False
        if candidate.version <= self.rules.version and candidate.source_text != self.rules.source_text:
            log.warning("ignored rules version %s from %s (active is %s)", candidate.version, self._topic,
                        self.rules.version)
            return False
        self.rules = candidate
        self._version.set(candidate.version)
        log.info("rules version %s from %s active (%d rules)", candidate.version, self._topic, len(candidate.rules))
        return True
