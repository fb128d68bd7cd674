"""The ClickHouse sink: seven topics in, seven fact tables out, each row landing exactly once.

Exactly once without Kafka commits: every row stores its (topic, partition, offset), the sink
starts each partition at max(stored offset) + 1, and every insert carries a dedup token made
from its offset ranges, so a retry of an insert that did land is dropped by ClickHouse.
Batches of one table are inserted strictly in order: a later batch never lands before an
earlier failed one, which keeps "max stored offset" a safe resume point.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from typing import Callable

from pipeline import kafka_io, metrics
from pipeline.kafka_io import Record
from pipeline.retrying import Backoff, retry_until
from pipeline.topics import TopicNames

from .backends import Backend
from .natural_keys import NaturalKeyFilter
from .batching import Batch, Batcher
from .rows import RowError, table_specs

log = logging.getLogger(__name__)


def as_record(m) -> Record:
    """A confluent-kafka Message or a kafka_io.Record -> kafka_io.Record."""
    return m if isinstance(m, Record) else Record.from_confluent(m)


class ClickHouseSink:
    def __init__(self, backend: Backend, names: TopicNames, max_rows: int = 10_000, max_seconds: float = 1.0,
                 *, clock: Callable[[], float] = time.monotonic, backoff_base_s: float = 0.2,
                 backoff_max_s: float = 30.0) -> None:
        self.backend = backend
        self.specs = table_specs(names)
        self.topics = tuple(self.specs)
        self.clock = clock
        self.backoff = Backoff(backoff_base_s, backoff_max_s)
        self._batchers = {s.table: Batcher(s.table, max_rows, max_seconds) for s in self.specs.values()}
        self._columns = {s.table: list(s.columns) for s in self.specs.values()}
        self._pending: dict[str, deque[Batch]] = {s.table: deque() for s in self.specs.values()}
        for table in self._batchers:  # every series exists from the start: rate() and alerts see 0, not nothing
            metrics.SINK_FAILURES.labels(table=table)
            metrics.SINK_ROWS.labels(table=table)
        self._retry_at: dict[str, float] = {}
        self._next: dict[tuple[str, int], int] = {}
        self.stats: Counter = Counter()
        self.natural_keys = NaturalKeyFilter()
        self.last_error: str | None = None
        # table -> called with the rows of every batch that landed (the settlement scheduler listens)
        self.on_landed: dict[str, Callable[[list[dict]], None]] = {}

    # -- positions ------------------------------------------------------------------------

    def resume_positions(self) -> dict[tuple[str, int], int]:
        """Next offset per (topic, partition) = max src_offset stored + 1; partitions with
        nothing stored are absent (start them at the beginning)."""
        positions: dict[tuple[str, int], int] = {}
        for topic, spec in self.specs.items():
            rows = self.backend.query(
                f"SELECT src_partition AS p, max(src_offset) AS last FROM {spec.table} "
                "WHERE src_topic = {topic:String} GROUP BY src_partition", {"topic": topic})
            for r in rows:
                positions[(topic, int(r["p"]))] = int(r["last"]) + 1
        for tp, nxt in positions.items():
            self._next[tp] = max(self._next.get(tp, 0), nxt)
        self.natural_keys.preload(self.backend)
        return positions

    def next_offset(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    # -- intake ---------------------------------------------------------------------------

    def add(self, message) -> bool:
        """Buffer one message's row; False when it is skipped (unknown topic, already landed or
        buffered, undecodable). Undecodable input is counted and logged, never raised."""
        msg = as_record(message)
        spec = self.specs.get(msg.topic)
        if spec is None:
            self.stats["unknown_topic"] += 1
            return False
        tp = (msg.topic, msg.partition)
        if msg.offset < self._next.get(tp, 0):
            self.stats["already_seen"] += 1  # a redelivery below the resume point: it is in the table
            return False
        self._next[tp] = msg.offset + 1
        try:
            row = spec.to_row(msg)
        except RowError as exc:
            self.stats["undecodable"] += 1
            log.warning("sink skips %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc)
            return False
        if not self.natural_keys.first_time(spec.table, row):
            self.stats["repeated_fact"] += 1  # an upstream re-emission of a fact already stored
            return False
        batcher = self._batchers[spec.table]
        batcher.add(row, msg.topic, msg.partition, msg.offset, self.clock())
        if len(batcher) >= batcher.max_rows:  # full: seal it now so no insert exceeds max_rows
            self._pending[spec.table].append(batcher.take())
        self.stats["buffered"] += 1
        return True

    def buffered_rows(self) -> int:
        return sum(len(b) for b in self._batchers.values()) + self.pending_rows()

    def pending_rows(self) -> int:
        """Rows taken into batches that have not landed yet (waiting for an insert or a retry)."""
        return sum(len(b.rows) for q in self._pending.values() for b in q)

    def due(self) -> bool:
        now = self.clock()
        return any(b.due(now) for b in self._batchers.values()) or \
            any(q and now >= self._retry_at.get(t, 0.0) for t, q in self._pending.items())

    # -- output ---------------------------------------------------------------------------

    def flush(self, force: bool = False) -> int:
        """Insert every due batch (all buffered rows when force), in order per table. A failed
        insert stays at the head of its table's queue and is retried, same rows and token,
        after an exponential back-off (force retries at once). Returns rows landed now."""
        now = self.clock()
        for table, batcher in self._batchers.items():
            if len(batcher) and (force or batcher.due(now)):
                self._pending[table].append(batcher.take())
        landed = 0
        for table, queue in self._pending.items():
            while queue:
                if not force and now < self._retry_at.get(table, 0.0):
                    break
                batch = queue[0]
                started = time.perf_counter()
                try:
                    self.backend.insert(table, batch.rows, self._columns[table], batch.token)
                except Exception as exc:  # any failure: keep the batch, retry later
                    batch.attempts += 1
                    delay = self.backoff.delay(batch.attempts)
                    self._retry_at[table] = now + delay
                    self.last_error = f"{table}: {exc}"
                    self.stats["insert_failures"] += 1
                    metrics.SINK_FAILURES.labels(table=table).inc()
                    log.warning("insert of %d rows into %s failed (attempt %d), retry in %.1fs: %s",
                                len(batch.rows), table, batch.attempts, delay, exc)
                    break
                metrics.SINK_BATCH_LATENCY.observe(time.perf_counter() - started)
                metrics.SINK_BATCH_ROWS.observe(len(batch.rows))
                metrics.SINK_ROWS.labels(table=table).inc(len(batch.rows))
                self.stats["landed"] += len(batch.rows)
                self._retry_at.pop(table, None)
                queue.popleft()
                landed += len(batch.rows)
                if table in self.on_landed:
                    try:
                        self.on_landed[table](batch.rows)
                    except Exception as exc:  # noqa: BLE001 - a listener never stops the sink
                        log.warning("on_landed listener of %s failed: %s", table, exc)
        return landed

    def drain(self, timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Flush everything, retrying until it lands or the timeout passes. True when empty.
        What does not land is not lost: it was never recorded, so the next start re-reads it."""
        def flushed() -> bool:
            self.flush(force=True)
            return self.buffered_rows() == 0

        if retry_until(flushed, self.backoff, timeout_s, sleep):
            return True
        log.warning("sink stops with %d rows not landed; they are re-read on the next start", self.buffered_rows())
        return False

    def status(self) -> dict:
        return {"buffered_rows": self.buffered_rows(), "pending_rows": self.pending_rows(),
                "stats": dict(self.stats), "last_error": self.last_error}


# -- the process loop ---------------------------------------------------------------------------

TOPIC_RECHECK_S = 5.0


def run_sink(settings, names: TopicNames, stop: threading.Event | None = None,
             ready: Callable[[], None] | None = None) -> None:
    """Consume the seven source topics into ClickHouse until `stop` is set (or SIGTERM/SIGINT when
    run in the main thread without a stop event). Serves two surfaces: the operator surface
    (/health, /status, /views, /sql, /metrics and the console, whose approve/reject/re-drive publish
    through their own producer; every route but /health needs a token), and the public one (the
    buyers' /t/<code> pages, nothing else); and the ClickHouse HTTP interface for analysts on its own
    port (analyst.service)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from pipeline import kafka_io
    from pipeline.access import Sessions
    from pipeline.console import setup_console
    from pipeline.credentials import Credentials
    from pipeline.public_site import make_public_app

    from .analyst.service import start_analyst_service
    from .backends import open_backend
    from .http import WebServer, make_app
    from .migrate import migrate

    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
    backend = open_backend(settings)
    consumer = server = public = analyst = None
    try:
        migrate(backend)
        sink = ClickHouseSink(backend, names, settings.sink_batch_rows, settings.sink_batch_seconds)
        sink.resume_positions()
        analyst = start_analyst_service(settings, backend)
        from pipeline.settlement.rules import load_rules
        from pipeline.settlement.scheduler import SettlementScheduler
        settlement = SettlementScheduler(backend, load_rules())  # a run after each bill import
        sink.on_landed["settlement_bills"] = settlement.landed
        from .sla_metric import ShippingSlaGauge
        sla_gauge = ShippingSlaGauge(backend)  # orderstream_shipping_sla_orders, at 0 from start
        credentials = Credentials.from_settings(settings)  # malformed tokens stop the sink here
        if not len(credentials):
            log.warning("no access tokens (ORDERSTREAM_ACCESS_TOKENS, ORDERSTREAM_OPERATOR_TOKENS): the operator "
                        "surface refuses every caller but /health")
        app = make_app(backend, lambda: {**sink.status(), **analyst.status(), "settlement_runs": settlement.runs},
                       credentials=credentials, sessions=Sessions(settings.console_session_hours * 3600))
        console = setup_console(app, settings, names)  # the operators' console beside /views (pipeline.console)
        from pipeline.console.redrive_mirror import RedriveMirror
        redrives = RedriveMirror(console.redrives, console.actions.log, names.DLQ)  # the CLI's, into the list
        server = WebServer(app, settings.sink_listen_host, settings.sink_web_port).start()
        log.info("operator surface on %s:%d (%d principals)", settings.sink_listen_host, server.port, len(credentials))
        if settings.public_port:
            public = WebServer(make_public_app(backend, settings.public_rate_per_s, settings.public_burst),
                               settings.public_listen_host, settings.public_port, name="public-http").start()
            log.info("public tracking pages on %s:%d", settings.public_listen_host, public.port)
        # manual assignment: positions come from ClickHouse, the group id only names the client
        consumer = kafka_io.consumer(settings, group=f"{names.ns}orderstream-sink")
        assigned: set[tuple[str, int]] = set()

        def assign_new_partitions() -> None:
            md = consumer.list_topics(timeout=5)
            new = []
            for topic in sink.topics:
                meta = md.topics.get(topic)
                if meta is None or meta.error is not None:
                    continue
                for p in meta.partitions:
                    if (topic, p) not in assigned:
                        nxt = sink.next_offset(topic, p)
                        new.append(TopicPartition(topic, p, OFFSET_BEGINNING if nxt is None else nxt))
            if new:
                consumer.incremental_assign(new)
                assigned.update((tp.topic, tp.partition) for tp in new)
                log.info("sink assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in new))

        assign_new_partitions()
        next_check = time.monotonic() + TOPIC_RECHECK_S
        # back-pressure: while ClickHouse refuses inserts, stop reading rather than grow without bound
        max_buffered = max(10 * settings.sink_batch_rows, 100_000)
        if ready is not None:
            ready()
        while not stop.is_set():
            if time.monotonic() >= next_check:
                try:
                    assign_new_partitions()
                except Exception as exc:  # broker briefly away: keep sinking what we have
                    log.warning("topic re-check failed: %s", exc)
                next_check = time.monotonic() + TOPIC_RECHECK_S
            if sink.buffered_rows() < max_buffered:
                for m in consumer.consume(num_messages=min(settings.sink_batch_rows, 10_000), timeout=0.1):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer error: %s", err)
                        continue
                    sink.add(m)
            else:
                stop.wait(0.05)
            sink.flush()
            settlement.tick()
            sla_gauge.tick()
            redrives.tick()
        sink.drain(timeout_s=30.0)
    finally:
        if consumer is not None:
            consumer.close()
        if public is not None:
            public.stop()
        if server is not None:
            server.stop()
        if analyst is not None:
            analyst.stop()
        backend.close()
