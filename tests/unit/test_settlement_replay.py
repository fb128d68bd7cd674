"""Settlement (issue 18): the replay's bill writer over a replay's own raw stream, and the CLI.
Each test opens and closes its own chDB (one data directory per process at a time)."""
from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.codecs import order_codec
from pipeline.devtools.fake_orders import ReplayMix, generate_stream
from pipeline.devtools.settlement_bills import INJECTABLE, BillMix
from pipeline.domain.normalize import normalize
from pipeline.settlement.bills import read_bill
from pipeline.settlement.engine import reconcile_platform_day
from pipeline.settlement.rules import load_rules
from pipeline.topics import TopicNames

from .test_settlement import NOW_MS, START, Feed, bill_records


@pytest.fixture
def names():
    return TopicNames("settlereplay.")


@pytest.fixture
def backend(tmp_path):
    b = ChdbBackend(tmp_path / "chdb")
    migrate(b)
    yield b
    b.close()

# -- the replay's bills, from the replay's own raw messages, and the CLI ------------------------------

def test_replay_bills_from_raw_messages_reconcile_to_exactly_what_was_injected(tmp_path, names, backend):
    """bills_for_replay bills the raw stream a replay sends (redeliveries, malformed messages and all);
    the order flow's canonical versions land through the sink; the files are imported from disk."""
    from pipeline.devtools.settlement_bills import bills_for_replay
    start = START + timedelta(days=3)
    messages = list(generate_stream(700, 23, ReplayMix(update=0.1), start=start))
    out = tmp_path / "bills"
    summary = bills_for_replay(messages, 3, BillMix(rates={c: 0.03 for c in INJECTABLE}), out, now=start)
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    feed, codec = Feed(), order_codec()
    for m in messages:
        if m.kind in ("new", "update"):
            order = normalize(m.platform, m.value, start).order
            sink.add(feed.record(names.UNIQUE, codec.encode(order), order["order_id"]))
    runs = []
    for name in summary["files"]:
        platform, day = name[:-4].split("-", 1)
        result = read_bill((out / name).read_bytes(), platform.upper(), name, "test-importer", NOW_MS)
        assert not result.rejected
        for rec in bill_records(feed, names, result):
            sink.add(rec)
        runs.append((platform.upper(), day))
    sink.flush(force=True)
    injected = json.loads((out / "injected.json").read_text())
    assert sum(summary["injected"].values()) == len(injected) > 10
    reports = [reconcile_platform_day(backend, load_rules(), day, platform, "test-runner", NOW_MS)
               for platform, day in runs]
    found = Counter((d["class"], r["platform"], r["day"], d["order_id"], d["kind"], d["diff_minor"])
                    for r in reports for d in r["differences"])
    assert found == Counter((i["cls"], i["platform"], i["day"], i["order_id"], i["kind"], i["diff_minor"])
                            for i in injected)
    assert all(r["balanced"] for r in reports)


def test_cli_refuses_a_resolution_without_operator_and_reports_broken_bill(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import cli
    monkeypatch.setenv("ORDERSTREAM_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("ORDERSTREAM_CHDB_PATH", str(tmp_path / "chdb"))
    monkeypatch.setenv("ORDERSTREAM_SINK_WEB_PORT", "9")  # nothing listens: no sink owns the data dir
    runner = CliRunner()
    res = runner.invoke(cli, ["settlement", "resolve", "2026-11-27|TMALL|x", "--operator", " ", "--reason", "r"])
    assert res.exit_code == 1 and "--operator" in res.output
    res = runner.invoke(cli, ["settlement", "resolve", "2026-11-27|TMALL|x", "--reason", "r"])
    assert res.exit_code != 0  # --operator is required
    res = runner.invoke(cli, ["settlement", "resolve", "2026-11-27|TMALL|x", "--operator", "alice", "--reason", "r"])
    assert res.exit_code == 1 and "no difference" in res.output
    res = runner.invoke(cli, ["reconcile", "settlement", "--day", "2026-11-27", "--operator", "carol"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "settlement" / "reconcile-2026-11-27.json").read_text())["operator"] == "carol"
    # a bill of broken rows only: reported line by line, nothing published (no broker needed)
    bad = tmp_path / "bad.csv"
    bad.write_text("账务流水号,业务订单号,业务类型,收支金额(元),币种,结算日期\n"
                   "F1,1,交易收款,x,CNY,2026-11-27\n"
                   "F2,2,交易收款,1.00,CNY,bad-day\n", encoding="utf-8")
    res = runner.invoke(cli, ["settlement", "import", str(bad), "--platform", "TMALL", "--operator", "dave"])
    assert res.exit_code == 0, res.output
    assert "line 2" in res.output and "line 3" in res.output
    report = json.loads((tmp_path / "settlement" / "bad.csv.import.json").read_text())
    assert [r["line"] for r in report["rejected"]] == [2, 3] and report["lines_kept"] == 0


def test_the_sink_runs_a_reconciliation_after_a_bill_lands(backend, names):
    """The scheduled run: once a bill's lines have landed and nothing new came for quiet_s, each
    (day, platform) is reconciled once, by the sink's process, recorded with who ran it."""
    from pipeline.settlement.scheduler import SettlementScheduler
    from pipeline.devtools.settlement_bills import write_bill
    clock = [100.0]
    scheduler = SettlementScheduler(backend, load_rules(), quiet_s=5.0, clock=lambda: clock[0])
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    sink.on_landed["settlement_bills"] = scheduler.landed
    rows = [{"bill_line_id": f"L{i}", "external_order_id": str(1000 + i), "kind": "payment", "amount_minor": 100 * i,
             "currency": "CNY", "settle_day": "2026-11-29"} for i in range(1, 4)]
    result = read_bill(write_bill("JD", rows), "JD", "jd.csv", "importer", NOW_MS)
    feed = Feed()
    for rec in bill_records(feed, names, result):
        sink.add(rec)
    assert scheduler.tick() == []           # nothing landed yet
    sink.flush(force=True)
    assert scheduler.tick() == []           # landed, but the file may still be arriving
    clock[0] += 6
    reports = scheduler.tick()
    assert [(r["day"], r["platform"], r["operator"]) for r in reports] == [("2026-11-29", "JD", "scheduler@sink")]
    # orders the pipeline never saw: every line is a bill line without an order
    assert Counter(d["class"] for d in reports[0]["differences"]) == {"bill_line_without_order": 3}
    assert scheduler.tick() == []           # once per landing
    runs = backend.query("SELECT operator FROM settlement_runs WHERE platform = 'JD'")
    assert runs == [{"operator": "scheduler@sink"}]


def test_console_resolves_the_queue_only_with_an_operator_token(backend, names):
    """The manual queue in the console: a signed-in caller reads it; resolving needs an operator token, and the operator
    recorded is the token's, once per difference."""
    import asyncio

    from aiohttp import test_utils

    from pipeline.clickhouse.http import make_app
    from pipeline.config import load_settings
    from pipeline.console import setup_console
    from pipeline.console.auth import OperatorTokens
    from pipeline.devtools.settlement_bills import write_bill
    token = "t" * 20
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    rows = [{"bill_line_id": "L1", "external_order_id": "555", "kind": "payment", "amount_minor": 99_900,
             "currency": "CNY", "settle_day": "2026-11-30"}]
    feed = Feed()
    for rec in bill_records(feed, names, read_bill(write_bill("TMALL", rows), "TMALL", "t.csv", "imp", NOW_MS)):
        sink.add(rec)
    sink.flush(force=True)
    report = reconcile_platform_day(backend, load_rules(), "2026-11-30", "TMALL", "runner", NOW_MS)
    (diff,) = report["differences"]
    assert diff["class"] == "bill_line_without_order" and diff["disposition"] == "manual"

    class NoPublisher:
        def publish(self, *a, **k):
            raise AssertionError("settlement resolutions publish nothing")

        def close(self):
            pass

    app = make_app(backend, credentials=OperatorTokens({token: "erin"}))
    setup_console(app, load_settings(), names, publisher=NoPublisher())

    async def scenario(client):
        queue_before = await (await client.get("/console/api/settlement/queue",
                                               headers={"Authorization": f"Bearer {token}"})).json()
        path = "/console/api/settlement/resolve"
        body = {"diff_key": diff["diff_key"], "reason": "platform test order, no goods", "operator": "mallory"}
        anon = await client.post(path, json=body)
        ok = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        again = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        queue_after = await (await client.get("/console/api/settlement/queue",
                                              headers={"Authorization": f"Bearer {token}"})).json()
        return queue_before, anon.status, ok.status, await ok.json(), again.status, queue_after

    async def main():
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            return await scenario(client)
    before, anon, ok, body, again, after = asyncio.run(main())
    assert before["count"] == 1 and before["open"][0]["diff_key"] == diff["diff_key"]
    assert anon == 401 and ok == 200 and again == 409
    assert body["resolved_by"] == "erin"  # the token's operator, not the name in the body
    assert after["count"] == 0
    assert backend.query("SELECT operator, reason FROM settlement_resolutions") == \
        [{"operator": "erin", "reason": "platform test order, no goods"}]


def test_refunds_are_a_ledger_source_a_delayed_refund_resolves_on_a_later_day(backend, names):
    """A refund the ledger has (ledger_refunds, the refund source) and the bill does not yet is a
    delayed refund on its day; when the platform bills it on a later day it matches there."""
    from pipeline.devtools.settlement_bills import write_bill
    from pipeline.domain.normalize import normalize
    from pipeline.clickhouse.rows import ch_time
    order = next(o for o in (normalize(m.platform, m.value, START).order
                             for m in generate_stream(40, 5, ReplayMix(update=0.0, redelivery=0.0, malformed=0.0),
                                                      start=START))
                 if o["paid_at"] is not None and o["platform"] == "JD")
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    feed = Feed()
    sink.add(feed.record(names.UNIQUE, order_codec().encode(order), order["order_id"]))
    sink.flush(force=True)
    refund_ms = int(START.timestamp() * 1000) + 2 * 86_400_000  # 2026-11-29 08:00 in Shanghai
    backend.insert("ledger_refunds", [{"refund_id": "R1", "order_id": order["order_id"], "platform": "JD",
                                       "currency": "CNY", "amount_minor": 500, "refunded_at": ch_time(refund_ms),
                                       "source": "test"}],
                   ["refund_id", "order_id", "platform", "currency", "amount_minor", "refunded_at", "source"], None)
    ledger = backend.query("SELECT kind, amount_minor FROM settlement_ledger WHERE order_id = {o:String} "
                           "ORDER BY kind", {"o": order["order_id"]})
    assert ledger == [{"kind": "payment", "amount_minor": order["amounts"]["total_minor"]},
                      {"kind": "refund", "amount_minor": -500}]
    rules = load_rules()
    day2 = reconcile_platform_day(backend, rules, "2026-11-29", "JD", "runner", NOW_MS)
    assert [(d["class"], d["kind"], d["bill_minor"], d["ledger_minor"], d["diff_minor"])
            for d in day2["differences"]] == [("delayed_refund", "refund", 0, -500, 500)]
    later = [{"bill_line_id": "RF1", "external_order_id": order["external_order_id"], "kind": "refund",
              "amount_minor": -500, "currency": "CNY", "settle_day": "2026-11-30"}]
    for rec in bill_records(feed, names, read_bill(write_bill("JD", later), "JD", "jd.csv", "imp", NOW_MS)):
        sink.add(rec)
    sink.flush(force=True)
    day3 = reconcile_platform_day(backend, rules, "2026-11-30", "JD", "runner", NOW_MS)
    assert day3["differences"] == []
    assert day3["totals"] == [{"currency": "CNY", "settled_minor": -500, "ledger_minor": -500, "matched_minor": -500,
                               "difference_minor": 0, "bill_lines": 1, "differences": 0}]


def test_a_refund_paid_by_the_refund_flow_is_a_ledger_refund(backend, names):
    """refunds.events `refunded` lands in refund_events and, through the materialized view, in
    ledger_refunds: the settlement ledger sees the refund flow's payouts once, re-published or not."""
    from pipeline.contracts import RefundEvent
    order = next(o for o in (normalize(m.platform, m.value, START).order
                             for m in generate_stream(40, 5, ReplayMix(update=0.0, redelivery=0.0, malformed=0.0),
                                                      start=START))
                 if o["paid_at"] is not None)
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    feed = Feed()
    sink.add(feed.record(names.UNIQUE, order_codec().encode(order), order["order_id"]))
    at_ms = NOW_MS
    for event in ("requested", "refunded", "refunded"):  # the second `refunded`: a re-publish after a crash
        sink.add(feed.record(names.REFUND_EVENTS, RefundEvent(
            event, "RF-9", order["order_id"], order["platform"], status=event, at_ms=at_ms, actor="refunds",
            amount_minor=1_234, currency=order["currency"], cause="ns.refunds.actions:0:7").encode(), "RF-9"))
    sink.flush(force=True)
    ledger = backend.query("SELECT kind, amount_minor, source FROM settlement_ledger WHERE order_id = {o:String} "
                           "ORDER BY kind", {"o": order["order_id"]})
    assert ledger == [{"kind": "payment", "amount_minor": order["amounts"]["total_minor"], "source": "orders.unique"},
                      {"kind": "refund", "amount_minor": -1_234, "source": "refunds.events"}]
