"""The consumer keeps the newest committed offset when a late seek reports an older one."""
from faust.types import TP

from pipeline.faust_internals.consumer import keep_newest_committed

A, B, C = TP("orders.raw.tmall", 0), TP("orders.raw.tmall", 1), TP("orders.raw.jd", 0)


def test_a_late_seek_cannot_move_a_committed_offset_back():
    # we committed 15 while a seek that had read 13 was in flight
    assert keep_newest_committed({A: 15}, {A: 13}) == {A: 15}


def test_a_seek_that_saw_a_newer_commit_wins():
    # another worker committed further while the partition was away: take the broker's word
    assert keep_newest_committed({A: 10}, {A: 40}) == {A: 40}


def test_partitions_the_seek_did_not_report_are_left_alone():
    # revoked meanwhile (not in the seek's result): no stale entry is brought back
    assert keep_newest_committed({A: 15, B: 7}, {A: 15}) == {A: 15}


def test_unknown_offsets_are_filled_from_what_we_knew():
    assert keep_newest_committed({A: 5, C: None}, {A: None, C: 3}) == {A: 5, C: 3}


from pipeline.faust_internals.consumer import stalled_partitions  # noqa: E402


def test_acked_offsets_past_the_committed_one_are_a_stall():
    assert stalled_partitions({A: 13}, {A: [15, 16, 17]}, {}) == {A: (13, 15)}
    # a hole of one too: our consumer no longer commits over it, so it must be re-read
    assert stalled_partitions({A: 13}, {A: [14, 15]}, {}) == {A: (13, 14)}


def test_the_next_offset_acked_is_progress_not_a_stall():
    assert stalled_partitions({A: 13}, {A: [13, 14]}, {}) == {}


def test_a_message_still_being_processed_inside_the_hole_is_not_a_stall():
    assert stalled_partitions({A: 13}, {A: [15, 16]}, {A: [13]}) == {}
    # in flight elsewhere on the partition does not explain the hole
    assert stalled_partitions({A: 13}, {A: [15, 16]}, {A: [40]}) == {A: (13, 15)}


def test_partitions_without_a_committed_offset_or_acks_are_skipped():
    assert stalled_partitions({A: None, B: 4}, {A: [9], B: []}, {}) == {}


def test_unacked_offsets_are_grouped_by_partition():
    from types import SimpleNamespace
    from pipeline.faust_internals.consumer import unacked_offsets
    messages = [SimpleNamespace(tp=A, offset=7, acked=False), SimpleNamespace(tp=B, offset=1, acked=False),
                SimpleNamespace(tp=A, offset=9, acked=False),
                SimpleNamespace(tp=A, offset=3, acked=True)]  # acked below the committed offset: Faust keeps it
    grouped = unacked_offsets(SimpleNamespace(_unacked_messages=messages))
    assert {tp: sorted(offsets) for tp, offsets in grouped.items()} == {A: [7, 9], B: [1]}


def consumer_with(committed: int | None, acked: list[int], gaps=(), first: int | None = None):
    import faust
    from intervaltree import IntervalTree

    from pipeline.faust_internals import consumer as seek_safe
    app = faust.App("offsets-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    seek_safe.install(app)
    c = app.consumer
    c._committed_offset[A] = committed
    c._acked[A] = list(acked)
    c._gap[A] = IntervalTree.from_tuples(gaps)
    if first is not None:
        c._first_offsets[A] = first
    return c


def test_no_commit_over_a_hole_of_one():
    assert consumer_with(13, [14, 15])._new_offset(A) is None      # 13 was never acked
    assert consumer_with(13, [13, 14, 15])._new_offset(A) == 16
    # a gap Faust recorded at 13: the same race records the offset it skipped as one, so on a topic
    # that is not compacted it is not believed; on a compacted one 13 may really not exist
    assert consumer_with(13, [14, 15], gaps=[(13, 14)])._new_offset(A) is None
    compacted = consumer_with(13, [14, 15], gaps=[(13, 14)])
    compacted.compacted_topics = frozenset({A.topic})
    assert compacted._new_offset(A) == 16


def test_no_commit_over_a_hole_before_the_first_commit():
    """Offset 0 of a partition never committed was skipped: upstream commits past it, we wait."""
    assert consumer_with(None, [1, 2], first=0)._new_offset(A) is None
    assert consumer_with(None, [0, 1, 2], first=0)._new_offset(A) == 3
    assert consumer_with(None, [5, 6], first=5)._new_offset(A) == 7     # the log starts at 5
    assert consumer_with(None, [1, 2])._new_offset(A) == 3              # start unknown: upstream's answer


def test_a_hole_before_the_first_commit_is_a_stall_the_watchdog_sees():
    from pipeline.faust_internals.consumer import stalled_commits

    c = consumer_with(None, [1, 2], first=0)
    c.assignment = lambda: {A}
    assert stalled_commits(c) == {A: (0, 1)}


def test_a_flow_control_clear_rereads_each_partition_from_the_lowest_message_it_dropped():
    """Issue 25's skip: messages delivered into a stream queue while the restart's seek was under
    way were emptied by Faust's flow control, and the partition went on after them."""
    from types import SimpleNamespace

    c = consumer_with(13, [])
    c.assignment = lambda: {A, B}
    c.app.consumer_generation_id = 7
    queued = [SimpleNamespace(tp=A, offset=o, generation_id=7) for o in (15, 14, 16)]
    queued += [SimpleNamespace(tp=B, offset=3, generation_id=6),    # an earlier generation: re-assigned anyway
               SimpleNamespace(tp=C, offset=9, generation_id=7)]    # no longer ours
    c.forget_cleared(queued)
    assert c._rewind_to == {A: 14}
    c.forget_cleared([SimpleNamespace(tp=A, offset=20, generation_id=7)])
    assert c._rewind_to == {A: 14}                                  # the lowest drop wins


def test_a_queued_rewind_is_applied_before_the_next_fetch_and_counted():
    from types import SimpleNamespace

    c = consumer_with(13, [])
    c.assignment = lambda: {A}
    sought, counted = [], []
    c._thread = SimpleNamespace(seek=lambda tp, offset: sought.append((tp, offset)))
    c.on_reread = lambda tp, offset: counted.append((tp, offset))
    c._rewind_to = {A: 14, B: 2}                                     # B was revoked meanwhile
    c._apply_rewinds()
    assert sought == [(A, 14)] and counted == [(A, 14)]
    assert c._read_offset[A] == 14 and c._rewind_to == {}


def test_taking_a_batch_in_order_with_no_committed_offset_known_and_no_rewind_pending():
    from types import SimpleNamespace

    c = consumer_with(None, [])
    c.assignment = lambda: {A}
    keep, after = c.take_in_order([SimpleNamespace(tp=A, offset=3), SimpleNamespace(tp=A, offset=4)])
    assert keep == [0, 1] and after == {A: 5} and c._rewind_to == {}
    c._txn_committed[A] = 5
    c._rewind_to[A] = 5                      # a rewind asked for; the expected message came anyway
    keep, after = c.take_in_order([SimpleNamespace(tp=A, offset=5)])
    assert keep == [0] and c._rewind_to == {}
