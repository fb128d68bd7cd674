"""Drop rows that repeat a fact already landed: upstream stages are at-least-once.

After a worker crash, dedupe may re-emit an order version and inventory may re-publish a
reservation (both on purpose: it is how nothing gets lost). Those copies have new offsets, so
the offset-based exactly-once landing would store them twice and the rollups would count
them twice. Each fact has a natural key; a bounded LRU of recent keys, preloaded from the last
hours of each table on start, drops the copies. Re-emissions happen within seconds of a crash,
so a window of hours is ample.
"""
from __future__ import annotations

from collections import OrderedDict

# table -> (columns forming the natural key, column with the row's time for the preload)
NATURAL_KEYS = {
    "order_events": (("order_id", "status", "updated_at", "change"), "ingest_time"),
    # `at` is stable across re-emission: the risk agent stamps the order's ingest time
    "risk_events": (("order_id", "event", "at"), "at"),
    "inventory_events": (("order_id", "event"), "at"),
    # the update's own platform time and claimed state: a re-processed suspect update repeats them
    "suspect_transitions": (("order_id", "to_status", "to_at"), "detected_at"),
    # a refund event is re-published with the message that caused it: cause names that message
    "refund_events": (("refund_id", "event", "cause"), "at"),
    # a re-import of the same bill file repeats its line keys
    "settlement_bills": (("line_key",), "imported_at"),
}


class NaturalKeyFilter:
    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.dropped = 0

    @staticmethod
    def key_of(table: str, row: dict) -> int | None:
        spec = NATURAL_KEYS.get(table)
        if spec is None:
            return None
        return hash((table, *(str(row.get(col)) for col in spec[0])))

    def first_time(self, table: str, row: dict) -> bool:
        """True when this fact has not been seen (and remember it); False for a copy."""
        key = self.key_of(table, row)
        if key is None:
            return True
        if key in self._seen:
            self._seen.move_to_end(key)
            self.dropped += 1
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def preload(self, backend, hours: int = 6) -> int:
        """Remember the natural keys of rows landed in the last `hours`."""
        loaded = 0
        for table, (cols, time_col) in NATURAL_KEYS.items():
            rows = backend.query(
                f"SELECT {', '.join(cols)} FROM {table} "
                f"WHERE {time_col} >= now64(3) - INTERVAL {int(hours)} HOUR "
                f"ORDER BY {time_col} DESC LIMIT {int(self.capacity)}")
            for row in reversed(rows):
                self.first_time(table, row)
                loaded += 1
        self.dropped = 0
        return loaded
