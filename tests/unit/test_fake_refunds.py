"""The replay's refund plans: deterministic for a seed, at the configured rates, each with the fate
the worker's own rules give it, and every amount in integer minor units within what was paid."""
from __future__ import annotations

from collections import Counter

from pipeline.devtools.fake_refunds import RefundMix, plan_excess, plan_refunds
from pipeline.domain.refund_rules import default_refund_rules
from pipeline.domain.refunds import validate_request

NOW = 1_767_340_000_000


def order(i: int, total: int, lines: list[tuple[str, int, int, bool]], currency: str = "CNY") -> dict:
    return {"order_id": f"TM-{i:05d}", "platform": "TMALL", "currency": currency,
            "amounts": {"total_minor": total},
            "lines": [{"sku": sku, "quantity": q, "unit_price_minor": price, "is_custom": custom}
                      for sku, q, price, custom in lines],
            "buyer": {"buyer_id": f"u{i}"}}


ORDERS = ([order(i, 19_900, [("A", 1, 19_900, False)]) for i in range(300)]
          + [order(300 + i, 80_000, [("B", 2, 30_000, False), ("C", 1, 20_000, False)]) for i in range(300)]
          + [order(600 + i, 9_900, [("D", 1, 9_900, True)]) for i in range(100)])


def test_plans_follow_the_rates_and_the_rules_decide_the_auto_path():
    mix = RefundMix(rate=0.5, auto=0.5, approve=0.7, refund_only=0.2)
    plans = plan_refunds(ORDERS, mix, seed=3, now_ms=NOW)
    assert 0.4 * len(ORDERS) < len(plans) < 0.6 * len(ORDERS)
    assert len({p.refund_id for p in plans}) == len(plans) and len({p.request.order_id for p in plans}) == len(plans)
    rules = default_refund_rules()
    for p in plans:
        req = validate_request(p.request)                   # every planned request is a valid one
        assert (p.path == "auto") == rules.evaluate(req).auto
        assert p.expect == ("rejected" if p.path == "reject" else "refunded")
        assert 0 < req.amount_minor <= req.order_total_minor and isinstance(req.amount_minor, int)
        if req.order_id.startswith("TM-006"):                # custom items never auto
            assert p.path != "auto"
    paths = Counter(p.path for p in plans)
    assert paths["auto"] and paths["approve"] and paths["reject"]
    assert any(p.request.kind == "refund_only" for p in plans)
    assert any(len(p.request.lines) == 1 and p.request.amount_minor < p.request.order_total_minor for p in plans)


def test_plans_are_deterministic_for_a_seed_apart_from_the_run_token():
    mix = RefundMix(rate=0.3)
    a, b = (plan_refunds(ORDERS, mix, seed=9, now_ms=NOW) for _ in range(2))
    strip = [(p.request.order_id, p.path, p.request.amount_minor, p.request.kind) for p in a]
    assert strip == [(p.request.order_id, p.path, p.request.amount_minor, p.request.kind) for p in b]
    assert {p.refund_id for p in a}.isdisjoint({p.refund_id for p in b})   # two replays never share a refund id
    assert plan_refunds(ORDERS, RefundMix(rate=0.0), seed=9, now_ms=NOW) == []


def test_excess_requests_ask_one_fen_more_than_is_left():
    plans = plan_refunds(ORDERS, RefundMix(rate=0.5), seed=4, now_ms=NOW)
    excess = plan_excess(plans, RefundMix(excess=1.0), seed=4, now_ms=NOW)
    refunded = {p.request.order_id: p.request for p in plans if p.expect == "refunded"}
    assert len(excess) == len(refunded)
    for p in excess:
        first = refunded[p.request.order_id]
        assert p.expect == "rejected" and p.path == "excess"
        assert first.amount_minor + p.request.amount_minor == first.order_total_minor + 1
