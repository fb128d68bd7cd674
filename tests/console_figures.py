"""What a console page must show for a tier's JSON (/views/<tier>), and reading it back from HTML.

`expected_figures` lists, for every `data-figure` the tier's page carries, the text it must show,
straight from the view's numbers through pipeline.console.format (whose output is pinned to
literal strings in tests/unit/test_console.py). The unit tests read pages with `page_figures`
(an HTML parser), the browser tests with Selenium; both compare the whole mapping, so a figure
that is missing, extra or different fails.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

from pipeline.console import format as fmt

LEVELS = ("green", "orange", "red", "breached")


def expected_figures(tier: str, view: dict) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    if tier == "strategic":
        out[("total_orders", "")] = fmt.count(view["total_orders"])
        for r in view["revenue_per_currency"]:
            c = r["currency"]
            out[("revenue", c)] = fmt.money(r["revenue_minor"], c)
            out[("currency_orders", c)] = fmt.count(r["orders"])
            out[("aov", c)] = fmt.average_money(r["revenue_minor"], r["orders"], c)
        for d in view["orders_per_day"]:
            out[("orders_per_day", d["day"])] = fmt.count(d["orders"])
        for g in view["gmv_per_day"]:
            out[("gmv_per_day", f"{g['day']}|{g['currency']}")] = fmt.money(g["revenue_minor"], g["currency"])
        for c in view["channel_share"]:
            out[("channel_orders", c["platform"])] = fmt.count(c["orders"])
            out[("channel_share", c["platform"])] = fmt.percent(c["share"])
        for r in view["revenue_share"]:
            key = f"{r['platform']}|{r['currency']}"
            out[("platform_revenue", key)] = fmt.money(r["revenue_minor"], r["currency"])
            out[("revenue_share", key)] = fmt.percent(r["share"])
        s = view["settlement"]
        out[("settlement_open", "")] = fmt.count(s["open_queue"])
        for d in s["settled_per_day"]:
            key = f"{d['day']}|{d['currency']}"
            out[("settled", key)] = fmt.money(d["settled_minor"], d["currency"])
            out[("settled_matched", key)] = fmt.money(d["matched_minor"], d["currency"])
            out[("settled_difference", key)] = fmt.money(d["difference_minor"], d["currency"])
        for c in s["differences_by_class"]:
            key = f"{c['day']}|{c['class']}|{c['currency']}"
            out[("diff_class_count", key)] = fmt.count(c["count"])
            out[("diff_class_amount", key)] = fmt.money(c["diff_minor"], c["currency"])
            out[("diff_class_written_off", key)] = fmt.count(c["written_off"])
        for d in s["open_differences"]:
            out[("open_difference", d["diff_key"])] = fmt.money(d["diff_minor"], d["currency"])
    elif tier == "tactical":
        for kind, total in view["exception_totals"].items():  # every kind the view counts
            out[("exception_total", kind)] = fmt.count(total)
        for w in view["warehouses"]:
            wh = w["warehouse"]
            out[("wh_reserved_orders", wh)] = fmt.count(w["reserved_orders"])
            out[("wh_reserved_units", wh)] = fmt.count(w["reserved_units"])
            out[("wh_shipped_orders", wh)] = fmt.count(w["shipped_orders"])
            out[("wh_progress", wh)] = fmt.pct(w["progress_pct"], 2)
        for c in view["paused_channels"]:
            out[("paused_available", f"{c['sku']}|{c['platform']}")] = fmt.count(c["available"])
    elif tier == "execution":
        for level in LEVELS:
            out[("sla_level", level)] = fmt.count(view["sla"]["levels"][level])
        out[("held_orders", "")] = fmt.count(view["held_orders"])
        p = view["processing"]
        out[("processing_p50", "")] = fmt.millis(p["p50_ms"])
        out[("processing_p95", "")] = fmt.millis(p["p95_ms"])
        out[("processing_decisions", "")] = fmt.count(p["decisions"])
        for h in view["risk_queue"]:
            out[("hold_amount", h["order_id"])] = fmt.money(h["amount_minor"], h["currency"])
        for who, rows in view["todo"].items():
            out[("approver_todo", who)] = fmt.count(len(rows))
        for r in view["sla"]["orders"]:
            out[("sla_left", r["order_id"])] = fmt.countdown(r["hours_left"])
        dl = view["dead_letters"]
        out[("dead_letters_waiting", "")] = fmt.count(dl["waiting"])
        for r in dl["by_reason"]:
            out[("dead_letters_by_reason", r["reason_code"])] = fmt.count(r["letters"])
        for b in view["breakers"]:
            out[("breaker_state", b["worker"])] = b["state"]
        lg = view["logistics"]
        out[("waybills", "")] = fmt.count(lg["waybills"])
        out[("waybills_syncing", "")] = fmt.count(lg["syncing"])
        out[("waybill_pulls", "")] = fmt.count(lg["pulls"])
        out[("waybill_failovers", "")] = fmt.count(lg["failovers"])
        for badge, n in lg["by_badge"].items():
            out[("waybills_by_badge", badge)] = fmt.count(n)
    else:
        raise ValueError(tier)
    return out


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[str, str] | None]] = []
        self.texts: dict[int, list[str]] = {}
        self.found: list[tuple[tuple[str, str], int]] = []
        self.attrs_seen: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs_seen.append((tag, a))
        if tag in VOID:
            return
        figure = (a["data-figure"], a.get("data-key", "")) if "data-figure" in a else None
        if figure is not None:
            self.texts[len(self.found)] = []
            self.found.append((figure, len(self.found)))
        self.stack.append((tag, figure and len(self.found) - 1))

    def handle_startendtag(self, tag, attrs):
        self.attrs_seen.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        for _, index in self.stack:
            if index is not None:
                self.texts[index].append(data)


def parse(html: str) -> _Figures:
    parser = _Figures()
    parser.feed(html)
    parser.close()
    return parser


def page_figures(html: str) -> dict[tuple[str, str], str]:
    """(figure, key) -> shown text of every data-figure element; a repeated (figure, key) fails."""
    parser = parse(html)
    out: dict[tuple[str, str], str] = {}
    for figure, index in parser.found:
        assert figure not in out, f"figure {figure} appears twice on the page"
        out[figure] = " ".join("".join(parser.texts[index]).split())
    return out


def resource_urls(html: str) -> list[str]:
    """Every URL the page would load or link to: src, href, action, and url(...) in style attributes."""
    urls = []
    for _tag, attrs in parse(html).attrs_seen:
        for name in ("src", "href", "action", "xlink:href", "srcset", "poster", "data"):
            if attrs.get(name):
                urls.append(attrs[name])
        urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", attrs.get("style") or "")
    return urls


def is_external(url: str) -> bool:
    """Anything with a scheme other than data: (http, https, ws, ftp...) or a protocol-relative //host."""
    u = url.strip().lower()
    if u.startswith("data:") or u.startswith("#"):
        return False
    return "//" in u or ":" in u.split("/", 1)[0]
