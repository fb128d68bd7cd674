"""confluent-kafka clients for everything outside the Faust worker: replay, sink, tests, benchmarks;
and the topic provisioning (`ensure_topics`) a worker runs before Faust starts.

Every client made here hands librdkafka's own log lines (`%4|...|GETPID|...`) to Python logging
(logger `librdkafka`, at ORDERSTREAM_LIBRARY_LOG_LEVEL) instead of letting librdkafka print them
to stderr between a command's output. confluent-kafka delivers them when the client is polled.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .config import Settings
from .topics import TopicNames, names as default_names


LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")
# what librdkafka says while a broker's group or transaction coordinator is still loading after a
# start ("Coordinator load in progress: retrying"), and the background queue purged when a client
# closes: it retries or cleans up by itself, so these are INFO, not warnings for the operator
SELF_HEALING = ("load in progress",)
QUIET_FACILITIES = frozenset({"BGQUEUE"})


class LibrdkafkaLog:
    """confluent-kafka's `logger`: it calls `log(level, "%s [%s] %s", facility, client, message)`
    with librdkafka's syslog level already mapped to Python's."""

    def __init__(self, logger: logging.Logger = LIBRDKAFKA_LOGGER) -> None:
        self.logger = logger

    def log(self, level: int, msg: str, *args) -> None:
        facility = str(args[0]) if args else ""
        text = str(args[-1]) if args else msg
        if level > logging.INFO and (facility in QUIET_FACILITIES or any(s in text for s in SELF_HEALING)):
            level = logging.INFO
        self.logger.log(level, msg, *args)


LIBRDKAFKA_LOG = LibrdkafkaLog()


def client_conf(s: Settings) -> dict:
    """What every confluent client shares: the bootstrap servers and the log routing."""
    return {"bootstrap.servers": s.bootstrap, "logger": LIBRDKAFKA_LOG}


def admin(s: Settings) -> AdminClient:
    """An AdminClient; call its poll(0) after a request to hand its log lines over."""
    return AdminClient(client_conf(s))


def producer(s: Settings, **overrides) -> Producer:
    conf = {
        **client_conf(s),
        "enable.idempotence": True,   # broker-side dedupe of our own retries
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500000,
        # the Java/aiokafka partitioner: keyed messages (decisions, stock) land where Faust expects
        "partitioner": "murmur2_random",
    }
    conf.update(overrides)
    return Producer(conf)


def consumer(s: Settings, group: str, **overrides) -> Consumer:
    conf = {
        **client_conf(s),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return Consumer(conf)


class DeliveryTracker:
    """Counts delivery reports so a producer run knows exactly what the broker acknowledged."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed: list[str] = []
        self.coordinates: list[tuple[str, int, int]] = []

    def __call__(self, err, msg) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.delivered += 1
            self.coordinates.append((msg.topic(), msg.partition(), msg.offset()))


def produce_all(p: Producer, records: Iterable[tuple[str, bytes | None, bytes, list | None]],
                tracker: DeliveryTracker | None = None) -> DeliveryTracker:
    """Produce (topic, key, value, headers) records, waiting out a full local queue instead of failing."""
    tracker = tracker or DeliveryTracker()
    for topic, key, value, headers in records:
        while True:
            try:
                p.produce(topic, value=value, key=key, headers=headers, on_delivery=tracker)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(60)
    return tracker


@dataclass
class Record:
    """One Kafka record, for every reader outside Faust: `read_topics`, the ClickHouse sink and its rows."""
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    timestamp_ms: int

    @classmethod
    def from_confluent(cls, m) -> "Record":
        """A confluent_kafka.Message (its fields are methods) -> Record."""
        return cls(m.topic(), m.partition(), m.offset(), m.key(), m.value(), dict(m.headers() or []),
                   m.timestamp()[1])


def read_topics(s: Settings, topics: list[str], idle_s: float = 2.0, max_s: float = 120.0,
                expect: int | None = None) -> Iterator[Record]:
    """Read topics from the beginning (no group commit) until idle for idle_s or `expect` records seen."""
    c = consumer(s, group=f"reader-{time.monotonic_ns()}")
    md = c.list_topics(timeout=10)
    assignment = [TopicPartition(t, p, 0) for t in topics if t in md.topics for p in md.topics[t].partitions]
    c.assign(assignment)
    seen = 0
    last = time.monotonic()
    start = last
    try:
        while time.monotonic() - start < max_s:
            msgs = c.consume(1000, timeout=0.2)
            if not msgs:
                if time.monotonic() - last > idle_s or (expect is not None and seen >= expect):
                    return
                continue
            for m in msgs:
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                last = time.monotonic()
                seen += 1
                yield Record.from_confluent(m)
    finally:
        c.close()


def end_offsets(s: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    c = consumer(s, group="orderstream-offsets-probe")
    try:
        md = c.list_topics(timeout=10)
        out = {}
        for t in topics:
            if t not in md.topics:
                continue
            for p in md.topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                out[(t, p)] = hi
        return out
    finally:
        c.close()


class TopicError(RuntimeError):
    """A pipeline topic could not be created; the message says which and why."""


def ensure_topics(s: Settings, names: TopicNames = default_names, partitions: int | None = None) -> None:
    """Create any missing pipeline topic with the configured partition count (never shrinks one)."""
    topics, compacted = names.ALL_TOPICS, names.COMPACTED
    client = admin(s)
    existing = set(client.list_topics(timeout=10).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        client.poll(0)
        return
    new = [NewTopic(t, num_partitions=1 if t in compacted else (partitions or s.partitions), replication_factor=1,
                    config={"cleanup.policy": "compact"} if t in compacted else {}) for t in missing]
    try:
        for topic, fut in client.create_topics(new, operation_timeout=30).items():
            try:
                fut.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise TopicError(f"could not create topic {topic}: {exc}") from exc
    finally:
        client.poll(0)


def ensure_changelogs(s: Settings, specs: Iterable[tuple[str, int, Mapping[str, str]]]) -> None:
    """Create the tables' changelog topics that are missing: (name, partitions, config) each, as
    pipeline.app.changelog_topics gives them (before Faust starts, so its first group join sees them)."""
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config))
           for name, partitions, config in specs if name not in existing]
    if not new:
        return
    for topic, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise TopicError(f"could not create changelog topic {topic}: {exc}") from exc


def unready_topics(metadata, topics: Iterable[str]) -> list[str]:
    """Topics the broker's metadata does not list yet, or lists without a leader for a partition."""
    out = []
    for name in topics:
        t = metadata.topics.get(name)
        if t is None or t.error is not None or not t.partitions or any(p.leader < 0 for p in t.partitions.values()):
            out.append(name)
    return out


def wait_until_visible(s: Settings, topics: Iterable[str], timeout_s: float = 60.0) -> None:
    """Return once the broker's metadata shows every topic with its partition leaders.

    A created topic reaches a KRaft broker's metadata cache a little later (seconds on a loaded
    machine). A worker whose group join reads the metadata before that gets nothing assigned for
    those topics (Faust: "Ignoring missing topic") until the next refresh, minutes later."""
    client, wanted = admin(s), list(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = unready_topics(client.list_topics(timeout=10), wanted)
        client.poll(0)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"{len(missing)} topics not visible in the broker's metadata after {timeout_s:.0f}s: "
                             f"{', '.join(sorted(missing)[:5])}")
        time.sleep(0.2)


def delete_topics(s: Settings, topics: list[str]) -> None:
    client = admin(s)
    existing = set(client.list_topics(timeout=10).topics)
    doomed = [t for t in topics if t in existing]
    if doomed:
        for fut in client.delete_topics(doomed, operation_timeout=30).values():
            try:
                fut.result()
            except KafkaException:
                pass
    client.poll(0)
