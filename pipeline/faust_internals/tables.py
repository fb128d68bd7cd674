"""Faust table workarounds: windowed keys without the in-memory index, changelog writes through
our producer, direct RocksDB reads, and one RocksDB memory budget per worker."""
from __future__ import annotations

import json

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.types import TP

from .fenced_tables import GENERATION_HEADER, work_generation
from .versions import UnsupportedLibraryVersion


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


class DirectWindowedTable:
    """Reads and writes a RocksDB-backed windowed table's entries as Faust would (same keys and
    bytes in the partition's RocksDB and on the changelog topic, and the persisted offset Faust
    recovers from), straight from the partition's DB and through our librdkafka producer.

    Upstream: `Table.__setitem__` sends each changelog record through Faust's producer, about
    100 us of Python per write on a fast core (20 % of a hot-path order here), and a windowed
    read goes through a WindowSet, the current event and the store's key index per lookup.
    Recovery, standby and rebalancing stay Faust's: it reads the same changelog topic back."""

    def __init__(self, table, out) -> None:
        self.table = table
        self.store = table.data
        self.topic = table.changelog_topic.get_topic_name()
        self.out = out
        out.track_offsets(self.topic)

    def get_windowed(self, key, timestamp: float, partition: int, back=0.0):
        """What `table[key].current()` (back=0) or `.delta(back)` returns for an event of that
        timestamp on that partition; None where Faust would return the table's default."""
        window = self.table.window
        raw = self.store._db_for_partition(partition).get(
            self.store._encode_key((key, window.delta(timestamp, back))))
        return None if raw is None else self.store._decode_value(raw)

    def set_windowed(self, key, value, timestamp: float, partition: int) -> None:
        """What `table[key] = value` does for a windowed table, for an event of that timestamp."""
        for window_range in self.table._window_ranges(timestamp):
            self.set((key, window_range), value, partition)

    def set(self, key, value, partition: int) -> None:
        raw_key, raw_value = self.store._encode_key(key), self.store._encode_value(value)
        self.store._db_for_partition(partition).put(raw_key, raw_value)
        generation = work_generation.get()
        if generation is None:
            generation = self.table.app.consumer_generation_id
        self.out.send(self.topic, raw_key, raw_value, [(GENERATION_HEADER, str(generation).encode())],
                      partition=partition)  # a fenced table (fenced_tables) skips a zombie's on rebuild

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


ROCKSDB_MEMORY_PROPERTIES = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def rocksdb_memory(table) -> dict[str, int]:
    """Bytes of memtables and table readers of a table's open RocksDBs; {} on the memory store.
    (Faust keeps its per-partition DBs privately, in `Store._dbs`.)"""
    dbs = list(getattr(table.data, "_dbs", {}).values())
    return {kind: sum(db.property_int_value(prop) or 0 for db in dbs)
            for kind, prop in ROCKSDB_MEMORY_PROPERTIES.items()} if dbs else {}


class SharedMemoryRocksDBOptions(RocksDBOptions):
    """Faust's RocksDB options with one memory budget for all of a worker's DBs.

    Upstream: Faust opens one RocksDB per table partition, each with a block cache of its own
    and memtables limited only per DB; twelve of them (three tables, four partitions) let RocksDB
    grow by hundreds of MB. Here every DB uses one LRU block cache, and one write buffer manager
    charges all memtables to that cache, so RocksDB's memory stays under `cache` in total.
    Index and filter blocks live in the cache too, instead of growing with the data on disk."""

    def __init__(self, cache: "rocksdict.Cache", write_buffers: "rocksdict.WriteBufferManager", **options) -> None:
        super().__init__(**options)
        self.shared_cache, self.shared_write_buffers = cache, write_buffers

    def as_options(self):
        """Faust's own options, with the write buffer manager and a table factory on the shared cache."""
        if not self.use_rocksdict:
            raise UnsupportedLibraryVersion("the shared RocksDB memory budget needs the rocksdict driver")
        db_options = super().as_options()
        db_options.set_write_buffer_manager(self.shared_write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(self.shared_cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        db_options.set_block_based_table_factory(table)
        return db_options


class RocksDBBudget:
    """One block cache and one memtable limit, shared by every RocksDB table of a worker: half of
    `total_bytes` may be memtables, and all of it is charged to the cache."""

    def __init__(self, total_bytes: int) -> None:
        self.cache = rocksdict.Cache(total_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            total_bytes // 2, False, self.cache)

    def share_with(self, table) -> None:
        """Make `table` open its partitions' DBs within this budget (before any DB is open)."""
        store = table.data
        if getattr(store, "_dbs", None):
            raise RuntimeError(f"{table.name}: RocksDBs already open; share the budget before assignment")
        current = store.rocksdb_options
        store.rocksdb_options = SharedMemoryRocksDBOptions(
            self.cache, self.write_buffers,
            max_open_files=current.max_open_files, write_buffer_size=current.write_buffer_size,
            max_write_buffer_number=current.max_write_buffer_number,
            target_file_size_base=current.target_file_size_base, bloom_filter_size=current.bloom_filter_size,
            use_rocksdict=current.use_rocksdict, ttl=current.ttl)

    def usage_bytes(self) -> int:
        return self.cache.get_usage()
