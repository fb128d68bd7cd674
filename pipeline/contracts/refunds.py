"""The refund contracts: requests and actions in, the refund table's value, its audit events and
the failed-instructions queue out (schemas/refund*.avsc, failed_refund_instruction.avsc).

Built and decided in pipeline.domain.refunds; the refund agent (agents/refunds.py) is their one
writer apart from the operators' CLI, which publishes RefundActions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .events import Event, _construct


@dataclass(frozen=True, slots=True)
class RefundLine:
    sku: str
    quantity: int
    is_custom: bool = False

    def as_dict(self) -> dict:
        return {"sku": self.sku, "quantity": self.quantity, "is_custom": self.is_custom}


@dataclass(frozen=True, slots=True)
class RefundStep:
    """One entry of a refund's history: the state it entered, when and by whom."""
    status: str
    at_ms: int
    actor: str

    def as_dict(self) -> dict:
        return {"status": self.status, "at_ms": self.at_ms, "actor": self.actor}


def _lines(data: dict) -> dict:
    return dict(data, lines=tuple(line if isinstance(line, RefundLine) else RefundLine(**line)
                                  for line in data.get("lines") or ()))


class _WithLines:
    """as_dict / from_dict of a record with a `lines` array of RefundLine."""
    __slots__ = ()

    def as_dict(self) -> dict:
        out = Event.as_dict(self)
        out["lines"] = [line.as_dict() for line in self.lines]
        return out

    @classmethod
    def from_dict(cls, data: dict):
        return _construct(cls, _lines(data))


@dataclass(frozen=True, slots=True)
class RefundRequest(_WithLines, Event):
    """refunds.requests, keyed by refund id (validated in pipeline.domain.refunds.validate_request)."""
    SCHEMA: ClassVar[str] = "refund_request"
    refund_id: str
    order_id: str
    platform: str
    kind: str
    reason_code: str
    amount_minor: int
    currency: str
    order_total_minor: int
    lines: tuple[RefundLine, ...]
    requested_at_ms: int
    delivered_at_ms: int | None
    requested_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RefundAction(Event):
    """refunds.actions, keyed by refund id (validated in pipeline.domain.refunds.parse_action)."""
    SCHEMA: ClassVar[str] = "refund_action"
    refund_id: str
    action: str
    operator: str
    at_ms: int
    reason: str = ""
    warehouse: str | None = None


@dataclass(frozen=True, slots=True)
class RefundEvent(Event):
    SCHEMA: ClassVar[str] = "refund_event"
    event: str
    refund_id: str
    order_id: str = ""
    platform: str = ""
    status: str = ""
    previous_status: str = ""
    at_ms: int = 0
    actor: str = ""
    reason: str = ""
    rule_id: str = ""
    kind: str = ""
    reason_code: str = ""
    amount_minor: int = 0
    currency: str = ""
    warehouse: str = ""
    units: int = 0
    error: str = ""
    cause: str = ""


@dataclass(frozen=True, slots=True)
class FailedRefundInstruction(Event):
    SCHEMA: ClassVar[str] = "failed_refund_instruction"
    refund_id: str
    order_id: str
    platform: str
    amount_minor: int
    currency: str
    error: str
    http_status: int | None
    attempts: int
    failed_at_ms: int
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Refund(Event):
    """The refunds table's value."""
    SCHEMA: ClassVar[str] = "refund"
    refund_id: str
    order_id: str
    platform: str
    kind: str
    reason_code: str
    amount_minor: int
    currency: str
    order_total_minor: int
    lines: tuple[RefundLine, ...]
    requested_at_ms: int
    requested_by: str
    status: str
    history: tuple[RefundStep, ...] = ()
    auto_rule: str = ""
    decided_by: str = ""
    money_committed: bool = False
    warehouse: str = ""
    instruction: str = ""
    instruction_attempts: int = 0
    last_error: str = ""
    platform_refund_no: str = ""
    applied: str = ""
    published: tuple[bytes, ...] = ()
    parked: bytes | None = None

    def as_dict(self) -> dict:
        out = Event.as_dict(self)
        out["lines"] = [line.as_dict() for line in self.lines]
        out["history"] = [step.as_dict() for step in self.history]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Refund":
        data = _lines(data)
        data["history"] = tuple(s if isinstance(s, RefundStep) else RefundStep(**s) for s in data.get("history") or ())
        return _construct(cls, data)

    @property
    def units(self) -> int:
        return sum(line.quantity for line in self.lines)


REFUND_TYPES: tuple[type[Event], ...] = (RefundRequest, RefundAction, RefundEvent, FailedRefundInstruction, Refund)
