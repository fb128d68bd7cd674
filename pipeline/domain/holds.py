"""Held orders and the decisions that end a hold (operator approve/reject, or default release).

The holds agent keeps one JSON-able dict per held order in a changelogged Faust table keyed by
order id; this module only builds those dicts and decides. Deadlines are absolute wall-clock
milliseconds stored in the hold itself, so a restarted worker rebuilding the table from its
changelog still knows which holds are overdue.

Decisions are idempotent: a second decision for the same order (an operator clicking twice,
the default policy racing an operator, a redelivery) finds no open hold and is 'ignored'.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

HELD = "held"
DECISION_ACTIONS = ("approve", "reject")
DECISION_SOURCES = ("operator", "default_policy")
DEFAULT_POLICY_OPERATOR = "default_policy"


class DecisionError(ValueError):
    """A decision message that cannot be applied (malformed JSON, missing or bad fields)."""


@dataclass(frozen=True)
class Decision:
    order_id: str
    action: str            # approve | reject
    operator: str
    reason: str
    decided_at_ms: int
    source: str = "operator"  # operator | default_policy

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Resolution:
    outcome: str           # approved | rejected | auto_released | ignored
    event: dict | None     # audit event for risk.events; None when ignored
    why: str = ""          # for 'ignored': why nothing happened


def _get(verdict: Any, name: str, default=None):
    if isinstance(verdict, dict):
        return verdict.get(name, default)
    return getattr(verdict, name, default)


def new_hold(order_id: str, platform: str, held_at_ms: int, verdict: Any, timeout_s: float,
             partition: int) -> dict:
    """The table value for a freshly held order. `verdict` is a risk.Verdict (or a dict with
    the same fields: hits, approvers, amount_minor, currency, ruleset_version)."""
    if timeout_s <= 0:
        raise ValueError(f"hold timeout must be positive, got {timeout_s!r}")
    hits = list(_get(verdict, "hits", ()) or ())
    hit_dicts = [h if isinstance(h, dict) else h.to_json() for h in hits]
    return {
        "status": HELD,
        "order_id": order_id,
        "platform": platform,
        "held_at_ms": int(held_at_ms),
        "timeout_s": timeout_s,
        "due_at_ms": int(held_at_ms + timeout_s * 1000),
        "partition": partition,
        "approvers": list(_get(verdict, "approvers", ()) or ()),
        "rule_ids": [h["rule_id"] for h in hit_dicts],
        "hits": hit_dicts,
        "amount_minor": int(_get(verdict, "amount_minor", 0) or 0),
        "currency": _get(verdict, "currency", "") or "",
        "ruleset_version": int(_get(verdict, "ruleset_version", 0) or 0),
    }


def parse_decision(data: bytes | str | dict) -> Decision:
    """Validate a decision from risk.decisions; anything unusable raises DecisionError."""
    if isinstance(data, (bytes, bytearray, str)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecisionError(f"decision is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecisionError(f"decision must be a JSON object, got {type(data).__name__}")
    order_id = data.get("order_id")
    if not isinstance(order_id, str) or not order_id.strip():
        raise DecisionError("decision needs a non-empty 'order_id'")
    action = data.get("action")
    if action not in DECISION_ACTIONS:
        raise DecisionError(f"decision for {order_id}: 'action' must be one of {list(DECISION_ACTIONS)}, got {action!r}")
    source = data.get("source", "operator")
    if source not in DECISION_SOURCES:
        raise DecisionError(f"decision for {order_id}: 'source' must be one of {list(DECISION_SOURCES)}, got {source!r}")
    operator = data.get("operator")
    if not isinstance(operator, str) or not operator.strip():
        raise DecisionError(f"decision for {order_id}: 'operator' (who decided) is required")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise DecisionError(f"decision for {order_id}: 'reason' must be text")
    if action == "reject" and not reason.strip():
        # a rejection without a why cannot be audited or explained to the buyer
        raise DecisionError(f"decision for {order_id}: a rejection needs a 'reason'")
    at = data.get("decided_at_ms")
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise DecisionError(f"decision for {order_id}: 'decided_at_ms' must be a non-negative integer, got {at!r}")
    return Decision(order_id=order_id, action=action, operator=operator.strip(), reason=reason,
                    decided_at_ms=at, source=source)


def apply_decision(hold: dict | None, decision: Decision) -> Resolution:
    """End the hold, or ignore the decision when there is nothing (left) to decide."""
    if hold is None:
        return Resolution("ignored", None, "no open hold for this order")
    if hold.get("status", HELD) != HELD:
        return Resolution("ignored", None, f"hold already {hold.get('status')}")
    if hold.get("order_id") not in (None, decision.order_id):
        return Resolution("ignored", None, "decision is for another order")
    if decision.source == "default_policy":
        if decision.decided_at_ms < hold["due_at_ms"]:
            # a default release before the deadline (clock skew, changed config): operators still have time
            return Resolution("ignored", None, "default policy fired before the hold was due")
        outcome = "auto_released" if decision.action == "approve" else "rejected"
    else:
        outcome = "approved" if decision.action == "approve" else "rejected"
    event = {
        "event": outcome,
        "order_id": decision.order_id,
        "platform": hold.get("platform"),
        "at_ms": decision.decided_at_ms,
        "rule_ids": list(hold.get("rule_ids", [])),
        "approvers": list(hold.get("approvers", [])),
        "operator": decision.operator,
        "reason": decision.reason,
        "waited_ms": max(0, decision.decided_at_ms - int(hold.get("held_at_ms", decision.decided_at_ms))),
        "source": decision.source,
        "amount_minor": hold.get("amount_minor"),
        "currency": hold.get("currency"),
    }
    return Resolution(outcome, event)


def resolved(hold: dict, resolution: Resolution) -> dict:
    """The hold marked as resolved (for agents that keep resolved holds instead of deleting)."""
    return {**hold, "status": resolution.outcome}


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


def timeout_decision(order_id: str, now_ms: int, timeout_s: float | None = None) -> Decision:
    """The default policy (seed 000): no manual decision in time -> release the order."""
    if timeout_s is None:
        reason = "no decision within the hold timeout"
    elif timeout_s >= 60 and timeout_s % 60 == 0:
        reason = f"no decision within {int(timeout_s // 60)} min"
    else:
        reason = f"no decision within {timeout_s:g} s"
    return Decision(order_id=order_id, action="approve", operator=DEFAULT_POLICY_OPERATOR,
                    reason=reason, decided_at_ms=int(now_ms), source="default_policy")
