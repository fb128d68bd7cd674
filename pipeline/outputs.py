"""What a worker publishes goes through one librdkafka producer, flushed before Faust acks.

A record sent through a Faust topic costs ~100 us of Python in Faust's producer path; the
same record through confluent-kafka costs a few. At-least-once still holds: an agent calls
`await outputs.flush()` at the end of each batch (or event), so the broker has every output
before Faust acknowledges, and later commits, the messages they came from. Faust's own
producer keeps only the table changelogs, which Faust flushes before every commit.
"""
from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaException, Producer, TopicPartition

from . import kafka_io
from .config import Settings

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The broker refused an output for good: its source messages must not be acknowledged."""


class Outputs:
    def __init__(self, settings: Settings, **producer_conf) -> None:
        # no delivery time-out: a broker outage pauses the flush (and the stream) instead of
        # dropping outputs; idempotence keeps librdkafka's own retries from doubling them
        self._conf = {"message.timeout.ms": 0, "linger.ms": 2, **producer_conf}
        self._settings = settings
        self._producer: Producer = kafka_io.producer(settings, **self._conf)
        self._failures: list[str] = []
        self._tracked: dict[str, dict[int, int]] = {}  # topic -> partition -> highest delivered offset
        self.pending = 0

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None,
             partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._delivered,
                                       **extra)
                break
            except BufferError:
                self._producer.poll(0.01)  # local queue full: let librdkafka drain it
        self.pending += 1

    def track_offsets(self, topic: str) -> None:
        """Remember the highest delivered offset per partition of `topic` (see delivered_offsets)."""
        self._tracked.setdefault(topic, {})

    def delivered_offsets(self, topic: str) -> dict[int, int]:
        """partition -> highest offset of `topic` the broker acknowledged since the last call."""
        offsets = self._tracked.get(topic, {})
        self._tracked[topic] = {}
        return offsets

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")
            return
        offsets = self._tracked.get(msg.topic())
        if offsets is not None and msg.offset() > offsets.get(msg.partition(), -1):
            offsets[msg.partition()] = msg.offset()

    async def flush(self) -> None:
        """Return once the broker has acknowledged everything sent so far (raises DeliveryFailed)."""
        if not self.pending:
            return
        self.pending = 0
        waited = 0.0
        while await asyncio.to_thread(self._producer.flush, 1.0):
            waited += 1.0
            log.warning("outputs not yet acknowledged by the broker after %.0fs; still waiting", waited)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{len(failures)} outputs were refused by the broker: {failures[:3]}")

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except KafkaException as exc:
            log.error("outputs not flushed at shutdown: %s", exc)


class TransactionFailed(RuntimeError):
    """A batch's transaction was aborted: none of its outputs or offsets count; read it again."""


class TransactionalOutputs(Outputs):
    """Exactly-once outputs: a batch's records and the offsets of the messages it consumed commit
    in one Kafka transaction, or neither does (read_committed readers never see an aborted one).

    The transactional id is the worker's stable identity, so a restarted worker's first
    `start()` aborts whatever its killed predecessor left open instead of leaving
    read_committed readers waiting for the transaction time-out. The offsets carry the group's
    generation and member id: the broker refuses them from a worker the group has moved on from."""

    def __init__(self, settings: Settings, transactional_id: str) -> None:
        timeout_ms = int(settings.transaction_timeout_s * 1000)
        super().__init__(settings, **{"transactional.id": transactional_id, "transaction.timeout.ms": timeout_ms,
                                      "message.timeout.ms": timeout_ms})
        self.transactional_id = transactional_id
        self.open = False

    async def start(self) -> None:
        await asyncio.to_thread(self._producer.init_transactions, 60)

    def begin(self) -> None:
        self._producer.begin_transaction()
        self.open = True

    async def commit(self, offsets: dict[tuple[str, int], int], group_metadata: bytes) -> None:
        """Commit the open transaction with the consumed `offsets` ((topic, partition) -> next
        offset); on any failure abort it and raise TransactionFailed."""
        positions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        try:
            await self.flush()
            if positions:
                await asyncio.to_thread(self._producer.send_offsets_to_transaction, positions, group_metadata, 30)
            await asyncio.to_thread(self._commit_transaction)
        except (KafkaException, DeliveryFailed) as exc:
            await self.abort(exc)
            raise TransactionFailed(f"transaction {self.transactional_id} aborted: {exc}") from exc
        finally:
            self.open = False

    def _commit_transaction(self) -> None:
        while True:
            try:
                self._producer.commit_transaction(30)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                log.warning("transaction commit not confirmed yet (%s); asking again", exc)

    async def abort(self, cause: BaseException | None = None) -> None:
        """Abort the open transaction; a producer in a fatal state (fenced, or the broker timed
        the transaction out) is replaced by a new one under the same id."""
        self.open = False
        self.pending = 0
        self._failures = []
        error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        if error is None or not error.fatal():
            try:
                await asyncio.to_thread(self._producer.abort_transaction, 30)
                return
            except KafkaException as exc:
                if not (exc.args and exc.args[0].fatal()):
                    raise
                error = exc.args[0]
        log.error("transactional producer %s unusable (%s): starting a new one", self.transactional_id, error)
        self._producer = kafka_io.producer(self._settings, **self._conf)
        await self.start()


_outputs: Outputs | None = None


def outputs(settings: Settings) -> Outputs:
    """The process's one producer (made on first use, after the settings are read)."""
    global _outputs
    if _outputs is None:
        _outputs = Outputs(settings)
    return _outputs
