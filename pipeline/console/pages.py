"""The tier pages: a tier's dict (pipeline.clickhouse.tiers, the one implementation of every figure)
turned into what a template shows. Nothing here adds, counts or averages data: it formats the
tier's own figures (pipeline.console.format) and draws them (pipeline.console.charts).

Every figure on a page carries `data-figure` (and `data-key` where there are several), with the
formatted text as its content, so a browser test can read it back and compare it with
`/views/<tier>` for the same parameters.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from pipeline.clickhouse.tiers import EXCEPTION_KINDS, TIERS

from . import charts, format as fmt
from .labels import LABELS, LANGS, label

TIME = "%Y-%m-%d %H:%M:%S"
SHORT = "%m-%d %H:%M"
ZONES = ("Asia/Shanghai", "UTC", "Asia/Singapore", "Asia/Tokyo", "Europe/London", "America/Los_Angeles")


@dataclass(frozen=True)
class Options:
    """What a page was asked for: the tier's own parameters (as /views takes them) and the viewer's
    zone and language."""
    tier: str
    tz: str
    lang: str = "zh-en"
    now: datetime | None = None
    days: int | None = None    # strategic
    hours: int | None = None   # tactical

    @property
    def zone(self) -> ZoneInfo:
        return fmt.zone(self.tz)

    def tier_args(self) -> dict:
        args: dict = {}
        if self.now is not None:
            args["now"] = self.now
        if self.tier == "strategic":
            args["tz"] = self.tz
            if self.days is not None:
                args["days"] = self.days
        if self.tier == "tactical" and self.hours is not None:
            args["hours"] = self.hours
        return args

    def query(self, **override) -> str:
        """This page's query string (for the panel refresh, the links between tiers, the JSON view)."""
        params = {"tz": self.tz, "lang": self.lang}
        if self.now is not None:
            params["now"] = self.now.isoformat()
        if self.days is not None and self.tier == "strategic":
            params["days"] = str(self.days)
        if self.hours is not None and self.tier == "tactical":
            params["hours"] = str(self.hours)
        params.update({k: v for k, v in override.items() if v is not None})
        return urllib.parse.urlencode(params)

    def view_url(self) -> str:
        """/views/<tier> with the same figures' parameters (the page's tz only matters to strategic)."""
        params = {}
        if self.now is not None:
            params["now"] = self.now.isoformat()
        if self.tier == "strategic":
            params["tz"] = self.tz
            if self.days is not None:
                params["days"] = str(self.days)
        if self.tier == "tactical" and self.hours is not None:
            params["hours"] = str(self.hours)
        return f"/views/{self.tier}" + (f"?{urllib.parse.urlencode(params)}" if params else "")


def _first(query, name: str) -> str | None:
    return next((v for v in query.getall(name, ()) if v), None)


def parse_options(tier: str, query, default_tz: str) -> Options:
    """Options from a request's query; ValueError with a message for anything malformed."""
    if tier not in TIERS:
        raise KeyError(tier)
    tz = _first(query, "tz") or default_tz
    fmt.zone(tz)
    lang = _first(query, "lang") or "zh-en"
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {list(LANGS)}")
    now = None
    if (raw := _first(query, "now")) is not None:
        now = fmt.parse_utc(raw)
    opts = Options(tier, tz, lang, now)
    if tier == "strategic" and (days := _first(query, "days")) is not None:
        opts = replace(opts, days=_positive(days, "days", 366))
    if tier == "tactical" and (hours := _first(query, "hours")) is not None:
        opts = replace(opts, hours=_positive(hours, "hours", 24 * 31))
    return opts


def _positive(raw: str, name: str, limit: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if not 1 <= value <= limit:
        raise ValueError(f"{name} must be between 1 and {limit}")
    return value


def compute(backend, opts: Options) -> dict:
    """The tier's figures, exactly as /views/<tier> computes them for the same parameters."""
    return TIERS[opts.tier](backend, **opts.tier_args())


# -- the figures of each tier, formatted ----------------------------------------------------------

MAX_FILLED_STEPS = 800


def time_axis(start_iso: str, now_iso: str, step_s: int, present: list[str]) -> list[str]:
    """Every step from the window's start up to now (UTC ISO), so a chart's time axis has no holes
    where a bucket had nothing; the buckets present are kept when the window is too long to draw."""
    start, end = fmt.parse_utc(start_iso), fmt.parse_utc(now_iso)
    steps = int((end - start).total_seconds() // step_s) + 1
    if steps <= 0 or steps > MAX_FILLED_STEPS:
        return present
    axis = [(start + timedelta(seconds=i * step_s)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(steps)]
    return sorted(set(axis) | set(present))

def strategic_model(view: dict, opts: Options) -> dict:
    tz = opts.zone
    t = lambda key: label(key, opts.lang)  # noqa: E731 - chart titles are plain text
    currencies = [{"currency": r["currency"], "orders": fmt.count(r["orders"]),
                   "revenue": fmt.money(r["revenue_minor"], r["currency"]),
                   "aov": fmt.average_money(r["revenue_minor"], r["orders"], r["currency"])}
                  for r in view["revenue_per_currency"]]
    main = view["revenue_per_currency"][0]["currency"] if view["revenue_per_currency"] else None
    per_hour = {h["hour"]: h["orders"] for h in view["orders_per_hour"]}
    hours = time_axis(view["from"], view["now"], 3600, list(per_hour))
    hour_chart = charts.bar_chart([charts.Point(fmt.local(h, tz, SHORT), per_hour.get(h, 0), fmt.count(per_hour.get(h, 0)))
                                   for h in hours], t("orders_per_hour"))
    aov_points = [charts.Point(fmt.local(a["hour"], tz, SHORT), fmt.average_minor(a["revenue_minor"], a["orders"]),
                               fmt.average_money(a["revenue_minor"], a["orders"], a["currency"]))
                  for a in view["aov_per_hour"] if a["currency"] == main and a["orders"]]
    aov_chart = charts.line_chart(aov_points, f"{t('aov_trend')} ({main})" if main else t("aov_trend"))
    gmv: dict[str, list[dict]] = {}
    for g in view["gmv_per_day"]:
        gmv.setdefault(g["day"], []).append({"currency": g["currency"],
                                             "revenue": fmt.money(g["revenue_minor"], g["currency"])})
    days = [{"day": d["day"], "orders": fmt.count(d["orders"]), "gmv": gmv.get(d["day"], [])}
            for d in view["orders_per_day"]]
    channels = [{"platform": c["platform"], "orders": fmt.count(c["orders"]), "share": fmt.percent(c["share"])}
                for c in view["channel_share"]]
    share_chart = charts.share_bars([charts.Point(c["platform"], c["share"],
                                                  f"{fmt.percent(c['share'])} · {fmt.count(c['orders'])}")
                                     for c in view["channel_share"]], t("channel_share"))
    revenue_share = [{"platform": r["platform"], "currency": r["currency"],
                      "revenue": fmt.money(r["revenue_minor"], r["currency"]), "share": fmt.percent(r["share"])}
                     for r in view["revenue_share"]]
    return {"total_orders": fmt.count(view["total_orders"]), "currencies": currencies, "main_currency": main,
            "hour_chart": hour_chart, "aov_chart": aov_chart, "days": days, "channels": channels,
            "share_chart": share_chart, "revenue_share": revenue_share, "settlement": settlement_model(view["settlement"]),
            "window": f"{fmt.local(view['from'], tz, TIME)} — {fmt.local(view['now'], tz, TIME)}"}


def settlement_model(s: dict) -> dict:
    days = [{"key": f"{d['day']}|{d['currency']}", "day": d["day"], "currency": d["currency"],
             "settled": fmt.money(d["settled_minor"], d["currency"]), "matched": fmt.money(d["matched_minor"], d["currency"]),
             "difference": fmt.money(d["difference_minor"], d["currency"])} for d in s["settled_per_day"]]
    classes = [{"key": f"{c['day']}|{c['class']}|{c['currency']}", "day": c["day"], "class": c["class"],
                "count": fmt.count(c["count"]), "diff": fmt.money(c["diff_minor"], c["currency"]),
                "written_off": fmt.count(c["written_off"])} for c in s["differences_by_class"]]
    waiting = [{"diff_key": d["diff_key"], "day": d["day"], "platform": d["platform"], "class": d["class"],
                "order_id": d["order_id"], "kind": d["kind"], "diff": fmt.money(d["diff_minor"], d["currency"])}
               for d in s["open_differences"]]
    return {"open": fmt.count(s["open_queue"]), "days": days, "classes": classes, "queue": waiting}


def tactical_model(view: dict, opts: Options) -> dict:
    tz = opts.zone
    warehouses = [{"warehouse": w["warehouse"], "reserved_orders": fmt.count(w["reserved_orders"]),
                   "reserved_units": fmt.count(w["reserved_units"]), "shipped_orders": fmt.count(w["shipped_orders"]),
                   "progress": fmt.pct(w["progress_pct"], 2), "progress_width": min(100.0, max(0.0, w["progress_pct"]))}
                  for w in view["warehouses"]]
    by_bucket = {b["bucket"]: b for b in view["exceptions"]}
    axis = time_axis(view["from"], view["now"], 900, list(by_bucket))
    chart = charts.stacked_bars([fmt.local(b, tz, SHORT) for b in axis],
                                [(kind, label(kind, opts.lang), [by_bucket[b][kind] if b in by_bucket else 0 for b in axis])
                                 for kind in EXCEPTION_KINDS], label("exceptions", opts.lang))
    totals = [{"kind": k, "count": fmt.count(view["exception_totals"][k])} for k in EXCEPTION_KINDS]
    paused = [{"sku": c["sku"], "platform": c["platform"], "available": fmt.count(c["available"]),
               "threshold": fmt.count(c["threshold"]), "since": fmt.local(c["since"], tz, TIME)}
              for c in view["paused_channels"]]
    return {"warehouses": warehouses, "exceptions_chart": chart, "totals": totals, "paused": paused,
            "window": f"{fmt.local(view['from'], tz, TIME)} — {fmt.local(view['now'], tz, TIME)}"}


def execution_model(view: dict, opts: Options) -> dict:
    tz = opts.zone
    sla = view["sla"]
    levels = [{"level": lvl, "count": fmt.count(sla["levels"][lvl])} for lvl in ("green", "orange", "red", "breached")]
    todo = [{"order_id": r["order_id"], "platform": r["platform"], "status": r["status"],
             "ship_by": fmt.local(r["ship_by"], tz, TIME), "left": fmt.countdown(r["hours_left"]), "level": r["level"]}
            for r in sla["orders"]]
    queue = [{"order_id": h["order_id"], "platform": h["platform"], "held_at": fmt.local(h["held_at"], tz, TIME),
              "waiting": fmt.duration(h["age_s"]), "amount": fmt.money(h["amount_minor"], h["currency"]),
              "rules": ", ".join(h["rule_ids"]), "reasons": [r for r in h["reason"].split("; ") if r],
              "severity": h["severity"], "assignees": ", ".join(h["assignees"])} for h in view["risk_queue"]]
    per_approver = [{"approver": who, "count": fmt.count(len(rows))} for who, rows in sorted(view["todo"].items())]
    p = view["processing"]
    processing = {"decisions": fmt.count(p["decisions"]), "p50": fmt.millis(p["p50_ms"]), "p95": fmt.millis(p["p95_ms"])}
    dl = view["dead_letters"]
    letters = {"waiting": fmt.count(dl["waiting"]),
               "by_reason": [{"reason_code": r["reason_code"], "count": fmt.count(r["letters"])} for r in dl["by_reason"]],
               "rows": [{"id": d["id"], "platform": d["platform"], "reason_code": d["reason_code"], "reason": d["reason"],
                         "source": d["source"], "size": fmt.count(d["payload_bytes"]) + " B",
                         "failed_at": fmt.local(d["failed_at"], tz, TIME)} for d in dl["letters"]]}
    breakers = [{"worker": b["worker"], "state": b["state"], "since": fmt.local(b["since"], tz, TIME),
                 "rate": f"{b['rate_per_min']:,.1f}", "transitions": fmt.count(b["transitions"])}
                for b in view["breakers"]]
    lg = view["logistics"]
    logistics = {"waybills": fmt.count(lg["waybills"]), "pulls": fmt.count(lg["pulls"]),
                 "failovers": fmt.count(lg["failovers"]), "syncing": fmt.count(lg["syncing"]),
                 "badges": [{"badge": b, "count": fmt.count(n)} for b, n in lg["by_badge"].items()],
                 "rows": [{"waybill": r["waybill"], "order_id": r["order_id"], "carrier": r["carrier"],
                           "state": r["state"], "badge": r["badge"], "since": fmt.duration(r["age_s"]),
                           "on_backup": r["on_backup"]} for r in lg["attention"]]}
    refunds = [{"refund_id": r["refund_id"], "order_id": r["order_id"], "platform": r["platform"], "kind": r["kind"],
                "reason_code": r["reason_code"], "amount": fmt.money(r["amount_minor"], r["currency"]),
                "since": fmt.local(r["since"], tz, TIME), "waiting": fmt.duration(r["age_s"]), "why": r["why"]}
               for r in view["refunds"]["awaiting_review"]]
    return {"levels": levels, "todo": todo, "queue": queue, "held_orders": fmt.count(view["held_orders"]),
            "per_approver": per_approver, "processing": processing, "letters": letters, "breakers": breakers,
            "logistics": logistics, "refunds": refunds}


MODELS = {"strategic": strategic_model, "tactical": tactical_model, "execution": execution_model}


# -- rendering ---------------------------------------------------------------------------------

def _t(lang: str):
    def t(key: str) -> Markup:
        zh, en = LABELS[key]
        if lang == "zh":
            return Markup('<span class="zh" lang="zh">{}</span>').format(zh)
        if lang == "en":
            return Markup('<span class="en" lang="en">{}</span>').format(en)
        return Markup('<span class="zh" lang="zh">{}</span> <span class="en" lang="en">{}</span>').format(zh, en)
    return t


def environment() -> Environment:
    env = Environment(loader=PackageLoader("pipeline.console", "templates"), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


class Renderer:
    def __init__(self, refresh_s: float) -> None:
        self.env = environment()
        self.refresh_ms = int(refresh_s * 1000)

    def context(self, view: dict, opts: Options, refreshed_at: datetime) -> dict:
        tz = opts.zone
        return {"tier": opts.tier, "view": view, "m": MODELS[opts.tier](view, opts), "opts": opts,
                "t": _t(opts.lang), "plain": lambda key: label(key, opts.lang), "tiers": list(TIERS),
                "as_of": fmt.local(view["now"], tz, TIME), "offset": fmt.utc_offset(tz, view["now"]),
                "refreshed_at": refreshed_at.astimezone(tz).strftime(TIME), "frozen": opts.now is not None,
                "zones": ZONES, "langs": LANGS, "refresh_ms": self.refresh_ms, "escape": escape,
                "short_id": fmt.short_id}

    def page(self, view: dict, opts: Options, refreshed_at: datetime) -> str:
        return self.env.get_template("page.html").render(self.context(view, opts, refreshed_at))

    def panel(self, view: dict, opts: Options, refreshed_at: datetime) -> str:
        return self.env.get_template(f"{opts.tier}.html").render(self.context(view, opts, refreshed_at))

    def error(self, status: int, message: str, lang: str = "zh-en") -> str:
        return self.env.get_template("error.html").render({"status": status, "message": message, "t": _t(lang)})
