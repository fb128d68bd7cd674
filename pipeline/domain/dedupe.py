"""Dedupe decisions: a redelivery is dropped, a real update passes, a late older update is stale.

The agent keeps one `SeenVersion` per global order id in a windowed table; this module only
decides. Orders from different platforms never meet here: the global id already contains the
platform, so a buyer's two real orders on two platforms are two keys.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from .normalize import content_fingerprint

STATUS_ORDER = ("PENDING_PAYMENT", "PAID", "RISK_HOLD", "APPROVED", "ALLOCATED", "PICKING", "PACKED",
                "SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED", "CANCELLED")
_STATUS_RANK = {s: i for i, s in enumerate(STATUS_ORDER)}


class Change(str, Enum):
    NEW = "new"              # first time this order is seen in the window
    UPDATE = "update"        # same order, strictly newer version: passed on
    DUPLICATE = "duplicate"  # same content again (webhook + polling): dropped
    STALE = "stale"          # an older version arriving late: dropped, never overwrites


@dataclass(frozen=True)
class SeenVersion:
    fingerprint: str
    updated_at_ms: int
    status_rank: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SeenVersion":
        return cls(data["fingerprint"], int(data["updated_at_ms"]), int(data["status_rank"]))


def version_of(order: dict) -> SeenVersion:
    updated = order["updated_at"]
    updated_ms = int(updated.timestamp() * 1000) if hasattr(updated, "timestamp") else int(updated)
    return SeenVersion(content_fingerprint(order), updated_ms, _STATUS_RANK[order["status"]])


def decide(previous: SeenVersion | None, incoming: SeenVersion) -> Change:
    """Classify `incoming` against the newest version seen so far."""
    if previous is None:
        return Change.NEW
    if incoming.fingerprint == previous.fingerprint:
        return Change.DUPLICATE
    # newer modification time wins; on a tie the further-along status wins
    if (incoming.updated_at_ms, incoming.status_rank) > (previous.updated_at_ms, previous.status_rank):
        return Change.UPDATE
    return Change.STALE


def newest(previous: SeenVersion | None, incoming: SeenVersion, change: Change) -> SeenVersion | None:
    """The version to remember after `change` (None: keep what is stored)."""
    return incoming if change in (Change.NEW, Change.UPDATE) else None
