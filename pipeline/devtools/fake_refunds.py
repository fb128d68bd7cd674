"""Refunds in the replay (issue 17, seed 002): requests for orders the replay reserved, at configurable
rates, each with the fate it must meet, the operator and the warehouse playing their parts, seed
002's key rotation and its re-drive, and an exact reconciliation.

`plan_refunds` decides, deterministically for a seed, which reserved orders get a refund request and
what kind: some written to fit the auto-approval rule (seven-day no-reason return, no custom item,
order below 500 CNY: whether it does is asked of the very rules the worker applies), some for the
operator (approved or rejected), some without goods to return, and a few asking for more than is
left of what the buyer paid (refused by the ledger). `run_refunds` drives them through the running
pipeline: requests, operator decisions, receipts, then, when a platform's key was rotated, the fix
and `redrive_failed_refunds`. `reconcile_refunds` accounts for each refund and each fen.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from .. import kafka_io
from ..codecs import order_codec
from ..config import Settings
from ..contracts import InventoryEvent, RefundAction, RefundEvent, RefundLine, RefundRequest
from ..domain.refund_rules import DAY_MS, RefundRules, default_refund_rules
from ..domain.refunds import FINAL
from ..topics import TopicNames

OPERATOR, WAREHOUSE_CLERK = "replay-operator", "replay-warehouse"
OPERATOR_REASONS = ("quality", "wrong_item", "not_as_described")


@dataclass
class RefundMix:
    rate: float = 0.0           # share of the replay's reserved, paid orders that get a refund request
    auto: float = 0.5           # of those, share written to fit the auto-approval rule (if the order can)
    approve: float = 0.7        # share of the operator's queue approved (the rest rejected)
    refund_only: float = 0.2    # share of operator-path requests with no goods to return
    excess: float = 0.05        # share of refunded orders that later ask for 1 fen more than is left
    rotated_key: str = ""       # a platform whose API key rotates before the refunds (seed 002), then is fixed


@dataclass
class RefundPlan:
    request: RefundRequest
    path: str                   # auto | approve | reject | excess
    expect: str                 # refunded | rejected

    @property
    def refund_id(self) -> str:
        return self.request.refund_id

    @property
    def returns(self) -> bool:
        return self.request.kind == "return_and_refund"


def refundable_orders(s: Settings, names: TopicNames) -> list[dict]:
    """New orders the pipeline reserved, paid and not released or cancelled since: what can be refunded."""
    codec = order_codec()
    latest: dict[str, dict] = {}
    for r in kafka_io.read_topics(s, [names.UNIQUE], idle_s=1.5, max_s=600):
        order = codec.decode(r.value)
        if order["order_id"] not in latest or order["updated_at"] >= latest[order["order_id"]]["updated_at"]:
            latest[order["order_id"]] = order
    events: dict[str, set] = defaultdict(set)
    for r in kafka_io.read_topics(s, [names.INVENTORY_EVENTS], idle_s=1.5, max_s=600):
        e = InventoryEvent.decode(r.value)
        events[e.order_id].add(e.event)
    return sorted((o for oid, o in latest.items() if "reserved" in events[oid] and "released" not in events[oid]
                   and o["status"] not in ("PENDING_PAYMENT", "CANCELLED")), key=lambda o: o["order_id"])


def _request(rng: random.Random, run: str, i: int, order: dict, kind: str, reason: str, now_ms: int,
             delivered_days: float | None, partial: bool) -> RefundRequest:
    lines = order["lines"]
    picked = [rng.choice(lines)] if partial and len(lines) > 1 else lines
    total = order["amounts"]["total_minor"]
    value = sum(line["unit_price_minor"] * line["quantity"] for line in picked)
    amount = max(1, min(total, value)) if partial and len(lines) > 1 else total
    return RefundRequest(
        refund_id=f"{order['platform']}:RF{run}-{i:05d}", order_id=order["order_id"], platform=order["platform"],
        kind=kind, reason_code=reason, amount_minor=amount, currency=order["currency"], order_total_minor=total,
        lines=tuple(RefundLine(line["sku"], line["quantity"], line["is_custom"]) for line in picked)
        if kind == "return_and_refund" else (),
        requested_at_ms=now_ms,
        delivered_at_ms=None if delivered_days is None else int(now_ms - delivered_days * DAY_MS),
        requested_by=f"buyer:{order['buyer']['buyer_id']}")


def plan_refunds(orders: list[dict], mix: RefundMix, seed: int, now_ms: int,
                 rules: RefundRules | None = None) -> list[RefundPlan]:
    """The first wave of refunds (one per chosen order) with the fate each must meet."""
    rules = rules or default_refund_rules()
    rng = random.Random(seed ^ 0x2EF0D)
    run = uuid.uuid4().hex[:6].upper()
    plans = []
    for i, order in enumerate(orders):
        if rng.random() >= mix.rate or order["amounts"]["total_minor"] <= 0:
            continue
        if rng.random() < mix.auto:
            req = _request(rng, run, i, order, "return_and_refund", "seven_day_no_reason", now_ms,
                           rng.uniform(0.5, 6.5), partial=rng.random() < 0.3)
        elif rng.random() < mix.refund_only:
            req = _request(rng, run, i, order, "refund_only", "not_received", now_ms, None, partial=False)
        else:
            req = _request(rng, run, i, order, "return_and_refund", rng.choice(OPERATOR_REASONS), now_ms,
                           rng.uniform(0.5, 20), partial=rng.random() < 0.3)
        if rules.evaluate(req).auto:
            plans.append(RefundPlan(req, "auto", "refunded"))
        elif rng.random() < mix.approve:
            plans.append(RefundPlan(req, "approve", "refunded"))
        else:
            plans.append(RefundPlan(req, "reject", "rejected"))
    return plans


def plan_excess(plans: list[RefundPlan], mix: RefundMix, seed: int, now_ms: int) -> list[RefundPlan]:
    """Second requests asking for one fen more than is left of what was paid: the ledger refuses them."""
    rng = random.Random(seed ^ 0xE8CE55)
    out = []
    for plan in plans:
        if plan.expect != "refunded" or rng.random() >= mix.excess:
            continue
        first = plan.request
        left = first.order_total_minor - first.amount_minor
        out.append(RefundPlan(RefundRequest(
            refund_id=first.refund_id + "-X", order_id=first.order_id, platform=first.platform, kind="refund_only",
            reason_code="other", amount_minor=left + 1, currency=first.currency,
            order_total_minor=first.order_total_minor, lines=(), requested_at_ms=now_ms, delivered_at_ms=None,
            requested_by=first.requested_by), "excess", "rejected"))
    return out


# --------------------------------------------------------------------------- driving them


def refund_states(s: Settings, names: TopicNames) -> dict[str, dict]:
    """Per refund id: its latest state, whether its instruction is parked, and its event counts."""
    out: dict[str, dict] = {}
    for r in kafka_io.read_topics(s, [names.REFUND_EVENTS], idle_s=1.0, max_s=600):
        e = RefundEvent.decode(r.value)
        row = out.setdefault(e.refund_id, {"state": None, "parked": False, "facts": set(), "events": Counter()})
        if (e.event, e.cause) in row["facts"]:
            continue  # a re-published copy
        row["facts"].add((e.event, e.cause))
        row["events"][e.event] += 1
        if e.event not in ("ignored", "invalid"):
            row["state"] = e.status
        if e.event == "instruction_failed":
            row["parked"] = True
        elif e.event in ("refunding", "refunded"):
            row["parked"] = False
    return out


def _wait(s: Settings, names: TopicNames, ids: list[str], done, timeout_s: float, what: str) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        states = refund_states(s, names)
        waiting = [r for r in ids if not done(states.get(r))]
        if not waiting:
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} refunds never reached {what}: "
                               f"{[(r, (states.get(r) or {}).get('state')) for r in waiting[:5]]}")
        time.sleep(1.0)


def _settled(row: dict | None) -> bool:
    return bool(row) and (row["state"] in FINAL or row["parked"])


def run_refunds(s: Settings, names: TopicNames, mix: RefundMix, seed: int, timeout_s: float = 300.0) -> dict:
    """Drive a wave of refunds through the running pipeline (worker and, for the instructions, the
    refund service at settings.refund_api) and reconcile them."""
    from .refund_service import current_keys, rotate_key, write_credentials
    from ..redrive import redrive_failed_refunds
    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    orders = refundable_orders(s, names)
    plans = plan_refunds(orders, mix, seed, now_ms)
    producer = kafka_io.producer(s)
    ids = [p.refund_id for p in plans]
    rotated_at = None
    if mix.rotated_key:
        rotate_key(s.refund_api, mix.rotated_key)     # seed 002: the platform rotates its key ...
        rotated_at = time.time()
    kafka_io.produce_all(producer, [(names.REFUND_REQUESTS, p.refund_id.encode(), p.request.encode(), None)
                                    for p in plans])
    _wait(s, names, ids, lambda row: bool(row) and row["state"] not in (None, "requested"), timeout_s,
          "a decision path")
    at = int(time.time() * 1000)
    decisions = [RefundAction(p.refund_id, "approve" if p.path == "approve" else "reject", OPERATOR, at,
                              reason="replay: operator decision" if p.path == "approve" else "replay: refused")
                 for p in plans if p.path in ("approve", "reject")]
    kafka_io.produce_all(producer, [(names.REFUND_ACTIONS, a.refund_id.encode(), a.encode(), None) for a in decisions])
    returns = [p.refund_id for p in plans if p.expect == "refunded" and p.returns]
    _wait(s, names, returns, lambda row: bool(row) and row["state"] == "awaiting_return", timeout_s, "awaiting_return")
    at = int(time.time() * 1000)
    kafka_io.produce_all(producer, [(names.REFUND_ACTIONS, r.encode(), RefundAction(r, "receive", WAREHOUSE_CLERK, at)
                                     .encode(), None) for r in returns])
    states = _wait(s, names, ids, _settled, timeout_s, "an end or a parked instruction")
    parked_before = sorted(r for r in ids if states[r]["parked"])
    redriven = 0
    if mix.rotated_key:
        # ... and after the credentials are fixed, the parked instructions are sent again
        write_credentials(s.refund_credentials, {**_read_keys(s), mix.rotated_key: current_keys(s.refund_api)[
            mix.rotated_key]})
        redriven = redrive_failed_refunds(s, names, OPERATOR).redriven
        _wait(s, names, ids, lambda row: bool(row) and row["state"] in FINAL, timeout_s, "an end after the re-drive")
    excess = plan_excess(plans, mix, seed, int(time.time() * 1000))
    kafka_io.produce_all(producer, [(names.REFUND_REQUESTS, p.refund_id.encode(), p.request.encode(), None)
                                    for p in excess])
    _wait(s, names, [p.refund_id for p in excess], lambda row: bool(row) and row["state"] in FINAL, timeout_s,
          "an end (excess requests)")
    report = reconcile_refunds(s, names, plans + excess, orders)
    report.update({"parked_on_rotated_key": len(parked_before), "redriven": redriven,
                   "rotated_key": mix.rotated_key or None, "rotated_at": rotated_at,
                   "elapsed_s": round(time.monotonic() - started, 3)})
    return report


def _read_keys(s: Settings) -> dict[str, str]:
    try:
        return json.loads(s.refund_credentials.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        from .refund_service import initial_keys
        return initial_keys()


# --------------------------------------------------------------------------- reconciliation


def reconcile_refunds(s: Settings, names: TopicNames, plans: list[RefundPlan], orders: list[dict]) -> dict:
    """Account for each planned refund (its end state against its fate), each fen (per order, refunded
    never more than paid; what the platform paid equals what the events say, once per refund), each
    instruction (received once per refund paid: the refund service must not inject 5xx errors) and
    each returned unit (Redis holds one return record per refunded return, and the per-cell counters
    equal the records)."""
    from ..inventory_store import InventoryStore
    from ..refund_ledger import RefundLedger
    from .refund_service import received
    states = refund_states(s, names)
    by_id = {p.refund_id: p for p in plans}
    wrong_end = sorted(r for r, p in by_id.items() if (states.get(r) or {}).get("state") != p.expect)
    facts_twice = sorted(r for r in by_id if any(n > 1 for e, n in (states.get(r) or {}).get("events", {}).items()
                                                 if e in ("requested", "approved", "returned_to_stock", "refunded")))
    paid = {o["order_id"]: (o["amounts"]["total_minor"], o["currency"]) for o in orders}
    refunded_per_order: Counter = Counter()
    refunded_by_currency: Counter = Counter()
    for r, p in by_id.items():
        if (states.get(r) or {}).get("state") == "refunded":
            refunded_per_order[p.request.order_id] += p.request.amount_minor
            refunded_by_currency[p.request.currency] += p.request.amount_minor
    over_refunded = sorted(o for o, amount in refunded_per_order.items() if amount > paid[o][0])
    try:
        platform = received(s.refund_api)
        applied = platform["applied"]
        platform_wrong = sorted(r for r, p in by_id.items() if (r in applied) != (p.expect == "refunded")
                                or (r in applied and applied[r]["amount_minor"] != p.request.amount_minor))
        platform_stats = platform["stats"]
        # sent once: the platform received one instruction with a valid key per refund paid (a refused
        # key is not retried, and the re-drive sends each parked instruction once), none for the others
        sent_wrong = sorted(r for r, p in by_id.items()
                            if platform["received"].get(r, 0) != (1 if p.expect == "refunded" else 0)
                            or platform["auth_failures"].get(r, 0) > 1)
    except OSError:
        platform_wrong, platform_stats, sent_wrong = None, None, None    # no refund service to ask
    returns = [p for p in plans if p.expect == "refunded" and p.returns]
    units_returned = sum(line.quantity for p in returns for line in p.request.lines)
    with InventoryStore(s.redis, prefix=f"{names.ns}inv") as store:
        records = {p.refund_id: store.returned_record(p.refund_id) for p in plans}
        cells: Counter = Counter()
        for rec in records.values():
            for wh, sku, qty in (rec or {}).get("lines") or []:
                cells[(wh, sku)] += qty
        counters = {cell: store.returned_units(*cell) for cell in cells}
    restock_wrong = sorted(p.refund_id for p in plans if (records[p.refund_id] is not None)
                           != (p.expect == "refunded" and p.returns)
                           or (records[p.refund_id] is not None and sum(q for _, _, q in records[p.refund_id]["lines"])
                               != sum(line.quantity for line in p.request.lines)))
    # a replay namespace's counters hold this replay's returns only when it is the first wave
    counters_wrong = sorted(f"{wh}:{sku}" for (wh, sku), n in cells.items() if counters[(wh, sku)] < n)

    async def ledger_totals():
        import redis.asyncio
        client = redis.asyncio.Redis.from_url(s.redis)
        try:
            ledger = RefundLedger(client, prefix=f"{names.ns}refund")
            return {o: await ledger.order(o) for o in {p.request.order_id for p in plans}}
        finally:
            await client.aclose()
    ledgers = asyncio.run(ledger_totals())
    committed_wanted: Counter = Counter()
    for p in plans:
        if p.expect == "refunded":
            committed_wanted[p.request.order_id] += p.request.amount_minor
    ledger_wrong = sorted(o for o, ledger in ledgers.items()
                          if (ledger.committed_minor if ledger else 0) != committed_wanted[o]
                          or (ledger and ledger.committed_minor > ledger.paid_minor))
    paths = Counter(p.path for p in plans)
    report = {
        "requested": len(plans), "by_path": dict(paths),
        "auto_approved": paths["auto"], "operator_approved": paths["approve"], "operator_rejected": paths["reject"],
        "refused_over_paid": paths["excess"],
        "refunded": sum(1 for r in by_id if (states.get(r) or {}).get("state") == "refunded"),
        "rejected": sum(1 for r in by_id if (states.get(r) or {}).get("state") == "rejected"),
        "still_parked": sum(1 for r in by_id if (states.get(r) or {}).get("parked")),
        "refunded_minor_by_currency": dict(refunded_by_currency),
        "units_returned_to_stock": units_returned,
        "wrong_end": len(wrong_end),
        "wrong_end_sample": [(r, (states.get(r) or {}).get("state")) for r in wrong_end[:5]],
        "facts_twice": len(facts_twice), "over_refunded_orders": len(over_refunded),
        "platform_mismatch": None if platform_wrong is None else len(platform_wrong),
        "platform_stats": platform_stats,
        "instructions_not_sent_once": None if sent_wrong is None else len(sent_wrong),
        "instructions_sample": [] if not sent_wrong else [
            (r, platform["received"].get(r, 0), platform["auth_failures"].get(r, 0)) for r in sent_wrong[:5]],
        "restock_mismatch": len(restock_wrong), "restock_sample": restock_wrong[:5],
        "returned_counters_short": len(counters_wrong), "ledger_mismatch": len(ledger_wrong),
        "ledger_sample": ledger_wrong[:5],
    }
    report["balanced"] = not (wrong_end or facts_twice or over_refunded or platform_wrong or sent_wrong
                              or restock_wrong or counters_wrong or ledger_wrong)
    return report


__all__ = ["RefundMix", "RefundPlan", "plan_refunds", "plan_excess", "run_refunds", "reconcile_refunds",
           "refundable_orders", "refund_states"]
