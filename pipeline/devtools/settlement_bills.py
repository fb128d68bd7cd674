"""The platforms' side of settlement, for replays and tests: each platform's daily bill for the
orders it took, in its own CSV layout, with differences injected at configurable rates, and the
list of what was injected (class, order, ledger kind, amount) to check the engine against.

A clean bill has one payment line per paid order (its latest version's total); every injection
changes one order (or adds one line) so that it is exactly one difference of its class.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from pipeline.domain.normalize import global_order_id
from pipeline.settlement.bills import write_bill

INJECTABLE = ("rounding", "amount_mismatch", "order_missing_from_bill", "duplicate_bill_line",
              "platform_fee_unrecorded", "unrecorded_subsidy", "delayed_refund", "bill_line_without_order")


@dataclass
class BillMix:
    """Chance per paid order of each injected difference (at most one per order), and tolerances."""
    rates: dict[str, float] = field(default_factory=lambda: {
        "rounding": 0.02, "amount_mismatch": 0.01, "order_missing_from_bill": 0.01, "duplicate_bill_line": 0.01,
        "platform_fee_unrecorded": 0.02, "unrecorded_subsidy": 0.01, "delayed_refund": 0.01,
        "bill_line_without_order": 0.01})
    tolerance_minor: int = 1
    timezone: str = "Asia/Shanghai"


@dataclass(frozen=True)
class Injected:
    cls: str
    platform: str
    day: str
    order_id: str
    kind: str          # the ledger kind the engine reports it under
    diff_minor: int    # bill - ledger


def _ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(round(value.timestamp() * 1000))
    return int(value)


def latest_versions(orders: list[dict]) -> list[dict]:
    """The latest version of each order, as the ledger takes it (last by updated_at, then arrival)."""
    best: dict[str, tuple[tuple[int, int], dict]] = {}
    for i, o in enumerate(orders):
        rank = (_ms(o["updated_at"]), i)
        if o["order_id"] not in best or rank > best[o["order_id"]][0]:
            best[o["order_id"]] = (rank, o)
    return [o for _, o in best.values()]


def build_bills(orders: list[dict], seed: int, mix: BillMix = BillMix()) -> tuple[dict, list[Injected]]:
    """{(platform, day): [canonical bill rows]} and the injected differences, from canonical orders
    (every version; the latest one of each paid order is billed)."""
    rng = random.Random(seed)
    tz = ZoneInfo(mix.timezone)
    bills: dict[tuple[str, str], list[dict]] = {}
    injected: list[Injected] = []
    seq: dict[tuple[str, str], int] = {}

    def line(platform: str, day: str, ext: str, kind: str, amount: int, currency: str, line_id: str | None = None):
        key = (platform, day)
        seq[key] = seq.get(key, 0) + 1
        row = {"bill_line_id": line_id or f"{platform[:2]}{day.replace('-', '')}{seq[key]:07d}",
               "external_order_id": ext, "kind": kind, "amount_minor": amount, "currency": currency,
               "settle_day": day}
        bills.setdefault(key, []).append(row)
        return row

    classes = [c for c in INJECTABLE if mix.rates.get(c, 0) > 0]
    paid = sorted((o for o in latest_versions(orders) if _ms(o.get("paid_at"))), key=lambda o: o["order_id"])
    for o in paid:
        platform, oid, cur = o["platform"], o["order_id"], o["currency"]
        ext, total = o["external_order_id"], int(o["amounts"]["total_minor"])
        day = datetime.fromtimestamp(_ms(o["paid_at"]) / 1000, timezone.utc).astimezone(tz).date().isoformat()
        r, pick = rng.random(), None
        for c in classes:
            if r < mix.rates[c]:
                pick = c
                break
            r -= mix.rates[c]

        def inject(cls: str, kind: str, diff: int) -> None:
            injected.append(Injected(cls, platform, day, oid, kind, diff))

        if pick == "order_missing_from_bill":
            bills.setdefault((platform, day), [])  # the day's bill exists, without this order
            inject(pick, "payment", -total)
            continue
        amount = total
        if pick == "rounding":
            d = rng.choice((-1, 1)) * rng.randint(1, mix.tolerance_minor)
            amount += d
            inject(pick, "payment", d)
        elif pick == "amount_mismatch":
            d = rng.choice((-1, 1)) * rng.randint(mix.tolerance_minor + 1, 5_000)
            amount += d
            inject(pick, "payment", d)
        pay = line(platform, day, ext, "payment", amount, cur)
        if pick == "duplicate_bill_line":
            line(platform, day, ext, "payment", amount, cur, line_id=pay["bill_line_id"])
            inject(pick, "payment", amount)
        elif pick == "platform_fee_unrecorded":
            fee = -max(1, total * rng.choice((50, 200, 600)) // 10_000)
            line(platform, day, ext, rng.choice(("commission", "service_fee")), fee, cur)
            inject(pick, "fee", fee)
        elif pick == "unrecorded_subsidy":
            sub = rng.randint(100, 3_000)
            line(platform, day, ext, "platform_subsidy", sub, cur)
            inject(pick, "subsidy", sub)
        elif pick == "delayed_refund":
            ref = -rng.randint(1, max(1, total))
            line(platform, day, ext, "refund", ref, cur)
            inject(pick, "refund", ref)
        elif pick == "bill_line_without_order":
            ghost = f"NX{rng.randint(10**11, 10**12 - 1)}"
            amt = rng.randint(100, 50_000)
            line(platform, day, ghost, "payment", amt, cur)
            injected.append(Injected(pick, platform, day, global_order_id(platform, ghost), "payment", amt))
    return bills, injected


def write_bills(bills: dict, injected: list[Injected], out_dir: Path) -> list[Path]:
    """One CSV per platform and day (<platform>-<day>.csv) and injected.json beside them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (platform, day), rows in sorted(bills.items()):
        path = out_dir / f"{platform.lower()}-{day}.csv"
        path.write_bytes(write_bill(platform, rows))
        paths.append(path)
    (out_dir / "injected.json").write_text(json.dumps([asdict(i) for i in injected], indent=1) + "\n")
    return paths


def bills_for_replay(messages, seed: int, mix: BillMix, out_dir: Path, now: datetime | None = None) -> dict:
    """The platforms' bills for a replay's raw messages (fake_orders.RawMessage): every order version
    the replay sent, normalized as the order flow does, billed per platform and paid day. Writes the
    CSVs and injected.json to out_dir; returns what the replay report records."""
    from pipeline.domain.normalize import normalize
    now = now or datetime.now(timezone.utc)
    orders = []
    for m in messages:
        if m.kind not in ("new", "update"):
            continue
        res = normalize(m.platform, m.value, now)
        if res.order is not None:
            orders.append(res.order)
    bills, injected = build_bills(orders, seed, mix)
    paths = write_bills(bills, injected, out_dir)
    counts: dict[str, int] = {}
    for i in injected:
        counts[i.cls] = counts.get(i.cls, 0) + 1
    return {"dir": str(out_dir), "files": [p.name for p in paths], "lines": sum(len(r) for r in bills.values()),
            "injected": counts, "injected_file": str(out_dir / "injected.json"),
            "rates": mix.rates, "tolerance_minor": mix.tolerance_minor}
