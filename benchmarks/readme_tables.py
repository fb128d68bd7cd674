"""Render the README's generated tables (configuration, benchmarks, reliability) from the code and
from benchmarks/results/*.json, so every number in the README comes from a result file.

    .venv/bin/python -m benchmarks.readme_tables
"""
from __future__ import annotations

import json
import re
from pathlib import Path

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


def benchmark_table() -> str:
    rows = ["| benchmark | figure (median) | command | result file |", "|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        for line in data.get("summary", []):
            rows.append(f"| {path.stem} | {line} | `{data.get('command', '.venv/bin/python -m benchmarks.' + path.stem)}` "
                        f"| `benchmarks/results/{path.name}` |")
    if len(rows) == 2:
        rows.append("| (no results yet) | | | |")
    return "\n".join(rows)


def reliability_table() -> str:
    data = load("reliability")
    rows = ["| fault | orders | in flight at fault | lost | doubled | result |", "|---|---|---|---|---|---|"]
    for f in (data or {}).get("faults", []):
        rows.append(f"| {f['fault']} | {f['orders']} | {f.get('in_flight', '-')} | {f['lost']} | {f['doubled']} "
                    f"| {'pass' if f['lost'] == 0 and f['doubled'] == 0 else 'FAIL'} |")
    if len(rows) == 2:
        rows.append("| (run `pytest tests/stack/test_reliability.py` to produce benchmarks/results/reliability.json) | | | | | |")
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
