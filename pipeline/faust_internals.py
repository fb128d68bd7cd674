"""Every place the worker relies on Faust's private behaviour, pinned to the versions it was written for.

`require_pinned_versions()` runs when the app is built: on any other faust-streaming or aiokafka
version the worker refuses to start instead of silently misreading a renamed attribute.
"""
from __future__ import annotations

import contextlib
import json
import weakref
from importlib.metadata import version

from faust import streams as faust_streams
from faust.types import TP

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class UnsupportedLibraryVersion(RuntimeError):
    pass


def require_pinned_versions() -> None:
    wrong = {name: version(name) for name, want in PINNED.items() if version(name) != want}
    if wrong:
        raise UnsupportedLibraryVersion(
            f"pipeline/faust_internals.py was written against {PINNED}, found {wrong}: re-check every "
            "workaround in that module against the new version, then update PINNED")


@contextlib.contextmanager
def handling(event):
    """Make `event` Faust's current event while a batch handles it.

    Upstream: a table write takes its changelog partition and its RocksDB partition from the
    stream's *current* event; inside `take_events` that is the last event buffered, not the one
    being handled, so without this an order's dedupe state lands in another partition."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def without_key_index(table) -> None:
    """Stop a windowed table from indexing every key it ever wrote in memory.

    Upstream: `Collection._maybe_set_key_ttl` pushes each written key into a per-(partition,
    window end) set and a heap, kept until the window expires: with a 24 h window that is every
    order of a day in the worker's memory (the steady RSS rise). The table keeps `expires` (its
    changelog topic is created with that retention) and `pipeline.window_sweep` deletes expired
    windows from the store instead."""
    table._maybe_set_key_ttl = _no_index
    table._maybe_del_key_ttl = _no_index


def _no_index(key, partition) -> None:
    return None


def window_end(raw_key: bytes) -> float:
    """End of the window a stored windowed-table key belongs to; +inf when it is not one.
    Upstream layout (json key serializer): `["<key>", [window start, window end]]`."""
    try:
        return float(json.loads(raw_key)[1][1])
    except (ValueError, TypeError, IndexError, KeyError):
        return float("inf")


class ChangelogWriter:
    """Writes a RocksDB-backed table's entries as Faust would (same bytes in the partition's
    RocksDB and on the changelog topic, and the persisted offset Faust recovers from), but
    sends the changelog record through our librdkafka producer.

    Upstream: `Table.__setitem__` sends each changelog record through Faust's producer, about
    100 us of Python per write on a fast core (20 % of a hot-path order here). Recovery, standby
    and rebalancing stay Faust's: it reads the same changelog topic back."""

    def __init__(self, table, out) -> None:
        self.table = table
        self.store = table.data
        self.topic = table.changelog_topic.get_topic_name()
        self.out = out
        out.track_offsets(self.topic)

    def set_windowed(self, key, value, timestamp: float, partition: int) -> None:
        """What `table[key] = value` does for a windowed table, for an event of that timestamp."""
        for window_range in self.table._window_ranges(timestamp):
            self.set((key, window_range), value, partition)

    def set(self, key, value, partition: int) -> None:
        raw_key, raw_value = self.store._encode_key(key), self.store._encode_value(value)
        self.store._db_for_partition(partition).put(raw_key, raw_value)
        self.out.send(self.topic, raw_key, raw_value, partition=partition)

    def persist_offsets(self) -> None:
        """After the outputs were flushed: what Faust's `_on_changelog_sent` records per write."""
        for partition, offset in self.out.delivered_offsets(self.topic).items():
            self.store.set_persisted_offset(TP(self.topic, partition), offset)


def keys_in_order(table) -> list:
    """One iterator per active partition of a RocksDB table, over its keys in sorted order,
    straight from RocksDB: a caller may stop early, nothing else is read or decoded.
    (Faust's own iteration chains the partitions and decodes every value.)"""
    return [_decoded_keys(db) for db in active_dbs(table)]


def _decoded_keys(db):
    for raw in db.keys():
        try:
            yield json.loads(raw)
        except ValueError:
            continue  # Faust's own offset key


def active_dbs(table) -> list:
    """The open RocksDBs of a table's partitions this worker owns (Faust has no public view)."""
    return list(table.data._dbs_for_actives())


def committed_offsets(consumer) -> dict:
    """tp -> the offset this worker last committed (Faust keeps it privately)."""
    return dict(getattr(consumer, "_committed_offset"))
