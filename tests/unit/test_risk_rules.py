"""Every rule kind, the strongest-action verdict, degraded mode, approval routing and the
rule-set parser (including files that must be rejected with a clear message)."""
from __future__ import annotations

import copy
import textwrap

import pytest

from pipeline.domain.risk import (DEFAULT_RULES_FILE, RiskContext, RuleSet, RuleSetError, evaluate,
                                  evaluate_summary, load_rule_file, route_approvers, to_cny_minor,
                                  verifiers_needed)

BASE_ORDER = {
    "order_id": "JD-1001", "platform": "JD", "currency": "CNY", "status": "PAID",
    "amounts": {"goods_minor": 19900, "total_minor": 19900},
    "lines": [{"sku": "SKU-1", "title": "连体衣", "quantity": 1, "unit_price_minor": 19900,
               "is_gift_card": False, "is_custom": False}],
    "buyer": {"buyer_id": "b1", "name": "张三", "phone": "13800000000", "ip": "10.1.2.3"},
    "address": {"country": "CN", "province": "浙江", "city": "杭州", "district": "西湖区",
                "detail": "文三路 100 号", "postal_code": "310000"},
    "flags": {"invoice": False, "gift": False, "urgent": False, "gift_card": False},
    "note": None, "risk_flags": [],
}
CLEAN = RiskContext(ip_order_count=1, degraded=False, verifier_results={"payment": True, "address": True})


def order(**changes) -> dict:
    """A clean order with nested changes: order(address={"province": "西藏"})."""
    o = copy.deepcopy(BASE_ORDER)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(o.get(key), dict):
            o[key].update(value)
        else:
            o[key] = value
    return o


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rule_file(DEFAULT_RULES_FILE)


def hit_ids(verdict) -> list[str]:
    return [h.rule_id for h in verdict.hits]


# --------------------------------------------------------------------------- default rule set


def test_default_rule_file_has_every_kind(rules):
    kinds = {r.kind for r in rules.rules}
    assert {"amount_above", "remote_region", "ip_burst", "gift_card", "note_flag", "cross_border",
            "verifier", "blocked_ip"} <= kinds
    assert rules.version == 1
    assert rules.ip_window_s == 3600


def test_clean_order_is_accepted_without_hits(rules):
    verdict = evaluate(rules, order(), CLEAN)
    assert verdict.action == "accept"
    assert verdict.hits == () and verdict.approvers == () and verdict.skipped == ()
    assert verdict.amount_minor == 19900 and verdict.currency == "CNY" and verdict.ruleset_version == 1


@pytest.mark.parametrize("total, held", [(500_000, False), (500_001, True), (1_200_000, True)])
def test_amount_above_5000_cny(rules, total, held):
    verdict = evaluate(rules, order(amounts={"total_minor": total}), CLEAN)
    assert ("amount_over_5000" in hit_ids(verdict)) is held
    assert verdict.action == ("hold" if held else "accept")


def test_amount_in_foreign_currency_is_converted(rules):
    # 800 USD ~ 5760 CNY > 5000; 600 USD ~ 4320 CNY
    assert "amount_over_5000" in hit_ids(evaluate(rules, order(currency="USD", amounts={"total_minor": 80_000}), CLEAN))
    assert "amount_over_5000" not in hit_ids(evaluate(rules, order(currency="USD", amounts={"total_minor": 60_000}), CLEAN))
    # JPY has no minor unit: 120000 JPY ~ 5760 CNY
    assert "amount_over_5000" in hit_ids(evaluate(rules, order(currency="JPY", amounts={"total_minor": 120_000}), CLEAN))


def test_amount_in_currency_without_rate_is_not_compared(rules):
    verdict = evaluate(rules, order(currency="XYZ", amounts={"total_minor": 10**12}), CLEAN)
    assert "amount_over_5000" not in hit_ids(verdict)


def test_to_cny_minor():
    assert to_cny_minor(100, "CNY", {}) == 100
    assert to_cny_minor(10_000, "USD", {"USD": 7.2}) == 72_000
    assert to_cny_minor(1000, "JPY", {"JPY": 0.05}) == 5_000
    assert to_cny_minor(1000, "USD", {}) is None
    assert to_cny_minor(1000, "KWD", {"KWD": 23.0}) == 2300  # three-digit minor unit


@pytest.mark.parametrize("province, held", [("新疆", True), ("新疆维吾尔自治区", True), ("西藏", True),
                                            ("青海", True), ("内蒙古自治区", True), ("宁夏", True),
                                            ("甘肃省", True), ("浙江", False), ("", False)])
def test_remote_region(rules, province, held):
    verdict = evaluate(rules, order(address={"province": province}), CLEAN)
    assert ("remote_region" in hit_ids(verdict)) is held


def test_remote_region_only_applies_to_domestic_addresses(rules):
    verdict = evaluate(rules, order(address={"country": "TH", "province": "新疆"}), CLEAN)
    assert "remote_region" not in hit_ids(verdict)


@pytest.mark.parametrize("count, held", [(1, False), (4, False), (5, True), (9, True)])
def test_ip_burst_five_orders_in_window(rules, count, held):
    verdict = evaluate(rules, order(), RiskContext(ip_order_count=count, verifier_results=CLEAN.verifier_results))
    assert ("ip_burst" in hit_ids(verdict)) is held
    if held:
        assert verdict.action == "hold"
        assert str(count) in next(h.reason for h in verdict.hits if h.rule_id == "ip_burst")


def test_ip_burst_ignores_orders_without_ip(rules):
    verdict = evaluate(rules, order(buyer={"ip": None}), RiskContext(ip_order_count=50))
    assert "ip_burst" not in hit_ids(verdict)


def test_gift_card_by_flag_or_line(rules):
    by_flag = evaluate(rules, order(flags={"gift_card": True}), CLEAN)
    line = dict(BASE_ORDER["lines"][0], sku="GC-100", is_gift_card=True)
    by_line = evaluate(rules, order(lines=[line]), CLEAN)
    for verdict in (by_flag, by_line):
        assert "gift_card_confirm" in hit_ids(verdict)
        assert verdict.action == "hold"
    assert "GC-100" in by_line.hits[0].reason


@pytest.mark.parametrize("flag", ["invoice", "gift", "urgent"])
def test_note_flags_flag_but_accept(rules, flag):
    verdict = evaluate(rules, order(flags={flag: True}), CLEAN)
    assert hit_ids(verdict) == ["note_flags"]
    assert verdict.hits[0].action == "flag"
    assert verdict.action == "accept"
    assert flag in verdict.hits[0].reason


def test_cross_border_complete_declaration_passes(rules):
    thai = order(address={"country": "TH", "province": "Bangkok", "city": "Bangkok",
                          "detail": "99 Sukhumvit Rd", "postal_code": "10110"})
    assert "cross_border_declaration" not in hit_ids(evaluate(rules, thai, CLEAN))


def test_cross_border_uses_the_country_template(rules):
    # TH needs the buyer's phone, the fallback template ('*') does not
    no_phone_th = order(buyer={"phone": ""}, address={"country": "TH", "postal_code": "10110"})
    no_phone_de = order(buyer={"phone": ""}, address={"country": "DE", "postal_code": "10115"})
    th = evaluate(rules, no_phone_th, CLEAN)
    assert "cross_border_declaration" in hit_ids(th)
    assert "buyer.phone" in th.hits[0].reason and th.action == "hold"
    assert "cross_border_declaration" not in hit_ids(evaluate(rules, no_phone_de, CLEAN))


def test_cross_border_checks_every_line(rules):
    lines = [dict(BASE_ORDER["lines"][0]), dict(BASE_ORDER["lines"][0], sku="SKU-2", title="  ")]
    verdict = evaluate(rules, order(lines=lines, address={"country": "TH", "postal_code": "10110"}), CLEAN)
    assert "lines[].title" in verdict.hits[0].reason


def test_cross_border_missing_postal_code_with_fallback_template(rules):
    verdict = evaluate(rules, order(address={"country": "SG", "postal_code": ""}), CLEAN)
    assert "cross_border_declaration" in hit_ids(verdict)
    assert "address.postal_code" in verdict.hits[0].reason


def test_domestic_order_without_postal_code_is_not_cross_border(rules):
    assert evaluate(rules, order(address={"postal_code": ""}), CLEAN).action == "accept"


def test_failed_payment_verification_rejects(rules):
    ctx = RiskContext(verifier_results={"payment": False, "address": True})
    verdict = evaluate(rules, order(), ctx)
    assert verdict.action == "reject" and hit_ids(verdict) == ["payment_verified"]
    assert verdict.approvers == ()  # nobody approves a rejection


def test_failed_address_verification_holds(rules):
    verdict = evaluate(rules, order(), RiskContext(verifier_results={"payment": True, "address": False}))
    assert verdict.action == "hold" and hit_ids(verdict) == ["address_verified"]


def test_unavailable_verifier_does_not_hold_by_default(rules):
    verdict = evaluate(rules, order(), RiskContext(verifier_results={"payment": None}))
    assert verdict.action == "accept"


def test_blocked_ip_network_rejects(rules):
    assert evaluate(rules, order(buyer={"ip": "203.0.113.77"}), CLEAN).action == "reject"
    assert evaluate(rules, order(buyer={"ip": "203.0.114.1"}), CLEAN).action == "accept"
    assert evaluate(rules, order(buyer={"ip": "not-an-ip"}), CLEAN).action == "accept"


def test_strongest_action_wins_and_all_hits_are_reported(rules):
    o = order(amounts={"total_minor": 900_000}, flags={"urgent": True}, buyer={"ip": "203.0.113.5"})
    verdict = evaluate(rules, o, CLEAN)
    assert verdict.action == "reject"
    assert hit_ids(verdict) == ["amount_over_5000", "note_flags", "blocked_ip"]
    assert verdict.severity == "high"
    assert evaluate(rules, order(flags={"gift": True}, address={"province": "西藏"}), CLEAN).severity == "low"
    assert evaluate(rules, order(), CLEAN).severity == ""


def test_degraded_mode_skips_expensive_rules(rules):
    failing = {"payment": False, "address": False}
    full = evaluate(rules, order(), RiskContext(verifier_results=failing))
    light = evaluate(rules, order(), RiskContext(degraded=True, verifier_results=failing))
    assert full.action == "reject"
    assert light.action == "accept"
    assert set(light.skipped) == {"payment_verified", "address_verified"}
    assert light.checked_lightly and not full.checked_lightly
    # cheap rules still run while degraded
    held = evaluate(rules, order(address={"province": "西藏"}), RiskContext(degraded=True))
    assert held.action == "hold" and hit_ids(held) == ["remote_region"]


def test_verifiers_needed(rules):
    assert verifiers_needed(rules) == ["payment", "address"]
    text = DEFAULT_RULES_FILE.read_text().replace("    params:\n      name: address",
                                                  "    enabled: false\n    params:\n      name: address")
    assert verifiers_needed(RuleSet.parse(text)) == ["payment"]


# --------------------------------------------------------------------------- approval routing


def test_routing_default_big_amount_and_custom_items(rules):
    custom_line = dict(BASE_ORDER["lines"][0], is_custom=True)
    remote = {"province": "青海"}
    assert evaluate(rules, order(address=remote), CLEAN).approvers == ("risk_ops",)
    assert evaluate(rules, order(amounts={"total_minor": 600_000}), CLEAN).approvers == ("regional_manager",)
    assert evaluate(rules, order(address=remote, lines=[custom_line]), CLEAN).approvers == ("risk_ops", "production")
    big_custom = order(amounts={"total_minor": 600_000}, lines=[custom_line])
    assert evaluate(rules, big_custom, CLEAN).approvers == ("regional_manager", "production")


def test_route_on_rule_ids_and_severity():
    rs = RuleSet.parse(textwrap.dedent("""
        version: 3
        rules:
          - {id: remote, kind: remote_region, severity: low, action: hold, params: {provinces: [西藏]}}
          - {id: burst, kind: ip_burst, severity: high, action: hold}
        routing:
          default: [risk_ops]
          routes:
            - {when: {rule_ids: [remote]}, approvers: [logistics]}
            - {when: {min_severity: high}, approvers: [security], also: true}
    """))
    remote = order(address={"province": "西藏"})
    assert evaluate(rs, remote, RiskContext(ip_order_count=1)).approvers == ("logistics",)
    assert evaluate(rs, remote, RiskContext(ip_order_count=7)).approvers == ("logistics", "security")
    assert evaluate(rs, order(), RiskContext(ip_order_count=7)).approvers == ("risk_ops", "security")
    hits = evaluate(rs, remote, RiskContext()).hits
    assert route_approvers(rs, remote, hits) == ("logistics",)


def test_evaluate_summary_rebuilds_a_hold_from_risk_flags(rules):
    held = order(amounts={"total_minor": 700_000}, risk_flags=["amount_over_5000", "retired_rule"])
    summary = evaluate_summary(held, rules)
    assert summary.action == "hold"
    assert summary.rule_ids == ("amount_over_5000", "retired_rule")
    assert summary.approvers == ("regional_manager",)
    assert summary.amount_minor == 700_000


# --------------------------------------------------------------------------- parser


def test_parse_accepts_bytes_and_keeps_source_text():
    text = "version: 2\nrules:\n  - {id: gc, kind: gift_card, severity: medium, action: hold}\n"
    rs = RuleSet.parse(text.encode())
    assert rs.version == 2 and rs.source_text == text and rs.to_text() == text
    assert rs.rules[0].expensive is False and rs.rules[0].enabled is True
    assert rs.routing.default == ("risk_ops",)


def test_to_text_round_trips_a_constructed_rule_set(rules):
    from dataclasses import replace
    stripped = replace(rules, source_text="")
    again = RuleSet.parse(stripped.to_text())
    assert again.version == rules.version
    assert [r.to_json() for r in again.rules] == [r.to_json() for r in rules.rules]
    big_custom = order(amounts={"total_minor": 600_000},
                       lines=[dict(BASE_ORDER["lines"][0], is_custom=True)])
    assert evaluate(again, big_custom, CLEAN) == evaluate(rules, big_custom, CLEAN)


def test_disabled_rule_does_not_run():
    rs = RuleSet.parse("version: 1\nrules:\n  - {id: gc, kind: gift_card, severity: low, action: hold, enabled: false}\n")
    assert evaluate(rs, order(flags={"gift_card": True}), CLEAN).action == "accept"


def test_rule_change_changes_outcome():
    def with_threshold(minor: int) -> RuleSet:
        return RuleSet.parse(f"version: 1\nrules:\n  - id: big\n    kind: amount_above\n    severity: low\n"
                             f"    action: hold\n    params: {{threshold_minor: {minor}}}\n")
    o = order(amounts={"total_minor": 300_000})
    assert evaluate(with_threshold(500_000), o, CLEAN).action == "accept"
    assert evaluate(with_threshold(200_000), o, CLEAN).action == "hold"


RULE = "  - {id: r1, kind: gift_card, severity: low, action: hold}\n"
INVALID = [
    ("not: [valid", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("rules: []\n", "'version'"),
    ("version: zero\nrules: []\n", "'version'"),
    ("version: 1\n", "'rules' must be a list"),
    ("version: 1\nrulez: []\nrules: []\n", "unknown top-level keys ['rulez']"),
    ("version: 1\nrules:\n  - {id: r1, kind: teleport, severity: low, action: hold}\n", "rule 'r1': unknown kind 'teleport'"),
    ("version: 1\nrules:\n  - {id: r1, kind: gift_card, severity: extreme, action: hold}\n", "rule 'r1': severity"),
    ("version: 1\nrules:\n  - {id: r1, kind: gift_card, severity: low, action: ban}\n", "rule 'r1': action"),
    ("version: 1\nrules:\n" + RULE + RULE, "rule 'r1': duplicate id"),
    ("version: 1\nrules:\n  - {kind: gift_card, severity: low, action: hold}\n", "rule #1: 'id'"),
    ("version: 1\nrules:\n  - {id: r1, kind: gift_card, severity: low, action: hold, expensive: maybe}\n", "'expensive'"),
    ("version: 1\nrules:\n  - {id: r1, kind: gift_card, severity: low, action: hold, colour: red}\n", "unknown keys ['colour']"),
    ("version: 1\nrules:\n  - {id: r1, kind: remote_region, severity: low, action: hold}\n", "rule 'r1' (remote_region): missing param 'provinces'"),
    ("version: 1\nrules:\n  - {id: r1, kind: remote_region, severity: low, action: hold, params: {provinces: []}}\n", "'provinces' must be a non-empty list"),
    ("version: 1\nrules:\n  - {id: r1, kind: amount_above, severity: low, action: hold, params: {threshold_minor: -5}}\n", "threshold for CNY"),
    ("version: 1\nrules:\n  - {id: r1, kind: amount_above, severity: low, action: hold, params: {threshold_minor: {yuan: 5}}}\n", "'yuan' is not an ISO 4217"),
    ("version: 1\nrules:\n  - {id: r1, kind: amount_above, severity: low, action: hold, params: {threshhold_minor: 5}}\n", "unknown params ['threshhold_minor']"),
    ("version: 1\nrules:\n  - {id: r1, kind: ip_burst, severity: low, action: hold, params: {min_orders: 0}}\n", "'min_orders' must be a positive integer"),
    ("version: 1\nrules:\n  - {id: r1, kind: note_flag, severity: low, action: flag, params: {flags: [vip]}}\n", "unknown flag 'vip'"),
    ("version: 1\nrules:\n  - {id: r1, kind: cross_border, severity: low, action: hold}\n", "'templates'"),
    ("version: 1\nrules:\n  - {id: r1, kind: cross_border, severity: low, action: hold, params: {templates: {TH: [buyer.shoe_size]}}}\n", "unknown field 'buyer.shoe_size'"),
    ("version: 1\nrules:\n  - {id: r1, kind: cross_border, severity: low, action: hold, params: {templates: {Thailand: [buyer.name]}}}\n", "'Thailand' is not an ISO 3166-1"),
    ("version: 1\nrules:\n  - {id: r1, kind: verifier, severity: low, action: hold, params: {name: horoscope}}\n", "'name' must be one of ['payment', 'address']"),
    ("version: 1\nrules:\n  - {id: r1, kind: blocked_ip, severity: low, action: reject, params: {ips: [999.1.1.1]}}\n", "'999.1.1.1' is not an IP"),
    ("version: 1\nrules:\n  - {id: r1, kind: gift_card, severity: low, action: hold, params: [1]}\n", "params must be a mapping"),
    ("version: 1\nfx_to_cny: {USD: -1}\nrules: []\n", "fx_to_cny rate for USD"),
    ("version: 1\nrules: []\nrouting: {routes: [{when: {moon_phase: full}, approvers: [x]}]}\n", "unknown conditions ['moon_phase']"),
    ("version: 1\nrules: []\nrouting: {routes: [{when: {any_custom_line: true}, approvers: []}]}\n", "'approvers' must be a non-empty list"),
    ("version: 1\nrules: []\nrouting: {routes: [{when: {rule_ids: [ghost]}, approvers: [x]}]}\n", "unknown rules ['ghost']"),
    ("version: 1\nrules: []\nrouting: {routes: [{when: {amount_above_minor: lots}, approvers: [x]}]}\n",
     "routing route #1: param 'amount_above_minor' must be an integer"),
]


@pytest.mark.parametrize("text, message", INVALID)
def test_invalid_rule_sets_are_rejected_with_a_clear_message(text, message):
    with pytest.raises(RuleSetError) as info:
        RuleSet.parse(text)
    assert message in str(info.value)


def test_invalid_file_on_disk(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {id: r1, kind: nope, severity: low, action: hold}\n")
    with pytest.raises(RuleSetError, match="unknown kind 'nope'"):
        load_rule_file(path)
    with pytest.raises(RuleSetError, match="cannot read rule file"):
        load_rule_file(tmp_path / "missing.yaml")


def test_evaluation_is_fast(rules):
    import time
    orders = [order(amounts={"total_minor": 1000 * i}, buyer={"ip": f"10.0.{i % 250}.1"}) for i in range(2000)]
    start = time.perf_counter()
    for o in orders:
        evaluate(rules, o, CLEAN)
    per_second = len(orders) / (time.perf_counter() - start)
    assert per_second > 5_000  # the bar is thousands per second per worker
