"""Faust consumer workarounds, and every read or write of the consumer's private offset state.

The consumer itself: a seek that cannot rewind partitions it is already reading.

faust-streaming 0.15 resumes the stream partitions *before* its recovery seeks them to their
committed offsets, and the fetcher may seek again whenever it polls with the flow paused. With
a table to restore (a restarted worker) that seek takes long enough that messages are fetched,
processed and even committed meanwhile; the seek then rewinds the position and Faust's read
offset while the fetcher is still handing out the batch it had, so the re-fetched messages fall
below the read offset and are dropped, never acked. A hole of two or more unacked offsets stops
the partition's commit for good (a lag that never drains); a hole of one is committed over by
`Consumer._new_offset` (a lost message). Both were seen after SIGKILL + restart.

The skip at the committed offset after a restart (issue 25), at its root: between resuming the
stream partitions and finishing that seek, the fetcher already delivers messages into the
streams' queues; the recovery then resumes Faust's flow control, which empties every queue
(`clear_on_resume`). Those messages were dropped unread while the partition read on after them.
`install()` makes every such clear remember, per partition still assigned in this generation,
the lowest offset it dropped, and `getmany` seeks there before its next fetch (records of a fetch
already in hand are dropped too and come again). tests/stack/test_restart_seek.py drives the race.

This consumer seeks only partitions nothing has been fetched from since they were assigned:
the others already read from the committed offset (the position the broker gave them on
assignment). It asks for all committed offsets in one request (Faust's path asks per
partition), and keeps a committed offset it already knows when the broker's answer was read
before a commit of ours landed.
"""
from __future__ import annotations

import logging
from typing import Callable

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

log = logging.getLogger(__name__)


def keep_newest_committed(before: dict, after: dict) -> dict:
    """Committed offsets after a seek: never lower than what was known before it."""
    merged = dict(after)
    for tp, ours in before.items():
        if ours is not None and tp in merged and (merged[tp] is None or merged[tp] < ours):
            merged[tp] = ours
    return merged


class SeekSafeConsumer(aiokafka_driver.Consumer):
    # topics where offsets may really be missing (compaction); set by install()
    compacted_topics: frozenset = frozenset()
    # called with (tp, offset) for every partition read again after a clear; set by install()
    on_reread: Callable[[TP, int], None] | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fetched_since_assignment: set[TP] = set()
        # partitions the group never committed: the offset reading starts from (the log start)
        self._first_offsets: dict[TP, int] = {}
        # partitions whose queued messages a flow-control clear dropped: tp -> lowest such offset
        self._rewind_to: dict[TP, int] = {}

    async def getmany(self, timeout: float):
        self._apply_rewinds()
        async for tp, message in super().getmany(timeout):
            if tp in self._rewind_to:
                # fetched before a clear dropped earlier messages of its partition: it comes again
                self._rewind_to[tp] = min(self._rewind_to[tp], message.offset)
                continue
            self._fetched_since_assignment.add(tp)
            yield tp, message

    def forget_cleared(self, messages) -> None:
        """A flow-control clear is dropping these queued, never-processed messages: each partition
        still assigned in this generation is read again from the lowest of them (before the next
        fetch). Messages of an earlier generation need nothing: their partitions were re-assigned
        and read again from the committed offset."""
        generation, assigned = self.app.consumer_generation_id, self.assignment()
        for message in messages:
            tp = message.tp
            if message.generation_id != generation or tp not in assigned:
                continue
            if tp not in self._rewind_to or message.offset < self._rewind_to[tp]:
                self._rewind_to[tp] = message.offset

    def _apply_rewinds(self) -> None:
        if not self._rewind_to:
            return
        rewinds, self._rewind_to = self._rewind_to, {}
        assigned = self.assignment()
        for tp, offset in rewinds.items():
            if tp in assigned:
                log.info("re-reading %s[%s] from %s: queued messages were cleared unread", tp.topic,
                         tp.partition, offset)
                if self.on_reread is not None:
                    self.on_reread(tp, offset)
                self._thread.seek(tp, offset)  # as Faust's own _seek: aiokafka's seek, on its thread's consumer
                self._read_offset[tp] = offset

    async def on_partitions_revoked(self, revoked) -> None:
        self._fetched_since_assignment.difference_update(revoked)
        for tp in revoked:
            self._first_offsets.pop(tp, None)
            self._rewind_to.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        generation = self.app.consumer_generation_id
        before = dict(self._committed_offset)
        reading = set(self._fetched_since_assignment)
        thread = self._thread
        answer, starts = await thread.call_thread(_seek_unread_to_committed, thread._ensure_consumer(), reading)
        if self.app.consumer_generation_id != generation:
            return  # reassigned meanwhile: the next assignment seeks again
        committed = {TP(tp.topic, tp.partition): offset for tp, offset in answer.items()}
        self._first_offsets.update({TP(tp.topic, tp.partition): offset for tp, offset in starts.items()})
        fresh = {tp: offset for tp, offset in committed.items() if tp not in reading}
        self._read_offset.update(fresh)
        # as Faust's own seek: 0 counts as "nothing committed yet"
        known = {tp: offset or None for tp, offset in committed.items() if offset is not None}
        merged = keep_newest_committed(before, known)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("seek gen %s: %d partitions already reading, %d sought; committed %s",
                      generation, len(reading), len(fresh), _short(merged))
        self._committed_offset.update(merged)

    def commit_base(self, tp: TP) -> int | None:
        """The next offset the group must commit for `tp`: its committed offset, or for a
        partition never committed the offset reading started from; None while unknown."""
        committed = self._committed_offset.get(tp)
        return committed if committed else self._first_offsets.get(tp)

    def _new_offset(self, tp: TP):
        """Never commit over an offset that was not acked.

        Upstream (`Consumer._new_offset`, faust-streaming 0.15.3) commits over a hole of exactly
        one offset (`min(acked) - committed > 1` is its only check), and over any hole at all
        while nothing is committed yet (the check is skipped for a falsy committed offset): a
        message that was fetched but never reached a stream (a rebalance or restart race) was
        committed unprocessed, e.g. offset 0 of a fresh partition after a SIGKILL. The same race
        makes Faust record the skipped offset as a gap (an offset that does not exist), which
        only compaction can make true: on other topics the gap is not believed. Here the
        partition waits instead, and the commit watchdog re-reads it from that offset."""
        acked, base = self._acked[tp], self.commit_base(tp)
        if acked and base is not None and min(acked) > base:
            if not (tp.topic in self.compacted_topics and self._gap[tp].at(base)):
                return None
        return super()._new_offset(tp)

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        did = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("commit gen %s did=%s %s", self.app.consumer_generation_id, did, _short(offsets))
        return did


async def _seek_unread_to_committed(consumer, reading: set) -> tuple[dict, dict]:
    """On the consumer's thread: committed offsets of every assigned partition (one request);
    seek those not in `reading` to theirs. Also the log-start offsets of those never committed,
    where reading starts (auto_offset_reset=earliest)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return {}, {}
    answer = await consumer._coordinator.fetch_committed_offsets(assigned)
    committed = {}
    for tp in assigned:
        meta = answer.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        committed[tp] = offset
        if offset and (tp.topic, tp.partition) not in reading:
            consumer.seek(TopicPartition(tp.topic, tp.partition), offset)
    never = [tp for tp, offset in committed.items() if not offset]
    starts = await consumer.beginning_offsets(never) if never else {}
    return committed, starts


def _short(offsets) -> str:
    """`tmall2=15 unique0=7` (last topic word + partition), no changelogs: for the debug log."""
    return " ".join(f"{tp.topic.split('.')[-1]}{tp.partition}={o}" for tp, o in sorted(offsets.items())
                    if "changelog" not in tp.topic)


def consumer_lag(consumer, topics: set[str] | None = None) -> dict:
    """tp -> end offset minus committed offset, for the assigned partitions (of `topics`)."""
    committed = consumer._committed_offset
    lag = {}
    for tp in consumer.assignment():
        if topics is not None and tp.topic not in topics:
            continue
        high = consumer.highwater(tp)
        if high is not None:
            lag[tp] = max(0, high - (committed.get(tp) or 0))
    return lag


def offsets_report(consumer) -> dict:
    """Per assigned partition: committed, last read, acked-but-uncommitted and unacked offsets."""
    unacked = unacked_offsets(consumer)
    rows = {}
    for tp in sorted(consumer.assignment()):
        rows[f"{tp.topic}[{tp.partition}]"] = {
            "highwater": consumer.highwater(tp),
            "committed": consumer._committed_offset.get(tp),
            "read": consumer._read_offset.get(tp),
            "acked_pending": sorted(consumer._acked.get(tp, ()))[:20],
            "gaps": [(i.begin, i.end) for i in sorted(consumer._gap.get(tp, ()))][:20],
            "unacked": sorted(unacked.get(tp, ()))[:20],
        }
    return rows


def stalled_commits(consumer) -> dict:
    """stalled_partitions over the consumer's own offset state, assigned partitions only."""
    assigned = consumer.assignment()
    acked = {tp: list(offsets) for tp, offsets in consumer._acked.items() if tp in assigned}
    bases = {tp: consumer.commit_base(tp) for tp in assigned}
    return stalled_partitions(bases, acked, unacked_offsets(consumer))


def adopt_committed(consumer, tp, offset: int) -> None:
    """Take the broker's committed offset as ours (a stale seek had written an older one back)."""
    consumer._committed_offset[tp] = offset


async def broker_committed(consumer, tp) -> int | None:
    """The committed offset the group coordinator holds for `tp` (asked on the consumer's thread)."""
    thread = consumer._thread
    return await thread.call_thread(thread._ensure_consumer().committed, tp)


def caught_up(consumer, tp) -> bool:
    """Everything fetched of `tp` was handed to its stream: no batch in flight can land after a rewind."""
    high, read = consumer.highwater(tp), consumer._read_offset.get(tp)
    return high is not None and read is not None and read >= high - 1


async def reread_from(consumer, tp, offset: int) -> None:
    """Rewind `tp` to `offset`. The read offset is cleared rather than set: a record that still
    arrives from an earlier fetch then only moves it up again (a retry next period), whereas a
    read offset of `offset` would have Faust count that jump as a gap and commit over the hole."""
    await consumer._seek(tp, offset)
    consumer._read_offset[tp] = None
    consumer._gap.pop(tp, None)


def install(app, compacted_topics=(), on_reread: Callable[[TP, int], None] | None = None) -> None:
    """Make `app` build its consumer from SeekSafeConsumer (before the consumer exists), and tell
    it what every flow-control clear drops (mode's `FlowControlEvent.clear` empties the queues of
    every stream channel when the flow resumes after a rebalance or recovery)."""
    app.transport.Consumer = type("SeekSafeConsumer", (SeekSafeConsumer,), {
        "compacted_topics": frozenset(compacted_topics), "on_reread": staticmethod(on_reread)})
    flow_control = app.flow_control
    clear = flow_control.clear

    def clear_and_remember() -> None:
        consumer = app.consumer if app._consumer is not None else None
        if isinstance(consumer, SeekSafeConsumer):
            consumer.forget_cleared(queued_messages(flow_control))
        clear()

    flow_control.clear = clear_and_remember


def queued_messages(flow_control) -> list:
    """The messages waiting in the queues a flow-control clear is about to empty."""
    out = []
    for queue in list(flow_control._queues):
        for item in list(queue._queue):
            message = getattr(item, "message", None)
            if message is not None:
                out.append(message)
    return out


def unacked_offsets(consumer) -> dict:
    """tp -> offsets of messages handed to a stream and not acked yet (still being processed)."""
    out: dict = {}
    for message in list(consumer._unacked_messages):
        out.setdefault(message.tp, []).append(message.offset)
    return out


def stalled_partitions(committed: dict, acked: dict, in_flight: dict) -> dict:
    """Partitions whose commit cannot advance: tp -> (committed, lowest acked offset).

    The consumer commits a partition only up to the first offset that was never acked. When the
    acked offsets start past the committed one and nothing in between is still being
    processed, no ack will ever fill the hole (its messages were consumed in an earlier
    assignment, or dropped by a stale seek) and the partition would stay behind forever.
    """
    out = {}
    for tp, offsets in acked.items():
        base = committed.get(tp)
        if base is None or not offsets:
            continue
        low = min(offsets)
        if low > base and not any(base <= o < low for o in in_flight.get(tp, ())):
            out[tp] = (base, low)
    return out
