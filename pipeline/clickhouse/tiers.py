"""The three monitoring tiers of seed 001, as queries over the rollups.

strategic (hourly, operations director): orders per day and hour, AOV trend, channel share.
tactical (15 min, warehouse lead): outbound progress per warehouse, exception types, refunds in flight.
execution (real time, operator): to-do list per approver, processing time, SLA countdown, the refund
queue and parked refund instructions (pipeline.clickhouse.refund_views).

Each tier takes `now` so a test (or a replay) can ask about any moment; all times are UTC and
come back as ISO-8601 text. Values reach SQL only as `{name:Type}` parameters.
"""
from __future__ import annotations

from datetime import datetime, timezone

from .backends import Backend
from .refund_views import execution_refunds, tactical_refunds

SHIPPED_STATES = ("SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED")
CLOSED_STATES = SHIPPED_STATES + ("CANCELLED",)
EXCEPTION_KINDS = ("risk_hold", "out_of_stock", "dead_letter", "sla_breach", "refund_instruction_failed")
RESOLUTIONS = ("approved", "rejected", "auto_released")
DECISION_EVENTS = ("reserved", "out_of_stock", "backorder")  # inventory events that time a full pass
ORANGE_HOURS = 8.0
RED_HOURS = 2.0
PROCESSING_WINDOW_S = 300

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

def strategic(backend: Backend, days: int = 7, now: datetime | None = None) -> dict:
    now = _now(now)
    p = {"now_ms": _ms(now), "days": int(days)}
    start = f"toStartOfHour({_NOW} - toIntervalDay({{days:UInt32}}))"
    per_hour = backend.query(f"""
        SELECT formatDateTime(hour, {_ISO}) AS hour_iso, toString(toDate(hour)) AS day, toHour(hour) AS hour_of_day,
               sum(orders) AS orders
        FROM orders_hourly WHERE hour >= {start}
        GROUP BY hour ORDER BY hour""", p)
    aov = backend.query(f"""
        SELECT formatDateTime(hour, {_ISO}) AS hour_iso, currency, sum(orders) AS n, sum(revenue_minor) AS revenue
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
    orders_by_platform: dict[str, int] = {}
    revenue_by_currency: dict[str, int] = {}
    for r in channels:
        orders_by_platform[r["platform"]] = orders_by_platform.get(r["platform"], 0) + int(r["n"])
        revenue_by_currency[r["currency"]] = revenue_by_currency.get(r["currency"], 0) + int(r["revenue"])
    total_orders = sum(orders_by_platform.values())
    return {
        "tier": "strategic", "refresh": "hourly", "now": _iso(now), "from": window_start, "days": int(days),
        "total_orders": total_orders,
        "orders_per_day": [{"day": d, "orders": n} for d, n in sorted(per_day.items())],
        "orders_per_hour": [{"hour": r["hour_iso"], "day": r["day"], "hour_of_day": int(r["hour_of_day"]),
                             "orders": int(r["orders"])} for r in per_hour],
        # revenue is only comparable within one currency, so AOV and revenue share are per currency
        "aov_per_hour": [{"hour": r["hour_iso"], "currency": r["currency"], "orders": int(r["n"]),
                          "revenue_minor": int(r["revenue"]),
                          "aov_minor": int(r["revenue"]) / int(r["n"]) if int(r["n"]) else None} for r in aov],
        "channel_share": [{"platform": plat, "orders": n, "share": n / total_orders if total_orders else 0.0}
                          for plat, n in sorted(orders_by_platform.items(), key=lambda kv: (-kv[1], kv[0]))],
        "revenue_share": [{"platform": r["platform"], "currency": r["currency"], "revenue_minor": int(r["revenue"]),
                           "share": int(r["revenue"]) / revenue_by_currency[r["currency"]]
                           if revenue_by_currency[r["currency"]] else 0.0} for r in channels],
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
    window_start = backend.query(f"SELECT formatDateTime({start}, {_ISO}) AS s", p)[0]["s"]

    shipped_by_wh = {r["wh"]: int(r["n"]) for r in shipped}
    warehouses = []
    for r in reserved:
        n, done = int(r["n"]), shipped_by_wh.get(r["wh"], 0)
        warehouses.append({"warehouse": r["wh"], "reserved_orders": n, "reserved_units": int(r["units"]),
                           "shipped_orders": done, "progress_pct": round(100.0 * done / n, 2) if n else 0.0})
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
        "refunds": tactical_refunds(backend, p, start),
    }


# -- execution -------------------------------------------------------------------------------

def execution(backend: Backend, now: datetime | None = None, sla_limit: int = 200) -> dict:
    now = _now(now)
    p = {"now_ms": _ms(now), "window_s": PROCESSING_WINDOW_S, "limit": int(sla_limit),
         "orange": ORANGE_HOURS, "red": RED_HOURS}
    held = backend.query(f"""
        SELECT assignee, order_id, platform, formatDateTime(held_at, {_ISO}) AS held_iso,
               dateDiff('millisecond', held_at, {_NOW}) / 1000 AS age_s,
               amount_minor, currency, rule_ids, severity
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
                   argMaxIf(severity, at, event = 'held') AS severity
            FROM risk_events WHERE at <= {_NOW}
            GROUP BY order_id
            HAVING countIf(event = 'held') > 0 AND (resolutions = 0 OR held_at > resolved_at))
        ARRAY JOIN if(empty(held_approvers), [ifNull(held_operator, 'unassigned')], held_approvers) AS assignee
        ORDER BY held_at, order_id, assignee""", p)
    processing = backend.query(f"""
        SELECT count() AS n, quantileExactInclusive(0.5)(latency_ms) AS p50,
               quantileExactInclusive(0.95)(latency_ms) AS p95
        FROM inventory_events
        WHERE event IN {_in(DECISION_EVENTS)} AND latency_ms IS NOT NULL
          AND at > {_NOW} - toIntervalSecond({{window_s:UInt32}}) AND at <= {_NOW}""", p)[0]
    open_orders = f"""
        SELECT order_id, plat, deadline, latest_status,
               (toUnixTimestamp64Milli(deadline) - {{now_ms:Int64}}) / 3600000 AS hours_left
        FROM ({_ORDER_STATE})
        WHERE deadline IS NOT NULL AND latest_status NOT IN {_in(CLOSED_STATES)}"""
    countdown = backend.query(f"""
        SELECT order_id, plat AS platform, latest_status AS status, formatDateTime(deadline, {_ISO}) AS ship_by,
               hours_left
        FROM ({open_orders}) ORDER BY hours_left, order_id LIMIT {{limit:UInt32}}""", p)
    levels = backend.query(f"""
        SELECT multiIf(hours_left <= 0, 'breached', hours_left <= {{red:Float64}}, 'red',
                       hours_left <= {{orange:Float64}}, 'orange', 'green') AS level, count() AS n
        FROM ({open_orders}) GROUP BY level""", p)

    todo: dict[str, list[dict]] = {}
    for r in held:
        todo.setdefault(r["assignee"], []).append({
            "order_id": r["order_id"], "platform": r["platform"], "held_at": r["held_iso"],
            "age_s": float(r["age_s"]), "amount_minor": int(r["amount_minor"]), "currency": r["currency"],
            "rule_ids": r["rule_ids"], "severity": r["severity"]})
    n = int(processing["n"])
    return {
        "tier": "execution", "refresh": "real time", "now": _iso(now),
        "todo": todo,
        "held_orders": len({r["order_id"] for r in held}),
        "processing": {"window_s": PROCESSING_WINDOW_S, "decisions": n,
                       "p50_ms": processing["p50"] if n else None, "p95_ms": processing["p95"] if n else None},
        "sla": {
            "levels": {lvl: 0 for lvl in ("green", "orange", "red", "breached")} | {r["level"]: int(r["n"])
                                                                                   for r in levels},
            "orders": [{"order_id": r["order_id"], "platform": r["platform"], "status": r["status"],
                        "ship_by": r["ship_by"], "hours_left": round(float(r["hours_left"]), 3),
                        "level": sla_level(float(r["hours_left"]))} for r in countdown],
        },
        "refunds": execution_refunds(backend, p, sla_limit),
    }


TIERS = {"strategic": strategic, "tactical": tactical, "execution": execution}
