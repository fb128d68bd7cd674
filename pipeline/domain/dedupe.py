"""Dedupe decisions: a redelivery is dropped, a real update passes, a late older update is stale.

The agent keeps one `SeenVersion` per global order id in a windowed table; this module only
decides. Orders from different platforms never meet here: the global id already contains the
platform, so a buyer's two real orders on two platforms are two keys.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from .normalize import content_fingerprint
from .platforms import STANDARD_STATES

_STATUS_RANK = {s: i for i, s in enumerate(STANDARD_STATES)}  # the lifecycle order


class Change(str, Enum):
    NEW = "new"              # first time this order is seen in the window
    UPDATE = "update"        # same order, strictly newer version: passed on
    DUPLICATE = "duplicate"  # same content again (webhook + polling): dropped
    STALE = "stale"          # an older version arriving late: dropped, never overwrites


HISTORY = 8  # outputs remembered per order: far more versions than an order has in a day


@dataclass(frozen=True)
class SeenVersion:
    fingerprint: str
    updated_at_ms: int
    status_rank: int
    # the canonical message ("partition:offset") that made this the newest version, and how it
    # was classified: re-processing that same message after a crash re-emits instead of dropping
    source: str = ""
    change: str = ""
    # (source, change) of the outputs before this one, newest first. The table can be ahead of
    # the committed offsets (RocksDB keeps writes whose outputs a SIGKILL lost), so a re-read
    # of an *earlier* message must re-emit its output too, not only the newest one's.
    earlier: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["earlier"] = [list(pair) for pair in self.earlier]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "SeenVersion":
        return cls(data["fingerprint"], int(data["updated_at_ms"]), int(data["status_rank"]),
                   data.get("source", ""), data.get("change", ""),
                   tuple((s, c) for s, c in data.get("earlier", ())))

    def emitted_by(self, source: str) -> str | None:
        """The change this order's output from canonical message `source` was emitted as, if any."""
        if not source:
            return None
        if source == self.source:
            return self.change
        return next((change for s, change in self.earlier if s == source), None)

    def remembered_as(self, source: str, change: "Change", previous: "SeenVersion | None" = None) -> "SeenVersion":
        """This version as the newest, emitted from `source`; `previous` outputs move to `earlier`."""
        earlier: tuple[tuple[str, str], ...] = ()
        if previous is not None:
            head = ((previous.source, previous.change),) if previous.source else ()
            earlier = (head + previous.earlier)[:HISTORY - 1]
        return SeenVersion(self.fingerprint, self.updated_at_ms, self.status_rank, source, change.value, earlier)


def version_of(order: dict) -> SeenVersion:
    updated = order["updated_at"]
    updated_ms = int(updated.timestamp() * 1000) if hasattr(updated, "timestamp") else int(updated)
    return SeenVersion(content_fingerprint(order), updated_ms, _STATUS_RANK[order["status"]])


def decide(previous: SeenVersion | None, incoming: SeenVersion, source: str = "") -> Change:
    """Classify `incoming` (read from canonical message `source`) against the newest version seen.

    At-least-once processing re-reads messages after a crash. If the table already remembers
    this very message (as the newest version or an earlier output), its output may or may not
    have reached the broker, so it is emitted again with its original classification (downstream
    effects are idempotent); a redelivery is a *different* message and is dropped.
    """
    if previous is None:
        return Change.NEW
    emitted = previous.emitted_by(source)
    if emitted:
        return Change(emitted)
    if incoming.fingerprint == previous.fingerprint:
        return Change.DUPLICATE
    # newer modification time wins; on a tie the further-along status wins
    if (incoming.updated_at_ms, incoming.status_rank) > (previous.updated_at_ms, previous.status_rank):
        return Change.UPDATE
    return Change.STALE


def newest(previous: SeenVersion | None, incoming: SeenVersion, change: Change) -> SeenVersion | None:
    """The version to remember after `change` (None: keep what is stored)."""
    return incoming if change in (Change.NEW, Change.UPDATE) else None
