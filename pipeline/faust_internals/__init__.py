"""The quarantine: every place the worker relies on Faust's or aiokafka's private behaviour.

No module outside this package reads or patches a private Faust/aiokafka attribute
(tests/unit/test_quarantine.py checks). Each workaround says in one line what upstream does;
`require_pinned_versions()` runs when the app is built, and on any other version of the
libraries in `PINNED` the worker refuses to start instead of silently misreading a renamed
attribute.
"""
from .consumer import (SeekSafeConsumer, adopt_committed, broker_committed, caught_up,
                       consumer_lag, install, offsets_report, reread_from, stalled_commits, stalled_partitions,
                       unacked_offsets)
from .streams import handling
from .tables import (DirectWindowedTable, RocksDBBudget, SharedMemoryRocksDBOptions, active_dbs, keys_in_order,
                     rocksdb_memory, window_end, without_key_index)
from .versions import PINNED, UnsupportedLibraryVersion, require_pinned_versions

__all__ = [
    "PINNED", "UnsupportedLibraryVersion", "require_pinned_versions",
    "handling",
    "DirectWindowedTable", "RocksDBBudget", "SharedMemoryRocksDBOptions", "active_dbs", "keys_in_order",
    "rocksdb_memory", "window_end", "without_key_index",
    "SeekSafeConsumer", "adopt_committed", "broker_committed", "caught_up", "consumer_lag",
    "install", "offsets_report", "reread_from", "stalled_commits", "stalled_partitions", "unacked_offsets",
]
