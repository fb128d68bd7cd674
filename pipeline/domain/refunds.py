"""Refunds as their own state machine, beside the 12 order states (seed 002's six stages):

    requested ─▶ reviewing ─▶ awaiting_return ─▶ returned_to_stock ─▶ refunding ─▶ refunded
       (申请中)     (审核中)        (待退货)             (已入库)            (退款中)     (已完成)
    and the ends rejected / cancelled.

A request is `requested`; the auto-approval rules (pipeline.domain.refund_rules) either approve it
at once or leave it `reviewing` for an operator. An approved return waits for its goods
(`awaiting_return`); they go back to stock when the warehouse receives them (`returned_to_stock`),
never before, and the refund instruction goes to the platform right after (`refunding`). A
refund without goods to return (`refund_only`) goes from approval straight to `refunding`. The
platform's acceptance makes it `refunded`; a failed instruction leaves it `refunding` with the
instruction parked (`failed`) until `orderstream refunds redrive` sends it again.

This module is pure: it builds `Refund` records (the refund table's value) and the `RefundEvent`s
each step publishes, and says which effects the agent must carry out (commit or release the
amount in the per-order ledger, put goods back in stock, send the instruction). Every action is
idempotent: one that does not fit the refund's state (a second approval, a receipt for a
refund already refunded, an action before its request) is `ignored` with the reason, and
changes nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pipeline.contracts import (CodecError, FailedRefundInstruction, Refund, RefundAction, RefundEvent, RefundRequest,
                                RefundStep)

from .refund_rules import KINDS, Verdict

REQUESTED, REVIEWING, AWAITING_RETURN, RETURNED_TO_STOCK, REFUNDING, REFUNDED, REJECTED, CANCELLED = (
    "requested", "reviewing", "awaiting_return", "returned_to_stock", "refunding", "refunded", "rejected", "cancelled")
STATES = (REQUESTED, REVIEWING, AWAITING_RETURN, RETURNED_TO_STOCK, REFUNDING, REFUNDED, REJECTED, CANCELLED)
FINAL = frozenset({REFUNDED, REJECTED, CANCELLED})
RETURN_AND_REFUND, REFUND_ONLY = KINDS
ACTIONS = ("approve", "reject", "cancel", "receive", "retry_instruction")
RULES_ACTOR = "refund_rules"
PENDING, FAILED, ACCEPTED = "pending", "failed", "accepted"  # Refund.instruction

# The legal moves, as data: (state, action) -> the state it leads to. approve of a refund_only
# request leads to `refunding` (nothing to wait for); receive passes through returned_to_stock
# to `refunding`; retry_instruction only while the instruction is parked. Anything else is ignored.
MOVES: dict[tuple[str, str], str] = {
    (REVIEWING, "approve"): AWAITING_RETURN,
    (REVIEWING, "reject"): REJECTED,
    (AWAITING_RETURN, "reject"): REJECTED,   # e.g. the goods never came back within the window
    (REQUESTED, "cancel"): CANCELLED,
    (REVIEWING, "cancel"): CANCELLED,
    (AWAITING_RETURN, "cancel"): CANCELLED,
    (AWAITING_RETURN, "receive"): RETURNED_TO_STOCK,
    (REFUNDING, "retry_instruction"): REFUNDING,
}

_REFUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class RefundError(ValueError):
    """A request or action that cannot be applied (not the contract, missing or bad fields)."""


# --------------------------------------------------------------------------- validation


def validate_request(data: bytes | RefundRequest) -> RefundRequest:
    """A usable request, or RefundError naming what is wrong."""
    if not isinstance(data, RefundRequest):
        try:
            data = RefundRequest.decode(data)
        except CodecError as exc:
            raise RefundError(f"request is not a RefundRequest: {exc}") from None
    rid = data.refund_id
    if not _REFUND_ID.match(rid):
        raise RefundError(f"refund id {rid!r} must be 1-128 characters of letters, digits and _.:@- "
                          "(prefixed by its platform, so it is unique everywhere)")
    problems = []
    if not data.order_id.strip():
        problems.append("'order_id' is empty")
    if not data.platform.strip():
        problems.append("'platform' is empty")
    if data.kind not in KINDS:
        problems.append(f"'kind' must be one of {list(KINDS)}, got {data.kind!r}")
    if not data.reason_code.strip():
        problems.append("'reason_code' is empty")
    if not _CURRENCY.match(data.currency):
        problems.append(f"'currency' {data.currency!r} is not an ISO 4217 code")
    if data.order_total_minor <= 0:
        problems.append(f"'order_total_minor' must be positive, got {data.order_total_minor}")
    if data.amount_minor <= 0:
        problems.append(f"'amount_minor' must be positive, got {data.amount_minor}")
    elif data.amount_minor > data.order_total_minor > 0:
        problems.append(f"'amount_minor' {data.amount_minor} is more than the order's total {data.order_total_minor}")
    if data.kind == RETURN_AND_REFUND and not data.lines:
        problems.append("a return needs the 'lines' that come back")
    for line in data.lines:
        if not line.sku.strip() or line.quantity <= 0:
            problems.append(f"line {line.sku!r} x {line.quantity}: needs a SKU and a positive quantity")
    if not data.requested_by.strip():
        problems.append("'requested_by' (who filed it) is required")
    if data.requested_at_ms < 0:
        problems.append("'requested_at_ms' is negative")
    if problems:
        raise RefundError(f"refund {rid}: " + "; ".join(problems))
    if data.requested_by != data.requested_by.strip():
        data = replace(data, requested_by=data.requested_by.strip())
    return data


def parse_action(data: bytes | RefundAction) -> RefundAction:
    """A usable action, or RefundError: who acted is always required, a why to reject or cancel."""
    if not isinstance(data, RefundAction):
        try:
            data = RefundAction.decode(data)
        except CodecError as exc:
            raise RefundError(f"action is not a RefundAction: {exc}") from None
    rid = data.refund_id
    if not rid.strip():
        raise RefundError("action needs a non-empty 'refund_id'")
    if data.action not in ACTIONS:
        raise RefundError(f"action on {rid}: 'action' must be one of {list(ACTIONS)}, got {data.action!r}")
    if not data.operator.strip():
        raise RefundError(f"action on {rid}: 'operator' (who did it) is required")
    if data.action in ("reject", "cancel") and not data.reason.strip():
        raise RefundError(f"action on {rid}: to {data.action} a refund needs a 'reason'")
    if data.warehouse is not None and (not data.warehouse.strip() or ":" in data.warehouse):
        raise RefundError(f"action on {rid}: bad warehouse {data.warehouse!r}")
    if data.at_ms < 0:
        raise RefundError(f"action on {rid}: 'at_ms' is negative")
    if data.operator != data.operator.strip():
        data = replace(data, operator=data.operator.strip())
    return data


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """What one message does to a refund: the record to keep (None: keep nothing new), the events
    to publish, and the effects the agent carries out before keeping the record."""
    outcome: str
    refund: Refund | None
    events: tuple[RefundEvent, ...] = ()
    release_money: bool = False
    restock: tuple[tuple[str, str, int], ...] = ()   # (warehouse, sku, qty) to put back in stock
    instruct: bool = False
    parked: FailedRefundInstruction | None = None

    @property
    def ignored(self) -> bool:
        return self.outcome == "ignored"


@dataclass(frozen=True)
class Money:
    """The per-order ledger's answer to committing a request's amount (pipeline.refund_ledger)."""
    ok: bool
    why: str = ""


def _event(refund: Refund, event: str, at_ms: int, actor: str, cause: str, previous: str = "", **kw) -> RefundEvent:
    return RefundEvent(event=event, refund_id=refund.refund_id, order_id=refund.order_id, platform=refund.platform,
                       status=refund.status, previous_status=previous, at_ms=at_ms, actor=actor, kind=refund.kind,
                       reason_code=refund.reason_code, amount_minor=refund.amount_minor, currency=refund.currency,
                       cause=cause, **kw)


def _moved(refund: Refund, status: str, at_ms: int, actor: str, **changes) -> Refund:
    return replace(refund, status=status, history=refund.history + (RefundStep(status, at_ms, actor),), **changes)


def open_refund(request: RefundRequest, verdict: Verdict, money: Money, at_ms: int, cause: str) -> Step:
    """A new refund from its request: approved by a rule, waiting for an operator, or rejected
    at once when its amount would take the order's refunds past what the buyer paid."""
    refund = Refund(refund_id=request.refund_id, order_id=request.order_id, platform=request.platform,
                    kind=request.kind, reason_code=request.reason_code, amount_minor=request.amount_minor,
                    currency=request.currency, order_total_minor=request.order_total_minor, lines=request.lines,
                    requested_at_ms=request.requested_at_ms, requested_by=request.requested_by, status=REQUESTED,
                    history=(RefundStep(REQUESTED, at_ms, request.requested_by),), money_committed=money.ok)
    events = [_event(refund, "requested", at_ms, request.requested_by, cause, reason=request.reason)]
    if not money.ok:
        refund = _moved(refund, REJECTED, at_ms, RULES_ACTOR, decided_by=RULES_ACTOR)
        events.append(_event(refund, "rejected", at_ms, RULES_ACTOR, cause, REQUESTED, reason=money.why))
        return Step("rejected", refund, tuple(events))
    if verdict.auto:
        return _approve(refund, at_ms, RULES_ACTOR, cause, events, rule_id=verdict.rule_id, outcome="auto_approved")
    refund = _moved(refund, REVIEWING, at_ms, RULES_ACTOR)
    events.append(_event(refund, "reviewing", at_ms, RULES_ACTOR, cause, REQUESTED,
                         reason="; ".join(verdict.why_not) or "no auto-approval rule"))
    return Step("reviewing", refund, tuple(events))


def _approve(refund: Refund, at_ms: int, actor: str, cause: str, events: list, rule_id: str = "",
             reason: str = "", outcome: str = "approved") -> Step:
    previous = refund.status
    if refund.kind == REFUND_ONLY:
        refund = _moved(refund, REFUNDING, at_ms, actor, decided_by=actor, auto_rule=rule_id, instruction=PENDING)
    else:
        refund = _moved(refund, AWAITING_RETURN, at_ms, actor, decided_by=actor, auto_rule=rule_id)
    events.append(_event(refund, "approved", at_ms, actor, cause, previous, rule_id=rule_id, reason=reason))
    return Step(outcome, refund, tuple(events), instruct=refund.kind == REFUND_ONLY)


def ignored(refund: Refund | None, refund_id: str, why: str, at_ms: int, actor: str, cause: str) -> Step:
    """Nothing changes; the event says why (the operator sees it in the audit trail)."""
    base = refund or Refund(refund_id, "", "", "", "", 0, "", 0, (), 0, "", "")
    return Step("ignored", None, (_event(base, "ignored", at_ms, actor, cause, base.status, reason=why),))


def apply_action(refund: Refund | None, action: RefundAction, at_ms: int, cause: str,
                 allocations: list[tuple[str, str, int]] = ()) -> Step:
    """The refund after an operator's (or the warehouse's, or a re-drive's) action. A receipt that
    names no warehouse returns the goods where the order's reservation `allocations` took them."""
    actor = action.operator
    if refund is None:
        return ignored(None, action.refund_id, f"no refund {action.refund_id}: its request has not arrived",
                       at_ms, actor, cause)
    target = MOVES.get((refund.status, action.action))
    if target is None:
        return ignored(refund, refund.refund_id, f"cannot {action.action} a refund that is {refund.status}",
                       at_ms, actor, cause)
    if action.action == "approve":
        return _approve(refund, at_ms, actor, cause, [], reason=action.reason)
    if action.action in ("reject", "cancel"):
        outcome = REJECTED if action.action == "reject" else CANCELLED
        after = _moved(refund, outcome, at_ms, actor, money_committed=False,
                       decided_by=actor if outcome == REJECTED else refund.decided_by)
        return Step(outcome, after, (_event(after, outcome, at_ms, actor, cause, refund.status, reason=action.reason),),
                    release_money=refund.money_committed)
    if action.action == "receive":
        try:
            lines = return_lines(refund, action.warehouse, list(allocations))
        except RefundError as exc:
            return ignored(refund, refund.refund_id, str(exc), at_ms, actor, cause)
        warehouse = ",".join(dict.fromkeys(w for w, _, _ in lines))
        back = _moved(refund, RETURNED_TO_STOCK, at_ms, actor, warehouse=warehouse)
        events = [_event(back, "returned_to_stock", at_ms, actor, cause, refund.status, warehouse=warehouse,
                         units=refund.units, reason=action.reason)]
        paying = _moved(back, REFUNDING, at_ms, RULES_ACTOR, instruction=PENDING)
        events.append(_event(paying, "refunding", at_ms, RULES_ACTOR, cause, RETURNED_TO_STOCK))
        return Step("returned_to_stock", paying, tuple(events), restock=tuple(lines), instruct=True)
    # retry_instruction
    if refund.instruction != FAILED:
        return ignored(refund, refund.refund_id, f"its instruction is {refund.instruction or 'not issued'}, "
                       "not failed: nothing to re-send", at_ms, actor, cause)
    again = replace(refund, instruction=PENDING)
    return Step("retried", again, (_event(again, "refunding", at_ms, actor, cause, REFUNDING,
                                          reason=action.reason or "re-driven"),), instruct=True)


@dataclass(frozen=True)
class InstructionResult:
    """What the platform's refund API made of an instruction (pipeline.refund_api)."""
    outcome: str                   # accepted | duplicate (taken before: also done) | failed
    error: str = ""
    http_status: int | None = None
    attempts: int = 1
    platform_refund_no: str = ""

    @property
    def done(self) -> bool:
        return self.outcome in ("accepted", "duplicate")


def after_instruction(refund: Refund, result: InstructionResult, at_ms: int, cause: str) -> Step:
    """refunded when the platform took the instruction; otherwise parked with its error."""
    attempts = refund.instruction_attempts + result.attempts
    if result.done:
        done = _moved(refund, REFUNDED, at_ms, refund.platform, instruction=ACCEPTED, instruction_attempts=attempts,
                      platform_refund_no=result.platform_refund_no, last_error="")
        return Step("refunded", done, (_event(done, "refunded", at_ms, refund.platform, cause, REFUNDING,
                                              reason=result.platform_refund_no),))
    failed = replace(refund, instruction=FAILED, instruction_attempts=attempts, last_error=result.error)
    parked = FailedRefundInstruction(refund_id=refund.refund_id, order_id=refund.order_id, platform=refund.platform,
                                     amount_minor=refund.amount_minor, currency=refund.currency, error=result.error,
                                     http_status=result.http_status, attempts=result.attempts, failed_at_ms=at_ms,
                                     cause=cause)
    return Step("instruction_failed", failed,
                (_event(failed, "instruction_failed", at_ms, refund.platform, cause, REFUNDING, error=result.error),),
                parked=parked)


def open_key(refund: Refund) -> str | None:
    """Key of a refund in flight in the open index (None once it is final): the gauges count
    refunds per state and parked instructions per platform from the keys alone."""
    if refund.status in FINAL:
        return None
    return f"{refund.status}|{refund.instruction or '-'}|{refund.platform}|{refund.refund_id}"


def parse_open_key(key: str) -> tuple[str, str, str, str]:
    """(status, instruction, platform, refund id) of an `open_key`."""
    status, instruction, platform, refund_id = key.split("|", 3)
    return status, "" if instruction == "-" else instruction, platform, refund_id


def return_lines(refund: Refund, warehouse: str | None,
                 allocations: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """(warehouse, sku, qty) the returned goods go back to: the warehouse the receipt names, else
    the warehouse(s) the order's reservation took each SKU from, in allocation order (any units
    beyond what was reserved go to the first). RefundError when neither says where."""
    if warehouse:
        return [(warehouse, line.sku, line.quantity) for line in refund.lines]
    out = []
    for line in refund.lines:
        sources = [(w, q) for w, sku, q in allocations if sku == line.sku]
        if not sources:
            raise RefundError(f"the receipt names no warehouse and order {refund.order_id} has no reservation of "
                              f"{line.sku} to say where it shipped from: receive it again with a warehouse")
        left = line.quantity
        for i, (w, q) in enumerate(sources):
            take = left if i == len(sources) - 1 else min(left, q)
            if take > 0:
                out.append((w, line.sku, take))
                left -= take
    return out
