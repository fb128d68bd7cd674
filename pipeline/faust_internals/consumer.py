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

import asyncio
import logging
from typing import Callable

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from .stable_offsets import wait_until_stable

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
    # exactly-once (set by install()): the inputs whose progress the order flow commits inside its
    # transactions (Faust never commits them), the topics written in transactions (their offsets
    # have holes: commit markers, aborted records), and read_committed isolation for every input
    transactional_inputs: frozenset = frozenset()
    transactional_topics: frozenset = frozenset()
    read_committed: bool = False
    stable_offsets_from: str = ""  # bootstrap servers: wait for stable offsets on assignment
    stable_offsets_timeout_s: float = 15.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fetched_since_assignment: set[TP] = set()
        # partitions the group never committed: the offset reading starts from (the log start)
        self._first_offsets: dict[TP, int] = {}
        # partitions whose queued messages a flow-control clear dropped: tp -> lowest such offset
        self._rewind_to: dict[TP, int] = {}
        self._records_in_hand = False  # a fetch's records are being handed to the streams
        self._txn_committed: dict[TP, int] = {}  # next offsets committed by our transactions
        # transactional topics: offsets handed to the streams since the partition was positioned
        self._yielded: dict[TP, list[int]] = {}
        self._marker_committers: dict[str, Callable] = {}  # input topic -> its flow's offsets-only commit
        self._marker_sightings: dict[TP, tuple] = {}

    def _new_consumer_thread(self):
        thread = super()._new_consumer_thread()
        if self.read_committed:
            make = thread._create_worker_consumer

            def read_committed_consumer(transport):
                consumer = make(transport)
                consumer._isolation_level = "read_committed"  # aiokafka 0.14 reads it at start()
                return consumer

            thread._create_worker_consumer = read_committed_consumer
        return thread

    async def getmany(self, timeout: float):
        self._apply_rewinds()
        try:
            async for tp, message in super().getmany(timeout):
                self._records_in_hand = True
                if tp in self._rewind_to:
                    # fetched before a clear dropped earlier messages of its partition: it comes again
                    self._rewind_to[tp] = min(self._rewind_to[tp], message.offset)
                    continue
                self._fetched_since_assignment.add(tp)
                if tp.topic in self.transactional_topics:
                    self._yielded.setdefault(tp, []).append(message.offset)
                yield tp, message
        finally:
            self._records_in_hand = False

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
                self.forget_yielded_from(tp, offset)

    def forget_yielded_from(self, tp: TP, offset: int) -> None:
        """The partition is read again from `offset`: what was handed out from there is not pending."""
        if tp in self._yielded:
            self._yielded[tp] = [o for o in self._yielded[tp] if o < offset]

    async def on_partitions_revoked(self, revoked) -> None:
        self._fetched_since_assignment.difference_update(revoked)
        for tp in revoked:
            self._first_offsets.pop(tp, None)
            self._rewind_to.pop(tp, None)
            self._txn_committed.pop(tp, None)
            self._marker_sightings.pop(tp, None)
            self._yielded.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        generation = self.app.consumer_generation_id
        if self.stable_offsets_from and self.transactional_inputs:
            # a transaction of the partitions' previous owner may still hold their offsets (KIP-447)
            pending = sorted((tp.topic, tp.partition) for tp in self.assignment()
                             if tp.topic in self.transactional_inputs)
            waited = await asyncio.to_thread(wait_until_stable, self.stable_offsets_from, self.app.conf.id,
                                             pending, self.stable_offsets_timeout_s)
            if waited > 0.5:
                log.info("waited %.1fs for the group's transactional offsets to be stable", waited)
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
        if tp.topic in self.transactional_topics:
            return self._transactional_new_offset(tp)
        acked, base = self._acked[tp], self.commit_base(tp)
        if acked and base is not None and min(acked) > base:
            if not (self.offsets_may_be_missing(tp.topic) and self._gap[tp].at(base)):
                return None
        return super()._new_offset(tp)

    def _transactional_new_offset(self, tp: TP):
        """On a topic written in transactions every other offset may be a commit marker, and
        Faust's gap bookkeeping misses the ones right after a seek or after offset 0. Here the
        consumer hands the streams a partition's records in offset order and skips only offsets
        that hold no record for a read_committed reader, so the next offset to commit is the
        lowest handed-out offset not yet acked, else one past the last one handed out."""
        yielded = self._yielded.get(tp)
        if not yielded:
            return None
        acked = set(self._acked[tp])
        pending = next((o for o in yielded if o not in acked), None)
        point = pending if pending is not None else yielded[-1] + 1
        self._yielded[tp] = [o for o in yielded if o >= point]
        done = [o for o in self._acked[tp] if o < point]
        if done:
            self._acked[tp] = [o for o in self._acked[tp] if o >= point]
            self._acked_index[tp].difference_update(done)
        self._gap[tp].chop(0, point)
        return point

    def offsets_may_be_missing(self, topic: str) -> bool:
        """Compaction removes records; a transaction's commit marker takes an offset of its own."""
        return topic in self.compacted_topics or topic in self.transactional_topics

    async def _commit(self, offsets) -> bool:
        """Faust's offset commit, less the inputs whose progress commits inside transactions (a
        plain commit landing after a transaction's would move the group back)."""
        if self.transactional_inputs:
            offsets = {tp: o for tp, o in offsets.items() if tp.topic not in self.transactional_inputs}
            if not offsets:
                return True
        return await super()._commit(offsets)

    def committed_in_transaction(self, offsets: dict) -> None:
        """A transaction committed these next offsets for the group (tp -> offset). Kept apart
        from Faust's own committed offsets, which its commit timer may set back to what was acked."""
        assigned = self.assignment()
        for tp, offset in offsets.items():
            if tp in assigned and self._txn_committed.get(tp, -1) < offset:
                self._txn_committed[tp] = offset
            # a raw input's committed offset is Faust's to move once it acks the batch (an offset
            # below it would not count as acked); a transactional topic's acks do not matter
            if tp in assigned and tp.topic in self.transactional_topics and (self._committed_offset.get(tp) or 0) < offset:
                self._committed_offset[tp] = offset
            if tp in self._yielded:  # Faust will not count their acks: they are below the committed offset
                self._yielded[tp] = [o for o in self._yielded[tp] if o >= offset]
            if tp in self._gap:
                self._gap[tp].chop(0, offset)

    def reread_uncommitted(self, tps) -> None:
        """An aborted transaction's partitions are read again from their committed offsets."""
        for tp in tps:
            base = self._txn_committed.get(tp, self.commit_base(tp))
            if base is not None and (tp not in self._rewind_to or base < self._rewind_to[tp]):
                self._rewind_to[tp] = base

    def take_in_order(self, messages: list) -> tuple[list[int], dict]:
        """Exactly-once: which of a batch's messages (in arrival order) to process, and each
        partition's next offset after them. A message below its partition's committed offset was
        processed and committed already (dropped); one above it means messages in between never
        reached the stream (its partition's remaining ones are dropped, and it is read again from
        the committed offset before the next fetch)."""
        expected = {}
        for tp in {m.tp for m in messages}:
            expected[tp] = self._txn_committed.get(tp, self.commit_base(tp))
        sparse = {tp for tp in expected if self.offsets_may_be_missing(tp.topic)}
        keep, rewind, after = in_order(expected, messages, sparse)
        for tp, offset in rewind.items():
            log.warning("%s[%s]: offset %s expected, a later one came: re-reading from %s", tp.topic,
                        tp.partition, offset, offset)
            if tp not in self._rewind_to or offset < self._rewind_to[tp]:
                self._rewind_to[tp] = offset
        for tp in after:
            if tp not in rewind and tp in self._rewind_to and self._rewind_to[tp] == expected[tp]:
                self._rewind_to.pop(tp)  # the expected message came after all: no re-read needed
        return keep, after

    async def force_commit(self, *args, **kwargs) -> bool:
        did = await super().force_commit(*args, **kwargs)
        if self.transactional_topics:
            await self._commit_past_markers()
        return did

    async def _commit_past_markers(self) -> None:
        """A transactional topic ends in a commit marker, which no stream ever acks: the group's
        offset would stay one short of the end for good (a lag that never drains). Where the
        consumer's position is past the committed offset while nothing of the partition was read
        beyond it (everything handed out is committed) and no fetch is in hand, [committed, position)
        holds only markers and aborted records; seen so at two commits in a row, it is committed."""
        due = {}
        assigned = self.assignment()
        for tp in assigned:
            if tp.topic not in self.transactional_topics:
                continue
            state = self._marker_state(tp)
            if state is None:
                self._marker_sightings.pop(tp, None)
                continue
            if self._marker_sightings.get(tp) == state:
                due[tp] = state[1]
                self._marker_sightings.pop(tp, None)
            else:
                self._marker_sightings[tp] = state
        by_committer: dict = {}
        for tp, offset in due.items():
            by_committer.setdefault(self._marker_committers.get(tp.topic), {})[tp] = offset
        for committer, offsets in by_committer.items():
            if committer is None:
                await self._commit_offsets(offsets)
            else:
                await committer(offsets)  # its transactions commit this input's offsets, never Faust

    def commit_markers_with(self, committer: Callable, topics) -> None:
        """Offsets of `topics` past their end markers are committed by `committer` (a transaction)."""
        for topic in topics:
            self._marker_committers[topic] = committer

    def _marker_state(self, tp: TP) -> tuple | None:
        committed = self.commit_base(tp)
        if committed is None or self._yielded.get(tp) or self._records_in_hand:
            return None
        position = _position(self._thread._ensure_consumer(), tp)
        if position is None or position <= committed:
            return None
        return committed, position

    def group_metadata(self, generation: int | None = None) -> bytes:
        """This member's group metadata, as librdkafka's send_offsets_to_transaction takes it: the
        broker refuses the transaction's offsets from any generation but the current one, so a
        worker the group has moved on from (a zombie) cannot commit its outputs. `generation`:
        the one the committed messages were fetched in (default: the consumer's current one)."""
        coordinator = self._thread._ensure_consumer()._coordinator
        if generation is None:
            generation = coordinator.generation
        return group_metadata_bytes(self.app.conf.id, generation, coordinator.member_id or "",
                                    self.app.conf.consumer_group_instance_id)

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


def _position(consumer, tp) -> int | None:
    """aiokafka's position of `tp` (the next offset it will hand out; past control batches), read
    without a round trip to the consumer's thread (an int read); None while unknown."""
    from aiokafka import TopicPartition as KafkaTP
    subscription = consumer._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return None
    try:
        state = subscription.assignment.state_value(KafkaTP(tp.topic, tp.partition))
    except KeyError:
        return None
    return state.position if state is not None and state.has_valid_position else None


def group_metadata_bytes(group_id: str, generation: int, member_id: str, instance_id: str | None = None) -> bytes:
    """librdkafka's serialized consumer-group metadata (`rd_kafka_consumer_group_metadata_write`,
    confluent-kafka 2.16.1 / librdkafka 2.x: "CGMDv2:", the generation as a native int32, then
    NUL-terminated group and member ids, a null flag and the instance id). Checked against
    librdkafka's own output by tests/unit/test_transactions.py."""
    import struct
    out = b"CGMDv2:" + struct.pack("=i", generation) + group_id.encode() + b"\0" + member_id.encode() + b"\0"
    if instance_id is None:
        return out + b"\x01"
    return out + b"\x00" + instance_id.encode() + b"\0"


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
            "position": _position(consumer._thread._ensure_consumer(), tp),
            "handed_out_pending": list(getattr(consumer, "_yielded", {}).get(tp, ()))[:20],
        }
    return rows


def stalled_commits(consumer) -> dict:
    """stalled_partitions over the consumer's own offset state, assigned partitions only."""
    # a transactional topic's commit cannot stall (SeekSafeConsumer._transactional_new_offset)
    assigned = {tp for tp in consumer.assignment() if tp.topic not in getattr(consumer, "transactional_topics", ())}
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
    if isinstance(consumer, SeekSafeConsumer):
        consumer.forget_yielded_from(tp, offset)


def install(app, compacted_topics=(), on_reread: Callable[[TP, int], None] | None = None,
            transactional_inputs=(), transactional_topics=(), stable_offsets_from: str = "",
            stable_offsets_timeout_s: float = 15.0) -> None:
    """Make `app` build its consumer from SeekSafeConsumer (before the consumer exists), and tell
    it what every flow-control clear drops (mode's `FlowControlEvent.clear` empties the queues of
    every stream channel when the flow resumes after a rebalance or recovery). With
    `stable_offsets_from` (bootstrap servers) an assignment first waits until no transaction
    holds the transactional inputs' offsets (stable_offsets)."""
    app.transport.Consumer = type("SeekSafeConsumer", (SeekSafeConsumer,), {
        "stable_offsets_from": stable_offsets_from, "stable_offsets_timeout_s": stable_offsets_timeout_s,
        "compacted_topics": frozenset(compacted_topics), "on_reread": staticmethod(on_reread),
        "transactional_inputs": frozenset(transactional_inputs), "transactional_topics": frozenset(transactional_topics),
        "read_committed": bool(transactional_inputs)})
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
        if not message.acked:  # Faust leaves an acked message below the committed offset in the set
            out.setdefault(message.tp, []).append(message.offset)
    return out


def in_order(expected: dict, messages: list, sparse=frozenset()) -> tuple[list[int], dict, dict]:
    """Per partition, the messages that continue from `expected` (tp -> next offset, None when
    unknown: anything goes): (indexes to keep, tp -> offset to re-read from, tp -> next offset
    after the kept ones, for partitions that kept any). On a `sparse` partition (commit markers,
    compaction) a later offset may follow: only what is below the expected one is dropped."""
    keep: list[int] = []
    rewind: dict = {}
    after: dict = {}
    for index, message in enumerate(messages):
        tp = message.tp
        if tp in rewind:
            continue
        want = after.get(tp, expected.get(tp))
        if want is None or message.offset == want or (tp in sparse and message.offset > want):
            keep.append(index)
            after[tp] = message.offset + 1
        elif message.offset > want:
            rewind[tp] = want
    return keep, rewind, after


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
