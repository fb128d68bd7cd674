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

from confluent_kafka import KafkaException, Producer

from . import kafka_io
from .config import Settings

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The broker refused an output for good: its source messages must not be acknowledged."""


class Outputs:
    def __init__(self, settings: Settings) -> None:
        # no delivery time-out: a broker outage pauses the flush (and the stream) instead of
        # dropping outputs; idempotence keeps librdkafka's own retries from doubling them
        self._producer: Producer = kafka_io.producer(settings, **{"message.timeout.ms": 0, "linger.ms": 2})
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


_outputs: Outputs | None = None


def outputs(settings: Settings) -> Outputs:
    """The process's one producer (made on first use, after the settings are read)."""
    global _outputs
    if _outputs is None:
        _outputs = Outputs(settings)
    return _outputs
