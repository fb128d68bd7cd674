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

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


def unsettled_partitions(answer) -> list:
    """The partitions of a list_consumer_group_offsets answer not read cleanly: pending offsets
    (UNSTABLE_OFFSET_COMMIT) or any other error (a coordinator still loading after a restart)."""
    return [tp for tp in answer.topic_partitions if tp.error is not None]


def wait_until_stable(bootstrap: str, group: str, partitions: list[tuple[str, int]], timeout_s: float,
                      poll_s: float = 0.2) -> float:
    """Block until the group's committed offsets of `partitions` are stable (no open transaction
    holds any); the seconds waited. Never raises: an error (a broker restarting, a coordinator
    moving) is asked again until `timeout_s` (a transaction's time-out aborts it by then), then
    a warning, and the caller's seek reads what is committed."""
    if not partitions:
        return 0.0
    started = time.monotonic()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])]
    while True:
        try:
            answer = admin.list_consumer_group_offsets(request, require_stable=True, request_timeout=timeout_s)
            pending = unsettled_partitions(answer[group].result(timeout_s))
        except (KafkaException, ValueError, RuntimeError) as exc:
            pending = [f"(the request: {exc})"]
        waited = time.monotonic() - started
        if not pending:
            return waited
        if waited > timeout_s:
            log.warning("offsets not stable after %.1fs on %s; seeking to what is committed", waited,
                        [str(tp) for tp in pending][:5])
            return waited
        time.sleep(poll_s)
