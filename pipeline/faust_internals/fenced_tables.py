"""Table writes a zombie worker made never win over its successor's.

A worker frozen past its session (a long GC pause, SIGSTOP, a VM stall) wakes up still holding
messages of partitions the group gave to another worker. Its Kafka transaction is refused (the
group generation it commits with is stale), but a table's changelog write goes through Faust's
own producer, outside the transaction, and lands. Last writer wins on a changelog: once the new
owner rebuilds the table (the next rebalance), the zombie's stale view (a hold it never saw
resolved, an index entry it never saw removed) would replace the owner's.

So every changelog record a fenced table writes carries the writer's consumer-group generation
in a header, and a record from an older generation than one already applied to its changelog
partition is skipped when the table is rebuilt or a standby follows it (counted as
orderstream_table_writes_fenced_total). A worker only writes a partition's changelog while it
owns that partition, and ownership passes on with a higher generation, so within one changelog
partition the generations of honest writes never go down; only a zombie's late writes do.

Upstream (faust-streaming 0.15.3, pinned in versions.py): `Table.send_changelog` takes no
headers, so it is re-done here with them; `Table.apply_changelog_batch` hands the batch to the
store, so the skip happens before it. Records without the header (written before this) pass.
"""
from __future__ import annotations

import contextvars
from typing import Callable, Iterable

GENERATION_HEADER = "writer-generation"

# the generation a unit of work started under (set by agents.common.ExactlyOnce): a zombie's
# late writes keep the generation it had, even if it rejoins before they are sent
work_generation: contextvars.ContextVar[int | None] = contextvars.ContextVar("work_generation", default=None)


class GenerationFence:
    """Per changelog partition, the highest writer generation applied so far."""

    def __init__(self) -> None:
        self.highest: dict = {}

    def admit(self, tp, generation: int | None) -> bool:
        """False for a record from an older generation than one already applied here."""
        if generation is None:
            return True
        top = self.highest.get(tp)
        if top is not None and generation < top:
            return False
        self.highest[tp] = generation
        return True


def generation_of(headers) -> int | None:
    """The writer generation a changelog record carries; None when it has none (or a bad one)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == GENERATION_HEADER and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def fence_table(table, current_generation: Callable[[], int], on_fenced: Callable[[int], None]) -> None:
    """Make `table`'s changelog writes carry the writer's generation and its rebuilds skip stale
    ones. `current_generation` is read when no unit of work set one; `on_fenced(n)` counts skips."""
    fence = GenerationFence()
    topic = table.changelog_topic
    apply_batch = table.apply_changelog_batch

    def send_changelog(partition, key, value, key_serializer=None, value_serializer=None):
        generation = work_generation.get()
        if generation is None:
            generation = current_generation()
        if partition is not None:
            fence.admit((topic.get_topic_name(), partition), generation)
        return topic.send_soon(
            key=key, value=value, partition=partition,
            headers=[(GENERATION_HEADER, str(generation).encode())],
            key_serializer=key_serializer if key_serializer is not None else table.key_serializer,
            value_serializer=value_serializer if value_serializer is not None else table.value_serializer,
            callback=table._on_changelog_sent, eager_partitioning=True)

    def apply_changelog_batch(batch: Iterable) -> None:
        kept, skipped = [], 0
        for event in batch:
            message = event.message
            if fence.admit((message.topic, message.partition), generation_of(message.headers)):
                kept.append(event)
            else:
                skipped += 1
        if skipped:
            on_fenced(skipped)
        apply_batch(kept)

    table.send_changelog = send_changelog
    table.apply_changelog_batch = apply_changelog_batch
