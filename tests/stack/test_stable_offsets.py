"""Issue 25: a new owner waits while a transaction still holds its partitions' offsets (KIP-447's
require_stable), so it never reads the offsets from before a batch that is being committed."""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import NewTopic

from pipeline import kafka_io
from pipeline.faust_internals.stable_offsets import wait_until_stable

pytestmark = [pytest.mark.stack]


def test_offsets_held_by_an_open_transaction_are_waited_for_and_released_by_its_commit(settings, kafka):
    topic, group = f"stable-{uuid.uuid4().hex[:8]}", f"stable-group-{uuid.uuid4().hex[:8]}"
    admin = kafka_io.admin(settings)  # kept: a future outlives no client
    for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        fut.result()
    kafka_io.wait_until_visible(settings, [topic])
    try:
        # a member of the group gives the transaction its metadata (as the worker's consumer does)
        member = Consumer({**kafka_io.client_conf(settings), "group.id": group})
        producer = kafka_io.producer(settings, **{"transactional.id": f"stable-{uuid.uuid4().hex[:8]}"})
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(topic, b"v")
        producer.send_offsets_to_transaction([TopicPartition(topic, 0, 1)], member.consumer_group_metadata(), 30)
        partitions = [(topic, 0)]

        waited = wait_until_stable(settings.bootstrap, group, partitions, timeout_s=2.0)
        assert waited >= 2.0, "the open transaction's offsets were read as if committed"

        producer.commit_transaction(30)
        started = time.monotonic()
        assert wait_until_stable(settings.bootstrap, group, partitions, timeout_s=10.0) < 5.0
        assert time.monotonic() - started < 5.0
        committed = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])],
            require_stable=True)[group].result(10)
        assert [tp.offset for tp in committed.topic_partitions] == [1]
        member.close()
    finally:
        kafka_io.delete_topics(settings, [topic])
