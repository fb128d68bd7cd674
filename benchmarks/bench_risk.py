"""Risk evaluation throughput: `evaluate()` over generated canonical orders, full vs degraded.

Run: .venv/bin/python -m benchmarks.bench_risk [--orders 20000] [--repeats 5]
Writes benchmarks/results/bench_risk.json. Orders are built here (a seeded mix of clean,
big, remote, cross-border, gift-card and flagged orders) so the figure measures the rule
engine only, not normalization or Avro decoding.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from pipeline.domain.risk import RiskContext, default_rules, evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "bench_risk.json"
PROVINCES = ["浙江", "广东", "江苏", "北京", "上海", "四川", "新疆", "西藏", "青海", "内蒙古", "宁夏", "甘肃"]
PROVINCE_WEIGHTS = [20, 20, 15, 15, 15, 9, 1, 1, 1, 1, 1, 1]  # remote regions are ~6% of deliveries
COUNTRIES = ["CN"] * 17 + ["TH", "SG", "US"]
CURRENCY = {"CN": "CNY", "TH": "THB", "SG": "SGD", "US": "USD"}


def make_orders(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        country = rng.choice(COUNTRIES)
        n_lines = rng.choice((1, 1, 1, 2, 3))
        lines = []
        for j in range(n_lines):
            price = rng.choice((990, 4_990, 19_900, 19_900, 39_900, 89_900, 89_900, 299_900, 650_000))
            lines.append({"sku": f"SKU-{rng.randrange(5000)}", "title": "商品" if rng.random() > 0.02 else "",
                          "quantity": rng.randint(1, 3), "unit_price_minor": price,
                          "is_gift_card": rng.random() < 0.01, "is_custom": rng.random() < 0.03})
        total = sum(l["quantity"] * l["unit_price_minor"] for l in lines)
        orders.append({
            "order_id": f"TMALL:{i}", "platform": "TMALL", "status": "PAID", "currency": CURRENCY[country],
            "amounts": {"goods_minor": total, "discount_minor": 0, "coupon_minor": 0, "shipping_minor": 0,
                        "total_minor": total},
            "lines": lines,
            "buyer": {"buyer_id": f"b{i}", "name": "买家", "phone": "138" if rng.random() > 0.05 else "",
                      "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"},
            "address": {"country": country, "province": rng.choices(PROVINCES, PROVINCE_WEIGHTS)[0] if country == "CN" else "",
                        "city": "城市", "district": "", "detail": "某路 1 号",
                        "postal_code": "" if rng.random() < 0.1 else "100000"},
            "note": None,
            "flags": {"invoice": rng.random() < 0.1, "gift": rng.random() < 0.05, "urgent": rng.random() < 0.05,
                      "gift_card": False},
            "risk_flags": [], "checked_lightly": False,
        })
    return orders


def run_once(rules, orders, contexts) -> tuple[float, dict]:
    outcomes = {"accept": 0, "hold": 0, "reject": 0}
    start = time.perf_counter()
    for order, ctx in zip(orders, contexts):
        outcomes[evaluate(rules, order, ctx).action] += 1
    return time.perf_counter() - start, outcomes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rules = default_rules()
    orders = make_orders(args.orders, args.seed)
    rng = random.Random(args.seed + 1)
    ip_counts = [rng.choice((1,) * 12 + (2, 3, 4, 6)) for _ in orders]
    verifier_ok = [{"payment": rng.random() > 0.002, "address": rng.random() > 0.01} for _ in orders]
    modes = {
        "full": [RiskContext(ip_order_count=c, degraded=False, verifier_results=v)
                 for c, v in zip(ip_counts, verifier_ok)],
        "degraded": [RiskContext(ip_order_count=c, degraded=True, verifier_results={}) for c in ip_counts],
    }
    report = {"benchmark": "bench_risk", "unit": "orders/s (median)",
              "parameters": {"orders": args.orders, "repeats": args.repeats, "seed": args.seed,
                             "ruleset_version": rules.version, "rules": len(rules.rules)},
              "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                          "implementation": platform.python_implementation(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine()},
              "modes": {}}
    run_once(rules, orders[:2000], modes["full"][:2000])  # warm-up
    for mode, contexts in modes.items():
        seconds, outcomes = [], None
        for _ in range(args.repeats):
            elapsed, outcomes = run_once(rules, orders, contexts)
            seconds.append(elapsed)
        median = statistics.median(seconds)
        report["modes"][mode] = {
            "median_orders_per_s": round(args.orders / median),
            "median_us_per_order": round(median / args.orders * 1e6, 2),
            "min_orders_per_s": round(args.orders / max(seconds)),
            "max_orders_per_s": round(args.orders / min(seconds)),
            "runs_s": [round(s, 4) for s in seconds],
            "outcomes": outcomes,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for mode, r in report["modes"].items():
        print(f"{mode:9s} {r['median_orders_per_s']:>9,} orders/s  ({r['median_us_per_order']} µs/order)  {r['outcomes']}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
