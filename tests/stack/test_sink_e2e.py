"""Issue 8 end to end: a real worker and the ClickHouse (chDB) sink on one pipeline.

A replay goes through the worker; the sink lands its output in chDB; every tier the sink
serves over HTTP is checked against a count made here, independently, from the replay's own
messages (what was produced) and from the Kafka topics (what the worker emitted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest

from pipeline.codecs import order_codec
from pipeline.contracts import InventoryEvent, RiskEvent
from pipeline.config import PROJECT_ROOT
from pipeline.devtools.fake_orders import ReplayMix
from pipeline.devtools.replay import ReplayConfig, produce_replay
from tests.stack.helpers import distinct_facts, settle, sink_sql, wait_sunk

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CLOSED_STATES = {"SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED", "CANCELLED"}




def http_json(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    """GET with the stack tests' token (tests/stack/conftest.py STACK_TOKEN)."""
    from tests.stack.conftest import STACK_TOKEN
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {STACK_TOKEN}"}),
                                    timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def sunk(pipeline_factory):
    """One replay through worker + sink, shared by the tier checks below."""
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3")
    p.start_worker()
    p.start_sink()
    cfg = ReplayConfig(count=600, seed=8, mix=ReplayMix(malformed=0.04, update=0.08), scarce_skus=4)
    messages, produced = produce_replay(p.s, p.names, cfg)
    report = settle(p, messages, produced, drain_s=180, holds_s=40)
    assert report["balanced"] and report["awaiting_decision"] == 0, report
    expected = distinct_facts(p)
    got = wait_sunk(p, expected, timeout=60)
    assert got == expected, f"sink rows {got} != distinct facts in the topics {expected}"
    return p, messages, report


def test_strategic_tier_matches_the_replay(sunk):
    p, messages, _ = sunk
    code, view = http_json(f"http://127.0.0.1:{p.sink_port}/views/strategic")
    assert code == 200
    # independent count: distinct new orders the generator produced, per platform
    new_by_platform: dict[str, set] = defaultdict(set)
    for m in messages:
        if m.kind == "new":
            new_by_platform[m.platform].add(m.order_id)
    expected = {plat: len(ids) for plat, ids in new_by_platform.items()}
    total = sum(expected.values())
    assert view["total_orders"] == total > 0
    assert {c["platform"]: c["orders"] for c in view["channel_share"]} == expected
    for c in view["channel_share"]:
        assert c["share"] == pytest.approx(expected[c["platform"]] / total)
    assert sum(d["orders"] for d in view["orders_per_day"]) == total
    assert sum(h["orders"] for h in view["orders_per_hour"]) == total
    # revenue per currency from the new orders on orders.unique (the canonical amounts)
    codec = order_codec()
    revenue: Counter = Counter()
    orders_per_currency: Counter = Counter()
    for r in p.read(p.names.UNIQUE):
        if r.headers.get("change") == b"new":
            o = codec.decode(r.value)
            revenue[o["currency"]] += o["amounts"]["total_minor"]
            orders_per_currency[o["currency"]] += 1
    got_revenue: Counter = Counter()
    got_orders: Counter = Counter()
    for a in view["aov_per_hour"]:
        got_revenue[a["currency"]] += a["revenue_minor"]
        got_orders[a["currency"]] += a["orders"]
        assert a["aov_minor"] == pytest.approx(a["revenue_minor"] / a["orders"])
    assert got_revenue == revenue and got_orders == orders_per_currency


def test_tactical_tier_matches_the_topics(sunk):
    p, messages, report = sunk
    code, view = http_json(f"http://127.0.0.1:{p.sink_port}/views/tactical")
    assert code == 200
    totals = view["exception_totals"]
    assert totals["dead_letter"] == sum(1 for m in messages if m.expect == "dlq") == report["dead_lettered"] > 0
    risk = [RiskEvent.decode(r.value).as_dict() for r in p.read(p.names.RISK_EVENTS)]
    inventory = [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]
    held = {(e["order_id"], e["at_ms"]) for e in risk if e["event"] == "held"}
    out_of_stock = {e["order_id"] for e in inventory if e["event"] == "out_of_stock"}
    assert totals["risk_hold"] == len(held) > 0
    assert totals["out_of_stock"] == len(out_of_stock) > 0, "scarce SKUs should run out"
    assert totals["sla_breach"] == 0  # every deadline is 48 h or more after a live replay
    assert sum(b["dead_letter"] for b in view["exceptions"]) == totals["dead_letter"]
    # outbound progress: per warehouse, reserved orders and units of the first reservation of each order
    first_reservation: dict[str, dict] = {}
    for e in inventory:
        if e["event"] == "reserved":
            first_reservation.setdefault(e["order_id"], e)
    orders_per_wh: Counter = Counter()
    units_per_wh: Counter = Counter()
    for e in first_reservation.values():
        for wh in {line["warehouse"] or e["warehouse"] for line in e["lines"]}:
            orders_per_wh[wh] += 1
        for line in e["lines"]:
            units_per_wh[line["warehouse"] or e["warehouse"]] += line["quantity"]
    got = {w["warehouse"]: (w["reserved_orders"], w["reserved_units"]) for w in view["warehouses"]}
    assert got == {wh: (orders_per_wh[wh], units_per_wh[wh]) for wh in orders_per_wh}
    assert sum(n for n, _ in got.values()) >= report["reserved"] > 0
    for w in view["warehouses"]:
        assert 0 <= w["shipped_orders"] <= w["reserved_orders"]


def test_execution_tier_matches_the_topics(sunk):
    p, _, report = sunk
    code, view = http_json(f"http://127.0.0.1:{p.sink_port}/views/execution")
    assert code == 200
    # every hold was auto-released (timeout 3 s): nothing left on anyone's to-do list
    assert report["auto_released"] == report["held"] > 0
    assert view["todo"] == {} and view["held_orders"] == 0
    # open orders, independently: latest version per order on orders.unique, with a deadline
    codec = order_codec()
    latest: dict[str, dict] = {}
    deadline: dict[str, datetime] = {}
    for r in p.read(p.names.UNIQUE):
        o = codec.decode(r.value)
        if o["order_id"] not in latest or o["updated_at"] > latest[o["order_id"]]["updated_at"]:
            latest[o["order_id"]] = o
        if o["ship_by"] is not None:
            deadline[o["order_id"]] = max(deadline.get(o["order_id"], o["ship_by"]), o["ship_by"])
    open_orders = {oid for oid, o in latest.items() if oid in deadline and o["status"] not in CLOSED_STATES}
    closed = {oid for oid, o in latest.items() if o["status"] in CLOSED_STATES}
    assert closed, "the replay's updates should ship or cancel some orders"
    sla = view["sla"]
    assert sum(sla["levels"].values()) == len(open_orders) > 0
    rows = sla["orders"]
    assert len(rows) == min(200, len(open_orders))
    assert {r["order_id"] for r in rows} <= open_orders
    now = datetime.fromisoformat(view["now"].replace("Z", "+00:00"))
    for r in rows:
        hours = (deadline[r["order_id"]] - now).total_seconds() / 3600
        assert r["hours_left"] == pytest.approx(hours, abs=0.01)
        assert r["level"] == "green" and r["status"] == latest[r["order_id"]]["status"]
    assert [r["hours_left"] for r in rows] == sorted(r["hours_left"] for r in rows)  # most urgent first
    assert view["processing"]["decisions"] >= 0


def test_sql_endpoint_is_read_only_and_counts_match(sunk):
    p, _, report = sunk
    rows = sink_sql(p, "SELECT countIf(change = 'new') AS new, countIf(change = 'update') AS upd FROM order_events")
    assert int(rows[0]["new"]) == report["unique_new_orders"]
    assert int(rows[0]["upd"]) == report["unique_updates"]
    for statement in ("DROP TABLE order_events", "INSERT INTO dead_letters (reason) VALUES ('x')",
                      "ALTER TABLE order_events DELETE WHERE 1", "TRUNCATE TABLE risk_events"):
        code, body = http_json(f"http://127.0.0.1:{p.sink_port}/sql?q={urllib.parse.quote(statement)}")
        assert code == 400 and "error" in body, (statement, code, body)
    assert int(sink_sql(p, "SELECT count() AS n FROM order_events")[0]["n"]) == \
        report["unique_new_orders"] + report["unique_updates"]
    # no duplicate landing: each source coordinate at most once
    dupes = sink_sql(p, "SELECT count() AS n FROM (SELECT src_topic, src_partition, src_offset, count() AS c "
                   "FROM order_events GROUP BY src_topic, src_partition, src_offset HAVING c > 1)")
    assert int(dupes[0]["n"]) == 0


def test_views_cli_prints_the_strategic_tier_as_json(sunk):
    p, _, report = sunk
    env = {**os.environ, **p.env, "ORDERSTREAM_SINK_WEB_PORT": str(p.sink_port), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "views", "strategic", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["tier"] == "strategic"
    assert data["total_orders"] == report["unique_new_orders"]
    # the CLI read the running sink (no second process may open its chDB data dir)
    assert datetime.fromisoformat(data["now"].replace("Z", "+00:00")) <= datetime.now(timezone.utc)


# -- issue 16: analysts on the running sink ---------------------------------------------------------

def test_analysts_query_the_running_sink_with_clickhouse_connect(sunk):
    """The sink process serves the ClickHouse HTTP interface on its analyst port: clickhouse-connect
    and pandas read what the replay landed; writes and a wrong password are refused."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    p, _, report = sunk
    code, health = http_json(f"http://127.0.0.1:{p.sink_port}/status")
    assert code == 200 and health["analyst_http"] == {"running": True, "port": p.analyst_port}
    client = clickhouse_connect.get_client(host="127.0.0.1", port=p.analyst_port, username="analyst", password="")
    try:
        assert client.command("SELECT countIf(change = 'new') FROM order_events") == report["unique_new_orders"]
        df = client.query_df("SELECT platform, sum(orders) AS n FROM orders_hourly GROUP BY platform")
        assert int(df["n"].sum()) == report["unique_new_orders"] > 0
        with pytest.raises(DatabaseError) as err:
            client.command("DROP TABLE order_events")
        assert err.value.code == 164
        assert client.command("SELECT count() FROM order_events") == \
            report["unique_new_orders"] + report["unique_updates"]
    finally:
        client.close()
    with pytest.raises(DatabaseError) as err:
        clickhouse_connect.get_client(host="127.0.0.1", port=p.analyst_port, username="analyst", password="nope")
    assert err.value.code == 516


def test_ingestion_keeps_landing_while_a_heavy_analyst_query_runs(pipeline_factory):
    """Messages keep arriving while an analyst's scan runs to its execution limit: the sink lands
    them as it goes (bounded lag), it does not wait for the analyst."""
    import threading
    import time

    import clickhouse_connect

    from pipeline import kafka_io
    from pipeline.contracts import BreakerTransition

    limit_s = 6.0
    p = pipeline_factory()
    p.start_sink(ORDERSTREAM_ANALYST_MAX_EXECUTION_S=str(limit_s), ORDERSTREAM_SINK_BATCH_SECONDS="0.5")
    produced_at: list[float] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            value = BreakerTransition.from_dict({"from_state": "closed", "to_state": "open", "rate_per_min": float(i),
                                                 "at_ms": int(time.time() * 1000), "worker": f"w{i}"}).encode()
            kafka_io.produce_all(p.producer, [(p.names.BREAKER_EVENTS, f"k{i}".encode(), value, None)])
            p.producer.flush(5)
            produced_at.append(time.monotonic())
            i += 1
            time.sleep(0.025)

    heavy_answer: dict = {}

    def heavy() -> None:
        url = f"http://127.0.0.1:{p.analyst_port}/?" + urllib.parse.urlencode(
            {"query": "SELECT count() FROM numbers(100000000000) WHERE number % 7 = 3", "user": "analyst"})
        heavy_answer["start"] = time.monotonic()
        try:
            urllib.request.urlopen(url, timeout=60).read()
            heavy_answer["code"] = 0
        except urllib.error.HTTPError as exc:
            heavy_answer["code"] = int(exc.headers.get("X-ClickHouse-Exception-Code", -1))
        heavy_answer["end"] = time.monotonic()

    client = clickhouse_connect.get_client(host="127.0.0.1", port=p.analyst_port, username="analyst", password="")
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.5)
    scan = threading.Thread(target=heavy, daemon=True)
    scan.start()
    samples = []  # (time, landed, lag in seconds of the oldest message not landed yet)
    while scan.is_alive():
        landed = client.command("SELECT count() FROM breaker_events")
        now = time.monotonic()
        waiting = produced_at[landed:] if landed < len(produced_at) else []
        samples.append((now, landed, now - waiting[0] if waiting else 0.0))
        time.sleep(0.25)
    stop.set()
    producer.join(10)
    assert heavy_answer["code"] == 159, heavy_answer  # TIMEOUT_EXCEEDED: it ran to its limit
    assert heavy_answer["end"] - heavy_answer["start"] >= limit_s - 0.5
    during = [s for s in samples if heavy_answer["start"] + 0.5 <= s[0] <= heavy_answer["end"] - 0.2]
    assert len(during) >= 8, samples
    assert during[-1][1] - during[0][1] >= 50, "the sink landed little while the scan ran"
    max_lag = max(lag for _, _, lag in during)
    print(f"scan {heavy_answer['end'] - heavy_answer['start']:.1f} s; during it the sink landed "
          f"{during[-1][1] - during[0][1]} rows, oldest waiting message at most {max_lag:.2f} s old")
    assert max_lag < 3.0, during
    deadline = time.monotonic() + 30
    while client.command("SELECT count() FROM breaker_events") < len(produced_at) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.command("SELECT count() FROM breaker_events") == len(produced_at)
    client.close()
