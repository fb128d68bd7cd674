"""Hold bookkeeping: deadlines, decision parsing, idempotent resolution and the default policy."""
from __future__ import annotations


import pytest

from pipeline.contracts import Hold, HoldVerdict, RiskDecision, RiskEvent, RuleHit
from pipeline.domain.holds import (DecisionError, apply_decision, due_order_ids, new_hold, open_key,
                                   order_of_open_key, parse_decision,
                                   resolved, timeout_decision)
from pipeline.domain.risk import RiskContext, default_rules, evaluate

T0 = 1_760_000_000_000  # ms


@pytest.fixture()
def verdict():
    order = {
        "order_id": "TMALL-9", "platform": "TMALL", "currency": "CNY",
        "amounts": {"total_minor": 680_000},
        "lines": [{"sku": "SOFA-C", "quantity": 1, "unit_price_minor": 680_000, "is_gift_card": False,
                   "is_custom": True}],
        "buyer": {"buyer_id": "b", "name": "李四", "phone": "1", "ip": "10.0.0.1"},
        "address": {"country": "CN", "province": "西藏", "city": "拉萨", "detail": "北京中路 1 号",
                    "postal_code": "850000"},
        "flags": {"invoice": False, "gift": False, "urgent": False, "gift_card": False},
    }
    return evaluate(default_rules(), order, RiskContext(ip_order_count=1))


@pytest.fixture()
def hold(verdict):
    return new_hold("TMALL-9", "TMALL", T0, verdict, timeout_s=30 * 60, partition=2)


def decision(**kw) -> RiskDecision:
    data = {"order_id": "TMALL-9", "action": "approve", "operator": "wang.manager", "reason": "known customer",
            "decided_at_ms": T0 + 60_000, **kw}
    return parse_decision(RiskDecision(**data))


def test_new_hold_is_a_hold_record_and_carries_what_operators_need(hold, verdict):
    assert verdict.action == "hold"
    assert Hold.decode(hold.encode()) == hold  # what the table and its changelog keep
    assert hold.due_at_ms == T0 + 30 * 60 * 1000
    assert hold.rule_ids == ("amount_over_5000", "remote_region")
    assert hold.approvers == ("regional_manager", "production")
    assert hold.amount_minor == 680_000 and hold.currency == "CNY"
    assert hold.partition == 2 and hold.status == "held" and hold.ruleset_version == 1


def test_new_hold_from_the_verdict_header():
    header = HoldVerdict(hits=(RuleHit("r", "amount", "low", "hold", "big"),), approvers=("ops",),
                         amount_minor=5, currency="USD").encode()
    h = new_hold("X", "JD", T0, HoldVerdict.decode(header), timeout_s=2, partition=0)
    assert h.rule_ids == ("r",) and h.approvers == ("ops",) and h.due_at_ms == T0 + 2000
    assert h.amount_minor == 5 and h.currency == "USD"


def test_new_hold_rejects_non_positive_timeout(verdict):
    with pytest.raises(ValueError):
        new_hold("X", "JD", T0, verdict, timeout_s=0, partition=0)


def test_parse_decision_from_bytes_round_trip():
    d = decision()
    again = parse_decision(d.encode())
    assert again == d and again.source == "operator"


@pytest.mark.parametrize("data, message", [
    (b"{not json", "not a RiskDecision"),
    (b'{"order_id": "X", "action": "approve", "operator": "a", "decided_at_ms": 1}', "not a RiskDecision"),
    (b"\xc3\x01" + b"\x00" * 8 + b"junk", "not a RiskDecision"),
    (RiskDecision.codec().encode({"order_id": "X", "action": "approve", "operator": "a",
                                  "decided_at_ms": 1})[:-3], "not a RiskDecision"),  # truncated
    (RiskDecision("", "approve", "a", "", 1), "order_id"),
    (RiskDecision("X", "maybe", "a", "", 1), "'action'"),
    (RiskDecision("X", "approve", "", "", 1), "'operator'"),
    (RiskDecision("X", "approve", " ", "", 1), "'operator'"),
    (RiskDecision("X", "reject", "a", "", 1), "needs a 'reason'"),
    (RiskDecision("X", "approve", "a", "", -1), "decided_at_ms"),
    (RiskDecision("X", "approve", "a", "", 1, source="robot"), "'source'"),
])
def test_bad_decisions_raise(data, message):
    with pytest.raises(DecisionError, match=message):
        parse_decision(data.encode() if isinstance(data, RiskDecision) else data)


def test_operator_approval(hold):
    res = apply_decision(hold, decision())
    assert res.outcome == "approved"
    ev = res.event
    assert ev.event == "approved" and ev.order_id == "TMALL-9" and ev.platform == "TMALL"
    assert ev.operator == "wang.manager" and ev.reason == "known customer"
    assert ev.waited_ms == 60_000 and ev.at_ms == T0 + 60_000
    assert ev.rule_ids == hold.rule_ids and ev.approvers == hold.approvers
    assert ev.amount_minor == hold.amount_minor and ev.ruleset_version == hold.ruleset_version
    assert RiskEvent.decode(ev.encode()) == ev
    kept = resolved(hold, res, decided_by="3:17")  # what the table keeps: a re-run re-publishes this event
    assert kept.status == "approved" and kept.decided_by == "3:17"
    assert RiskEvent.decode(Hold.decode(kept.encode()).resolution_event) == ev


def test_operator_rejection(hold):
    res = apply_decision(hold, decision(action="reject", reason="stolen card"))
    assert res.outcome == "rejected" and res.event.event == "rejected" and res.event.reason == "stolen card"


def test_decision_without_hold_or_after_resolution_is_ignored(hold):
    assert apply_decision(None, decision()).outcome == "ignored"
    first = apply_decision(hold, decision())
    again = apply_decision(resolved(hold, first), decision(action="reject", reason="too late"))
    assert again.outcome == "ignored" and again.event is None


def test_decision_for_another_order_is_ignored(hold):
    assert apply_decision(hold, decision(order_id="OTHER")).outcome == "ignored"


def test_due_order_ids_reads_each_partition_only_up_to_its_first_hold_not_due():
    read: list[str] = []

    def partition(*holds):
        for due, order_id in holds:
            read.append(order_id)
            yield open_key(due, order_id)
    partitions = [partition((T0 + 40_000, "B"), (T0 + 60_000, "A"), (T0 + 3_600_000, "C"), (T0 + 3_700_000, "X")),
                  partition((T0 + 1_000, "D"), (T0 + 90_000, "E"))]
    assert due_order_ids(partitions, T0 + 61_000, limit=100) == ["B", "A", "D"]
    assert "X" not in read  # C stopped the first partition's scan
    assert due_order_ids([iter([open_key(T0, "A"), open_key(T0, "B")])], T0, limit=1) == ["A"]
    assert due_order_ids([iter([open_key(T0 + 1, "A")])], T0, limit=10) == []


def test_timeout_releases_with_default_policy(hold):
    now = hold.due_at_ms + 5
    d = timeout_decision("TMALL-9", now, timeout_s=30 * 60)
    assert d.action == "approve" and d.operator == "default_policy" and d.source == "default_policy"
    assert d.reason == "no decision within 30 min"
    assert parse_decision(d.encode()) == d  # travels over risk.decisions
    res = apply_decision(hold, d)
    assert res.outcome == "auto_released" and res.event.event == "auto_released"
    assert res.event.waited_ms == 30 * 60 * 1000 + 5


def test_timeout_reason_for_short_test_timeouts():
    assert timeout_decision("X", T0, timeout_s=2).reason == "no decision within 2 s"
    assert "timeout" in timeout_decision("X", T0).reason


def test_default_policy_before_deadline_is_ignored(hold):
    early = timeout_decision("TMALL-9", hold.due_at_ms - 1)
    assert apply_decision(hold, early).outcome == "ignored"


def test_operator_and_timeout_race_only_first_counts(hold):
    """The timer may emit a release while an operator's rejection is in flight: first one wins."""
    operator_first = apply_decision(hold, decision(action="reject", reason="fraud"))
    after = resolved(hold, operator_first)
    assert apply_decision(after, timeout_decision("TMALL-9", hold.due_at_ms)).outcome == "ignored"
    timer_first = apply_decision(hold, timeout_decision("TMALL-9", hold.due_at_ms))
    assert timer_first.outcome == "auto_released"
    assert apply_decision(resolved(hold, timer_first), decision(action="reject", reason="x")).outcome == "ignored"


def test_open_keys_sort_by_deadline_then_order_and_read_back():
    keys = [open_key(T0 + 60_000, "B"), open_key(T0 + 5_000, "Z"), open_key(T0 + 5_000, "A"),
            open_key(10 ** 13, "LATE")]
    assert [order_of_open_key(k) for k in sorted(keys)] == [
        (T0 + 5_000, "A"), (T0 + 5_000, "Z"), (T0 + 60_000, "B"), (10 ** 13, "LATE")]
    # everything due by a moment sorts before its bound, nothing later does
    bound = open_key(T0 + 5_000, "\uffff")
    assert [k for k in sorted(keys) if k <= bound] == [open_key(T0 + 5_000, "A"), open_key(T0 + 5_000, "Z")]
