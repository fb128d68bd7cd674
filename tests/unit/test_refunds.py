"""The refund state machine (pipeline.domain.refunds), pure: every legal path, every refusal."""
from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.contracts import FailedRefundInstruction, Refund, RefundAction, RefundEvent, RefundLine, RefundRequest
from pipeline.domain.refund_rules import DAY_MS, Verdict, default_refund_rules
from pipeline.domain.refunds import (ACCEPTED, AWAITING_RETURN, CANCELLED, FAILED, FINAL, MOVES, PENDING, REFUNDED,
                                     REFUNDING, REJECTED, RETURNED_TO_STOCK, REVIEWING, RULES_ACTOR, STATES,
                                     InstructionResult, Money, RefundError, after_instruction, apply_action, open_key,
                                     open_refund, parse_action, parse_open_key, return_lines, validate_request)

T0 = 1_767_340_000_000
CAUSE = "refunds.requests:1:5"
OK = Money(True)


def request(**kw) -> RefundRequest:
    data = dict(refund_id="JD:RF1", order_id="JD-1", platform="JD", kind="return_and_refund",
                reason_code="seven_day_no_reason", amount_minor=19_900, currency="CNY", order_total_minor=29_900,
                lines=(RefundLine("TEE-01", 2),), requested_at_ms=T0, delivered_at_ms=T0 - DAY_MS,
                requested_by="buyer:u1")
    data.update(kw)
    return RefundRequest(**data)


def action(kind: str, **kw) -> RefundAction:
    return parse_action(RefundAction(**{"refund_id": "JD:RF1", "action": kind, "operator": "li.ops", "at_ms": T0,
                                        "reason": "checked", **kw}))


def opened(verdict: Verdict | None = None, **kw) -> Refund:
    req = request(**kw)
    return open_refund(req, verdict or default_refund_rules().evaluate(req), OK, T0, CAUSE).refund


def events(step) -> list[str]:
    return [e.event for e in step.events]


# --------------------------------------------------------------------------- requests


def test_auto_approved_return_waits_for_its_goods():
    step = open_refund(request(), default_refund_rules().evaluate(request()), OK, T0, CAUSE)
    r = step.refund
    assert step.outcome == "auto_approved" and events(step) == ["requested", "approved"]
    assert r.status == AWAITING_RETURN and r.auto_rule == "seven_day_no_reason_small"
    assert r.decided_by == RULES_ACTOR and r.money_committed
    assert [s.status for s in r.history] == ["requested", "awaiting_return"]
    assert not step.instruct and not step.restock   # no money back and no stock before the goods
    approved = step.events[1]
    assert (approved.actor, approved.rule_id, approved.previous_status) == (RULES_ACTOR, "seven_day_no_reason_small",
                                                                            "requested")
    assert all(e.cause == CAUSE and e.at_ms == T0 for e in step.events)
    assert Refund.decode(r.encode()) == r


def test_a_request_no_rule_approves_waits_for_an_operator_with_the_reason():
    req = request(order_total_minor=80_000)
    step = open_refund(req, default_refund_rules().evaluate(req), OK, T0, CAUSE)
    assert step.outcome == "reviewing" and step.refund.status == REVIEWING
    assert events(step) == ["requested", "reviewing"]
    assert "not below 50000" in step.events[1].reason
    assert not step.refund.decided_by


def test_auto_approved_refund_only_is_paid_at_once():
    step = open_refund(request(kind="refund_only", lines=()), Verdict("only"), OK, T0, CAUSE)
    assert step.refund.status == REFUNDING and step.refund.instruction == PENDING and step.instruct
    assert not step.restock


def test_a_request_over_what_was_paid_is_rejected_and_commits_nothing():
    step = open_refund(request(), Verdict("x"), Money(False, "would reach 40000, more than the 29900 paid"), T0, CAUSE)
    assert step.outcome == "rejected" and events(step) == ["requested", "rejected"]
    assert step.refund.status == REJECTED and not step.refund.money_committed and not step.release_money
    assert "more than the 29900 paid" in step.events[1].reason


@pytest.mark.parametrize("change, problem", [
    (dict(refund_id="has space"), "refund id"),
    (dict(refund_id=""), "refund id"),
    (dict(order_id=" "), "'order_id' is empty"),
    (dict(kind="exchange"), "'kind' must be one of"),
    (dict(amount_minor=0), "'amount_minor' must be positive"),
    (dict(amount_minor=30_000), "more than the order's total 29900"),
    (dict(order_total_minor=-1), "'order_total_minor' must be positive"),
    (dict(currency="yuan"), "not an ISO 4217"),
    (dict(lines=()), "a return needs the 'lines'"),
    (dict(lines=(RefundLine("TEE-01", 0),)), "positive quantity"),
    (dict(requested_by="  "), "'requested_by' (who filed it) is required"),
])
def test_bad_requests_are_refused_with_what_is_wrong(change, problem):
    with pytest.raises(RefundError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        validate_request(request(**change))


def test_requests_arrive_as_bytes_and_garbage_is_refused():
    assert validate_request(request().encode()) == request()
    with pytest.raises(RefundError, match="not a RefundRequest"):
        validate_request(b'{"refund_id": "x"}')
    with pytest.raises(RefundError, match="not a RefundRequest"):
        validate_request(action("approve").encode())
    assert validate_request(request(requested_by=" buyer:u1 ")).requested_by == "buyer:u1"


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize("data, problem", [
    (dict(operator=""), "'operator' (who did it) is required"),
    (dict(operator="   "), "'operator' (who did it) is required"),
    (dict(action="refund"), "'action' must be one of"),
    (dict(action="reject", reason=""), "to reject a refund needs a 'reason'"),
    (dict(action="cancel", reason=" "), "to cancel a refund needs a 'reason'"),
    (dict(refund_id=" "), "non-empty 'refund_id'"),
    (dict(action="receive", warehouse="WH:1"), "bad warehouse"),
])
def test_an_action_without_who_or_why_is_refused(data, problem):
    base = {"refund_id": "JD:RF1", "action": "approve", "operator": "li.ops", "at_ms": T0, "reason": "", **data}
    with pytest.raises(RefundError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_action(RefundAction(**base))


def test_operator_approves_then_goods_come_back_then_the_instruction_goes_out():
    r = opened(order_total_minor=80_000)
    step = apply_action(r, action("approve"), T0 + 1, "refunds.actions:1:1")
    assert step.outcome == "approved" and step.refund.status == AWAITING_RETURN
    assert step.refund.decided_by == "li.ops" and step.events[0].actor == "li.ops" and not step.instruct
    received = apply_action(step.refund, action("receive", warehouse="WH-GZ"), T0 + 2, "refunds.actions:1:2")
    assert events(received) == ["returned_to_stock", "refunding"]
    assert received.restock == (("WH-GZ", "TEE-01", 2),) and received.instruct
    assert received.refund.status == REFUNDING and received.refund.instruction == PENDING
    assert received.refund.warehouse == "WH-GZ" and received.events[0].units == 2
    assert [s.status for s in received.refund.history][-2:] == [RETURNED_TO_STOCK, REFUNDING]
    done = after_instruction(received.refund, InstructionResult("accepted", platform_refund_no="JDRF1"), T0 + 3,
                             "refunds.actions:1:2")
    assert done.refund.status == REFUNDED and done.refund.instruction == ACCEPTED and events(done) == ["refunded"]
    assert done.refund.platform_refund_no == "JDRF1" and done.parked is None


def test_a_receipt_without_a_warehouse_returns_goods_where_the_order_was_reserved():
    r = opened()
    step = apply_action(r, action("receive"), T0, "c", allocations=[("WH-SH", "TEE-01", 1), ("WH-BJ", "TEE-01", 1),
                                                                     ("WH-SH", "OTHER", 3)])
    assert step.restock == (("WH-SH", "TEE-01", 1), ("WH-BJ", "TEE-01", 1))
    assert step.refund.warehouse == "WH-SH,WH-BJ"
    nowhere = apply_action(r, action("receive"), T0, "c", allocations=[])
    assert nowhere.ignored and "receive it again with a warehouse" in nowhere.events[0].reason
    assert not nowhere.restock and nowhere.refund is None


def test_return_lines_give_extra_units_to_the_last_source():
    r = replace(opened(), lines=(RefundLine("A", 5),))
    assert return_lines(r, None, [("W1", "A", 2), ("W2", "A", 1)]) == [("W1", "A", 2), ("W2", "A", 3)]
    assert return_lines(r, "W9", [("W1", "A", 2)]) == [("W9", "A", 5)]


def test_a_failed_instruction_is_parked_with_the_platforms_error_and_a_redrive_sends_it_again():
    r = apply_action(opened(), action("receive", warehouse="WH-SH"), T0, "c1").refund
    failed = after_instruction(r, InstructionResult("failed", "Invalid API Key", 401, 1), T0, "c1")
    assert failed.outcome == "instruction_failed" and failed.refund.status == REFUNDING
    assert failed.refund.instruction == FAILED and failed.refund.last_error == "Invalid API Key"
    assert events(failed) == ["instruction_failed"] and failed.events[0].error == "Invalid API Key"
    parked = failed.parked
    assert isinstance(parked, FailedRefundInstruction)
    assert (parked.refund_id, parked.platform, parked.amount_minor, parked.http_status, parked.error) == (
        "JD:RF1", "JD", 19_900, 401, "Invalid API Key")
    retry = apply_action(failed.refund, action("retry_instruction", operator="ops.zhao"), T0 + 5, "c2")
    assert retry.outcome == "retried" and retry.instruct and retry.refund.instruction == PENDING
    assert retry.events[0].actor == "ops.zhao"
    done = after_instruction(retry.refund, InstructionResult("duplicate"), T0 + 5, "c2")
    assert done.refund.status == REFUNDED and done.refund.instruction_attempts == 2


def test_a_redrive_of_an_instruction_that_is_not_failed_sends_nothing():
    r = apply_action(opened(), action("receive", warehouse="WH-SH"), T0, "c1").refund
    for state in (r, after_instruction(r, InstructionResult("accepted"), T0, "c1").refund):
        step = apply_action(state, action("retry_instruction"), T0, "c2")
        assert step.ignored and not step.instruct and step.refund is None


def test_reject_and_cancel_free_the_committed_amount():
    r = opened(order_total_minor=80_000)
    rejected = apply_action(r, action("reject", reason="worn, tags removed"), T0, "c")
    assert rejected.refund.status == REJECTED and rejected.release_money and not rejected.refund.money_committed
    assert rejected.events[0].reason == "worn, tags removed" and rejected.refund.decided_by == "li.ops"
    waiting = opened()
    cancelled = apply_action(waiting, action("cancel", reason="buyer withdrew"), T0, "c")
    assert cancelled.refund.status == CANCELLED and cancelled.release_money
    never_committed = replace(r, money_committed=False)
    assert not apply_action(never_committed, action("reject", reason="x"), T0, "c").release_money


def test_goods_never_go_back_to_stock_before_approval_or_twice():
    reviewing = opened(order_total_minor=80_000)
    early = apply_action(reviewing, action("receive", warehouse="WH-SH"), T0, "c")
    assert early.ignored and not early.restock and "cannot receive a refund that is reviewing" in early.events[0].reason
    back = apply_action(opened(), action("receive", warehouse="WH-SH"), T0, "c").refund
    again = apply_action(back, action("receive", warehouse="WH-SH"), T0, "c2")
    assert again.ignored and not again.restock


def test_every_move_not_in_the_table_is_ignored_and_final_states_never_move():
    for state in STATES:
        for kind in ("approve", "reject", "cancel", "receive", "retry_instruction"):
            r = replace(opened(), status=state, instruction=FAILED if state == REFUNDING else "")
            step = apply_action(r, action(kind, warehouse="WH-SH"), T0, "c")
            legal = (state, kind) in MOVES
            assert step.ignored != legal, (state, kind)
            if state in FINAL:
                assert step.ignored
            if step.ignored:
                assert step.refund is None and not (step.restock or step.instruct or step.release_money)
                assert step.events[0].event == "ignored" and step.events[0].status == state


def test_an_action_before_its_request_is_ignored_with_the_reason():
    step = apply_action(None, action("approve"), T0, "c")
    assert step.ignored and "its request has not arrived" in step.events[0].reason
    assert step.events[0].refund_id == "JD:RF1"


def test_states_only_move_forward_in_their_declared_order():
    """The tiers break ties between events of one message by this order (refund_views)."""
    for (state, _), target in MOVES.items():
        assert STATES.index(target) >= STATES.index(state)
    assert STATES.index(REFUNDED) > STATES.index(REFUNDING) > STATES.index(RETURNED_TO_STOCK)


def test_open_keys_name_what_the_gauges_count_and_final_refunds_have_none():
    r = replace(opened(), status=REFUNDING, instruction=FAILED)
    assert parse_open_key(open_key(r)) == (REFUNDING, FAILED, "JD", "JD:RF1")
    assert parse_open_key(open_key(opened())) == (AWAITING_RETURN, "", "JD", "JD:RF1")
    for state in FINAL:
        assert open_key(replace(r, status=state)) is None


def test_events_and_records_round_trip_through_their_contracts():
    step = open_refund(request(), Verdict("r"), OK, T0, CAUSE)
    for e in step.events:
        assert RefundEvent.decode(e.encode()) == e
    assert Refund.decode(step.refund.encode()) == step.refund
