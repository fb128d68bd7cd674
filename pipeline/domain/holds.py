"""Held orders and the decisions that end a hold (operator approve/reject, or default release).

The holds agent keeps one `Hold` record per held order in a changelogged Faust table keyed by
order id; this module only builds those records and decides. Deadlines are absolute wall-clock
milliseconds stored in the hold itself, so a restarted worker rebuilding the table from its
changelog still knows which holds are overdue.

Decisions are idempotent: a second decision for the same order (an operator clicking twice,
the default policy racing an operator, a redelivery) finds no open hold and is 'ignored'.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from pipeline.contracts import CodecError, Hold, HoldVerdict, RiskDecision, RiskEvent

HELD = "held"
DECISION_ACTIONS = ("approve", "reject")
DECISION_SOURCES = ("operator", "default_policy")
DEFAULT_POLICY_OPERATOR = "default_policy"


class DecisionError(ValueError):
    """A decision message that cannot be applied (not a RiskDecision, missing or bad fields)."""


@dataclass(frozen=True)
class Resolution:
    outcome: str              # approved | rejected | auto_released | ignored
    event: RiskEvent | None   # audit event for risk.events; None when ignored
    why: str = ""             # for 'ignored': why nothing happened


def new_hold(order_id: str, platform: str, held_at_ms: int, verdict: HoldVerdict, timeout_s: float,
             partition: int, order: bytes = b"", headers: Mapping[str, bytes] | None = None) -> Hold:
    """The table value for a freshly held order (its bytes and headers kept to release it as it
    came), from the verdict that rode with it."""
    if timeout_s <= 0:
        raise ValueError(f"hold timeout must be positive, got {timeout_s!r}")
    return Hold(order_id=order_id, platform=platform, status=HELD, held_at_ms=int(held_at_ms), timeout_s=timeout_s,
                due_at_ms=int(held_at_ms + timeout_s * 1000), partition=partition,
                approvers=tuple(verdict.approvers), rule_ids=tuple(h.rule_id for h in verdict.hits),
                hits=tuple(verdict.hits), amount_minor=int(verdict.amount_minor), currency=verdict.currency,
                ruleset_version=int(verdict.ruleset_version), order=order,
                headers={k: v for k, v in (headers or {}).items() if k != HoldVerdict.HEADER})


def parse_decision(data: bytes | RiskDecision) -> RiskDecision:
    """Validate a decision from risk.decisions; anything unusable raises DecisionError."""
    if not isinstance(data, RiskDecision):
        try:
            data = RiskDecision.decode(data)
        except CodecError as exc:
            raise DecisionError(f"decision is not a RiskDecision: {exc}") from None
    order_id, action, source = data.order_id, data.action, data.source
    if not order_id.strip():
        raise DecisionError("decision needs a non-empty 'order_id'")
    if action not in DECISION_ACTIONS:
        raise DecisionError(f"decision for {order_id}: 'action' must be one of {list(DECISION_ACTIONS)}, got {action!r}")
    if source not in DECISION_SOURCES:
        raise DecisionError(f"decision for {order_id}: 'source' must be one of {list(DECISION_SOURCES)}, got {source!r}")
    if not data.operator.strip():
        raise DecisionError(f"decision for {order_id}: 'operator' (who decided) is required")
    if action == "reject" and not data.reason.strip():
        # a rejection without a why cannot be audited or explained to the buyer
        raise DecisionError(f"decision for {order_id}: a rejection needs a 'reason'")
    if data.decided_at_ms < 0:
        raise DecisionError(f"decision for {order_id}: 'decided_at_ms' must not be negative, got {data.decided_at_ms}")
    if data.operator != data.operator.strip():
        data = RiskDecision(order_id, action, data.operator.strip(), data.reason, data.decided_at_ms, source)
    return data


def apply_decision(hold: Hold | None, decision: RiskDecision) -> Resolution:
    """End the hold, or ignore the decision when there is nothing (left) to decide."""
    if hold is None:
        return Resolution("ignored", None, "no open hold for this order")
    if hold.status != HELD:
        return Resolution("ignored", None, f"hold already {hold.status}")
    if hold.order_id != decision.order_id:
        return Resolution("ignored", None, "decision is for another order")
    if decision.source == "default_policy":
        if decision.decided_at_ms < hold.due_at_ms:
            # a default release before the deadline (clock skew, changed config): operators still have time
            return Resolution("ignored", None, "default policy fired before the hold was due")
        outcome = "auto_released" if decision.action == "approve" else "rejected"
    else:
        outcome = "approved" if decision.action == "approve" else "rejected"
    event = RiskEvent(
        event=outcome, order_id=decision.order_id, platform=hold.platform, at_ms=decision.decided_at_ms,
        rule_ids=hold.rule_ids, approvers=hold.approvers, operator=decision.operator, reason=decision.reason,
        waited_ms=max(0, decision.decided_at_ms - hold.held_at_ms), source=decision.source,
        amount_minor=hold.amount_minor, currency=hold.currency, ruleset_version=hold.ruleset_version)
    return Resolution(outcome, event)


def resolved(hold: Hold, resolution: Resolution, decided_by: str | None = None) -> Hold:
    """The hold marked as resolved, with the decision's coordinates and the event it published:
    resolved holds stay in the table, so late or repeated decisions are ignored, and a decision
    re-processed after a crash re-publishes exactly that event."""
    return replace(hold, status=resolution.outcome, decided_by=decided_by,
                   resolution_event=None if resolution.event is None else resolution.event.encode())


def open_key(due_at_ms: int, order_id: str) -> str:
    """Key of an open hold in the deadline index: keys sort by deadline, so the timer reads only
    the due ones, however many holds are open."""
    return f"{int(due_at_ms):015d}|{order_id}"


def order_of_open_key(key: str) -> tuple[int, str]:
    """(deadline ms, order id) of an `open_key`."""
    due, _, order_id = key.partition("|")
    return int(due), order_id


def due_order_ids(partitions: Iterable[Iterable[str]], now_ms: int, limit: int) -> list[str]:
    """Order ids whose hold deadline has passed, from `open_key`s in sorted order per partition:
    each partition is read only up to its first hold that is not due yet."""
    bound = open_key(now_ms, "\uffff")
    due: list[str] = []
    for keys in partitions:
        for key in keys:
            if key > bound or len(due) >= limit:
                break
            due.append(order_of_open_key(key)[1])
    return due


def timeout_decision(order_id: str, now_ms: int, timeout_s: float | None = None) -> RiskDecision:
    """The default policy (seed 000): no manual decision in time -> release the order."""
    if timeout_s is None:
        reason = "no decision within the hold timeout"
    elif timeout_s >= 60 and timeout_s % 60 == 0:
        reason = f"no decision within {int(timeout_s // 60)} min"
    else:
        reason = f"no decision within {timeout_s:g} s"
    return RiskDecision(order_id=order_id, action="approve", operator=DEFAULT_POLICY_OPERATOR,
                    reason=reason, decided_at_ms=int(now_ms), source="default_policy")
