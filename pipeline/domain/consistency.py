"""The daily consistency check (seed 003's 02:00 robot), as pure logic.

Per platform, every order the platform sent on the day is compared three ways:

- the platform's latest state (its newest version, by the dedupe stage's own rule: newer update
  time, then further status) with the state the sink holds (ClickHouse order_state: the last
  *trusted* state, so a flagged suspect update shows here as a difference, caused by the rule);
- Redis's reservation record with what the inventory events say it must be (stock_ledger);
- the stock the events say the order holds with its state (a shipped order must not still hold a
  reservation, a paid one must not be left expired, a cancelled one must hold nothing).

An order with no difference is consistent; the ratio consistent / checked is held against the
seed's target, 99.997 % (about 26 orders a year). Orders the sink has for the day that no
platform message explains are differences too (`extra_in_sink`).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from .platforms import STANDARD_STATES
from .stock_ledger import OrderLedger, record_agrees, stock_agrees_with_status

TARGET_RATIO = 0.99997
_RANK = {s: i for i, s in enumerate(STANDARD_STATES)}
KINDS = ("missing_in_sink", "state_differs", "redis_differs_from_events", "stock_differs_from_state",
         "extra_in_sink", "dead_letter_missing")


@dataclass
class PlatformView:
    """What the platform said last about one order."""
    order_id: str
    platform: str
    status: str
    updated_ms: int
    messages: int = 1

    def newer(self, status: str, updated_ms: int) -> bool:
        return (updated_ms, _RANK[status]) > (self.updated_ms, _RANK[self.status])


def latest_views(orders: Iterable[Mapping]) -> dict[str, PlatformView]:
    """Canonical orders (normalized from the raw messages, any order) -> each order's latest view."""
    views: dict[str, PlatformView] = {}
    for o in orders:
        updated = o["updated_at"]
        ms = int(updated.timestamp() * 1000) if hasattr(updated, "timestamp") else int(updated)
        view = views.get(o["order_id"])
        if view is None:
            views[o["order_id"]] = PlatformView(o["order_id"], o["platform"], o["status"], ms)
            continue
        view.messages += 1
        if view.newer(o["status"], ms):
            view.status, view.updated_ms = o["status"], ms
    return views


@dataclass
class Difference:
    kind: str
    platform: str
    order_id: str = ""
    platform_status: str | None = None
    sink_status: str | None = None
    redis_state: str | None = None
    events_say: str | None = None
    cause: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class Inputs:
    """Everything the check read, keyed by order id."""
    views: dict[str, PlatformView]                       # the day's orders, as the platforms sent them
    sink_status: dict[str, str]                          # order_state's trusted state
    suspects: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # {(to_status, rule)}
    ledgers: dict[str, OrderLedger] = field(default_factory=dict)
    records: dict[str, dict | None] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)  # in the sink for the day, sent by no platform: id -> platform
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (platform, "topic:partition:offset")
    dead_letters_landed: set[str] = field(default_factory=set)


def order_differences(view: PlatformView, inputs: Inputs) -> list[Difference]:
    oid, plat = view.order_id, view.platform
    sink = inputs.sink_status.get(oid)
    ledger = inputs.ledgers.get(oid)
    record = inputs.records.get(oid)
    events_say = ledger.stock_state() if ledger is not None else "none"
    redis_state = record.get("state") if record else None
    out: list[Difference] = []
    if sink is None:
        out.append(Difference("missing_in_sink", plat, oid, view.status, None, redis_state, events_say,
                              "the platform's order never reached ClickHouse"))
    elif sink != view.status:
        rules = sorted(rule for to, rule in inputs.suspects.get(oid, ()) if to == view.status)
        cause = f"suspect_transition: {', '.join(rules)} (flagged, not applied)" if rules else "update not applied"
        out.append(Difference("state_differs", plat, oid, view.status, sink, redis_state, events_say, cause))
    if not record_agrees(ledger, record):
        out.append(Difference("redis_differs_from_events", plat, oid, view.status, sink, redis_state,
                              ledger.expected_record() if ledger else None,
                              "Redis does not hold what the inventory events say"))
    trusted = sink or view.status
    if not stock_agrees_with_status(trusted, events_say):
        out.append(Difference("stock_differs_from_state", plat, oid, view.status, sink, redis_state, events_say,
                              f"an order {trusted} should not have stock {events_say}"))
    return out


def compare(inputs: Inputs, target: float = TARGET_RATIO) -> dict:
    """Per platform and overall: orders checked, consistent, the ratio against `target`, the
    differences by kind; and every difference (JSON-ready)."""
    per: dict[str, Counter] = defaultdict(Counter)
    kinds: dict[str, Counter] = defaultdict(Counter)
    differences: list[Difference] = []
    for oid in sorted(inputs.views):
        view = inputs.views[oid]
        found = order_differences(view, inputs)
        per[view.platform]["orders"] += 1
        per[view.platform]["consistent"] += 0 if found else 1
        for d in found:
            kinds[view.platform][d.kind] += 1
        differences += found
    for oid, plat in sorted(inputs.extras.items()):
        per[plat]["orders"] += 1
        kinds[plat]["extra_in_sink"] += 1
        differences.append(Difference("extra_in_sink", plat, oid, None, inputs.sink_status.get(oid), None, None,
                                      "in ClickHouse for the day, but no platform message says so"))
    for plat, coords in inputs.dead_letters:
        per[plat]["dead_letters"] += 1
        if coords not in inputs.dead_letters_landed:
            kinds[plat]["dead_letter_missing"] += 1
            differences.append(Difference("dead_letter_missing", plat, cause=f"raw message {coords} was "
                                          "not an order and is not in dead_letters either"))

    def summary(c: Counter, k: Counter) -> dict:
        ratio = c["consistent"] / c["orders"] if c["orders"] else 1.0
        return {"orders": c["orders"], "consistent": c["consistent"], "ratio": ratio,
                "ratio_pct": round(100 * ratio, 4), "meets_target": ratio >= target and not k["dead_letter_missing"],
                "dead_letters": c["dead_letters"], "differences": {kind: k[kind] for kind in KINDS if k[kind]}}

    total, total_kinds = Counter(), Counter()
    for plat in per:
        total.update(per[plat])
        total_kinds.update(kinds[plat])
    return {
        "target_ratio": target, "target_pct": round(100 * target, 4),
        "platforms": {plat: summary(per[plat], kinds[plat]) for plat in sorted(per)},
        "total": summary(total, total_kinds),
        "differences": [d.to_json() for d in differences],
    }
