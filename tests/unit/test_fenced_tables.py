"""A zombie's late changelog writes never replace its successor's (pipeline.faust_internals.fenced_tables)."""
from types import SimpleNamespace

from pipeline.faust_internals.fenced_tables import (GENERATION_HEADER, GenerationFence, fence_table,
                                                    generation_of, work_generation)


def test_an_older_generation_after_a_newer_one_is_refused_per_partition():
    fence = GenerationFence()
    assert fence.admit(("c", 0), 3)
    assert fence.admit(("c", 0), 3)          # the same writer again
    assert fence.admit(("c", 0), 5)          # ownership passed on
    assert not fence.admit(("c", 0), 3)      # the zombie's late write
    assert fence.admit(("c", 1), 3)          # another partition has its own history
    assert fence.admit(("c", 0), None)       # a record from before the header existed


def test_generation_header_reading():
    assert generation_of([(GENERATION_HEADER, b"7")]) == 7
    assert generation_of({GENERATION_HEADER: b"7"}) == 7
    assert generation_of([("other", b"1")]) is None
    assert generation_of(None) is None
    assert generation_of([(GENERATION_HEADER, b"x")]) is None


class FakeTopic:
    def __init__(self):
        self.sent = []

    def get_topic_name(self):
        return "ns.holds-changelog"

    def send_soon(self, **kwargs):
        self.sent.append(kwargs)
        return SimpleNamespace(message=SimpleNamespace(partition=kwargs["partition"]))


def event(partition, key, generation):
    headers = [] if generation is None else [(GENERATION_HEADER, str(generation).encode())]
    return SimpleNamespace(key=key, message=SimpleNamespace(topic="ns.holds-changelog", partition=partition,
                                                            headers=headers))


def test_a_fenced_table_tags_its_writes_and_skips_a_zombies_on_rebuild():
    applied, fenced = [], []
    table = SimpleNamespace(changelog_topic=FakeTopic(), key_serializer="json", value_serializer="raw",
                            _on_changelog_sent=None, apply_changelog_batch=lambda batch: applied.extend(batch))
    generation = {"now": 4}
    fence_table(table, lambda: generation["now"], fenced.append)

    table.send_changelog(0, "o1", b"held")
    assert table.changelog_topic.sent[-1]["headers"] == [(GENERATION_HEADER, b"4")]
    token = work_generation.set(2)            # a unit of work fetched under generation 2
    try:
        table.send_changelog(0, "o1", b"late")
    finally:
        work_generation.reset(token)
    assert table.changelog_topic.sent[-1]["headers"] == [(GENERATION_HEADER, b"2")]

    # rebuilding: the old owner's records, the successor's, then the zombie's late one
    table.apply_changelog_batch([event(1, "a", 3), event(1, "b", 6), event(1, "c", 3), event(1, "d", None)])
    assert [e.key for e in applied] == ["a", "b", "d"]
    assert fenced == [1]
