"""Render the README's generated tables (configuration, benchmarks, reliability) from the code and
from benchmarks/results/*.json, so every number in the README comes from a result file.

    .venv/bin/python -m benchmarks.readme_tables
"""
from __future__ import annotations

import json
import re


from pipeline.config import PROJECT_ROOT, settings_table

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
README = PROJECT_ROOT / "README.md"


def config_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var, default, doc in settings_table():
        default = default.replace(str(PROJECT_ROOT), "<repo>")
        rows.append(f"| `{var}` | `{default}` | {doc} |")
    return "\n".join(rows)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def derived_summary(name: str, d: dict) -> list[str]:
    """Summary lines for result files that do not carry their own."""
    if name == "bench_normalize":
        r = d["results"]
        return [f"normalize, one core, no Kafka: {r['normalize']['orders_per_s']:,} orders/s; "
                f"with Avro encode {r['normalize+avro_encode']['orders_per_s']:,}/s"]
    if name == "bench_risk":
        m = d["modes"]
        return [f"rule evaluation: {m['full']['median_orders_per_s']:,.0f} orders/s full, "
                f"{m['degraded']['median_orders_per_s']:,.0f} degraded"]
    if name == "bench_inventory":
        m = d["median"]
        return [f"Redis reservations: {m['one_at_a_time']:,.0f}/s one at a time, "
                f"{m['pipelined_batch_100']:,.0f}/s pipelined x100 "
                f"({m['pipelined_batch_100'] / m['one_at_a_time']:.2f}x)"]
    if name == "bench_clickhouse":
        v = d["views"]
        return [f"chDB sink path {d['sink_path']['rows_per_s']:,} rows/s, bulk insert {d['bulk_insert']['rows_per_s']:,} rows/s",
                f"views at {d['params']['orders']:,} orders: strategic {v['strategic']['median_ms']} ms, "
                f"tactical {v['tactical']['median_ms']} ms, execution {v['execution']['median_ms']} ms"]
    return []


def benchmark_table() -> str:
    rows = ["| benchmark | figure (median) | command | result file |", "|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        for line in data.get("summary") or derived_summary(path.stem, data):
            rows.append(f"| {path.stem} | {line} | `{data.get('command', 'python -m benchmarks.' + path.stem)}` "
                        f"| `benchmarks/results/{path.name}` |")
    if len(rows) == 2:
        rows.append("| (no results yet) | | | |")
    return "\n".join(rows)


def reliability_table() -> str:
    data = load("reliability")
    rows = ["| fault | orders | in flight at fault | lost | doubled effects | outputs seen twice (read_committed) "
            "| result |", "|---|---|---|---|---|---|---|"]
    for f in (data or {}).get("faults", []):
        doubles = (f.get("detail") or {}).get("doubles_by_topic")
        seen_twice = sum(doubles.values()) if doubles else "-"
        rows.append(f"| {f['fault']} | {f['orders']} | {f.get('in_flight', '-')} | {f['lost']} | {f['doubled']} "
                    f"| {seen_twice} | {'pass' if f['lost'] == 0 and f['doubled'] == 0 else 'FAIL'} |")
    if len(rows) == 2:
        rows.append("| (run `pytest tests/stack/test_reliability.py` to produce benchmarks/results/reliability.json) | | | | | | |")
    return "\n".join(rows)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    text = README.read_text()
    text = replace_block(text, "config", config_table())
    text = replace_block(text, "benchmark", benchmark_table())
    text = replace_block(text, "reliability", reliability_table())
    README.write_text(text)


if __name__ == "__main__":
    main()
