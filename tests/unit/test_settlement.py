"""Settlement reconciliation (issue 18) on embedded chDB, no Kafka: orders from the fake-order
generator, normalized and landed by the real sink; bills written by the replay's bill writer with
differences injected; imported through the bill reader, landed by the sink from settlement.bills
records; reconciled by the engine. The engine must find exactly what was injected."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import strategic
from pipeline.codecs import order_codec
from pipeline.contracts import SettlementBillLine
from pipeline.devtools.fake_orders import ReplayMix, generate_stream
from pipeline.devtools.settlement_bills import INJECTABLE, BillMix, build_bills, write_bill
from pipeline.domain.normalize import normalize
from pipeline.kafka_io import Record
from pipeline.settlement import queue
from pipeline.settlement.bills import parse_amount, read_bill
from pipeline.settlement.engine import reconcile_day, reconcile_platform_day
from pipeline.settlement.exceptions import LayoutError, ResolveError
from pipeline.settlement.rules import RULES_FILE, load_rules, parse_rules
from pipeline.topics import TopicNames

START = datetime(2026, 11, 27, 0, 0, tzinfo=timezone.utc)
NOW_MS = int(START.timestamp() * 1000) + 5 * 86_400_000
RATES = {"rounding": 0.04, "amount_mismatch": 0.03, "order_missing_from_bill": 0.03, "duplicate_bill_line": 0.03,
         "platform_fee_unrecorded": 0.04, "unrecorded_subsidy": 0.03, "delayed_refund": 0.03,
         "bill_line_without_order": 0.03}


class Feed:
    def __init__(self) -> None:
        self.offsets: Counter = Counter()

    def record(self, topic: str, value: bytes, key: str, headers: dict | None = None) -> Record:
        msg = Record(topic, 0, self.offsets[topic], key.encode(), value, headers or {}, NOW_MS)
        self.offsets[topic] += 1
        return msg


def canonical_orders(count: int, seed: int, start: datetime = START) -> list[dict]:
    """Every canonical version the order flow would announce: new orders and updates."""
    mix = ReplayMix(redelivery=0.0, malformed=0.0, update=0.15)
    out = []
    for m in generate_stream(count, seed, mix, start=start):
        if m.kind not in ("new", "update"):
            continue
        res = normalize(m.platform, m.value, start)
        assert res.order is not None, res.rejection
        out.append((m.kind, res.order))
    return out


def bill_records(feed: Feed, names: TopicNames, result) -> list[Record]:
    return [feed.record(names.SETTLEMENT_BILLS, line.encode(), line.line_key) for line in result.lines]


@pytest.fixture(scope="module")
def names():
    return TopicNames("settletest.")


@pytest.fixture(scope="module")
def world(tmp_path_factory, names):
    backend = ChdbBackend(tmp_path_factory.mktemp("chdb") / "data")
    migrate(backend)
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    sink.resume_positions()
    feed = Feed()
    codec = order_codec()
    versions = canonical_orders(900, seed=18) + canonical_orders(900, seed=19, start=START + timedelta(days=1))
    assert len({o["order_id"] for _, o in versions}) > 1500
    for kind, order in versions:
        sink.add(feed.record(names.UNIQUE, codec.encode(order), order["order_id"],
                             {"change": b"new" if kind == "new" else b"update"}))
    sink.flush(force=True)
    rules = load_rules()
    bills, injected = build_bills([o for _, o in versions], seed=5,
                                  mix=BillMix(rates=RATES, tolerance_minor=rules.rounding_tolerance_minor))
    files = {}
    for (platform, day), rows in bills.items():
        data = write_bill(platform, rows)
        result = read_bill(data, platform, f"{platform}-{day}.csv", "test-importer", NOW_MS)
        assert not result.rejected
        files[(platform, day)] = data
        for rec in bill_records(feed, names, result):
            sink.add(rec)
    sink.flush(force=True)
    yield {"backend": backend, "sink": sink, "feed": feed, "rules": rules, "bills": bills, "injected": injected,
           "files": files, "versions": versions}
    backend.close()


def run_all(world, now_ms: int) -> list[dict]:
    return [reconcile_platform_day(world["backend"], world["rules"], day, platform, "test-runner", now_ms)
            for (platform, day) in sorted(world["bills"])]


def test_every_injected_difference_found_and_classified_none_invented(world):
    injected = world["injected"]
    assert Counter(i.cls for i in injected).keys() == set(INJECTABLE)  # every class is exercised
    reports = run_all(world, NOW_MS)
    found = Counter((d["class"], r["platform"], r["day"], d["order_id"], d["kind"], d["diff_minor"])
                    for r in reports for d in r["differences"])
    expected = Counter((i.cls, i.platform, i.day, i.order_id, i.kind, i.diff_minor) for i in injected)
    assert found == expected
    assert len(injected) > 40


def test_totals_balance_to_the_fen(world):
    reports = run_all(world, NOW_MS + 1)
    for r in reports:
        assert r["balanced"]
        for t in r["totals"]:
            diffs = [d for d in r["differences"] if d["currency"] == t["currency"]]
            # settled = ledger + every classified difference, and = matched + the bill side of every difference
            assert t["settled_minor"] == t["ledger_minor"] + sum(d["diff_minor"] for d in diffs)
            assert t["settled_minor"] == t["matched_minor"] + sum(d["bill_minor"] for d in diffs)
            assert t["difference_minor"] == sum(d["diff_minor"] for d in diffs)
            assert all(isinstance(v, int) for k, v in t.items() if k.endswith("_minor"))
    # settled is what the bill files say, line by line
    bill_total = Counter()
    for (platform, _), rows in world["bills"].items():
        for row in rows:
            bill_total[(platform, row["currency"])] += row["amount_minor"]
    got = Counter()
    for r in reports:
        for t in r["totals"]:
            got[(r["platform"], t["currency"])] += t["settled_minor"]
    assert got == bill_total


def test_rerun_gives_the_same_result_and_reimport_changes_nothing(world, names):
    def strip(reports):
        return [{k: v for k, v in r.items() if k != "run_id"} for r in reports]

    first = strip(run_all(world, NOW_MS + 2))
    # the same files again: same line keys, nothing counts twice
    sink, feed = world["sink"], world["feed"]
    for (platform, day), data in world["files"].items():
        result = read_bill(data, platform, f"{platform}-{day}.csv", "someone-else", NOW_MS + 10)
        for rec in bill_records(feed, names, result):
            sink.add(rec)
    sink.flush(force=True)
    second = strip(run_all(world, NOW_MS + 3))
    assert second == first
    # the tables hold each line once for every reader
    n = world["backend"].query("SELECT count() AS n FROM (SELECT line_key FROM settlement_bills "
                               "LIMIT 1 BY line_key)")[0]["n"]
    assert n == sum(len(rows) for rows in world["bills"].values())


def test_write_off_by_rule_and_manual_queue_needs_a_named_operator(world):
    backend, rules = world["backend"], world["rules"]
    reports = run_all(world, NOW_MS + 4)
    diffs = [d for r in reports for d in r["differences"]]
    for d in diffs:
        disposition, rule = rules.disposition(d["class"], d["diff_minor"])
        assert (d["disposition"], d["write_off_rule"]) == (disposition, rule)
    assert {d["write_off_rule"] for d in diffs if d["class"] == "rounding"} == {"WO-ROUNDING"}
    manual = [d for d in diffs if d["disposition"] == "manual"]
    assert manual and {d["class"] for d in manual} >= {"order_missing_from_bill", "duplicate_bill_line"}
    assert queue.open_count(backend) == len(manual)
    target = manual[0]["diff_key"]
    with pytest.raises(ResolveError):
        queue.resolve(backend, target, "", "checked")
    with pytest.raises(ResolveError):
        queue.resolve(backend, target, "alice", " ")
    written_off = next(d for d in diffs if d["disposition"] == "written_off")
    with pytest.raises(ResolveError):
        queue.resolve(backend, written_off["diff_key"], "alice", "x")
    done = queue.resolve(backend, target, "alice", "platform confirmed, re-billed next day", now_ms=NOW_MS)
    assert done["resolved_by"] == "alice"
    with pytest.raises(ResolveError, match="already resolved by alice"):
        queue.resolve(backend, target, "bob", "again")
    assert queue.open_count(backend) == len(manual) - 1
    # a re-run keeps the keys: the resolution still holds
    run_all(world, NOW_MS + 5)
    assert queue.open_count(backend) == len(manual) - 1
    assert target not in {r["diff_key"] for r in queue.open_queue(backend)}


def test_strategic_tier_shows_settlement(world):
    reports = run_all(world, NOW_MS + 6)
    view = strategic(world["backend"], days=30, now=datetime.fromtimestamp(NOW_MS / 1000 + 3600, timezone.utc))
    assert "orders_per_day" in view and "channel_share" in view  # existing keys kept
    s = view["settlement"]
    settled = Counter()
    for r in reports:
        for t in r["totals"]:
            settled[(r["day"], t["currency"])] += t["settled_minor"]
    assert Counter({(x["day"], x["currency"]): x["settled_minor"] for x in s["settled_per_day"]}) == settled
    by_class = Counter()
    for r in reports:
        for d in r["differences"]:
            by_class[(r["day"], d["class"], d["currency"])] += d["diff_minor"]
    assert {(x["day"], x["class"], x["currency"]): x["diff_minor"] for x in s["differences_by_class"]} == \
        {k: v for k, v in by_class.items()}
    assert s["open_queue"] == queue.open_count(world["backend"])


def test_the_console_shows_settlement_and_an_operator_resolves_from_its_queue(world):
    """The strategic page carries the tier's settlement figures and the open queue; a resolution
    needs the operator token, names the token's operator and takes the row off the queue."""
    from tests.console_figures import expected_figures, page_figures
    from tests.unit.test_console import ALICE, READ, Client, FakePublisher, get_text, post

    run_all(world, NOW_MS + 8)
    at = datetime.fromtimestamp(NOW_MS / 1000 + 3600, timezone.utc).isoformat()
    waiting = queue.open_queue(world["backend"])
    target = waiting[0]["diff_key"]

    async def scenario(client):
        _, before = await get_text(client, "/console/strategic/panel", now=at, days="30", tz="UTC")
        view = await (await client.get("/views/strategic", params={"now": at, "days": "30", "tz": "UTC"},
                                       headers=READ)).json()  # the views need a reader's token (issue 26)
        refused = await post(client, "/console/api/settlement/resolve", {"diff_key": target, "reason": "x"})
        no_reason = await post(client, "/console/api/settlement/resolve", {"diff_key": target, "reason": " "}, ALICE)
        done = await post(client, "/console/api/settlement/resolve",
                          {"diff_key": target, "reason": "platform re-bills it tomorrow"}, ALICE)
        again = await post(client, "/console/api/settlement/resolve", {"diff_key": target, "reason": "again"}, ALICE)
        _, after = await get_text(client, "/console/strategic/panel", now=at, days="30", tz="UTC")
        return before, view, refused, no_reason, done, again, after

    before, view, refused, no_reason, done, again, after = Client(world["backend"], FakePublisher()).run(scenario)
    assert page_figures(before) == expected_figures("strategic", view)
    assert view["settlement"]["open_queue"] == len(waiting) > 0
    assert f'data-action="resolve" data-diff-key="{target}"' in before
    assert refused[0] == 401 and no_reason[0] == 400
    assert done[0] == 200 and done[1]["resolved_by"] == "alice"
    assert again[0] == 409
    assert f'data-diff-key="{target}"' not in after
    assert page_figures(after)[("settlement_open", "")] == str(len(waiting) - 1)


def test_reconcile_day_runs_every_platform_with_a_bill(world):
    day = sorted({d for _, d in world["bills"]})[1]
    report = reconcile_day(world["backend"], world["rules"], day, "test-runner", now_ms=NOW_MS + 7)
    assert {r["platform"] for r in report["runs"]} == \
        {p for (p, d), rows in world["bills"].items() if d == day and rows}
    assert report["balanced"]
    with pytest.raises(Exception, match="operator"):
        reconcile_day(world["backend"], world["rules"], day, " ")


# -- import validation ------------------------------------------------------------------------------

GOOD_AND_BAD_TMALL = (
    "账务流水号,业务订单号,业务类型,收支金额(元),币种,结算日期\n"
    "F1,1001,交易收款,99.90,CNY,2026-11-27\n"                     # 2 good
    "F2,1002,交易收款,12.345,CNY,2026-11-27\n"                    # 3 three decimals
    "F3,1003,不知道,1.00,CNY,2026-11-27\n"                        # 4 unknown type
    "F4,1004,交易退款,-5.00,CNY,2026-11-27\n"                     # 5 good
    "F5,,交易收款,5.00,CNY,2026-11-27\n"                          # 6 payment without an order
    "F6,1006,交易收款,abc,CNY,2026-11-27\n"                       # 7 amount not a number
    "F7,1007,交易收款,5.00,CNY,27/11/2026\n"                      # 8 day format
    "F8,1008,交易收款,5.00\n"                                     # 9 too few cells
    "F9,,技术服务费,-0.30,CNY,2026-11-27\n"                       # 10 good: a fee without an order is allowed
    "\n"
    "F10,1010,交易收款,1.5,RMB!,2026-11-27\n"                     # 12 bad currency
    "F11,1011,交易收款,\"7.00\",CNY,2026-11-27\n"                 # 13 good (quoted)
)


def test_broken_rows_reported_line_by_line_and_no_good_row_lost():
    result = read_bill(GOOD_AND_BAD_TMALL.encode(), "TMALL", "tm.csv", "tester", NOW_MS)
    assert [(l.line_no, l.bill_line_id, l.kind, l.amount_minor) for l in result.lines] == [
        (2, "F1", "payment", 9990), (5, "F4", "refund", -500), (10, "F9", "commission", -30),
        (13, "F11", "payment", 700)]
    assert [r.line_no for r in result.rejected] == [3, 4, 6, 7, 8, 9, 12]
    reasons = {r.line_no: r.reason for r in result.rejected}
    assert "decimals" in reasons[3] and "unknown type" in reasons[4] and "without an order" in reasons[6]
    assert "cells" in reasons[9] and reasons[8].startswith("settle day")
    assert result.lines_read == len(result.lines) + len(result.rejected) == 11
    report = result.report()
    assert report["lines_rejected"] == 7 and report["rejected"][0]["raw"].startswith("F2,1002")
    assert all(l.imported_by == "tester" for l in result.lines)
    # the same bytes give the same keys (idempotent re-import), another file other keys
    again = read_bill(GOOD_AND_BAD_TMALL.encode(), "TMALL", "tm-copy.csv", "other", NOW_MS + 1)
    assert [l.line_key for l in again.lines] == [l.line_key for l in result.lines]
    other = read_bill((GOOD_AND_BAD_TMALL + "F12,1012,交易收款,1.00,CNY,2026-11-27\n").encode(), "TMALL", "x",
                      "tester", NOW_MS)
    assert not set(l.line_key for l in other.lines) & set(l.line_key for l in result.lines)
    # the contract carries every field
    assert SettlementBillLine.decode(result.lines[0].encode()) == result.lines[0]


def test_platform_layouts_round_trip_and_refuse_bad_files():
    rows = [{"bill_line_id": "A1", "external_order_id": "77", "kind": k, "amount_minor": a, "currency": "CNY",
             "settle_day": "2026-11-28"} for k, a in (("payment", 12345), ("refund", -1), ("commission", -100))]
    for platform in ("TMALL", "JD", "PINDUODUO", "DOUYIN", "KUAISHOU", "SHOPEE", "SHOPIFY"):
        result = read_bill(write_bill(platform, rows), platform, "f", "tester", NOW_MS)
        assert not result.rejected
        assert [(l.kind, l.amount_minor, l.settle_day) for l in result.lines] == \
            [(r["kind"], r["amount_minor"], r["settle_day"]) for r in rows]
    with pytest.raises(LayoutError):
        read_bill(b"a,b\n1,2\n", "TMALL", "f", "tester", NOW_MS)
    with pytest.raises(LayoutError):
        read_bill(write_bill("JD", rows), "NOPE", "f", "tester", NOW_MS)
    with pytest.raises(LayoutError):
        read_bill(write_bill("JD", rows), "JD", "f", "", NOW_MS)
    assert parse_amount("-0.05", "decimal", 2) == -5 and parse_amount("1,234.5", "decimal", 2) == 123450
    assert parse_amount("12", "decimal", 0) == 12


def test_rules_are_validated():
    good = load_rules()
    assert good.rounding_tolerance_minor == 1
    text = RULES_FILE.read_text()
    with pytest.raises(Exception, match="unknown difference class"):
        parse_rules(text.replace("class: rounding", "class: roundin"))
    with pytest.raises(Exception, match="non-negative integer"):
        parse_rules(text.replace("rounding_tolerance_minor: 1", "rounding_tolerance_minor: 0.5"))

