"""Logistics tracking contracts (issue 19): waybills registered, what the buyer sees of a parcel,
the manual review queue, buyer notifications, and the logistics-waybills table's value.

The couriers' own messages on logistics.raw.<courier> are not contracts of ours: they arrive in
each courier's format and pipeline.domain.logistics reads them with the code table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .events import Event


@dataclass(frozen=True, slots=True)
class WaybillRegistered(Event):
    SCHEMA: ClassVar[str] = "waybill_registered"
    order_id: str
    carrier: str
    waybill: str
    at_ms: int
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class TrackingUpdate(Event):
    SCHEMA: ClassVar[str] = "tracking_update"
    order_id: str
    waybill: str
    carrier: str
    state: str
    agreed_state: str
    cause: str
    event_at_ms: int
    at_ms: int
    badge: str
    last_update_ms: int
    track_code: str
    source: str = ""
    code: str = ""
    expected_at_ms: int | None = None
    on_backup: bool = False
    pulls: int = 0
    failed_pulls: int = 0
    failovers: int = 0


@dataclass(frozen=True, slots=True)
class TrackingReview(Event):
    SCHEMA: ClassVar[str] = "tracking_review"
    order_id: str
    waybill: str
    carrier: str
    reason: str
    states: dict[str, str]
    at_ms: int


@dataclass(frozen=True, slots=True)
class Notification(Event):
    SCHEMA: ClassVar[str] = "logistics_notification"
    order_id: str
    kind: str
    waybill: str
    carrier: str
    track_code: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class WaybillCheck(Event):
    """The freshness timer's finding, applied to the waybill by the logistics agent (tables are
    written from the agent only)."""
    SCHEMA: ClassVar[str] = "waybill_check"
    waybill: str
    kind: str
    at_ms: int
    source: str = ""
    ok: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SourceReport:
    """The latest report of one source (a courier or an aggregator) about a waybill."""
    source: str
    state: str
    code: str
    event_at_ms: int
    carrier: str = ""

    def as_dict(self) -> dict:
        return {"source": self.source, "state": self.state, "code": self.code, "event_at_ms": self.event_at_ms,
                "carrier": self.carrier}


@dataclass(frozen=True, slots=True)
class Waybill(Event):
    """The logistics-waybills table's value: built and advanced in pipeline.domain.logistics."""
    SCHEMA: ClassVar[str] = "waybill"
    NESTED: ClassVar[dict[str, type]] = {"reports": SourceReport}
    waybill: str
    carrier: str
    order_id: str
    track_code: str
    registered_at_ms: int
    last_update_ms: int
    next_pull_ms: int
    reports: tuple[SourceReport, ...] = ()
    seen: tuple[str, ...] = ()
    agreed_state: str = "registered"
    syncing: bool = False
    collected_at_ms: int | None = None
    failed_pulls: int = 0
    pulls: int = 0
    failovers: int = 0
    on_backup: bool = False
    notified: bool = False
    badge: str = "green"


LOGISTICS_TYPES: tuple[type[Event], ...] = (WaybillRegistered, TrackingUpdate, TrackingReview, Notification, Waybill,
                                            WaybillCheck)
