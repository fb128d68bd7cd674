"""The three monitoring tiers of seed 001, as queries over the rollups.

strategic (hourly, operations director): orders per day and hour, AOV trend, channel share.
tactical (15 min, warehouse lead): outbound progress per warehouse, exception types, refunds in flight.
execution (real time, operator): to-do list per approver, processing time, SLA countdown, the status
updates that were not trusted (seed 003) and still wait for a believable one, the refund queue and
parked refund instructions (pipeline.clickhouse.refund_views).

Each tier takes `now` so a test (or a replay) can ask about any moment; all times are UTC and
come back as ISO-8601 text. Values reach SQL only as `{name:Type}` parameters. The strategic tier
also takes a time zone (`tz`): its days are that zone's calendar days (UTC by default).

These functions are the one implementation of every figure: `/views/<tier>` serves them as JSON
and the console (pipeline.console) renders the same dicts; it formats, it never recomputes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .backends import Backend
from .refund_views import execution_refunds, tactical_refunds

SHIPPED_STATES = ("SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED")
CLOSED_STATES = SHIPPED_STATES + ("CANCELLED",)
EXCEPTION_KINDS = ("risk_hold", "out_of_stock", "dead_letter", "sla_breach", "suspect_transition",
                   "refund_instruction_failed")
RESOLUTIONS = ("approved", "rejected", "auto_released")
DECISION_EVENTS = ("reserved", "out_of_stock", "backorder")  # inventory events that time a full pass
ORANGE_HOURS = 8.0
RED_HOURS = 2.0
PROCESSING_WINDOW_S = 300
SUSPECT_WINDOW_HOURS = 24
SUSPECT_LIMIT = 200

_NOW = "fromUnixTimestamp64Milli({now_ms:Int64}, 'UTC')"
_ISO = "'%FT%TZ'"


def _in(values: tuple[str, ...]) -> str:
    """A SQL tuple of this module's own constants (chDB does not bind Array parameters)."""
    assert all(v.isidentifier() for v in values)
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_tz(tz: str) -> str:
    """An IANA zone name (ValueError otherwise): it reaches SQL as a parameter, never as text."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r} (an IANA name such as Asia/Shanghai or UTC)") from None
    return tz


def sla_level(hours_left: float) -> str:
    """The countdown colour: breached at 0, red from 2 h left, orange from 8 h, else green."""
    if hours_left <= 0:
        return "breached"
    if hours_left <= RED_HOURS:
        return "red"
    if hours_left <= ORANGE_HOURS:
        return "orange"
    return "green"


# -- strategic -------------------------------------------------------------------------------

def strategic(backend: Backend, days: int = 7, now: datetime | None = None, tz: str = "UTC") -> dict:
    now = _now(now)
    p = {"now_ms": _ms(now), "days": int(days), "tz": check_tz(tz)}
    start = f"toStartOfHour({_NOW} - toIntervalDay({{days:UInt32}}))"
    day = "toString(toDate(hour, {tz:String}))"  # the calendar day of the hour in the asked zone
    per_hour = backend.query(f"""
        SELECT formatDateTime(hour, {_ISO}) AS hour_iso, {day} AS day, toHour(hour) AS hour_of_day,
               sum(orders) AS orders
        FROM orders_hourly WHERE hour >= {start}
        GROUP BY hour ORDER BY hour""", p)
    aov = backend.query(f"""
        SELECT formatDateTime(hour, {_ISO}) AS hour_iso, {day} AS day, currency, sum(orders) AS n,
               sum(revenue_minor) AS revenue
        FROM orders_hourly WHERE hour >= {start}
        GROUP BY hour, currency ORDER BY hour, currency""", p)
    channels = backend.query(f"""
        SELECT platform, currency, sum(orders) AS n, sum(revenue_minor) AS revenue
        FROM orders_hourly WHERE hour >= {start}
        GROUP BY platform, currency ORDER BY platform, currency""", p)
    window_start = backend.query(f"SELECT formatDateTime({start}, {_ISO}) AS s", p)[0]["s"]

    per_day: dict[str, int] = {}
    for r in per_hour:
        per_day[r["day"]] = per_day.get(r["day"], 0) + int(r["orders"])
    gmv_per_day: dict[tuple[str, str], list[int]] = {}
    for r in aov:
        entry = gmv_per_day.setdefault((r["day"], r["currency"]), [0, 0])
        entry[0] += int(r["n"])
        entry[1] += int(r["revenue"])
    orders_by_platform: dict[str, int] = {}
    revenue_by_currency: dict[str, int] = {}
    orders_by_currency: dict[str, int] = {}
    for r in channels:
        orders_by_platform[r["platform"]] = orders_by_platform.get(r["platform"], 0) + int(r["n"])
        revenue_by_currency[r["currency"]] = revenue_by_currency.get(r["currency"], 0) + int(r["revenue"])
        orders_by_currency[r["currency"]] = orders_by_currency.get(r["currency"], 0) + int(r["n"])
    total_orders = sum(orders_by_platform.values())
    return {
        "settlement": settlement_summary(backend, p),
        "tier": "strategic", "refresh": "hourly", "now": _iso(now), "from": window_start, "days": int(days),
        "tz": tz,
        "total_orders": total_orders,
        "orders_per_day": [{"day": d, "orders": n} for d, n in sorted(per_day.items())],
        # GMV: the new orders' totals, integer minor units of their own currency (never summed across)
        "gmv_per_day": [{"day": d, "currency": c, "orders": n, "revenue_minor": rev}
                        for (d, c), (n, rev) in sorted(gmv_per_day.items())],
        "orders_per_hour": [{"hour": r["hour_iso"], "day": r["day"], "hour_of_day": int(r["hour_of_day"]),
                             "orders": int(r["orders"])} for r in per_hour],
        # revenue is only comparable within one currency, so AOV and revenue share are per currency
        "aov_per_hour": [{"hour": r["hour_iso"], "currency": r["currency"], "orders": int(r["n"]),
                          "revenue_minor": int(r["revenue"]),
                          "aov_minor": int(r["revenue"]) / int(r["n"]) if int(r["n"]) else None} for r in aov],
        "revenue_per_currency": [{"currency": c, "orders": orders_by_currency[c], "revenue_minor": rev,
                                  "aov_minor": rev / orders_by_currency[c] if orders_by_currency[c] else None}
                                 for c, rev in sorted(revenue_by_currency.items(), key=lambda kv: (-kv[1], kv[0]))],
        "channel_share": [{"platform": plat, "orders": n, "share": n / total_orders if total_orders else 0.0}
                          for plat, n in sorted(orders_by_platform.items(), key=lambda kv: (-kv[1], kv[0]))],
        "revenue_share": [{"platform": r["platform"], "currency": r["currency"], "revenue_minor": int(r["revenue"]),
                           "share": int(r["revenue"]) / revenue_by_currency[r["currency"]]
                           if revenue_by_currency[r["currency"]] else 0.0} for r in channels],
    }


OPEN_DIFFERENCES_SHOWN = 100  # in the queue's order; the CLI and /console/api/settlement/queue list all


def settlement_summary(backend: Backend, p: dict) -> dict:
    """Settlement (pipeline.settlement): per bill day of the window, the settled amount and the
    difference amount by class, from each (day, platform)'s latest run, and the open manual queue."""
    # the settlement package's own definitions (it imports this package, hence here)
    from pipeline.settlement.engine import LATEST_RUNS
    from pipeline.settlement.queue import open_queue
    latest_runs = f"SELECT run_id FROM ({LATEST_RUNS})"
    since = "toDate(" + _NOW + " - toIntervalDay({days:UInt32}), {tz:String})"
    settled = backend.query(f"""
        SELECT toString(day) AS day_text, currency, sum(settled_minor) AS settled, sum(matched_minor) AS matched,
               sum(difference_minor) AS difference
        FROM settlement_totals WHERE run_id IN ({latest_runs}) AND day >= {since}
        GROUP BY day, currency ORDER BY day, currency""", p)
    by_class = backend.query(f"""
        SELECT toString(day) AS day_text, class, currency, count() AS n, sum(diff_minor) AS diff,
               countIf(disposition = 'written_off') AS written_off
        FROM settlement_differences WHERE run_id IN ({latest_runs}) AND day >= {since}
        GROUP BY day, class, currency ORDER BY day, class, currency""", p)
    waiting = open_queue(backend)
    return {
        "settled_per_day": [{"day": r["day_text"], "currency": r["currency"], "settled_minor": int(r["settled"]),
                             "matched_minor": int(r["matched"]), "difference_minor": int(r["difference"])}
                            for r in settled],
        "differences_by_class": [{"day": r["day_text"], "class": r["class"], "currency": r["currency"],
                                  "count": int(r["n"]), "diff_minor": int(r["diff"]),
                                  "written_off": int(r["written_off"])} for r in by_class],
        "open_queue": len(waiting),
        "open_differences": [{"diff_key": r["diff_key"], "day": r["day"], "platform": r["platform"], "class": r["class"],
                              "order_id": r["order_id"], "kind": r["kind"], "currency": r["currency"],
                              "diff_minor": int(r["diff_minor"])} for r in waiting[:OPEN_DIFFERENCES_SHOWN]],
    }


# -- tactical --------------------------------------------------------------------------------

_RESERVATION_WAREHOUSES = "arrayDistinct(if(empty(line_warehouses), [warehouse], line_warehouses))"

_ORDER_STATE = """
    SELECT order_id, any(platform) AS plat, max(ship_by) AS deadline,
           min(first_shipped_at) AS shipped_at, argMaxMerge(last_status) AS latest_status
    FROM order_state GROUP BY order_id"""


def tactical(backend: Backend, hours: int = 24, now: datetime | None = None) -> dict:
    now = _now(now)
    p = {"now_ms": _ms(now), "hours": int(hours)}
    start = f"toStartOfFifteenMinutes({_NOW} - toIntervalHour({{hours:UInt32}}))"
    reserved = backend.query(f"""
        SELECT warehouse AS wh, sum(reserved_orders) AS n, sum(reserved_units) AS units
        FROM warehouse_15m WHERE bucket >= {start} GROUP BY warehouse ORDER BY warehouse""", p)
    # shipped = reservations of the window whose order has reached a shipped state since
    shipped = backend.query(f"""
        SELECT wh, count() AS n FROM (
            SELECT DISTINCT order_id, wh FROM inventory_events
            ARRAY JOIN {_RESERVATION_WAREHOUSES} AS wh
            WHERE event = 'reserved' AND at >= {start}
              AND order_id IN (SELECT order_id FROM order_state WHERE first_shipped_at IS NOT NULL))
        GROUP BY wh""", p)
    exceptions = backend.query(f"""
        SELECT formatDateTime(bucket, {_ISO}) AS b, kind, sum(events) AS n
        FROM exceptions_15m WHERE bucket >= {start} GROUP BY bucket, kind""", p)
    # a breach is the absence of a shipment by the deadline, so it is found at query time
    breaches = backend.query(f"""
        SELECT formatDateTime(toStartOfFifteenMinutes(deadline), {_ISO}) AS b, 'sla_breach' AS kind, count() AS n
        FROM ({_ORDER_STATE})
        WHERE deadline IS NOT NULL AND deadline >= {start} AND deadline <= {_NOW}
          AND (shipped_at IS NULL OR shipped_at > deadline) AND latest_status != 'CANCELLED'
        GROUP BY b""", p)
    # the latest pause/resume per channel (sku, platform): those whose latest is a pause are paused now
    paused = backend.query(f"""
        SELECT sku, platform, formatDateTime(max(at), {_ISO}) AS since,
               argMax(available, (at, src_offset)) AS available, argMax(threshold, (at, src_offset)) AS threshold
        FROM channel_events WHERE at <= {_NOW}
        GROUP BY sku, platform
        HAVING argMax(event, (at, src_offset)) = 'pause'
        ORDER BY sku, platform""", p)
    # units that left each warehouse in the window (shipment_lines: the stock actually deducted)
    outbound = backend.query(f"""
        SELECT warehouse AS wh, uniqExact(order_id) AS orders, sum(quantity) AS units
        FROM shipment_lines WHERE at >= {start} AND at <= {_NOW} GROUP BY warehouse""", p)
    window_start = backend.query(f"SELECT formatDateTime({start}, {_ISO}) AS s", p)[0]["s"]

    shipped_by_wh = {r["wh"]: int(r["n"]) for r in shipped}
    outbound_by_wh = {r["wh"]: r for r in outbound}
    reserved_by_wh = {r["wh"]: r for r in reserved}
    warehouses = []
    for wh in sorted(set(reserved_by_wh) | set(outbound_by_wh)):
        r, out = reserved_by_wh.get(wh), outbound_by_wh.get(wh)
        n, done = (int(r["n"]) if r else 0), shipped_by_wh.get(wh, 0)
        warehouses.append({"warehouse": wh, "reserved_orders": n, "reserved_units": int(r["units"]) if r else 0,
                           "shipped_orders": done, "progress_pct": round(100.0 * done / n, 2) if n else 0.0,
                           "outbound_orders": int(out["orders"]) if out else 0,
                           "outbound_units": int(out["units"]) if out else 0})
    buckets: dict[str, dict] = {}
    totals = dict.fromkeys(EXCEPTION_KINDS, 0)
    for r in exceptions + breaches:
        row = buckets.setdefault(r["b"], {"bucket": r["b"], **dict.fromkeys(EXCEPTION_KINDS, 0)})
        row[r["kind"]] += int(r["n"])
        totals[r["kind"]] += int(r["n"])
    return {
        "tier": "tactical", "refresh": "15 minutes", "now": _iso(now), "from": window_start, "hours": int(hours),
        "warehouses": warehouses,
        "exceptions": [buckets[b] for b in sorted(buckets)],
        "exception_totals": totals,
        "paused_channels": [{"sku": r["sku"], "platform": r["platform"], "since": r["since"],
                             "available": int(r["available"]), "threshold": int(r["threshold"])} for r in paused],
        "refunds": tactical_refunds(backend, p, start),
    }


# -- execution -------------------------------------------------------------------------------

def open_holds(backend: Backend, now: datetime | None = None, order_id: str | None = None) -> list[dict]:
    """Holds with no resolution since they were made, oldest first (one order's with `order_id`):
    the execution tier's risk queue, and what the console checks before it publishes a decision."""
    now = _now(now)
    p = {"now_ms": _ms(now), "order_id": order_id or ""}
    one = "AND order_id = {order_id:String}" if order_id is not None else ""
    rows = backend.query(f"""
        SELECT order_id, platform, formatDateTime(held_at, {_ISO}) AS held_iso,
               toUnixTimestamp64Milli(held_at) AS held_ms,
               dateDiff('millisecond', held_at, {_NOW}) / 1000 AS age_s,
               amount_minor, currency, rule_ids, severity, reason,
               if(empty(held_approvers), [ifNull(held_operator, 'unassigned')], held_approvers) AS assignees
        FROM (
            SELECT order_id, any(platform) AS platform,
                   maxIf(at, event = 'held') AS held_at,
                   maxIf(at, event IN {_in(RESOLUTIONS)}) AS resolved_at,
                   countIf(event IN {_in(RESOLUTIONS)}) AS resolutions,
                   argMaxIf(approvers, at, event = 'held') AS held_approvers,
                   argMaxIf(operator, at, event = 'held') AS held_operator,
                   argMaxIf(amount_minor, at, event = 'held') AS amount_minor,
                   argMaxIf(currency, at, event = 'held') AS currency,
                   argMaxIf(rule_ids, at, event = 'held') AS rule_ids,
                   argMaxIf(severity, at, event = 'held') AS severity,
                   argMaxIf(reason, at, event = 'held') AS reason
            FROM risk_events WHERE at <= {_NOW} {one}
            GROUP BY order_id
            HAVING countIf(event = 'held') > 0 AND (resolutions = 0 OR held_at > resolved_at))
        ORDER BY held_at, order_id""", p)
    return [{"order_id": r["order_id"], "platform": r["platform"], "held_at": r["held_iso"],
             "held_at_ms": int(r["held_ms"]), "age_s": float(r["age_s"]), "amount_minor": int(r["amount_minor"]),
             "currency": r["currency"], "rule_ids": r["rule_ids"], "severity": r["severity"], "reason": r["reason"],
             "assignees": sorted(r["assignees"])} for r in rows]


def last_resolution(backend: Backend, order_id: str) -> dict | None:
    """The latest approved / rejected / auto_released event of an order (who, when), or None."""
    rows = backend.query(f"""
        SELECT event, operator, reason, formatDateTime(at, {_ISO}) AS at_iso FROM risk_events
        WHERE order_id = {{order_id:String}} AND event IN {_in(RESOLUTIONS)}
        ORDER BY at DESC, src_offset DESC LIMIT 1""", {"order_id": order_id})
    return {"event": rows[0]["event"], "operator": rows[0]["operator"], "reason": rows[0]["reason"],
            "at": rows[0]["at_iso"]} if rows else None


def dead_letter_id(src_topic: str, src_partition: int, src_offset: int) -> str:
    """A dead letter's identity: its own coordinates on the dead-letter topic."""
    return f"{src_topic}:{int(src_partition)}:{int(src_offset)}"


def open_dead_letters(backend: Backend, now: datetime | None = None, limit: int = 100,
                      letter_id: str | None = None) -> dict:
    """Dead letters nobody has re-driven from the console yet (console_actions), newest first."""
    now = _now(now)
    p = {"now_ms": _ms(now), "limit": int(limit), "letter": letter_id or ""}
    one = "AND letter_id = {letter:String}" if letter_id is not None else ""
    waiting = f"""
        SELECT *, concat(src_topic, ':', toString(src_partition), ':', toString(src_offset)) AS letter_id
        FROM dead_letters
        WHERE failed_at <= {_NOW}
          AND letter_id NOT IN (SELECT target FROM console_actions WHERE action = 'redrive')"""
    letters = backend.query(f"""
        SELECT letter_id, platform, reason_code, reason, source_topic, source_partition, source_offset,
               payload_bytes, formatDateTime(failed_at, {_ISO}) AS failed_iso
        FROM ({waiting}) WHERE 1 {one}
        ORDER BY failed_at DESC, letter_id LIMIT {{limit:UInt32}}""", p)
    by_reason = backend.query(f"""
        SELECT reason_code, count() AS n FROM ({waiting}) GROUP BY reason_code ORDER BY n DESC, reason_code""", p)
    return {
        "waiting": sum(int(r["n"]) for r in by_reason),
        "by_reason": [{"reason_code": r["reason_code"], "letters": int(r["n"])} for r in by_reason],
        "letters": [{"id": r["letter_id"], "platform": r["platform"], "reason_code": r["reason_code"],
                     "reason": r["reason"], "source": f"{r['source_topic']}:{r['source_partition']}:{r['source_offset']}",
                     "payload_bytes": int(r["payload_bytes"]), "failed_at": r["failed_iso"]} for r in letters],
    }


# the latest row per waybill (logistics.tracking): its current state and badge
_WAYBILL_NOW = f"""
    SELECT waybill, argMax(order_id, (at, src_offset)) AS order_id, argMax(carrier, (at, src_offset)) AS carrier,
           argMax(state, (at, src_offset)) AS state, argMax(agreed_state, (at, src_offset)) AS agreed_state,
           argMax(badge, (at, src_offset)) AS badge, argMax(last_update, (at, src_offset)) AS last_update,
           argMax(track_code, (at, src_offset)) AS track_code, argMax(expected_at, (at, src_offset)) AS expected_at,
           argMax(on_backup, (at, src_offset)) AS on_backup, max(pulls) AS pulls, max(failovers) AS failovers
    FROM tracking_updates WHERE at <= {_NOW} GROUP BY waybill"""
BADGES = ("green", "yellow", "red")


def logistics(backend: Backend, now: datetime | None = None, limit: int = 100) -> dict:
    """Waybills by health badge, the ones that are not green or are syncing (the operators' list),
    re-pulls and fail-overs so far."""
    now = _now(now)
    p = {"now_ms": _ms(now), "limit": int(limit)}
    by_badge = backend.query(f"SELECT badge, count() AS n FROM ({_WAYBILL_NOW}) GROUP BY badge", p)
    totals = backend.query(f"""
        SELECT count() AS waybills, sum(pulls) AS pulls, sum(failovers) AS failovers,
               countIf(state = 'syncing') AS syncing, countIf(on_backup) AS on_backup FROM ({_WAYBILL_NOW})""", p)[0]
    attention = backend.query(f"""
        SELECT waybill, order_id, carrier, state, badge, formatDateTime(last_update, {_ISO}) AS last_update_iso,
               on_backup, ({{now_ms:Int64}} - toUnixTimestamp64Milli(last_update)) / 1000 AS age_s
        FROM ({_WAYBILL_NOW}) WHERE badge != 'green' OR state = 'syncing'
        ORDER BY badge = 'red' DESC, age_s DESC, waybill LIMIT {{limit:UInt32}}""", p)
    return {
        "waybills": int(totals["waybills"]), "pulls": int(totals["pulls"] or 0),
        "failovers": int(totals["failovers"] or 0), "syncing": int(totals["syncing"]),
        "on_backup": int(totals["on_backup"]),
        "by_badge": {b: 0 for b in BADGES} | {r["badge"]: int(r["n"]) for r in by_badge},
        "attention": [{"waybill": r["waybill"], "order_id": r["order_id"], "carrier": r["carrier"], "state": r["state"],
                       "badge": r["badge"], "last_update": r["last_update_iso"], "on_backup": bool(r["on_backup"]),
                       "age_s": float(r["age_s"])} for r in attention],
    }


def tracking(backend: Backend, code: str) -> dict | None:
    """What the buyer's page shows for a short-link code: the carrier, the state, when it last
    changed, the expected arrival, the key steps reached (when). No personal data: none is stored."""
    rows = backend.query(f"""
        SELECT carrier, state, agreed_state, badge, formatDateTime(last_update, {_ISO}) AS last_update_iso,
               if(expected_at IS NULL, '', formatDateTime(assumeNotNull(expected_at), {_ISO})) AS expected_iso
        FROM ({_WAYBILL_NOW}) WHERE track_code = {{code:String}}
        ORDER BY last_update DESC LIMIT 1""",
        {"code": code, "now_ms": _ms(_now(None))})
    if not rows:
        return None
    steps = backend.query(f"""
        SELECT agreed_state AS step, formatDateTime(min(event_at), {_ISO}) AS first_iso
        FROM tracking_updates WHERE track_code = {{code:String}} AND cause IN ('scan', 'pull', 'agreed')
        GROUP BY agreed_state""", {"code": code})
    r = rows[0]
    return {"carrier": r["carrier"], "state": r["state"], "agreed_state": r["agreed_state"], "badge": r["badge"],
            "last_update": r["last_update_iso"], "expected_at": r["expected_iso"] or None,
            "steps": {s["step"]: s["first_iso"] for s in steps}}


# open orders with a shipping deadline, hours left at {now_ms}; the level as sla_level says it
_OPEN_ORDERS = f"""
    SELECT order_id, plat, deadline, latest_status,
           (toUnixTimestamp64Milli(deadline) - {{now_ms:Int64}}) / 3600000 AS hours_left
    FROM ({_ORDER_STATE})
    WHERE deadline IS NOT NULL AND latest_status NOT IN {_in(CLOSED_STATES)}"""
_SLA_LEVEL = ("multiIf(hours_left <= 0, 'breached', hours_left <= {red:Float64}, 'red', "
              "hours_left <= {orange:Float64}, 'orange', 'green')")
SLA_LEVELS = ("green", "orange", "red", "breached")


def sla_levels_by_platform(backend: Backend, now: datetime | None = None) -> dict[tuple[str, str], int]:
    """Open orders by (platform, SLA level), as the execution tier counts them: what the sink exports
    as orderstream_shipping_sla_orders (pipeline.clickhouse.sla_metric)."""
    p = {"now_ms": _ms(_now(now)), "orange": ORANGE_HOURS, "red": RED_HOURS}
    rows = backend.query(f"""
        SELECT plat AS platform, {_SLA_LEVEL} AS level, count() AS n FROM ({_OPEN_ORDERS})
        GROUP BY platform, level""", p)
    return {(r["platform"], r["level"]): int(r["n"]) for r in rows}


def execution(backend: Backend, now: datetime | None = None, sla_limit: int = 200,
              dead_letter_limit: int = 100) -> dict:
    now = _now(now)
    p = {"now_ms": _ms(now), "window_s": PROCESSING_WINDOW_S, "limit": int(sla_limit),
         "orange": ORANGE_HOURS, "red": RED_HOURS}
    held = open_holds(backend, now)
    processing = backend.query(f"""
        SELECT count() AS n, quantileExactInclusive(0.5)(latency_ms) AS p50,
               quantileExactInclusive(0.95)(latency_ms) AS p95
        FROM inventory_events
        WHERE event IN {_in(DECISION_EVENTS)} AND latency_ms IS NOT NULL
          AND at > {_NOW} - toIntervalSecond({{window_s:UInt32}}) AND at <= {_NOW}""", p)[0]
    open_orders = _OPEN_ORDERS
    countdown = backend.query(f"""
        SELECT order_id, plat AS platform, latest_status AS status, formatDateTime(deadline, {_ISO}) AS ship_by,
               hours_left
        FROM ({open_orders}) ORDER BY hours_left, order_id LIMIT {{limit:UInt32}}""", p)
    levels = backend.query(f"""
        SELECT {_SLA_LEVEL} AS level, count() AS n FROM ({open_orders}) GROUP BY level""", p)
    # each worker's breaker as its latest transition left it (a worker that never switched is closed)
    breakers = backend.query(f"""
        SELECT worker, argMax(to_state, (at, src_offset)) AS state, formatDateTime(max(at), {_ISO}) AS since,
               argMax(rate_per_min, (at, src_offset)) AS rate, count() AS transitions
        FROM breaker_events WHERE at <= {_NOW} GROUP BY worker ORDER BY worker""", p)

    suspects = suspect_transitions(backend, p)

    todo: dict[str, list[dict]] = {}
    for h in held:
        for assignee in h["assignees"]:
            todo.setdefault(assignee, []).append({k: h[k] for k in (
                "order_id", "platform", "held_at", "age_s", "amount_minor", "currency", "rule_ids", "severity",
                "reason")})
    n = int(processing["n"])
    return {
        "tier": "execution", "refresh": "real time", "now": _iso(now),
        "todo": todo,
        "held_orders": len(held),
        "risk_queue": held,
        "processing": {"window_s": PROCESSING_WINDOW_S, "decisions": n,
                       "p50_ms": processing["p50"] if n else None, "p95_ms": processing["p95"] if n else None},
        "sla": {
            "levels": {lvl: 0 for lvl in SLA_LEVELS} | {r["level"]: int(r["n"])
                                                                                   for r in levels},
            "orders": [{"order_id": r["order_id"], "platform": r["platform"], "status": r["status"],
                        "ship_by": r["ship_by"], "hours_left": round(float(r["hours_left"]), 3),
                        "level": sla_level(float(r["hours_left"]))} for r in countdown],
        },
        "dead_letters": open_dead_letters(backend, now, dead_letter_limit),
        "logistics": logistics(backend, now),
        "breakers": [{"worker": r["worker"], "state": r["state"], "since": r["since"],
                      "rate_per_min": float(r["rate"]), "transitions": int(r["transitions"])} for r in breakers],
        "suspect_transitions": suspects,
        "refunds": execution_refunds(backend, p, sla_limit),
    }


def suspect_transitions(backend: Backend, p: dict) -> dict:
    """Untrusted status updates of the last SUSPECT_WINDOW_HOURS: counts by rule, and the open ones
    (the order's trusted state is still the one the suspect update tried to leave), newest first."""
    p = {**p, "hours": SUSPECT_WINDOW_HOURS, "suspect_limit": SUSPECT_LIMIT}
    recent = f"""
        SELECT order_id, platform, rule, from_status, to_status, elapsed_ms, limit_ms, window_id, reason,
               detected_at, to_at
        FROM suspect_transitions
        WHERE detected_at > {_NOW} - toIntervalHour({{hours:UInt32}}) AND detected_at <= {_NOW}"""
    by_rule = backend.query(f"SELECT rule, count() AS n FROM ({recent}) GROUP BY rule ORDER BY rule", p)
    rows = backend.query(f"""
        SELECT s.order_id AS order_id, s.platform AS platform, s.rule AS rule, s.from_status AS from_status,
               s.to_status AS to_status, s.elapsed_ms AS elapsed_ms, s.limit_ms AS limit_ms, s.window_id AS window_id,
               s.reason AS reason, formatDateTime(s.detected_at, {_ISO}) AS detected_iso,
               formatDateTime(s.to_at, {_ISO}) AS to_iso, ifNull(st.status, '') AS trusted_status
        FROM ({recent}) AS s
        LEFT JOIN (SELECT order_id, argMaxMerge(last_status) AS status FROM order_state
                   WHERE order_id IN (SELECT order_id FROM ({recent})) GROUP BY order_id) AS st
          ON s.order_id = st.order_id
        WHERE st.status = '' OR st.status = s.from_status
        ORDER BY s.detected_at DESC, s.order_id LIMIT {{suspect_limit:UInt32}}""", p)
    counts = {r["rule"]: int(r["n"]) for r in by_rule}
    return {"window_hours": SUSPECT_WINDOW_HOURS, "total": sum(counts.values()), "by_rule": counts,
            "open": [{"order_id": r["order_id"], "platform": r["platform"], "rule": r["rule"],
                      "from_status": r["from_status"], "to_status": r["to_status"],
                      "elapsed_s": int(r["elapsed_ms"]) / 1000,
                      "limit_s": None if r["limit_ms"] is None else int(r["limit_ms"]) / 1000,
                      "window": r["window_id"], "reason": r["reason"], "detected_at": r["detected_iso"],
                      "updated_at": r["to_iso"], "trusted_status": r["trusted_status"]} for r in rows]}


TIERS = {"strategic": strategic, "tactical": tactical, "execution": execution}
