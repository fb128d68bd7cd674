"""Size-or-time batching for one table, with the Kafka ranges that name each batch.

Pure: the caller passes the clock. A batch's dedup token is derived from the offset ranges it
covers, so a retry of the same batch (same rows, same ranges) carries the same token and
ClickHouse drops the second copy.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OffsetRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int


@dataclass
class Batch:
    table: str
    rows: list[dict]
    ranges: list[OffsetRange]
    attempts: int = 0

    @property
    def token(self) -> str:
        """Stable name of exactly these rows: table and the offset ranges, in partition order."""
        spans = ",".join(f"{r.partition}:{r.first_offset}-{r.last_offset}"
                         for r in sorted(self.ranges, key=lambda r: (r.topic, r.partition)))
        topics = sorted({r.topic for r in self.ranges})
        digest = hashlib.sha1("|".join(topics).encode()).hexdigest()[:12]
        # topic names are ours but may hold any character; the digest keeps the token plain
        return f"{self.table}|{digest}|{spans}"[:500]


@dataclass
class Batcher:
    """Rows for one table. Due when max_rows are waiting or the oldest has waited max_seconds."""
    table: str = ""
    max_rows: int = 10_000
    max_seconds: float = 1.0
    _rows: list[dict] = field(default_factory=list)
    _ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    _first_at: float | None = None

    def add(self, row: dict, topic: str, partition: int, offset: int, now: float) -> None:
        span = self._ranges.get((topic, partition))
        if span is None:
            self._ranges[(topic, partition)] = [offset, offset]
        else:
            if offset <= span[1]:
                raise ValueError(f"offset {offset} of {topic}[{partition}] is not after {span[1]}")
            span[1] = offset
        if self._first_at is None:
            self._first_at = now
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def due(self, now: float) -> bool:
        if not self._rows:
            return False
        return len(self._rows) >= self.max_rows or (now - self._first_at) >= self.max_seconds

    def take(self) -> Batch:
        batch = Batch(self.table, self._rows,
                      [OffsetRange(t, p, lo, hi) for (t, p), (lo, hi) in self._ranges.items()])
        self._rows, self._ranges, self._first_at = [], {}, None
        return batch
