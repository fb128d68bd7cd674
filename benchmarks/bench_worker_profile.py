"""Where one worker spends its time: py-spy samples a worker while it drains a backlog.

The throughput target (issue 10) is far above what one worker reaches, and this benchmark says
why with numbers: the share of samples spent in Faust/mode, aiokafka, the event loop, our own
code (pipeline/, agents/), Avro, Redis and RocksDB, plus the worker's memory at the end.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt    # py-spy
    .venv/bin/python -m benchmarks.bench_worker_profile --orders 20000

Writes benchmarks/results/bench_worker_profile.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.bench_pipeline import fresh_namespace, peak_rss_mb, start_workers, status_mb

RESULTS = Path(__file__).resolve().parent / "results" / "bench_worker_profile.json"

# first matching marker in a frame's file path ("faust/topics.py", "/usr/lib/python3.11/...") names its owner
OWNERS = [
    ("our code", ("/pipeline/", "/agents/")),
    ("faust + mode (stream, table, agent machinery)", ("/faust/", "/mode/")),
    ("aiokafka (client, protocol, record batches)", ("/aiokafka/",)),
    ("asyncio + selectors (event loop)", ("/asyncio/", "/selectors.py", "/uvloop/")),
    ("fastavro (Avro)", ("/fastavro/",)),
    ("redis client", ("/redis/",)),
    ("rocksdict (RocksDB tables)", ("/rocksdict/",)),
    ("aiohttp (verifier calls, web)", ("/aiohttp/", "/yarl/", "/multidict/")),
    ("prometheus client", ("/prometheus_client/",)),
]
STAGES = {"normalize": "agents/normalize.py", "dedupe": "agents/dedupe.py", "risk": "agents/risk.py",
          "holds": "agents/holds.py", "inventory": "agents/inventory.py"}


def owner_of(frame: str) -> str:
    path = "/" + frame.rpartition(" (")[2]
    for owner, markers in OWNERS:
        if any(m in path for m in markers):
            return owner
    return "other (stdlib, json, logging, ...)"


def summarize(collapsed: str) -> dict:
    """py-spy --format raw: 'frame;frame;...;leaf count' per line, root first."""
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if leaf.startswith(("select (", "poll (", "epoll (")) and "selectors.py" in leaf:
            idle += n  # the event loop waiting for I/O: nothing to do
        self_time[owner_of(leaf)] += n
        for stage, path in STAGES.items():
            if any(path in f for f in frames):
                inclusive[stage] += n
    share = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "idle_in_select_pct": share(idle),
        "self_time_pct_by_owner": {k: share(v) for k, v in self_time.most_common()},
        "inclusive_pct_by_stage": {k: share(v) for k, v in inclusive.most_common()},
    }


def rss_mb(pid: int) -> float | None:
    return status_mb(pid, "VmRSS")


class RssSampler(threading.Thread):
    """The worker's resident memory every `every_s` seconds while it drains: (seconds, MB), or
    (seconds, MB, probe()) with a probe, e.g. how many orders the worker has processed by then."""

    def __init__(self, pid: int, every_s: float = 5.0, probe=None) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.probe = pid, every_s, probe
        self.samples: list[tuple] = []
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(self.every_s):
            value = rss_mb(self.pid)
            if value is not None:
                sample = (round(time.monotonic() - start, 1), value)
                self.samples.append(sample + ((self.probe(),) if self.probe else ()))


def summary_of(result: dict) -> list[str]:
    owners = result["profile"]["self_time_pct_by_owner"]
    top = ", ".join(f"{name.split(' (')[0]} {pct}%" for name, pct in list(owners.items())[:5])
    rss = result["worker_rss_mb_over_time"]
    early = rss[len(rss) // 4][1] if rss else None
    return [
        f"one worker draining a {result['messages']:,}-message backlog (sampled by py-spy): "
        f"{result['messages_per_s']:,.0f} raw messages/s",
        f"worker time by owner: {top} (our code includes Avro, compiled into its callers)",
        f"worker RSS after {result['messages']:,} raw messages: {result['worker_rss_mb_at_end']} MB "
        f"(peak {result['worker_peak_rss_mb']} MB; {early} MB a quarter into the drain)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--raw-profile", type=Path, help="also keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("py-spy is missing: .venv/bin/pip install -e '.[bench]' -c constraints.txt")

    from pipeline.config import load_settings
    from pipeline.devtools import stack
    from pipeline.devtools.replay import ReplayConfig, produce_replay, wait_drained
    from pipeline.kafka_io import ensure_topics
    from pipeline.topics import TopicNames

    s = load_settings()
    stack.up(s)
    ns = fresh_namespace("bf")
    names = TopicNames(ns)
    ensure_topics(s, names)
    procs = start_workers(s, ns, 1, port_base=6500)
    worker = procs[1]
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    try:
        # the backlog first, then the worker drains it while py-spy samples
        messages, _ = produce_replay(s, names, ReplayConfig(count=args.orders, seed=31, rate_per_min=None))
        spy = subprocess.Popen([py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--rate",
                                str(args.rate), "--nonblocking", "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = RssSampler(worker.pid)
        sampler.start()
        start = time.monotonic()
        drained_s = wait_drained(s, names, ns + s.app_id, timeout=4 * 3600)
        elapsed = time.monotonic() - start
        sampler.done.set()
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        rss_now = rss_mb(worker.pid)
        rss_peak = peak_rss_mb(worker.pid)
        profile = summarize(out.read_text())
        if args.raw_profile:
            shutil.copyfile(out, args.raw_profile)
    finally:
        for p in procs:
            p.stop()
    result = {
        "benchmark": "bench_worker_profile",
        "command": f"python -m benchmarks.bench_worker_profile --orders {args.orders} --rate {args.rate}"
                   + ("" if args.results == RESULTS else f" --results {args.results}"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "messages": len(messages),
        "drain_s": round(elapsed, 1),
        "messages_per_s": round(len(messages) / elapsed, 1),
        "worker_rss_mb_at_end": rss_now,
        "worker_peak_rss_mb": rss_peak,
        # (seconds into the drain, MB): flat means bounded state, a slope means growth per order
        "worker_rss_mb_over_time": sampler.samples[:: max(1, len(sampler.samples) // 20)],
        "profile": profile,
        "wait_drained_s": round(drained_s, 1),
    }
    result["summary"] = summary_of(result)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
