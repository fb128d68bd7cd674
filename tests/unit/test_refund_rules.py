"""Refund auto-approval as data (seed 002): 七天无理由 + 非定制商品 + 订单金额 < 500 元 -> approved."""
from __future__ import annotations

import pytest

from pipeline.contracts import RefundLine, RefundRequest
from pipeline.domain.refund_rules import (DAY_MS, DEFAULT_REFUND_RULES_FILE, RefundRuleError, RefundRules,
                                          default_refund_rules)

T0 = 1_767_340_000_000


def request(**kw) -> RefundRequest:
    data = dict(refund_id="JD:RF1", order_id="JD-1", platform="JD", kind="return_and_refund",
                reason_code="seven_day_no_reason", amount_minor=19_900, currency="CNY", order_total_minor=49_999,
                lines=(RefundLine("TEE-01", 1),), requested_at_ms=T0, delivered_at_ms=T0 - 3 * DAY_MS,
                requested_by="buyer:u1")
    data.update(kw)
    return RefundRequest(**data)


def test_the_seed_case_is_approved_by_the_default_rule():
    verdict = default_refund_rules().evaluate(request())
    assert verdict.auto and verdict.rule_id == "seven_day_no_reason_small"


@pytest.mark.parametrize("change, why", [
    (dict(reason_code="quality"), "reason 'quality'"),
    (dict(kind="refund_only", lines=()), "kind 'refund_only'"),
    (dict(lines=(RefundLine("TEE-01", 1), RefundLine("RING-ENGRAVED", 1, is_custom=True))),
     "custom item RING-ENGRAVED"),
    (dict(order_total_minor=50_000), "order amount 50000 CNY minor is not below 50000"),   # 500 元 is not < 500 元
    (dict(requested_at_ms=T0, delivered_at_ms=T0 - 8 * DAY_MS), "days after delivery"),
    (dict(delivered_at_ms=None), "no delivery time"),
])
def test_each_condition_alone_sends_the_request_to_an_operator(change, why):
    verdict = default_refund_rules().evaluate(request(**change))
    assert not verdict.auto and verdict.rule_id is None
    assert len(verdict.why_not) == 1 and why in verdict.why_not[0], verdict.why_not
    assert verdict.why_not[0].startswith("seven_day_no_reason_small: ")


def test_the_order_amount_counts_not_the_refunded_amount():
    # a 100 元 refund of a 600 元 order is still an order of 600 元
    assert not default_refund_rules().evaluate(request(amount_minor=10_000, order_total_minor=60_000)).auto


def test_other_currencies_compare_through_the_rate_or_their_own_limit():
    rules = default_refund_rules()
    assert rules.evaluate(request(currency="USD", order_total_minor=6_900)).auto         # 69 USD = 496.8 CNY
    assert not rules.evaluate(request(currency="USD", order_total_minor=7_000)).auto     # 70 USD = 504 CNY
    verdict = rules.evaluate(request(currency="VND", order_total_minor=100))
    assert not verdict.auto and "no limit and no CNY rate" in verdict.why_not[0]
    own = RefundRules.parse("version: 2\nauto_approve:\n  - id: usd\n    when:\n"
                            "      order_total_below_minor: {USD: 10000}\n")
    assert own.evaluate(request(currency="USD", order_total_minor=9_999)).auto
    assert not own.evaluate(request(order_total_minor=1)).auto   # CNY: no CNY limit in this rule set


def test_the_first_matching_enabled_rule_approves():
    rules = RefundRules.parse("""
version: 3
auto_approve:
  - id: paused
    enabled: false
    when: {kinds: [refund_only]}
  - id: small
    when: {order_total_below_minor: 1000}
  - id: only
    when: {kinds: [refund_only]}
""")
    assert rules.evaluate(request(kind="refund_only", order_total_minor=500)).rule_id == "small"
    assert rules.evaluate(request(kind="refund_only", order_total_minor=5_000)).rule_id == "only"
    verdict = rules.evaluate(request(order_total_minor=5_000))
    assert verdict.rule_id is None and [w.split(":")[0] for w in verdict.why_not] == ["small", "only"]


def test_no_rules_means_every_request_waits_for_an_operator():
    rules = RefundRules.parse("version: 1\nauto_approve: []\n")
    assert not rules.evaluate(request()).auto


@pytest.mark.parametrize("text, problem", [
    ("just text", "YAML mapping"),
    ("version: 0\nauto_approve: []", "'version' must be a positive integer"),
    ("version: 1\nrules: []", "unknown top-level keys ['rules']"),
    ("version: 1\nauto_approve: {}", "'auto_approve' must be a list"),
    ("version: 1\nauto_approve:\n  - id: Bad Id\n    when: {kinds: [refund_only]}", "'id' must match"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {}", "rule 'a': 'when' needs at least one condition"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {colour: red}", "rule 'a': unknown condition 'colour'"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {kinds: [exchange]}", "rule 'a': kinds ['exchange'] unknown"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {no_custom_items: false}", "no_custom_items can only be true"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {order_total_below_minor: {CNY: -1}}", "positive integer"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {order_total_below_minor: {yuan: 5}}", "not an ISO 4217"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {max_days_since_delivery: 7.5}", "positive integer"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {reasons: []}", "non-empty list"),
    ("version: 1\nauto_approve:\n  - id: a\n    when: {reasons: [x]}\n  - id: a\n    when: {reasons: [y]}",
     "duplicate id"),
    ("version: 1\nfx_to_cny: {USD: -7}\nauto_approve: []", "rate for USD must be a positive number"),
])
def test_a_bad_rule_set_is_refused_naming_the_rule_and_the_problem(text, problem):
    with pytest.raises(RefundRuleError, match=problem.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        RefundRules.parse(text)


def test_the_default_file_is_the_seed_rule_and_keeps_its_text_for_publishing():
    rules = RefundRules.parse(DEFAULT_REFUND_RULES_FILE.read_bytes())
    assert rules.version == 1
    [rule] = rules.rules
    assert rule.when == {"reasons": ["seven_day_no_reason"], "kinds": ["return_and_refund"], "no_custom_items": True,
                         "order_total_below_minor": {"CNY": 50_000}, "max_days_since_delivery": 7}
    assert rules.source_text == DEFAULT_REFUND_RULES_FILE.read_text(encoding="utf-8")
