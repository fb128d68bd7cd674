"""The re-drive ledger's store in a dict, for tests without Redis: the same four operations, each atomic
within one process (pipeline.redrive_ledger.RedisRedriveStore is the real one)."""
from __future__ import annotations

import threading

from pipeline.redrive_ledger import RedriveLedger


class MemoryRedriveStore:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, key: str, value: str) -> bool:
        with self._lock:
            if key in self.entries:
                return False
            self.entries[key] = value
            return True

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def replace(self, key: str, old: str, new: str) -> bool:
        with self._lock:
            if self.entries.get(key) != old:
                return False
            self.entries[key] = new
            return True

    def remove(self, key: str, old: str) -> bool:
        with self._lock:
            if self.entries.get(key) != old:
                return False
            del self.entries[key]
            return True

    def keys(self, prefix: str) -> list[str]:
        return [k for k in list(self.entries) if k.startswith(prefix)]


def memory_ledger() -> RedriveLedger:
    return RedriveLedger(MemoryRedriveStore())
