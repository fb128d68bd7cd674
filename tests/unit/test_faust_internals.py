"""The quarantined Faust workarounds: version pin, current-event switch, windowed-key parsing."""
from __future__ import annotations

import inspect
import time
from types import SimpleNamespace

import faust
import pytest
from faust.streams import current_event
from faust.tables.table import Table

from pipeline import faust_internals


def test_the_installed_versions_are_the_pinned_ones():
    faust_internals.require_pinned_versions()


def test_any_other_version_refuses_to_start(monkeypatch):
    monkeypatch.setitem(faust_internals.PINNED, "faust-streaming", "0.0.1")
    with pytest.raises(faust_internals.UnsupportedLibraryVersion, match="0.0.1"):
        faust_internals.require_pinned_versions()


def test_handling_makes_an_event_current_and_restores_the_previous_one():
    class Event(SimpleNamespace):
        pass
    outer, inner = Event(name="outer"), Event(name="inner")
    with faust_internals.handling(outer):
        with faust_internals.handling(inner):
            assert current_event() is inner
        assert current_event() is outer
    assert current_event() is None


@pytest.mark.parametrize("raw, end", [
    (b'["TM-0a1b", [1700000000.0, 1700086399.9]]', 1700086399.9),
    (b"__faust\x00offset__", float("inf")),       # the store's own offset key
    (b'"TM-0a1b"', float("inf")),                  # a key of a table without windows
])
def test_window_end_reads_the_stored_key_layout(raw, end):
    assert faust_internals.window_end(raw) == end


def test_without_key_index_keeps_no_key_in_memory():
    app = faust.App("internals-test", store="memory://", autodiscover=False)
    indexed = app.Table("indexed", default=int).tumbling(60, expires=120).table
    flat = app.Table("flat", default=int).tumbling(60, expires=120).table
    faust_internals.without_key_index(flat)
    for table in (indexed, flat):
        table._maybe_set_key_ttl(("TM-1", (0.0, 59.9)), 0)
    assert indexed._partition_timestamp_keys and not flat._partition_timestamp_keys
    # and upstream still routes every table write through the method we replace
    assert "_maybe_set_key_ttl" in inspect.getsource(Table.on_key_set)


def test_rocksdbs_sharing_a_budget_keep_their_memory_within_it(tmp_path):
    """Two DBs whose own memtables alone could hold 48 MB, written far past a 4 MB budget: the shared cache (memtables charged to it) stays within
    its capacity, every memtable is accounted, and what was written reads back."""
    from faust.stores.rocksdb import RocksDBOptions

    budget = faust_internals.RocksDBBudget(4 * 2**20)
    options = faust_internals.SharedMemoryRocksDBOptions(
        budget.cache, budget.write_buffers, write_buffer_size=8 * 2**20, max_write_buffer_number=3, use_rocksdict=True)
    assert isinstance(options, RocksDBOptions)
    dbs = [options.open(tmp_path / f"db{i}") for i in range(2)]
    value = bytes(200)
    for n in range(60_000):  # ~24 MB written, six times the budget
        dbs[n % 2][f"order-{n}".encode()] = value
    table = SimpleNamespace(data=SimpleNamespace(_dbs=dict(enumerate(dbs))))

    def within_budget() -> bool:
        return (faust_internals.rocksdb_memory(table)["memtables"] <= 4 * 2**20
                and budget.usage_bytes() <= 4 * 2**20 * 1.1)  # the LRU capacity is soft by a few blocks

    deadline = time.monotonic() + 10
    while not within_budget() and time.monotonic() < deadline:
        time.sleep(0.05)  # flushes run in RocksDB's background threads; writers do not stall for them
    assert within_budget()  # without the manager the memtables alone hold ~14 MB, and stay there
    assert faust_internals.rocksdb_memory(table)["memtables"] > 0
    assert dbs[0][b"order-0"] == value and dbs[1][b"order-59999"] == value
    for db in dbs:
        db.close()


def test_the_budget_is_refused_once_a_table_has_open_dbs():
    table = SimpleNamespace(name="t", data=SimpleNamespace(_dbs={0: object()}))
    with pytest.raises(RuntimeError, match="already open"):
        faust_internals.RocksDBBudget(2**20).share_with(table)
