"""Issue 9 end to end: scrape a real worker's /metrics during and after a replay; the counters
must add up to what was produced (the replay's own messages) and to what the topics hold; and a
real Prometheus server evaluates every dashboard and alert expression against them."""
from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.contracts import InventoryEvent
from pipeline.devtools.fake_orders import ReplayMix
from pipeline.devtools.replay import ReplayConfig, produce_replay, reconcile

pytestmark = [pytest.mark.stack, pytest.mark.slow]




def get(url: str) -> tuple[int, bytes]:
    """GET with the stack tests' token: the sink's /metrics needs one (a worker's ignores it)."""
    from tests.stack.conftest import STACK_TOKEN
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {STACK_TOKEN}"}),
                                    timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus_client's own parser."""
    code, body = get(f"{url}/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a sample over every label set that matches `labels`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    out: Counter = Counter()
    for (n, ls), v in samples.items():
        if n == name:
            out[dict(ls)[label]] += v
    return {k: v for k, v in out.items() if v}


def test_worker_counters_add_up_to_the_replay(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker()
    url = p.worker_url()
    for path in ("/health", "/ready"):
        code, body = get(url + path)
        assert code == 200, (path, body)

    cfg = ReplayConfig(count=900, seed=19, rate_per_min=36_000, mix=ReplayMix(malformed=0.05), scarce_skus=4)
    result: dict = {}
    producer = threading.Thread(target=lambda: result.update(zip(("messages", "produced"),
                                                                 produce_replay(p.s, p.names, cfg))))
    producer.start()
    # during the replay: counters only grow, and normalize never counts more than was produced
    during = []
    while producer.is_alive():
        during.append(scrape(url))
        time.sleep(0.3)
    producer.join()
    assert len(during) >= 3, "the replay should last long enough to scrape it a few times"
    seen = [total(s, "orderstream_stage_in_total", stage="normalize") for s in during]
    assert seen == sorted(seen) and seen[-1] <= cfg.count
    assert any(0 < n < cfg.count for n in seen), f"no scrape saw the replay in progress: {seen}"

    p.drain(timeout=180)
    messages, produced = result["messages"], result["produced"]
    report = reconcile(p.s, p.names, messages, produced["coordinates"])
    deadline = time.monotonic() + 30
    while report["awaiting_decision"] and time.monotonic() < deadline:
        time.sleep(2)
        p.drain(timeout=60)
        report = reconcile(p.s, p.names, messages, produced["coordinates"])
    assert report["balanced"], report
    after = scrape(url)

    # normalize: every raw message counted once, per platform too
    produced_per_platform = Counter(m.platform for m in messages)
    assert total(after, "orderstream_stage_in_total", stage="normalize") == len(messages) == cfg.count
    assert by_label({k: v for k, v in after.items() if dict(k[1]).get("stage") == "normalize"},
                    "orderstream_stage_in_total", "platform") == produced_per_platform
    expected_dlq = sum(1 for m in messages if m.expect == "dlq")
    assert total(after, "orderstream_dead_letters_total") == expected_dlq == report["dead_lettered"] > 0
    # dead letters by reason, as the generator said each malformed message must be rejected
    assert by_label(after, "orderstream_dead_letters_total", "reason") == \
        Counter(m.reason_code for m in messages if m.expect == "dlq")
    assert total(after, "orderstream_stage_out_total", stage="normalize", outcome="canonical") == report["canonical"]

    # dedupe: one "new" per distinct new order, one "update" per real update, the rest dropped
    expected_new = len({m.order_id for m in messages if m.kind == "new"})
    assert total(after, "orderstream_dedupe_total", outcome="new") == expected_new == report["unique_new_orders"]
    assert total(after, "orderstream_dedupe_total", outcome="update") == report["unique_updates"]
    assert total(after, "orderstream_dedupe_total") == report["canonical"]

    # risk: one verdict per new order
    assert total(after, "orderstream_risk_verdicts_total") == report["unique_new_orders"]
    assert total(after, "orderstream_stage_in_total", stage="risk") == \
        report["unique_new_orders"] + report["unique_updates"]
    assert total(after, "orderstream_risk_decisions_total", outcome="auto_released") == report["auto_released"]

    # inventory: outcomes consistent with inventory.events
    events = [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]
    kinds = Counter(e["event"] for e in events)
    reserved_orders = {e["order_id"] for e in events if e["event"] == "reserved"}
    outcomes = by_label(after, "orderstream_reservations_total", "outcome")
    assert outcomes.get("reserved", 0) == len(reserved_orders) == report["reserved"] > 0
    assert outcomes.get("out_of_stock", 0) == kinds["out_of_stock"] > 0
    # a reservation attempt that finds the order already cancelled (its tombstone) is published as
    # "cancelled" with no reason; the counter labels it "released" (or "cancelled" once relabelled)
    tombstoned = sum(1 for e in events if e["event"] == "cancelled" and not e["reason"])
    assert outcomes.get("released", 0) + outcomes.get("cancelled", 0) == kinds["released"] + tombstoned
    assert outcomes.get("released", 0) >= kinds["released"]
    # a "duplicate" is a re-processed reservation: re-published as "reserved", never reserved twice
    assert kinds["reserved"] == len(reserved_orders) + outcomes.get("duplicate", 0)
    assert total(after, "orderstream_redis_retries_total") == 0

    # still healthy and ready after the replay
    for path in ("/health", "/ready"):
        code, body = get(url + path)
        assert code == 200, (path, body)
    final = scrape(url)
    assert total(final, "orderstream_dependency_up", dependency="redis") == 1
    assert total(final, "orderstream_dependency_up", dependency="broker") == 1


def queried_metrics() -> set[str]:
    """Every orderstream_* sample name the Grafana dashboard and the alert rules query."""
    from tests.unit.test_deploy_files import alert_rules, dashboard_expressions, promql_metric_names
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_expressions()
    return {name for expr in exprs for name in promql_metric_names(expr) if name.startswith("orderstream_")}


# Grafana's variables as a panel would send them for the last hour, all platforms
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "1h", "$platform": ".*"}


def as_grafana_sends(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


@pytest.fixture(scope="module")
def prometheus_binary():
    from pipeline.devtools import stack
    try:
        return stack.ensure_prometheus_installed()  # as `orderstream stack up --prometheus` does
    except stack.StackError as exc:
        pytest.fail(f"the metrics test needs Debian's prometheus: {exc}")


def test_every_dashboard_and_alert_expression_evaluates_with_samples_on_a_real_prometheus(
        pipeline_factory, prometheus_binary, tmp_path):
    """A replay that trips the breaker, holds orders and runs short of stock, with the sink
    running, scraped by a real Prometheus (Debian's) as deploy/prometheus/prometheus.yml scrapes
    (the sink with a Bearer token from a file) and evaluating deploy/prometheus/alerts.yml: both
    targets up; every series a panel or an alert reads exists; every alert rule evaluates without
    an error; every dashboard query, as Grafana sends it, is valid PromQL and returns samples."""
    from pipeline.devtools.prometheus import PrometheusServer, ScrapeJob
    from tests.stack.conftest import STACK_TOKEN
    from tests.unit.test_deploy_files import ALERTS, alert_rules, dashboard_expressions

    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", ORDERSTREAM_BREAKER_OPEN_PER_MIN="120",
                         ORDERSTREAM_BREAKER_CLOSE_PER_MIN="60", ORDERSTREAM_BREAKER_WINDOW_S="10",
                         ORDERSTREAM_BREAKER_COOLDOWN_S="4")
    checked = subprocess.run([prometheus_binary["promtool"], "check", "rules", str(ALERTS)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    p.start_verifiers("--latency-ms", "2")
    p.start_worker()
    p.start_sink()
    token = tmp_path / "sink-metrics.token"
    token.write_text(STACK_TOKEN)
    server = PrometheusServer(prometheus_binary["prometheus"], tmp_path / "prometheus",
                              [ScrapeJob("orderstream-worker", (f"127.0.0.1:{p.worker_port()}",)),
                               ScrapeJob("orderstream-sink", (f"127.0.0.1:{p.sink_port}",), token)],
                              [ALERTS], interval_s=1.0)
    with server:
        cfg = ReplayConfig(count=600, seed=23, rate_per_min=30_000, mix=ReplayMix(malformed=0.05), scarce_skus=4)
        produce_replay(p.s, p.names, cfg)
        p.drain(timeout=180)
        time.sleep(8)  # scrapes after the drain: the lag gauge, the sink's batches, two samples per rate

        targets = {t["labels"]["job"]: t for t in server.targets()}
        assert {job: t["health"] for job, t in targets.items()} == {"orderstream-worker": "up",
                                                                   "orderstream-sink": "up"}, targets
        missing = sorted(queried_metrics() - server.series_names())
        assert not missing, f"queried but never scraped after a replay: {missing}"

        rules = {r["name"]: r for r in server.rules()}
        assert set(rules) == {r["alert"] for r in alert_rules()}
        failing = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
        assert not failing, failing

        empty, invalid = [], {}
        for expr in dashboard_expressions():
            try:
                if not server.query(as_grafana_sends(expr)):
                    empty.append(expr)
            except ValueError as exc:
                invalid[expr] = str(exc)
        assert not invalid, invalid
        assert not empty, f"dashboard queries with no samples after the replay: {empty}"
