"""The console (issue 15) without Kafka: formatting, charts, tokens, and the pages and actions on the
sink's aiohttp application over embedded chDB loaded with the sink suite's dataset. Publishing is
a stand-in that records what would go to Kafka (tests/stack/test_console_browser.py publishes for
real, in a real browser)."""
from __future__ import annotations

import asyncio
import logging
import time
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import test_utils

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.http import make_app
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.rows import RISK_COLUMNS, risk_row
from pipeline.kafka_io import Record
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import TIERS
from pipeline.codecs import dead_letter_codec
from pipeline.config import load_settings
from pipeline.console import charts, format as fmt
from pipeline.console.actions import PublishError
from pipeline.console.auth import Credentials, OperatorTokens, TokenConfigError, parse_tokens
from pipeline.console.labels import LABELS, label
from pipeline.contracts import RiskEvent
from pipeline.domain.holds import parse_decision
from pipeline.kafka_io import LibrdkafkaLog
from pipeline.topics import TopicNames
from tests.redrive_memory import memory_ledger
from tests.console_figures import expected_figures, is_external, page_figures, resource_urls
from tests.unit.test_clickhouse_chdb import INJECTION, NOW, make_dataset

SHANGHAI = ZoneInfo("Asia/Shanghai")
ALICE = "alice-token-0123456789"
BOB = "bob-token-abcdefghijkl"
VERA = "vera-viewer-token-0123456"  # reads pages, may not act
READ = {"Authorization": f"Bearer {VERA}"}
HOSTILE = "<img src=x onerror=alert(1)>"


# -- formatting ------------------------------------------------------------------------------------

def test_money_is_written_from_integer_minor_units_in_the_currencys_own_decimals():
    assert fmt.money(123456, "CNY") == "¥1,234.56"
    assert fmt.money(5, "CNY") == "¥0.05"
    assert fmt.money(0, "CNY") == "¥0.00"
    assert fmt.money(-1999, "CNY") == "-¥19.99"
    assert fmt.money(100_000_000_000_01, "CNY") == "¥100,000,000,000.01"  # beyond float's exact cents
    assert fmt.money(1234, "USD") == "12.34 USD"
    assert fmt.money(1234, "JPY") == "1,234 JPY"  # no minor unit
    with pytest.raises(TypeError):
        fmt.money(12.34, "CNY")
    with pytest.raises(TypeError):
        fmt.money(True, "CNY")


def test_average_is_integer_division_rounded_half_up():
    assert fmt.average_minor(10, 4) == 3          # 2.5 -> 3
    assert fmt.average_minor(9, 4) == 2           # 2.25 -> 2
    assert fmt.average_minor(-10, 4) == -3
    assert fmt.average_minor(10, 0) is None
    # a float would say 0.285 * 100 = 28.499999...; integers say 28.5 -> 29
    assert fmt.average_minor(57, 2) == 29
    assert fmt.average_money(100_001, 3, "CNY") == "¥333.34"
    assert fmt.average_money(5, 0, "CNY") == "—"


def test_counts_shares_durations_and_countdowns():
    assert fmt.count(1234567) == "1,234,567"
    assert fmt.percent(0.2346) == "23.5%" and fmt.percent(0) == "0.0%" and fmt.percent(1) == "100.0%"
    assert fmt.percent(1 / 3) == "33.3%"
    assert fmt.pct(52.38, 2) == "52.38%"
    assert fmt.millis(None) == "—" and fmt.millis(1234.4) == "1,234 ms"
    assert [fmt.duration(s) for s in (0, 45, 200, 3900, 2 * 86400 + 3600)] == ["0s", "45s", "3m 20s", "1h 05m",
                                                                             "2d 01h"]
    assert fmt.countdown(5.2) == "5h 12m"
    assert fmt.countdown(-1.05) == "-1h 03m"
    assert fmt.countdown(0) == "0s" and fmt.countdown(-0.001) == "-3s"


def test_times_are_shown_in_the_viewers_zone():
    assert fmt.local("2026-11-10T16:30:00Z", SHANGHAI) == "2026-11-11 00:30:00"
    assert fmt.local("2026-11-10T16:30:00Z", ZoneInfo("UTC")) == "2026-11-10 16:30:00"
    assert fmt.local("2026-11-10T16:30:00Z", ZoneInfo("America/Los_Angeles"), "%m-%d %H:%M") == "11-10 08:30"
    assert fmt.local(None, SHANGHAI) == "—"
    assert fmt.utc_offset(SHANGHAI, "2026-11-10T16:30:00Z") == "UTC+08:00"
    assert fmt.utc_offset(ZoneInfo("America/St_Johns"), "2026-01-10T16:30:00Z") == "UTC-03:30"
    with pytest.raises(ValueError, match="unknown time zone"):
        fmt.zone("Nowhere/At_All")


def test_every_label_has_chinese_and_english():
    for key, (zh, en) in LABELS.items():
        assert zh and en, key
        assert re.search(r"[\u4e00-\u9fff]", zh), f"{key}: {zh!r} has no Chinese"
        assert not re.search(r"[\u4e00-\u9fff]", en), f"{key}: {en!r} is not English"
    assert label("orders", "zh") == "订单" and label("orders", "en") == "Orders"
    assert label("orders") == "订单 Orders"


# -- charts ------------------------------------------------------------------------------------------

def _svg(markup) -> ET.Element:
    return ET.fromstring(str(markup))


def test_bar_chart_draws_one_bar_per_point_with_heights_in_proportion():
    points = [charts.Point("00:00", 2, "2"), charts.Point("01:00", 0, "0"), charts.Point("02:00", 8, "8")]
    svg = _svg(charts.bar_chart(points, "orders per hour"))
    bars = [r for r in svg.iter("rect") if r.get("class") == "bar"]
    assert [(b.get("data-label"), b.get("data-value")) for b in bars] == [("00:00", "2"), ("01:00", "0"), ("02:00", "8")]
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] == 0 and heights[2] == pytest.approx(4 * heights[0])
    assert [t.text for b in bars for t in b.iter("title")] == ["00:00: 2", "01:00: 0", "02:00: 8"]
    assert svg.find("title").text == "orders per hour"
    assert not [r for r in _svg(charts.bar_chart([], "empty")).iter("rect") if r.get("class") == "bar"]


def test_stacked_bars_stack_each_series_and_labels_are_escaped():
    svg = _svg(charts.stacked_bars(["a", HOSTILE], [("x", "X", [1, 2]), ("y", "<b>Y</b>", [3, 0])], "exceptions"))
    bars = [(r.get("data-label"), r.get("data-series"), r.get("data-value")) for r in svg.iter("rect")
            if r.get("class") == "bar"]
    assert bars == [("a", "x", "1"), ("a", "y", "3"), (HOSTILE, "x", "2")]  # a zero draws nothing
    text = str(charts.stacked_bars(["a"], [("y", "<b>Y</b>", [1])], "t"))
    assert "<b>" not in text and "&lt;b&gt;Y&lt;/b&gt;" in text


def test_share_bars_and_line_chart():
    svg = _svg(charts.share_bars([charts.Point("JD", 0.75, "75.0%"), charts.Point("TMALL", 0.25, "25.0%")], "share"))
    widths = [float(r.get("width")) for r in svg.iter("rect") if r.get("class") == "bar"]
    assert widths[0] == pytest.approx(3 * widths[1])
    line = _svg(charts.line_chart([charts.Point("h1", 100, "¥1.00"), charts.Point("h2", 300, "¥3.00")], "aov"))
    assert [c.get("data-value") for c in line.iter("circle")] == ["100", "300"]
    assert "http" not in str(charts.line_chart([charts.Point("h", 1)], "x"))  # inline SVG: no namespace URL


# -- operators and tokens ---------------------------------------------------------------------------

def test_tokens_name_their_operator_and_nothing_else_does():
    tokens = OperatorTokens(parse_tokens(f"alice:{ALICE}, bob:{BOB}"))
    assert tokens.operators() == ["alice", "bob"]
    assert tokens.operator(f"Bearer {ALICE}") == "alice"
    assert tokens.operator(f"bearer   {BOB} ") == "bob"
    for header in (None, "", ALICE, f"Basic {ALICE}", f"Bearer {ALICE}x", f"Bearer {ALICE[:-1]}", "Bearer "):
        assert tokens.operator(header) is None, header
    assert OperatorTokens({}).operator(f"Bearer {ALICE}") is None


def test_malformed_tokens_stop_the_console_with_a_reason(tmp_path):
    for text, why in (("alice", "name:token"), ("alice:short", "at least 16"), (f"al ice:{ALICE}", "name:token"),
                      (f"alice:{ALICE},bob:{ALICE}", "share a token"), (f"alice:{ALICE[:8]} {ALICE[8:]}", "16")):
        with pytest.raises(TokenConfigError, match=why):
            parse_tokens(text)
    path = tmp_path / "operators"
    path.write_text(f"# operators\nbob:{BOB}\n\ncarol:carol-token-0123456789\n", encoding="utf-8")
    s = load_settings()
    from dataclasses import replace
    tokens = OperatorTokens.from_settings(replace(s, operator_tokens=f"alice:{ALICE}", operator_tokens_file=str(path)))
    assert tokens.operators() == ["alice", "bob", "carol"]
    with pytest.raises(TokenConfigError, match="missing"):
        OperatorTokens.from_settings(replace(s, operator_tokens_file=str(tmp_path / "missing")))


# -- librdkafka's lines through logging -----------------------------------------------------------------

def test_librdkafka_lines_go_through_logging_and_self_healing_retries_are_info(caplog, capfd):
    from pipeline import kafka_io
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    log = LibrdkafkaLog()
    log.log(logging.WARNING, "%s [%s] %s", "GETPID", "rdkafka#producer-1",
            "[thrd:main]: Failed to acquire transactional PID from broker: Coordinator load in progress: retrying")
    log.log(logging.INFO, "%s [%s] %s", "BGQUEUE", "rdkafka#producer-1", "Purging 1 unserved events")
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-2", "Connect to ipv4#127.0.0.1:1 failed")
    assert [(r.levelno, r.getMessage().split(" ")[0]) for r in caplog.records] == [
        (logging.INFO, "GETPID"), (logging.INFO, "BGQUEUE"), (logging.ERROR, "FAIL")]
    caplog.clear()
    # a real client: nothing listens on port 1, librdkafka complains, and it reaches logging, not stderr
    settings = load_settings()
    from dataclasses import replace
    c = kafka_io.consumer(replace(settings, kafka_bootstrap="127.0.0.1:1"), group="log-routing-probe")
    deadline = time.monotonic() + 15  # a loaded machine may take more than one poll to try and fail
    try:
        while not any("Connection refused" in r.getMessage() for r in caplog.records if r.name == "librdkafka"):
            assert time.monotonic() < deadline, "librdkafka never reported the refused connection through logging"
            c.poll(0.5)
    finally:
        c.close()
    assert "%3|" not in capfd.readouterr().err


# -- the pages over chDB --------------------------------------------------------------------------------

class FakePublisher:
    """Records what would be published; `fail` publishes fail first, `on_publish` plays the worker."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self.fail = 0
        self.on_publish = None

    def publish(self, topic, key, value, headers=None):
        if self.fail:
            self.fail -= 1
            raise PublishError("broker away (simulated)")
        self.sent.append((topic, key, value, headers))
        if self.on_publish:
            self.on_publish(topic, key, value)

    def close(self):
        pass


NAMES = TopicNames("chdbtest.")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("console") / "chdb")
    migrate(b)
    feed = make_dataset(NAMES)
    # a dead letter whose reason is markup: shown as text, never as HTML
    feed.send(NAMES.DLQ, dead_letter_codec().encode({
        "source_topic": NAMES.raw("TMALL"), "partition": 1, "offset": 7, "platform": "TMALL",
        "reason_code": "bad_amount", "reason": HOSTILE, "key": b"TM-1", "payload": b'{"tid": 1}',
        "failed_at": int(NOW.timestamp() * 1000) - 1000}), int(NOW.timestamp() * 1000), "hostile")
    sink = ClickHouseSink(b, NAMES, max_rows=500, max_seconds=60)
    for m in feed.messages:
        sink.add(m)
    sink.flush(force=True)
    yield b
    b.close()


class Client:
    """The sink's application with the console, through aiohttp's test client (one per test)."""

    def __init__(self, backend, publisher, tokens=None, outcome_wait_s=0.0, redrives=None):
        self.redrives = redrives if redrives is not None else memory_ledger()
        credentials = Credentials([(ALICE, "alice", "operator"), (BOB, "bob", "operator"), (VERA, "vera", "viewer")])
        self.app = make_app(backend, credentials=credentials if tokens is None else tokens)
        from pipeline.console import setup_console
        setup_console(self.app, load_settings(), NAMES, publisher=publisher, outcome_wait_s=outcome_wait_s,
                      redrives=self.redrives)

    def run(self, scenario):
        async def main():
            async with test_utils.TestClient(test_utils.TestServer(self.app)) as client:
                return await scenario(client)
        return asyncio.run(main())


async def get_text(client, path, status=200, **params):
    resp = await client.get(path, params=params, headers=READ)
    assert resp.status == status, (path, resp.status, (await resp.text())[:500])
    return resp, await resp.text()


async def post(client, path, payload, token=None, status=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.post(path, json=payload, headers=headers)
    body = await resp.json()
    if status is not None:
        assert resp.status == status, body
    return resp.status, body


NOW_Q = NOW.isoformat()


@pytest.mark.parametrize("tier", ["strategic", "tactical", "execution"])
def test_each_tier_page_shows_exactly_the_figures_of_its_view(backend, tier):
    async def scenario(client):
        _, page = await get_text(client, f"/console/{tier}", now=NOW_Q, tz="Asia/Shanghai")
        _, panel = await get_text(client, f"/console/{tier}/panel", now=NOW_Q, tz="Asia/Shanghai")
        view_q = {"now": NOW_Q, **({"tz": "Asia/Shanghai"} if tier == "strategic" else {})}
        view = await (await client.get(f"/views/{tier}", params=view_q, headers=READ)).json()
        return page, panel, view
    page, panel, view = Client(backend, FakePublisher()).run(scenario)
    expected = expected_figures(tier, view)
    assert len(expected) > 5
    assert page_figures(page) == expected
    assert page_figures(panel) == expected           # what the refresh swaps in
    assert "<html" not in panel and "<html" in page
    assert view == TIERS[tier](backend, now=NOW, **({"tz": "Asia/Shanghai"} if tier == "strategic" else {}))
    assert "2026-03-10 20:07:30" in page             # 12:07:30 UTC, in Shanghai
    assert f'href="/views/{tier}?now=' in page       # the JSON of the same figures, one click away


def test_strategic_chart_draws_every_hour_of_the_window(backend):
    async def scenario(client):
        _, page = await get_text(client, "/console/strategic", now=NOW_Q, days="2", tz="UTC")
        return page, await (await client.get("/views/strategic", params={"now": NOW_Q, "days": "2"}, headers=READ)).json()
    page, view = Client(backend, FakePublisher()).run(scenario)
    svg = page[page.index('id="chart-orders-per-hour"'):]
    bars = re.findall(r'class="bar"[^>]*data-label="([^"]+)" data-value="([^"]+)"', svg[:svg.index("</svg>")])
    assert len(bars) == 2 * 24 + 1                   # empty hours are drawn as zero, not skipped
    assert [int(v) for _, v in bars if v != "0"] == [h["orders"] for h in view["orders_per_hour"] if h["orders"]]
    assert bars[0][0] == "03-08 12:00"                # the window's first hour, in UTC as asked


def test_strategic_days_follow_the_viewers_zone(backend):
    async def scenario(client):
        _, sh = await get_text(client, "/console/strategic", now=NOW_Q, tz="Asia/Shanghai")
        _, la = await get_text(client, "/console/strategic", now=NOW_Q, tz="America/Los_Angeles")
        return page_figures(sh), page_figures(la)
    sh, la = Client(backend, FakePublisher()).run(scenario)
    days = lambda figures: {k: v for (f, k), v in figures.items() if f == "orders_per_day"}  # noqa: E731
    assert days(sh) != days(la)
    assert sh[("total_orders", "")] == la[("total_orders", "")]


def test_pages_load_nothing_from_outside(backend):
    async def scenario(client):
        out = []
        for tier in TIERS:
            resp, page = await get_text(client, f"/console/{tier}", now=NOW_Q)
            out.append((resp.headers, page))
        css = (await get_text(client, "/console/static/console.css"))[1]
        js = (await get_text(client, "/console/static/console.js"))[1]
        return out, css, js
    pages, css, js = Client(backend, FakePublisher()).run(scenario)
    for headers, page in pages:
        urls = resource_urls(page)
        assert "/console/static/console.js" in urls and "/console/static/console.css" in urls
        assert [u for u in urls if is_external(u)] == []
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}", page, re.I), "a URL in the page"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in \
            csp.split("script-src")[1].split(";")[0]
        assert "<script>" not in page                # no inline script: CSP would refuse it
    assert not re.search(r"https?://", css + js) and "@import" not in css
    assert is_external("https://cdn.example.com/x.js") and is_external("//cdn.example.com/x.js")
    assert not is_external("/console/static/console.js") and not is_external("data:,")


def test_data_is_text_never_markup(backend):
    async def scenario(client):
        return (await get_text(client, "/console/execution", now=NOW_Q))[1]
    page = Client(backend, FakePublisher()).run(scenario)
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert INJECTION not in page  # its quote is escaped too
    assert "x&#39;); DROP TABLE order_events" in page


def test_bad_parameters_and_unknown_tiers_get_a_page_that_says_why(backend):
    async def scenario(client):
        _, tz = await get_text(client, "/console/strategic", 400, tz="Nowhere/City")
        _, tier = await get_text(client, "/console/monthly", 404)
        _, days = await get_text(client, "/console/strategic", 400, days="0")
        _, lang = await get_text(client, "/console/tactical", 400, lang="fr")
        _, now = await get_text(client, "/console/execution", 400, now="yesterday")
        resp = await client.get("/console/", allow_redirects=False, headers=READ)
        root = await client.get("/", allow_redirects=False, headers=READ)
        return tz, tier, days, lang, now, resp, root
    tz, tier, days, lang, now, resp, root = Client(backend, FakePublisher()).run(scenario)
    assert "unknown time zone" in tz and "unknown tier" in tier and "between 1 and" in days and "lang" in lang
    assert "Invalid isoformat" in now or "isoformat" in now
    assert resp.status == 302 and resp.headers["Location"] == "/console/strategic"
    assert root.status == 302


# -- approve / reject -------------------------------------------------------------------------------

def _queue(backend) -> list[dict]:
    return TIERS["execution"](backend)["risk_queue"]


def test_a_decision_needs_an_operator_token_and_records_the_tokens_operator(backend):
    pub = FakePublisher()
    order = _queue(backend)[0]["order_id"]

    async def scenario(client):
        await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, status=401)
        await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token="wrong" * 5,
                   status=401)
        await post(client, "/console/api/redrive", {"letter_id": "x:0:1"}, status=401)
        resp = await client.get("/console/api/whoami")
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert pub.sent == []  # nothing published without a valid token
        who = await (await client.get("/console/api/whoami", headers={"Authorization": f"Bearer {BOB}"})).json()
        # a viewer reads the page but may not act
        await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token=VERA, status=403)
        assert pub.sent == []
        # the request claims to be mallory; the token says bob
        status, body = await post(client, "/console/api/decisions",
                                  {"order_id": order, "action": "approve", "operator": "mallory",
                                   "reason": "called the buyer"}, token=BOB)
        return who, status, body
    who, status, body = Client(backend, pub).run(scenario)
    assert who == {"name": "bob", "roles": ["metrics", "operator", "viewer"], "operator": "bob"}
    assert status == 200 and body["status"] == "sent" and body["operator"] == "bob"
    assert len(pub.sent) == 1
    topic, key, value, _ = pub.sent[0]
    decision = parse_decision(value)  # exactly what `orderstream decide` publishes, validated the same way
    assert (topic, key) == (NAMES.RISK_DECISIONS, order.encode())
    assert (decision.order_id, decision.action, decision.operator, decision.reason, decision.source) == \
        (order, "approve", "bob", "called the buyer", "operator")
    recorded = backend.query("SELECT action, operator, target FROM console_actions WHERE target = {o:String}",
                             {"o": order})
    assert recorded == [{"action": "approve", "operator": "bob", "target": order}]


def test_no_configured_operator_means_read_only(backend):
    pub = FakePublisher()
    order = _queue(backend)[1]["order_id"]

    async def scenario(client):
        return await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token=ALICE)
    status, body = Client(backend, pub, tokens=OperatorTokens({})).run(scenario)
    assert status == 401 and "ORDERSTREAM_OPERATOR_TOKENS" in body["error"] and pub.sent == []


def test_a_double_click_publishes_once_and_a_second_operator_is_told_who_decided(backend):
    pub = FakePublisher()
    order = _queue(backend)[2]["order_id"]

    async def scenario(client):
        both = await asyncio.gather(*(post(client, "/console/api/decisions", {"order_id": order, "action": "approve"},
                                           token=ALICE) for _ in range(2)))
        again = await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token=ALICE)
        other = await post(client, "/console/api/decisions",
                           {"order_id": order, "action": "reject", "reason": "fraud"}, token=BOB)
        return both, again, other
    both, again, other = Client(backend, pub).run(scenario)
    assert sorted(b["status"] for _, b in both) == ["already_sent", "sent"]
    assert all(code == 200 for code, _ in both)
    assert again[0] == 200 and again[1]["status"] == "already_sent" and "alice" in again[1]["message"]
    assert other[0] == 409 and other[1]["operator"] == "alice" and "nothing was sent again" in other[1]["message"]
    assert len(pub.sent) == 1


def test_bad_input_gets_a_clear_answer_and_publishes_nothing(backend):
    pub = FakePublisher()
    queue = _queue(backend)
    held, never_held = queue[3]["order_id"], None
    held_ids = {h["order_id"] for h in queue}
    rows = backend.query("SELECT DISTINCT order_id FROM order_events ORDER BY order_id LIMIT 50")
    never_held = next(r["order_id"] for r in rows if r["order_id"] not in held_ids and not backend.query(
        "SELECT 1 FROM risk_events WHERE order_id = {o:String} LIMIT 1", {"o": r["order_id"]}))
    resolved = next(r["order_id"] for r in backend.query(
        "SELECT DISTINCT order_id FROM risk_events WHERE event IN ('approved', 'rejected', 'auto_released') "
        "ORDER BY order_id") if r["order_id"] not in held_ids)

    async def scenario(client):
        d = "/console/api/decisions"
        out = {
            "unknown": await post(client, d, {"order_id": "TM-doesnotexist", "action": "approve"}, token=ALICE),
            "never_held": await post(client, d, {"order_id": never_held, "action": "approve"}, token=ALICE),
            "resolved": await post(client, d, {"order_id": resolved, "action": "approve"}, token=ALICE),
            "no_reason": await post(client, d, {"order_id": held, "action": "reject"}, token=ALICE),
            "bad_action": await post(client, d, {"order_id": held, "action": "delete"}, token=ALICE),
            "no_order": await post(client, d, {"action": "approve"}, token=ALICE),
            "not_text": await post(client, d, {"order_id": ["x"], "action": "approve"}, token=ALICE),
            "huge_reason": await post(client, d, {"order_id": held, "action": "reject", "reason": "x" * 600},
                                      token=ALICE),
        }
        resp = await client.post(d, data=b"{not json", headers={"Authorization": f"Bearer {ALICE}"})
        out["not_json"] = (resp.status, await resp.json())
        resp = await client.post(d, data=b"x" * 20_000, headers={"Authorization": f"Bearer {ALICE}"})
        out["too_big"] = (resp.status, await resp.json())
        return out
    out = Client(backend, pub).run(scenario)
    assert out["unknown"] == (404, {"error": "unknown order id 'TM-doesnotexist'", "order_id": "TM-doesnotexist"})
    assert out["never_held"][0] == 409 and "not held" in out["never_held"][1]["error"]
    assert out["resolved"][0] == 409 and "no longer held" in out["resolved"][1]["error"]
    assert out["resolved"][1]["resolution"]["event"] in ("approved", "rejected", "auto_released")
    assert out["no_reason"][0] == 400 and "needs a 'reason'" in out["no_reason"][1]["error"]
    assert out["bad_action"][0] == 400 and "approve" in out["bad_action"][1]["error"]
    assert out["no_order"][0] == 400 and out["not_text"][0] == 400 and out["huge_reason"][0] == 400
    assert out["not_json"][0] == 400 and out["too_big"][0] == 413
    assert pub.sent == []


def test_a_broker_that_does_not_acknowledge_leaves_nothing_recorded_so_a_retry_publishes(backend):
    pub = FakePublisher()
    pub.fail = 1
    order = _queue(backend)[4]["order_id"]

    async def scenario(client):
        first = await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token=ALICE)
        second = await post(client, "/console/api/decisions", {"order_id": order, "action": "approve"}, token=ALICE)
        return first, second
    first, second = Client(backend, pub).run(scenario)
    assert first[0] == 503 and "try again" in first[1]["error"]
    assert second[0] == 200 and second[1]["status"] == "sent" and len(pub.sent) == 1


def test_the_answer_says_what_the_worker_made_of_the_decision(backend):
    pub = FakePublisher()
    queue = _queue(backend)
    mine, raced = queue[5], queue[6]
    offsets = iter(range(10_000, 10_100))

    def worker(resolution: str, operator: str):
        def play(topic, key, value):  # what the holds agent and the sink would do a moment later
            at_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
            event = RiskEvent(event=resolution, order_id=key.decode(), platform="JD", at_ms=at_ms, operator=operator)
            row = risk_row(Record(NAMES.RISK_EVENTS, 0, next(offsets), key, event.encode(), {}, at_ms))
            backend.insert("risk_events", [row], list(RISK_COLUMNS), None)
        return play

    async def scenario(client):
        pub.on_publish = worker("approved", "alice")
        ok = await post(client, "/console/api/decisions", {"order_id": mine["order_id"], "action": "approve"},
                        token=ALICE)
        pub.on_publish = worker("auto_released", "default_policy")  # the default policy got there first
        late = await post(client, "/console/api/decisions", {"order_id": raced["order_id"], "action": "approve"},
                          token=ALICE)
        after = await post(client, "/console/api/decisions", {"order_id": mine["order_id"], "action": "approve"},
                           token=ALICE)
        contrary = await post(client, "/console/api/decisions",
                              {"order_id": mine["order_id"], "action": "reject", "reason": "too late"}, token=BOB)
        return ok, late, after, contrary
    ok, late, after, contrary = Client(backend, pub, outcome_wait_s=3.0).run(scenario)
    assert ok[1]["outcome"]["event"] == "approved" and ok[1]["message"] == f"{mine['order_id']} approved by alice"
    assert late[1]["outcome"]["event"] == "auto_released" and "changed nothing" in late[1]["message"]
    assert after[0] == 200 and after[1]["status"] == "already_done"  # asked again after it happened
    assert "already approved by alice" in after[1]["message"]
    assert contrary[0] == 409 and "no longer held: approved by alice" in contrary[1]["error"]
    assert mine["order_id"] not in {h["order_id"] for h in _queue(backend)}
    assert len(pub.sent) == 2  # one decision per hold: the repeat and the contrary one sent nothing


# -- re-drive -----------------------------------------------------------------------------------------

def test_redrive_sends_the_letters_own_bytes_back_once(backend):
    pub = FakePublisher()
    letters = TIERS["execution"](backend)["dead_letters"]
    hostile = next(d for d in letters["letters"] if d["reason"] == HOSTILE)

    async def scenario(client):
        r = "/console/api/redrive"
        return {
            "first": await post(client, r, {"letter_id": hostile["id"]}, token=BOB),
            "again": await post(client, r, {"letter_id": hostile["id"]}, token=ALICE),
            "unknown": await post(client, r, {"letter_id": f"{NAMES.DLQ}:3:99999"}, token=ALICE),
            "elsewhere": await post(client, r, {"letter_id": "other.orders.dlq:0:1"}, token=ALICE),
            "malformed": await post(client, r, {"letter_id": "no coordinates"}, token=ALICE),
        }
    out = Client(backend, pub).run(scenario)
    assert out["first"][0] == 200 and out["first"][1]["topic"] == NAMES.raw("TMALL")
    assert out["again"][0] == 200 and out["again"][1]["status"] == "already_sent" and "bob" in out["again"][1]["message"]
    assert out["unknown"][0] == 404 and out["elsewhere"][0] == 404 and out["malformed"][0] == 400
    assert pub.sent == [(NAMES.raw("TMALL"), b"TM-1", b'{"tid": 1}',
                         [("redriven_from", hostile["id"].encode()), ("redriven_by", b"bob")])]
    after = TIERS["execution"](backend)["dead_letters"]
    assert after["waiting"] == letters["waiting"] - 1 and hostile["id"] not in {d["id"] for d in after["letters"]}


def test_a_letter_the_cli_re_drove_is_refused_naming_who_and_leaves_the_list(backend):
    pub, ledger = FakePublisher(), memory_ledger()
    letters = TIERS["execution"](backend)["dead_letters"]
    letter = letters["letters"][0]
    cli = ledger.claim(letter["id"], "carol", "cli", 1_796_000_000_000).record

    async def scenario(client):
        return await post(client, "/console/api/redrive", {"letter_id": letter["id"]}, token=BOB)
    unconfirmed = Client(backend, pub, redrives=ledger).run(scenario)
    # claimed by a CLI run that has not confirmed it sent: refused, and still listed
    assert unconfirmed[0] == 409 and "carol" in unconfirmed[1]["error"] and "not yet confirmed" in unconfirmed[1]["error"]
    assert letter["id"] in {d["id"] for d in TIERS["execution"](backend)["dead_letters"]["letters"]}
    ledger.confirm(cli)
    status, body = Client(backend, pub, redrives=ledger).run(scenario)
    assert status == 200 and body["status"] == "already_sent" and body["via"] == "cli"
    assert body["message"] == (f"{letter['id']} was already re-driven by carol with `orderstream dlq replay` at "
                               "2026-11-30T00:53:20Z; nothing was sent again")
    assert pub.sent == []
    after = TIERS["execution"](backend)["dead_letters"]
    assert after["waiting"] == letters["waiting"] - 1 and letter["id"] not in {d["id"] for d in after["letters"]}


def test_a_re_drive_the_broker_refused_gives_the_letter_back_to_the_ledger(backend):
    pub, ledger = FakePublisher(), memory_ledger()
    letter = TIERS["execution"](backend)["dead_letters"]["letters"][0]
    pub.fail = 1

    async def scenario(client):
        r = "/console/api/redrive"
        return (await post(client, r, {"letter_id": letter["id"]}, token=BOB),
                await post(client, r, {"letter_id": letter["id"]}, token=ALICE))
    failed, retried = Client(backend, pub, redrives=ledger).run(scenario)
    assert failed[0] == 503 and retried[0] == 200 and retried[1]["status"] == "sent"
    recorded = ledger.find(letter["id"])
    assert (recorded.operator, recorded.via, recorded.state) == ("alice", "console", "sent")
    assert len(pub.sent) == 1


def test_without_the_ledger_a_re_drive_sends_nothing(backend):
    class Away:
        def claim(self, *args):
            raise ConnectionError("redis away (simulated)")
    pub = FakePublisher()
    letter = TIERS["execution"](backend)["dead_letters"]["letters"][0]

    async def scenario(client):
        return await post(client, "/console/api/redrive", {"letter_id": letter["id"]}, token=BOB)
    status, body = Client(backend, pub, redrives=Away()).run(scenario)
    assert status == 503 and "ledger" in body["error"] and pub.sent == []


def test_long_ids_are_shortened_with_the_whole_id_in_the_title_and_a_copy_button(backend):
    assert fmt.short_id("t8407872b.orders.raw.jd:0:12345") == "t84078…raw.jd:0:12345"
    assert fmt.short_id("TM-12345") == "TM-12345"  # short enough: as it is
    letters = TIERS["execution"](backend)["dead_letters"]["letters"]
    source = next(d["source"] for d in letters if len(d["source"]) > 17)

    async def scenario(client):
        return (await get_text(client, "/console/execution/panel", now=NOW_Q))[1]
    page = Client(backend, FakePublisher()).run(scenario)
    assert (f'<span class="ident-text" title="{source}">{fmt.short_id(source)}</span>'
            f'<button type="button" class="copy" data-copy="{source}"') in page
    assert f">{source}<" not in page  # the whole id is not what the cell shows


def test_letters_the_cli_re_drove_leave_the_list_without_a_click(backend):
    from pipeline.console.actions import ActionLog
    from pipeline.console.redrive_mirror import RedriveMirror

    ledger, clock = memory_ledger(), [0.0]
    letters = TIERS["execution"](backend)["dead_letters"]
    sent, claimed = letters["letters"][0]["id"], letters["letters"][1]["id"]
    ledger.confirm(ledger.claim(sent, "carol", "cli", 1_796_000_000_000).record)
    ledger.claim(claimed, "dave", "cli", 1_796_000_000_000)  # not confirmed: it may not have gone out
    ledger.confirm(ledger.claim("other.orders.dlq:0:1", "erin", "cli", 0).record)  # another pipeline's
    mirror = RedriveMirror(ledger, ActionLog(backend), NAMES.DLQ, interval_s=5.0, clock=lambda: clock[0])
    assert mirror.tick() == 1
    after = TIERS["execution"](backend)["dead_letters"]
    ids = {d["id"] for d in after["letters"]}
    assert sent not in ids and claimed in ids and after["waiting"] == letters["waiting"] - 1
    assert ActionLog(backend).find(f"redrive:{sent}")["operator"] == "carol"
    clock[0] = 10.0
    assert mirror.tick() == 0  # copied once
    n = backend.query("SELECT count() AS n FROM console_actions WHERE target = {t:String}", {"t": sent})
    assert int(n[0]["n"]) == 1
