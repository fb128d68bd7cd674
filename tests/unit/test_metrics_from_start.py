"""Series that exist from a process's start, at 0: the risk-decision outcomes on a worker (the
dashboard's Hold resolutions panel) and the shipping-SLA gauge on the sink (the
OrderstreamShippingSlaBreached alert), which must evaluate before anything happened."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from pipeline import metrics
from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.sla_metric import ShippingSlaGauge
from pipeline.clickhouse.tiers import SLA_LEVELS, TIERS
from pipeline.topics import PLATFORMS, TopicNames
from tests.unit.test_clickhouse_chdb import NOW, make_dataset

NAMES = TopicNames("slagauge.")


def fresh_process_exposition(start: str) -> str:
    """/metrics text of a new interpreter that imported the metrics and ran `start` (Python), so the
    counters are those of a process that has done nothing else."""
    code = ("from prometheus_client import generate_latest\nfrom pipeline import metrics\n" + start +
            "\nprint(generate_latest().decode())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout


def test_every_risk_decision_outcome_is_exported_at_zero_from_the_worker_start():
    before = fresh_process_exposition("")
    started = fresh_process_exposition("metrics.start_worker_series()")
    for outcome in ("approved", "rejected", "auto_released", "ignored", "malformed"):
        line = f'orderstream_risk_decisions_total{{outcome="{outcome}"}} 0.0'
        assert line not in before  # importing does nothing: the start does it
        assert line in started.splitlines(), started


def _string_constants(path: Path, where) -> set[str]:
    tree = ast.parse(path.read_text())
    return {c.value for node in ast.walk(tree) for c in where(node)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def _branches(value) -> list:
    """The values an expression may take: both sides of `a if cond else b`, not the condition."""
    return _branches(value.body) + _branches(value.orelse) if isinstance(value, ast.IfExp) else [value]


def test_the_outcomes_cover_what_the_holds_agent_counts():
    """Read from the code: every outcome literal the holds agent counts, and every outcome the
    domain's apply_decision resolves with (Resolution's first argument, the `outcome` it assigns)."""
    root = Path(metrics.__file__).parents[1]
    counted = _string_constants(root / "agents" / "holds.py", lambda n: [
        kw.value for kw in getattr(n, "keywords", []) if kw.arg == "outcome"] if isinstance(n, ast.Call) else [])
    resolved = _string_constants(root / "pipeline" / "domain" / "holds.py", lambda n: (
        n.args[:1] if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Resolution" else
        _branches(n.value) if isinstance(n, ast.Assign) and any(
            getattr(tg, "id", "") == "outcome" for tg in n.targets) else []))
    assert {"malformed", "ignored"} <= counted and {"approved", "rejected", "auto_released"} <= resolved
    assert counted | resolved <= set(metrics.RISK_DECISION_OUTCOMES), counted | resolved


def sla_sample(platform: str, level: str) -> float | None:
    return REGISTRY.get_sample_value("orderstream_shipping_sla_orders", {"platform": platform, "level": level})


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("sla") / "chdb")
    migrate(b)
    yield b
    b.close()


def test_the_sla_gauge_is_at_zero_from_the_sink_start_then_counts_the_execution_tiers_levels(backend):
    gauge = ShippingSlaGauge(backend, interval_s=30.0, clock=lambda: clock[0], now=lambda: NOW)
    clock = [0.0]
    assert {sla_sample(p, lvl) for p in PLATFORMS for lvl in SLA_LEVELS} == {0.0}  # before any data or query
    assert gauge.tick()
    assert {sla_sample(p, lvl) for p in PLATFORMS for lvl in SLA_LEVELS} == {0.0}  # an empty ClickHouse

    sink = ClickHouseSink(backend, NAMES, max_rows=500, max_seconds=60)
    for m in make_dataset(NAMES).messages:
        sink.add(m)
    sink.flush(force=True)
    clock[0] = 10.0
    assert not gauge.tick()  # not due: a refresh every interval_s, not every loop turn
    clock[0] = 31.0
    assert gauge.tick()
    levels = TIERS["execution"](backend, now=NOW)["sla"]["levels"]
    exported = {lvl: sum(sla_sample(p, lvl) or 0 for p in gauge.platforms) for lvl in SLA_LEVELS}
    assert exported == levels and levels["breached"] > 0, (exported, levels)
