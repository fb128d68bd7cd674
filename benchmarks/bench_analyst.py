"""Analyst queries beside ingestion (issue 16): how long the sink's inserts take while an analyst
query runs, through the analyst interface (a chDB session of its own) and, for comparison, on the
sink's own session (how /sql and every query ran before), and what a session of its own costs.

One chDB data dir in this process, the real sink (`ClickHouseSink` over `ChdbBackend`) landing
one-row batches of breaker events every `--gap-ms`, and the analyst interface over HTTP:
- idle: no analyst query;
- analyst_interface: a scan runs to its `--limit-s` execution limit through the interface;
- shared_session: the same scan runs on the backend's own session (under its lock).
Each mode reports the insert latencies (median, p95, max) measured while the scan was running.

    .venv/bin/python -m benchmarks.bench_analyst [--inserts 40] [--limit-s 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.clickhouse.analyst import Account, ChdbEngine, Limits, serve_analyst
from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.kafka_io import Record
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.contracts import BreakerTransition
from pipeline.topics import TopicNames

RESULTS = Path(__file__).resolve().parent / "results" / "bench_analyst.json"
SCAN = "SELECT count() FROM numbers(100000000000) WHERE number % 7 = 3"


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(latencies_s: list[float]) -> dict:
    ms = [v * 1000 for v in latencies_s]
    return {"inserts": len(ms), "median_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 0.95), 2),
            "max_ms": round(max(ms), 2)}


class Inserter:
    """The real sink path, one row per insert, on its own offsets."""

    def __init__(self, backend: ChdbBackend, ns: str) -> None:
        self.names = TopicNames(ns)
        self.sink = ClickHouseSink(backend, self.names, max_rows=1, max_seconds=60.0)
        self.offset = 0

    def insert_once(self) -> float:
        value = BreakerTransition.from_dict({"from_state": "closed", "to_state": "open", "rate_per_min": 1.0,
                                             "at_ms": int(time.time() * 1000), "worker": "bench"}).encode()
        self.sink.add(Record(self.names.BREAKER_EVENTS, 0, self.offset, b"k", value, {}, int(time.time() * 1000)))
        self.offset += 1
        started = time.perf_counter()
        if self.sink.flush() != 1:
            raise RuntimeError(f"insert failed: {self.sink.last_error}")
        return time.perf_counter() - started


def run_mode(mode: str, backend: ChdbBackend, port: int, args, ns: str) -> dict:
    inserter = Inserter(backend, ns)
    scan: dict = {}

    def through_interface() -> None:
        url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"query": SCAN, "user": "analyst"})
        try:
            urllib.request.urlopen(url, timeout=120).read()
            scan["outcome"] = "finished"
        except urllib.error.HTTPError as exc:
            scan["outcome"] = f"code {exc.headers.get('X-ClickHouse-Exception-Code')}"

    def on_shared_session() -> None:
        try:
            backend.query(f"{SCAN} SETTINGS max_execution_time = {args.limit_s}, max_threads = 1")
            scan["outcome"] = "finished"
        except Exception as exc:  # noqa: BLE001 - the time limit ends it
            scan["outcome"] = str(exc).split(".")[0]

    thread = None
    if mode != "idle":
        thread = threading.Thread(target=through_interface if mode == "analyst_interface" else on_shared_session)
        thread.start()
        time.sleep(0.2)
    latencies = []
    started = time.monotonic()
    for _ in range(args.inserts):
        latencies.append(inserter.insert_once())
        time.sleep(args.gap_ms / 1000)
        if thread is not None and not thread.is_alive():
            break
    span = time.monotonic() - started
    if thread is not None:
        thread.join()
    return {**summarize(latencies), "span_s": round(span, 2), "scan": scan.get("outcome", "none")}


def session_cost(path: str, n: int) -> dict:
    from chdb import session
    times = []
    for _ in range(n):
        started = time.perf_counter()
        s = session.Session(path)
        s.query("SELECT 1", "TabSeparated")
        s.close()
        times.append((time.perf_counter() - started) * 1000)
    return {"sessions": n, "median_ms": round(statistics.median(times), 2), "p95_ms": round(percentile(times, 0.95), 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inserts", type=int, default=40, help="inserts per mode (fewer when the scan ends first)")
    ap.add_argument("--gap-ms", type=float, default=50.0)
    ap.add_argument("--limit-s", type=float, default=3.0, help="the analyst's max_execution_time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-analyst-"))
    backend = ChdbBackend(workdir / "data")
    server = None
    runs: dict[str, list[dict]] = {"idle": [], "analyst_interface": [], "shared_session": []}
    try:
        migrate(backend)
        engine = ChdbEngine(backend.path, Limits(max_execution_time=args.limit_s))
        server = serve_analyst(engine, [Account("analyst", "")], 0)
        for r in range(args.repeats):
            for mode in runs:
                runs[mode].append(run_mode(mode, backend, server.port, args, f"bench{r}{mode[:4]}."))
                print(f"{mode} #{r + 1}: {runs[mode][-1]}", flush=True)
        sessions = session_cost(backend.path, 50)
        print(f"session of its own: {sessions}", flush=True)
    finally:
        if server is not None:
            server.stop()
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {mode: {k: round(statistics.median(run[k] for run in rs), 2) for k in ("median_ms", "p95_ms", "max_ms")}
               for mode, rs in runs.items()}
    import chdb
    summary = [
        f"sink insert latency while an analyst scan runs to its {args.limit_s:g} s limit: through the analyst "
        f"interface p95 {medians['analyst_interface']['p95_ms']} ms, max {medians['analyst_interface']['max_ms']} ms "
        f"(idle p95 {medians['idle']['p95_ms']} ms); on the sink's own session max "
        f"{medians['shared_session']['max_ms']} ms",
        f"an analyst request's own chDB session: open + SELECT 1 + close, median {sessions['median_ms']} ms",
    ]
    result = {
        "benchmark": "bench_analyst", "chdb_version": chdb.__version__,
        "command": "python -m benchmarks.bench_analyst" + (" " + " ".join(argv) if argv else ""),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "runs": runs, "medians": medians, "session": sessions, "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
