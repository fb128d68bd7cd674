"""Logistics tracking (issue 19, seeds 000 and 003): pure logic, unit-tested without Kafka.

- the translator: each courier's own message and raw status code -> one of five buyer-facing
  states, from the code table `courier_codes.yaml`; an unknown code is refused (dead letter),
  never guessed;
- per-waybill folding: a report is deduplicated by (source, event id) and ordered by the
  source's event time, so a late or repeated scan never moves a parcel backwards;
- consensus: where the carrier and an aggregator both report, the state shown is the one they
  agree on; when a source reports, at or after another's report, a state the other contradicts
  (or another carrier), the buyer sees "syncing" and the waybill is queued for manual review;
- freshness: a waybill with no update (a new event from any source) for `stale_after_s` is
  re-pulled, and again `stale_after_s` after each answered pull; a waybill is as current as its
  newest parcel event (a scan delivered hours late does not make it current); 3 failed pulls in a row
  switch it to the carrier's backup aggregator, the first successful pull from the carrier
  switches it back; deadlines are absolute, stored in the waybill record (survive restarts);
- the health badge: green (current), yellow (1-3 h without update), red (over 3 h);
- the buyer's short-link code: an HMAC of the order id, unguessable, no personal data in it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import yaml

from pipeline.contracts import SourceReport, TrackingReview, TrackingUpdate, Waybill, WaybillRegistered

STATES = ("collected", "in_transit", "out_for_delivery", "signed", "completed")
RANK = {"registered": 0, **{s: i + 1 for i, s in enumerate(STATES)}}
TERMINAL = frozenset({"signed", "completed"})
SYNCING = "syncing"
KEY_STEPS = ("collected", "in_transit", "out_for_delivery", "signed")
LABELS_ZH = {"registered": "已下单", "collected": "已揽收", "in_transit": "运输中", "out_for_delivery": "派件中",
             "signed": "已签收", "completed": "已完成", SYNCING: "信息同步中,请稍候"}
BADGES = ("green", "yellow", "red")
SEEN_KEEP = 64                  # recent event ids kept per waybill for dedupe
FAILOVER_AFTER = 3              # failed pulls in a row before the backup aggregator takes over
CODE_TABLE = Path(__file__).with_name("courier_codes.yaml")


class TrackingError(ValueError):
    """A courier message that cannot be translated; `reason_code` is the dead letter's."""

    def __init__(self, reason_code: str, reason: str) -> None:
        super().__init__(reason)
        self.reason_code = reason_code


@dataclass(frozen=True)
class Courier:
    name: str
    kind: str                   # courier | aggregator
    fields: Mapping[str, str]
    time_unit: str
    transit_hours: float
    codes: Mapping[str, str]
    carriers: Mapping[str, str]  # aggregators: their carrier code -> our courier name


@dataclass(frozen=True)
class CodeTable:
    couriers: Mapping[str, Courier]
    backup: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> "CodeTable":
        data = yaml.safe_load(text) or {}
        couriers = {}
        for name, spec in (data.get("couriers") or {}).items():
            kind = spec.get("kind")
            if kind not in ("courier", "aggregator"):
                raise ValueError(f"{name}: kind must be courier or aggregator, got {kind!r}")
            codes = {str(k): str(v) for k, v in (spec.get("codes") or {}).items()}
            bad = {c: s for c, s in codes.items() if s not in STATES}
            if bad:
                raise ValueError(f"{name}: codes map to unknown states {bad}")
            missing = {"waybill", "code", "time", "event_id"} - set(spec.get("fields") or {})
            if kind == "aggregator" and "carrier" not in (spec.get("fields") or {}):
                missing.add("carrier")
            if missing:
                raise ValueError(f"{name}: fields lacks {sorted(missing)}")
            if spec.get("time_unit") not in ("ms", "s"):
                raise ValueError(f"{name}: time_unit must be ms or s")
            couriers[name] = Courier(name, kind, dict(spec["fields"]), spec["time_unit"],
                                     float(spec.get("transit_hours", 48)), codes,
                                     {str(k): str(v) for k, v in (spec.get("carriers") or {}).items()})
        backup = dict(data.get("backup") or {})
        for carrier, agg in backup.items():
            if carrier not in couriers or agg not in couriers or couriers[agg].kind != "aggregator":
                raise ValueError(f"backup {carrier} -> {agg}: both must be known, the second an aggregator")
        return cls(couriers, backup)

    def carriers(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.couriers.items() if c.kind == "courier")

    def aggregators(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.couriers.items() if c.kind == "aggregator")


@lru_cache(maxsize=4)
def code_table(path: str = str(CODE_TABLE)) -> CodeTable:
    return CodeTable.parse(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Scan:
    """One courier or aggregator message, translated."""
    source: str                 # who reported: SF, ..., CAINIAO, KUAIDI100
    kind: str                   # courier | aggregator
    carrier: str                # the carrier the parcel travels with (aggregators name it)
    waybill: str
    order_ref: str
    code: str
    state: str
    event_at_ms: int
    event_id: str

    @property
    def dedupe_key(self) -> str:
        return f"{self.source}:{self.event_id}"


def translate(source: str, payload: bytes, table: CodeTable | None = None) -> Scan:
    """A courier's raw message -> Scan; TrackingError (reason_code for the dead letter) otherwise."""
    table = table or code_table()
    courier = table.couriers.get(source)
    if courier is None:
        raise TrackingError("unknown_courier", f"no code table for source {source!r}")
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrackingError("malformed_json", f"{source}: not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise TrackingError("malformed_json", f"{source}: not a JSON object")
    f = courier.fields
    values = {}
    for role in ("waybill", "code", "time", "event_id"):
        value = msg.get(f[role])
        if value is None or str(value).strip() == "":
            raise TrackingError("missing_field", f"{source}: {f[role]!r} ({role}) missing")
        values[role] = value
    code = str(values["code"]).strip()
    state = courier.codes.get(code)
    if state is None:
        raise TrackingError("unknown_status", f"{source}: status code {code!r} is not in the code table")
    try:
        t = float(values["time"])
    except (TypeError, ValueError):
        raise TrackingError("bad_time", f"{source}: {f['time']!r} is not a time: {values['time']!r}") from None
    event_at_ms = int(t * 1000) if courier.time_unit == "s" else int(t)
    if courier.kind == "aggregator":
        raw_carrier = str(msg.get(f["carrier"]) or "")
        carrier = courier.carriers.get(raw_carrier)
        if carrier is None:
            raise TrackingError("unknown_carrier", f"{source}: carrier {raw_carrier!r} is not in the code table")
    else:
        carrier = source
    return Scan(source, courier.kind, carrier, str(values["waybill"]).strip(), str(msg.get(f.get("order", ""), "") or ""),
                code, state, event_at_ms, str(values["event_id"]))


# -- the buyer's short link ---------------------------------------------------------------------

def track_code(secret: bytes, order_id: str) -> str:
    """16 base32 characters (80 bits) of an HMAC of the order id: not guessable, not reversible,
    no personal data; the same order always gets the same code."""
    digest = hmac.new(secret, order_id.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().lower()


# -- one waybill --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    waybill: Waybill | None
    result: str                              # new | duplicate | stale | conflict | agreed | ...
    update: TrackingUpdate | None = None     # for logistics.tracking when the buyer's view changed
    review: TrackingReview | None = None     # for the manual review queue
    notify: bool = False                     # first time signed: one notification


def register(reg: WaybillRegistered, now_ms: int, stale_after_s: float, secret: bytes,
             thresholds: tuple[float, float] = (3600, 3 * 3600)) -> Waybill:
    """A new waybill, as fresh as its creation (a registration replayed hours late is hours old)."""
    created = min(int(reg.at_ms), int(now_ms))
    w = Waybill(waybill=reg.waybill, carrier=reg.carrier, order_id=reg.order_id,
                track_code=track_code(secret, reg.order_id), registered_at_ms=created,
                last_update_ms=created, next_pull_ms=int(created + stale_after_s * 1000))
    return replace(w, badge=badge(w, now_ms, thresholds))


def waybill_registration(order: dict, at_ms: int, table: CodeTable | None = None
                         ) -> tuple[WaybillRegistered | None, str]:
    """What a shipped-state order registers: (the registration, "registered"), or (None,
    "no_waybill" | "unknown_carrier"). Sent for every shipped-state version: the logistics agent
    takes a waybill's first registration and calls the repeats "redelivered", so nothing is kept
    here. A carrier the code table does not know is not registered: no courier would ever report it."""
    waybill, carrier = order.get("waybill"), order.get("carrier")
    if not waybill:
        return None, "no_waybill"
    if carrier not in (table or code_table()).carriers():
        return None, "unknown_carrier"
    return WaybillRegistered(order["order_id"], carrier, waybill, int(at_ms)), "registered"


def shown_state(w: Waybill) -> str:
    return SYNCING if w.syncing else w.agreed_state


def consensus(reports: tuple[SourceReport, ...], carrier: str) -> tuple[str, str]:
    """(agreed state, conflict reason or ""). A source that is behind another only because its
    report is older is lagging, not contradicting: the newest report wins. A conflict is a source
    that reported at or after another and still says a different state, or names another carrier."""
    if not reports:
        return "registered", ""
    for r in reports:
        if r.carrier and r.carrier != carrier:
            return _newest(reports).state, f"{r.source} reports carrier {r.carrier}, waybill is {carrier}"
    newest = _newest(reports)
    for r in reports:
        if r is newest or r.state == newest.state:
            continue
        if r.event_at_ms >= newest.event_at_ms or RANK[r.state] > RANK[newest.state]:
            return newest.state, f"{r.source} says {r.state}, {newest.source} says {newest.state}"
    return newest.state, ""


def _newest(reports) -> SourceReport:
    return max(reports, key=lambda r: (r.event_at_ms, RANK[r.state]))


def apply_scan(w: Waybill | None, scan: Scan, now_ms: int, stale_after_s: float,
               cause: str = "scan", thresholds: tuple[float, float] = (3600, 3 * 3600)) -> Outcome:
    """Fold one translated report into its waybill."""
    if w is None:
        # an event ahead of its waybill's registration (another topic: no order between them):
        # kept on a provisional waybill, shown to nobody until the registration arrives
        w = provisional(scan, now_ms)
    if not w.order_id:
        folded = _fold(w, scan, now_ms, stale_after_s, cause, thresholds)
        return Outcome(folded.waybill, "early" if folded.result not in ("duplicate", "stale") else folded.result)
    return _fold(w, scan, now_ms, stale_after_s, cause, thresholds)


def provisional(scan: Scan, now_ms: int) -> Waybill:
    return Waybill(waybill=scan.waybill, carrier=scan.carrier, order_id="", track_code="", registered_at_ms=int(now_ms),
                   last_update_ms=0, next_pull_ms=2**62)


def is_provisional(w: Waybill) -> bool:
    return not w.order_id


def register_over(reg: WaybillRegistered, early: Waybill | None, now_ms: int, stale_after_s: float, secret: bytes,
                  thresholds: tuple[float, float] = (3600, 3 * 3600)) -> Outcome:
    """Register a waybill; events that came before it (a provisional waybill) are folded in, in
    event-time order, and what they add up to is announced once."""
    w = register(reg, now_ms, stale_after_s, secret, thresholds)
    if early is None:
        return Outcome(w, "registered", tracking_update(w, "registered", now_ms, thresholds=thresholds))
    # the provisional waybill keeps one report per source, the newest: the collection time it
    # saw (possibly from an older report) would be lost if it were not carried over
    w = replace(w, collected_at_ms=early.collected_at_ms)
    review, notify = None, False
    for r in sorted(early.reports, key=lambda r: (r.event_at_ms, RANK[r.state])):
        scan = Scan(r.source, "aggregator" if r.carrier else "courier", r.carrier or r.source, w.waybill, "",
                    r.code, r.state, r.event_at_ms, f"early-{r.event_at_ms}")
        o = _fold(w, scan, now_ms, stale_after_s, "scan", thresholds)
        w, review, notify = o.waybill, review or o.review, notify or o.notify
    w = replace(w, seen=tuple(dict.fromkeys((*early.seen, *w.seen)))[-SEEN_KEEP:])
    return Outcome(w, "registered", tracking_update(w, "registered", now_ms, thresholds=thresholds), review, notify)


def _fold(w: Waybill, scan: Scan, now_ms: int, stale_after_s: float, cause: str,
          thresholds: tuple[float, float]) -> Outcome:
    if scan.dedupe_key in w.seen:
        return Outcome(w, "duplicate")
    seen = (*w.seen, scan.dedupe_key)[-SEEN_KEEP:]
    by_source = {r.source: r for r in w.reports}
    previous = by_source.get(scan.source)
    # the parcel is as current as its newest event (a scan delivered hours late is hours old)
    fresh = replace(w, seen=seen, last_update_ms=max(w.last_update_ms, min(int(scan.event_at_ms), int(now_ms))),
                    next_pull_ms=int(now_ms + stale_after_s * 1000))
    if previous is not None and (scan.event_at_ms, RANK[scan.state]) <= (previous.event_at_ms, RANK[previous.state]):
        # late or out of order: kept as seen, the parcel does not move back, nor is it fresher;
        # a late collection scan still dates the collection (the expected arrival counts from it)
        return Outcome(replace(w, seen=seen, collected_at_ms=earlier_collection(w.collected_at_ms, scan)), "stale")
    by_source[scan.source] = SourceReport(scan.source, scan.state, scan.code, scan.event_at_ms,
                                          scan.carrier if scan.kind == "aggregator" else "")
    reports = tuple(sorted(by_source.values(), key=lambda r: r.source))
    agreed, conflict = consensus(reports, w.carrier)
    if conflict or RANK[agreed] < RANK[w.agreed_state]:
        # a conflict keeps the last agreed state (shown as syncing); never backwards otherwise
        agreed = w.agreed_state
    collected_at = earlier_collection(w.collected_at_ms, scan)
    if collected_at is None and RANK[agreed] >= RANK["collected"]:
        collected_at = min(r.event_at_ms for r in reports if RANK[r.state] >= RANK["collected"])
    new = replace(fresh, reports=reports, agreed_state=agreed, syncing=bool(conflict), collected_at_ms=collected_at)
    new = replace(new, badge=badge(new, now_ms, thresholds))
    review = None
    if conflict and not w.syncing:
        review = TrackingReview(w.order_id, w.waybill, w.carrier, conflict,
                                {r.source: r.state for r in reports}, int(now_ms))
    notify = agreed in TERMINAL and not conflict and not w.notified
    if notify:
        new = replace(new, notified=True)
    result = "conflict" if conflict else ("agreed" if w.syncing else "new")
    changed = (shown_state(new), new.agreed_state, new.badge) != (shown_state(w), w.agreed_state, w.badge)
    update = (tracking_update(new, cause if not conflict else "conflict", now_ms, scan, thresholds)
              if changed else None)
    return Outcome(new, result, update, review, notify)


def earlier_collection(collected_at_ms: int | None, scan: Scan) -> int | None:
    """The collection time, moved earlier by a scan that shows the parcel already on its way then.
    Only a time is refined: whether the parcel counts as collected is the sources' consensus."""
    if collected_at_ms is None or RANK[scan.state] < RANK["collected"]:
        return collected_at_ms
    return min(collected_at_ms, int(scan.event_at_ms))


def expected_at_ms(w: Waybill, table: CodeTable | None = None) -> int | None:
    """Expected arrival: collected time + the carrier's transit hours; None before collection."""
    if w.collected_at_ms is None:
        return None
    courier = (table or code_table()).couriers.get(w.carrier)
    hours = courier.transit_hours if courier else 48
    return int(w.collected_at_ms + hours * 3_600_000)


def tracking_update(w: Waybill, cause: str, now_ms: int, scan: Scan | None = None,
                    thresholds: tuple[float, float] = (3600, 3 * 3600)) -> TrackingUpdate:
    badge_now = badge(w, now_ms, thresholds)
    return TrackingUpdate(
        order_id=w.order_id, waybill=w.waybill, carrier=w.carrier, state=shown_state(w), agreed_state=w.agreed_state,
        cause=cause, event_at_ms=scan.event_at_ms if scan else int(now_ms), at_ms=int(now_ms), badge=badge_now,
        last_update_ms=w.last_update_ms, track_code=w.track_code, source=scan.source if scan else "",
        code=scan.code if scan else "", expected_at_ms=expected_at_ms(w), on_backup=w.on_backup, pulls=w.pulls,
        failed_pulls=w.failed_pulls, failovers=w.failovers)


# -- freshness: re-pulls and fail-over ----------------------------------------------------------

def due_for_pull(w: Waybill, now_ms: int) -> bool:
    return not is_provisional(w) and w.agreed_state not in TERMINAL and now_ms >= w.next_pull_ms


def pull_source(w: Waybill, table: CodeTable | None = None) -> str:
    """Whom the next pull asks: the carrier's API, or its backup aggregator after fail-over.
    On backup, the carrier is still tried first (its recovery switches back)."""
    if not w.on_backup:
        return w.carrier
    return (table or code_table()).backup.get(w.carrier, w.carrier)


@dataclass(frozen=True)
class PullOutcome:
    waybill: Waybill
    event: str            # ok | failed | failover | recovered
    update: TrackingUpdate | None = None


def after_pull(w: Waybill, source: str, ok: bool, now_ms: int, stale_after_s: float,
               retry_after_s: float | None = None, thresholds: tuple[float, float] = (3600, 3 * 3600)) -> PullOutcome:
    """Count a pull. `ok` means the source answered (its scans, if any, are folded separately
    through apply_scan). 3 failed pulls of the carrier in a row switch to the backup aggregator;
    a successful pull of the carrier while on backup switches back."""
    retry_after_s = stale_after_s if retry_after_s is None else retry_after_s
    w = replace(w, pulls=w.pulls + 1)
    if ok:
        recovered = w.on_backup and source == w.carrier
        # an answer is not an update: only new events (folded through apply_scan) make a parcel
        # current, so a courier that never scans leaves the badge ageing however often it answers
        fresh = replace(w, failed_pulls=0 if source == w.carrier else w.failed_pulls,
                        on_backup=w.on_backup and not recovered, next_pull_ms=int(now_ms + stale_after_s * 1000))
        event = "recovered" if recovered else "ok"
        return PullOutcome(fresh, event, tracking_update(fresh, event, now_ms, thresholds=thresholds) if recovered else None)
    if source != w.carrier:  # the backup failed too: try again later, keep counting nothing new
        return PullOutcome(replace(w, next_pull_ms=int(now_ms + retry_after_s * 1000)), "failed")
    failed = w.failed_pulls + 1
    w = replace(w, failed_pulls=failed, next_pull_ms=int(now_ms + retry_after_s * 1000))
    if failed >= FAILOVER_AFTER and not w.on_backup:
        w = replace(w, on_backup=True, failovers=w.failovers + 1, next_pull_ms=int(now_ms))
        return PullOutcome(w, "failover", tracking_update(w, "failover", now_ms, thresholds=thresholds))
    return PullOutcome(w, "failed")


# -- the health badge ---------------------------------------------------------------------------

def badge(w: Waybill, now_ms: int, thresholds: tuple[float, float] = (3600, 3 * 3600)) -> str:
    """green: current (or delivered); yellow: yellow_s..red_s without update; red: beyond red_s."""
    if w.agreed_state in TERMINAL and not w.syncing:
        return "green"
    age_s = (now_ms - w.last_update_ms) / 1000
    yellow_s, red_s = thresholds
    if age_s > red_s:
        return "red"
    if age_s >= yellow_s:
        return "yellow"
    return "green"


def rebadge(w: Waybill, now_ms: int, thresholds: tuple[float, float] = (3600, 3 * 3600)) -> Outcome:
    """The badge as of now; an update only when it changed (so every stale waybill says so)."""
    now_badge = badge(w, now_ms, thresholds)
    if now_badge == w.badge:
        return Outcome(w, "same")
    new = replace(w, badge=now_badge)
    return Outcome(new, "badge", tracking_update(new, "badge", now_ms, thresholds=thresholds))


# -- the buyer's page ---------------------------------------------------------------------------

def page_steps(state: str) -> list[tuple[str, str, bool]]:
    """(state, Chinese label, reached) of the key steps, for the buyer's page."""
    rank = RANK.get(state, 0)
    return [(s, LABELS_ZH[s], rank >= RANK[s]) for s in KEY_STEPS]


def dead_letter(source: str, topic: str, partition: int, offset: int, key: bytes | None, payload: bytes,
                error: TrackingError, now_ms: int) -> dict:
    """A record for schemas/dead_letter.avsc (logistics.dlq): the courier's original bytes, where
    they came from and why they were refused; `platform` names the courier."""
    return {"source_topic": topic, "partition": int(partition), "offset": int(offset), "platform": source,
            "reason_code": error.reason_code, "reason": str(error)[:1000],
            "key": None if key is None else bytes(key), "payload": bytes(payload), "failed_at": int(now_ms)}
