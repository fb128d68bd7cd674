"""Wait, on assignment, until no transaction still holds offsets of the partitions this worker got.

A worker whose partitions move (a second worker joins, a rebalance) may be committing a
transaction with their offsets at that moment: the offsets are written to the group when the
transaction's commit markers land, just after `commit_transaction` returns. The new owner that
reads the committed offsets in between gets the old ones and processes that batch again, its
outputs committed twice. Kafka's answer (KIP-447) is OffsetFetch with `require_stable`: the
broker answers UNSTABLE_OFFSET_COMMIT while such offsets are pending. aiokafka 0.14 (pinned in
versions.py) sends OffsetFetch v3, without it; librdkafka's admin client sends it, so the worker
asks through it before Faust's own seek reads the (then stable) offsets.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


def unstable_partitions(answer) -> list:
    """The partitions of a list_consumer_group_offsets answer whose offsets are still pending."""
    return [tp for tp in answer.topic_partitions
            if tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT]


def is_unstable(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT


def wait_until_stable(bootstrap: str, group: str, partitions: list[tuple[str, int]], timeout_s: float,
                      poll_s: float = 0.1) -> float:
    """Block until the group's committed offsets of `partitions` are stable (no open transaction
    holds any); the seconds waited. Gives up after `timeout_s` (a transaction's time-out
    aborts it by then) with a warning: the caller's seek then reads what is committed."""
    if not partitions:
        return 0.0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])]
    started = time.monotonic()
    while True:
        try:
            answer = admin.list_consumer_group_offsets(request, require_stable=True)[group].result(timeout_s)
            pending = unstable_partitions(answer)
        except KafkaException as exc:
            if not is_unstable(exc):
                raise
            pending = ["(the whole request)"]
        waited = time.monotonic() - started
        if not pending:
            return waited
        if waited > timeout_s:
            log.warning("offsets still pending after %.1fs on %s; seeking to what is committed", waited, pending)
            return waited
        time.sleep(poll_s)
