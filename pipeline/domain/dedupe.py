"""Dedupe decisions: a redelivery is dropped, a real update passes, a late older update is stale,
and an update whose state change cannot be trusted (seed 003) passes flagged as suspect.

The agent keeps one `SeenVersion` per global order id in a windowed table; this module only
decides. Orders from different platforms never meet here: the global id already contains the
platform, so a buyer's two real orders on two platforms are two keys.

Besides the newest version seen (what redeliveries and stale versions are recognised by), a
`SeenVersion` remembers the order's last *trusted* state and the platform time it entered it.
A suspect update (backwards, skipping, too fast: pipeline.domain.transitions) becomes the newest
version, so its redeliveries are still dropped, but not the trusted state: the next update is
judged against the state the order really is in.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .normalize import content_fingerprint
from .platforms import STANDARD_STATES
from .transitions import SuspectHit, TransitionRules

_STATUS_RANK = {s: i for i, s in enumerate(STANDARD_STATES)}  # the lifecycle order


class Change(str, Enum):
    NEW = "new"              # first time this order is seen in the window
    UPDATE = "update"        # same order, strictly newer version: passed on
    SUSPECT = "suspect"      # a newer version whose state change is not trusted: passed on, flagged, not applied
    DUPLICATE = "duplicate"  # same content again (webhook + polling): dropped
    STALE = "stale"          # an older version arriving late: dropped, never overwrites


PASSED = (Change.NEW, Change.UPDATE, Change.SUSPECT)
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
    # the last trusted state and the platform time the order entered it (-1: this version's own)
    state_rank: int = -1
    state_at_ms: int = -1
    # why the suspect outputs among the remembered ones were suspect, (source, hit), newest last
    suspects: tuple[tuple[str, SuspectHit], ...] = ()

    @property
    def trusted_rank(self) -> int:
        return self.status_rank if self.state_rank < 0 else self.state_rank

    @property
    def trusted_at_ms(self) -> int:
        return self.updated_at_ms if self.state_at_ms < 0 else self.state_at_ms

    @property
    def trusted_status(self) -> str:
        return STANDARD_STATES[self.trusted_rank]

    def to_json(self) -> dict:
        out = {"fingerprint": self.fingerprint, "updated_at_ms": self.updated_at_ms,
               "status_rank": self.status_rank, "source": self.source, "change": self.change,
               "earlier": [list(pair) for pair in self.earlier],
               "state_rank": self.state_rank, "state_at_ms": self.state_at_ms}
        if self.suspects:
            out["suspects"] = [[source, hit.to_json()] for source, hit in self.suspects]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "SeenVersion":
        return cls(data["fingerprint"], int(data["updated_at_ms"]), int(data["status_rank"]),
                   data.get("source", ""), data.get("change", ""),
                   tuple((s, c) for s, c in data.get("earlier", ())),
                   int(data.get("state_rank", -1)), int(data.get("state_at_ms", -1)),
                   tuple((s, SuspectHit.from_json(h)) for s, h in data.get("suspects", ())))

    def emitted_by(self, source: str) -> str | None:
        """The change this order's output from canonical message `source` was emitted as, if any."""
        if not source:
            return None
        if source == self.source:
            return self.change
        return next((change for s, change in self.earlier if s == source), None)

    def suspect_hit(self, source: str) -> SuspectHit | None:
        """Why the output from `source` was suspect (re-emitted as it was first judged)."""
        return next((hit for s, hit in reversed(self.suspects) if s == source), None)

    def remembered_as(self, source: str, change: "Change", previous: "SeenVersion | None" = None,
                      hit: SuspectHit | None = None) -> "SeenVersion":
        """This version as the newest, emitted from `source`; `previous` outputs move to `earlier`.
        A suspect version keeps `previous`'s trusted state; a trusted one becomes the trusted state
        (entered at its own time, or when the order entered it if the status did not change)."""
        earlier: tuple[tuple[str, str], ...] = ()
        suspects: tuple[tuple[str, SuspectHit], ...] = ()
        if previous is not None:
            head = ((previous.source, previous.change),) if previous.source else ()
            earlier = (head + previous.earlier)[:HISTORY - 1]
            suspects = previous.suspects
        if change is Change.SUSPECT and previous is not None:
            state_rank, state_at = previous.trusted_rank, previous.trusted_at_ms
            suspects = (suspects + ((source, hit),))[-HISTORY:] if hit is not None else suspects
        elif previous is not None and previous.trusted_rank == self.status_rank:
            state_rank, state_at = self.status_rank, previous.trusted_at_ms
        else:
            state_rank, state_at = self.status_rank, self.updated_at_ms
        return SeenVersion(self.fingerprint, self.updated_at_ms, self.status_rank, source, change.value, earlier,
                           state_rank, state_at, suspects)


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


def judge(previous: SeenVersion | None, incoming: SeenVersion, source: str = "",
          rules: TransitionRules | None = None) -> tuple[Change, SuspectHit | None]:
    """`decide`, and for an update the trust check against the order's last trusted state:
    (SUSPECT, the rule that fired) for an untrusted one. Re-processing a remembered message
    answers exactly what it answered the first time (the hit is remembered with it)."""
    change = decide(previous, incoming, source)
    if change is Change.SUSPECT:
        return change, previous.suspect_hit(source)
    if change is Change.UPDATE and rules is not None and not previous.emitted_by(source):
        hit = rules.check(previous.trusted_status, previous.trusted_at_ms,
                          STANDARD_STATES[incoming.status_rank], incoming.updated_at_ms)
        if hit is not None:
            return Change.SUSPECT, hit
    return change, None


def newest(previous: SeenVersion | None, incoming: SeenVersion, change: Change) -> SeenVersion | None:
    """The version to remember after `change` (None: keep what is stored)."""
    return incoming if change in PASSED else None
