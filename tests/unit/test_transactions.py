"""Exactly-once pieces that need no broker: the group metadata librdkafka takes, and which of a
batch's messages continue from the committed offsets."""
from types import SimpleNamespace

from confluent_kafka import Consumer
from faust.types import TP

from pipeline.faust_internals.consumer import group_metadata_bytes, in_order

A, B = TP("orders.raw.tmall", 0), TP("orders.raw.jd", 1)


def test_group_metadata_is_byte_for_byte_what_librdkafka_writes():
    consumer = Consumer({"group.id": "orderstream-eos", "bootstrap.servers": "127.0.0.1:9"})
    try:
        theirs = consumer.consumer_group_metadata()   # before joining: generation -1, no member id
    finally:
        consumer.close()
    assert group_metadata_bytes("orderstream-eos", -1, "") == theirs


def test_group_metadata_carries_generation_member_and_instance():
    ours = group_metadata_bytes("g", 7, "member-1", "worker-a")
    assert ours.startswith(b"CGMDv2:") and b"g\0member-1\0\0worker-a\0" in ours
    assert int.from_bytes(ours[7:11], "little" if ours[7] == 7 else "big") == 7


def m(tp, offset):
    return SimpleNamespace(tp=tp, offset=offset)


def test_messages_continuing_from_the_committed_offset_are_kept():
    keep, rewind, after = in_order({A: 10, B: 3}, [m(A, 10), m(B, 3), m(A, 11), m(B, 4)])
    assert keep == [0, 1, 2, 3] and rewind == {} and after == {A: 12, B: 5}


def test_messages_below_the_committed_offset_are_done_already():
    keep, rewind, after = in_order({A: 10}, [m(A, 8), m(A, 9), m(A, 10)])
    assert keep == [2] and rewind == {} and after == {A: 11}


def test_a_hole_rereads_its_partition_and_leaves_the_others_alone():
    keep, rewind, after = in_order({A: 10, B: 3}, [m(A, 12), m(B, 3), m(A, 13), m(A, 10)])
    assert keep == [1] and rewind == {A: 10} and after == {B: 4}
    # a hole after kept messages: the kept ones count, the rest is read again from the hole
    keep, rewind, after = in_order({A: 10}, [m(A, 10), m(A, 11), m(A, 14), m(A, 12)])
    assert keep == [0, 1] and rewind == {A: 12} and after == {A: 12}


def test_an_unknown_committed_offset_takes_the_batch_as_it_comes():
    keep, rewind, after = in_order({A: None}, [m(A, 5), m(A, 6)])
    assert keep == [0, 1] and after == {A: 7}


def test_on_a_partition_with_commit_markers_a_later_offset_may_follow():
    keep, rewind, after = in_order({A: 10}, [m(A, 9), m(A, 12), m(A, 14)], sparse={A})
    assert keep == [1, 2] and rewind == {} and after == {A: 15}
