"""Every event that leaves a process, as a typed record with one encoder and one decoder.

Each class names its Avro schema in `schemas/`; `encode()` writes single-object Avro (the
writer's fingerprint in front, see pipeline.codecs) and `decode()` reads bytes written by any
version of that schema the store knows into the current one. Producers and the sink use these
same classes, so a field is added in one schema and one class, never in a dict built by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from pipeline.codecs import AvroCodec, codec


class Event:
    """Base of the event records: a field per schema field, same names."""
    __slots__ = ()
    SCHEMA: ClassVar[str]
    NESTED: ClassVar[dict[str, type]] = {}  # field -> record type of its array items
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._FIELDS = ()  # filled on first use: the dataclass decorator runs after this hook

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        if not cls._FIELDS:
            cls._FIELDS = tuple(f.name for f in fields(cls))
        return cls._FIELDS

    @classmethod
    def codec(cls) -> AvroCodec:
        return codec(cls.SCHEMA)

    def as_dict(self) -> dict:
        """The Avro datum: arrays as lists, nested records as dicts."""
        out = {name: list(value) if type(value := getattr(self, name)) is tuple else value
               for name in self.field_names()}
        for name in self.NESTED:
            out[name] = [item.as_dict() for item in out[name]]
        return out

    @classmethod
    def from_dict(cls, data: dict):
        return _construct(cls, data)

    def encode(self) -> bytes:
        return self.codec().encode(self.as_dict())

    @classmethod
    def decode(cls, data: bytes):
        """Raises pipeline.codecs.CodecError for bytes that are not this event (or garbage)."""
        return cls.from_dict(cls.codec().decode(data))


def _construct(cls, data: dict):
    """The record from an Avro datum or as_dict(): arrays become tuples (records are frozen)."""
    values = {name: tuple(value) if isinstance(value := data[name], list) else value
              for name in cls.field_names() if name in data}
    for name, item_type in cls.NESTED.items():
        if name in values:
            values[name] = tuple(i if isinstance(i, item_type) else item_type(**i) for i in values[name])
    return cls(**values)


@dataclass(frozen=True, slots=True)
class RiskEvent(Event):
    SCHEMA: ClassVar[str] = "risk_event"
    event: str
    order_id: str
    platform: str
    at_ms: int
    rule_ids: tuple[str, ...] = ()
    severity: str = ""
    approvers: tuple[str, ...] = ()
    operator: str | None = None
    reason: str = ""
    amount_minor: int | None = None
    currency: str = ""
    ruleset_version: int = 0
    waited_ms: int | None = None
    source: str | None = None
    checked_at_ms: int | None = None
    checked_lightly: bool = False


@dataclass(frozen=True, slots=True)
class InventoryLine:
    sku: str
    quantity: int
    warehouse: str | None = None

    def as_dict(self) -> dict:
        return {"sku": self.sku, "quantity": self.quantity, "warehouse": self.warehouse}


@dataclass(frozen=True, slots=True)
class InventoryEvent(Event):
    SCHEMA: ClassVar[str] = "inventory_event"
    NESTED: ClassVar[dict[str, type]] = {"lines": InventoryLine}
    event: str
    order_id: str
    platform: str
    at_ms: int
    warehouse: str | None = None
    lines: tuple[InventoryLine, ...] = ()
    units: int = 0
    reason: str = ""
    latency_ms: float | None = None
    actor: str = ""          # who did it: order_flow, holds, recheck, reservation_timer


@dataclass(frozen=True, slots=True)
class SuspectTransition(Event):
    """A status update that was not trusted (pipeline.domain.transitions): kept, flagged, not applied."""
    SCHEMA: ClassVar[str] = "suspect_transition"
    order_id: str
    platform: str
    rule: str
    from_status: str
    to_status: str
    from_at_ms: int
    to_at_ms: int
    elapsed_ms: int
    limit_ms: int | None = None
    window: str = ""
    reason: str = ""
    rules_version: int = 0
    detected_by: str = ""
    detected_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class RiskDecision(Event):
    """Approve or reject a held order. Validated where it is applied (domain.holds.parse_decision)."""
    SCHEMA: ClassVar[str] = "risk_decision"
    order_id: str
    action: str
    operator: str
    reason: str
    decided_at_ms: int
    source: str = "operator"


@dataclass(frozen=True, slots=True)
class ChannelEvent(Event):
    SCHEMA: ClassVar[str] = "channel_event"
    event: str
    sku: str
    platform: str
    available: int
    threshold: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class BreakerTransition(Event):
    SCHEMA: ClassVar[str] = "breaker_transition"
    from_state: str
    to_state: str
    rate_per_min: float
    at_ms: int
    worker: str


@dataclass(frozen=True, slots=True)
class DroppedDuplicate(Event):
    SCHEMA: ClassVar[str] = "dropped_duplicate"
    order_id: str
    platform: str
    outcome: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that matched an order (domain.risk.evaluate makes them)."""
    rule_id: str
    kind: str
    severity: str
    action: str
    reason: str

    def as_dict(self) -> dict:
        return {"rule_id": self.rule_id, "kind": self.kind, "severity": self.severity,
                "action": self.action, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class HoldVerdict(Event):
    """Why an order is held, riding with it as the `verdict` header (HEADER names it)."""
    SCHEMA: ClassVar[str] = "hold_verdict"
    NESTED: ClassVar[dict[str, type]] = {"hits": RuleHit}
    HEADER: ClassVar[str] = "verdict"
    hits: tuple[RuleHit, ...] = ()
    approvers: tuple[str, ...] = ()
    amount_minor: int = 0
    currency: str = ""
    ruleset_version: int = 0


@dataclass(frozen=True, slots=True)
class Hold(Event):
    """The risk-holds table's value: built and decided in pipeline.domain.holds."""
    SCHEMA: ClassVar[str] = "hold"
    NESTED: ClassVar[dict[str, type]] = {"hits": RuleHit}
    order_id: str
    platform: str
    status: str
    held_at_ms: int
    timeout_s: float
    due_at_ms: int
    partition: int
    approvers: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    hits: tuple[RuleHit, ...] = ()
    amount_minor: int = 0
    currency: str = ""
    ruleset_version: int = 0
    order: bytes = b""
    headers: dict[str, bytes] = field(default_factory=dict)
    decided_by: str | None = None
    resolution_event: bytes | None = None


@dataclass(frozen=True, slots=True)
class SettlementBillLine(Event):
    """One validated line of a platform's settlement bill (pipeline.settlement.bills makes them)."""
    SCHEMA: ClassVar[str] = "settlement_bill_line"
    line_key: str
    file_sha256: str
    file_name: str
    line_no: int
    platform: str
    bill_line_id: str
    kind: str
    platform_type: str
    amount_minor: int
    currency: str
    settle_day: str
    imported_by: str
    imported_at_ms: int
    external_order_id: str = ""
    order_id: str = ""


EVENT_TYPES: tuple[type[Event], ...] = (RiskEvent, InventoryEvent, RiskDecision, ChannelEvent, BreakerTransition,
                                        DroppedDuplicate, HoldVerdict, Hold, SuspectTransition,
                                        SettlementBillLine)
