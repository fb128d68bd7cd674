"""Issue 25: the first message a restarted worker reads is the committed one, never the next.

Faust 0.15.3 resumes the stream partitions, then awaits the seek to the committed offsets, then
resumes its flow control, which empties every stream queue (`clear_on_resume`). What the fetcher
delivered into those queues during the seek was dropped unread, and the partition went on after
it: the hole the commit watchdog later healed by re-reading (and re-announcing) everything since.

The probe worker (tests/stack/probes/seek_probe.py) uses the project's consumer and holds its
seek open for a moment, so the fetcher delivers during it on every run, as it did on a loaded
machine after a SIGKILL: a deterministic reproduction of the race.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from pipeline import kafka_io
from pipeline.config import PROJECT_ROOT

pytestmark = [pytest.mark.stack]

PER_PARTITION = 10
COMMITTED = 4  # the group has processed offsets 0..3 of each partition


def prepare(settings, topic: str, group: str) -> None:
    client = kafka_io.admin(settings)
    changelog = f"{group}-probe-seen-changelog"
    for fut in client.create_topics([NewTopic(topic, 2, 1), NewTopic(changelog, 2, 1)]).values():
        fut.result()
    kafka_io.wait_until_visible(settings, [topic, changelog])
    producer = kafka_io.producer(settings)
    records = [(topic, f"k{i}".encode(), f"v{i}".encode(), None) for i in range(PER_PARTITION)]
    for partition in (0, 1):
        for _topic, key, value, _ in records:
            producer.produce(topic, key=key, value=value, partition=partition)
        # table state to restore, so the restart takes Faust's recovery path like the worker's
        producer.produce(changelog, key=json.dumps("x").encode(), value=b"1", partition=partition)
    producer.flush(30)
    consumer = kafka_io.consumer(settings, group)
    consumer.commit(offsets=[TopicPartition(topic, p, COMMITTED) for p in (0, 1)], asynchronous=False)
    consumer.close()


def test_a_restart_reads_from_the_committed_offset_while_the_seek_races_the_fetcher(settings, kafka, tmp_path):
    ns = f"seek{uuid.uuid4().hex[:8]}"
    topic, group = f"{ns}.raw", f"{ns}-probe"
    prepare(settings, topic, group)
    out = tmp_path / "offsets.txt"
    expected = 2 * (PER_PARTITION - COMMITTED)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.stack.probes.seek_probe", topic, group, str(out),
                               str(expected), "3.0"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=180)
        seen = Counter(out.read_text().split()) if out.exists() else Counter()
        want = Counter(f"{p}:{o}" for p in (0, 1) for o in range(COMMITTED, PER_PARTITION))
        assert seen == want, (f"exit {proc.returncode}; missing {sorted(want - seen)}, extra {sorted(seen - want)}\n"
                              f"{proc.stderr[-3000:]}")
    finally:
        kafka_io.delete_topics(settings, [topic, f"{group}-probe-seen-changelog"])
