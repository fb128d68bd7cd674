"""End-to-end pipeline benchmarks on the real broker, Redis and one or two real workers.

Every figure is measured in the same run as the physical limit of this machine: a bare
confluent-kafka consume-then-produce of the same raw bytes through the same broker, so the
pipeline's throughput is reported as a ratio to it.

    .venv/bin/python -m benchmarks.bench_pipeline                 # defaults (~6 minutes)
    .venv/bin/python -m benchmarks.bench_pipeline --orders 3000 --repeats 1 --skip-scale

Writes benchmarks/results/bench_pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pipeline.json"


def fresh_namespace(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}."


def baseline_copy(s, count: int, seed: int) -> dict:
    """Bare confluent-kafka: produce the raw bytes, then consume them and produce each to a copy topic."""
    from confluent_kafka import TopicPartition

    from pipeline import kafka_io, stack
    from pipeline.domain.raw_orders import ReplayMix, generate_stream
    from pipeline.topics import TopicNames

    ns = fresh_namespace("bb")
    names = TopicNames(ns)
    stack.ensure_topics(s, names)
    src, dst = names.raw("TMALL"), names.CANONICAL
    messages = list(generate_stream(count, seed, ReplayMix()))
    producer = kafka_io.producer(s)
    kafka_io.produce_all(producer, ((src, m.key, m.value, None) for m in messages))
    consumer = kafka_io.consumer(s, group=f"{ns}copy", **{"fetch.wait.max.ms": 10})
    parts = consumer.list_topics(src, timeout=10).topics[src].partitions
    consumer.assign([TopicPartition(src, p, 0) for p in parts])
    copied = 0
    start = time.perf_counter()
    while copied < count:
        for m in consumer.consume(1000, timeout=1.0):
            if m.error():
                continue
            while True:
                try:
                    producer.produce(dst, key=m.key(), value=m.value())
                    break
                except BufferError:
                    producer.poll(0.01)
            copied += 1
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - start
    consumer.close()
    return {"messages": count, "seconds": round(elapsed, 3), "msgs_per_s": round(count / elapsed, 1)}


def start_workers(s, ns: str, count: int, port_base: int, extra_env: dict | None = None):
    """Worker(s) plus the local verifier service (5 ms per call), as in the demo."""
    from pipeline import processes
    verifier_port = port_base + 50
    extra_env = {**(extra_env or {}), "ORDERSTREAM_VERIFIER_PORT": str(verifier_port)}
    verifiers = processes.start(s, f"{ns}verifiers", ["verifiers", "--latency-ms", "5"],
                                {"ORDERSTREAM_NAMESPACE": ns, **extra_env})
    processes.wait_http(f"http://127.0.0.1:{verifier_port}/health", verifiers, timeout=30)
    procs = [verifiers]
    for i in range(count):
        env = {"ORDERSTREAM_NAMESPACE": ns, "ORDERSTREAM_WORKER_WEB_PORT": str(port_base + i), **(extra_env or {})}
        procs.append(processes.start(s, f"{ns}worker-{i}", ["worker"], env))
    for i, p in enumerate(procs[1:]):
        processes.wait_http(f"http://127.0.0.1:{port_base + i}/ready", p, timeout=180)
    return procs


def status_mb(pid: int, field: str) -> float | None:
    """A memory line of /proc/PID/status (VmRSS now, VmHWM the peak) in MB; None once it exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    return status_mb(pid, "VmHWM")


def pipeline_run(s, count: int, seed: int, *, rate_per_min=None, workers: int = 1, partitions: int | None = None,
                 port_base: int = 6300) -> dict:
    """Fresh namespace, worker(s), a replay, exact reconciliation; throughput from first raw to last outcome."""
    from pipeline import kafka_io, stack

    from pipeline.replay import ReplayConfig, run_replay
    from pipeline.topics import TopicNames

    ns = fresh_namespace("bp")
    names = TopicNames(ns)
    env = {"ORDERSTREAM_PARTITIONS": str(partitions)} if partitions else {}
    stack.ensure_topics(s, names, partitions=partitions)
    procs = start_workers(s, ns, workers, port_base, env)
    try:
        cfg = ReplayConfig(count=count, seed=seed, rate_per_min=rate_per_min, drain_timeout_s=900)
        report = run_replay(s, names, ns + s.app_id, cfg)
        raw_ts = [r.timestamp_ms for r in kafka_io.read_topics(s, list(names.RAW_TOPICS), idle_s=1.0)]
        out_ts = [r.timestamp_ms for r in kafka_io.read_topics(s, [names.INVENTORY_EVENTS, names.RISK_EVENTS],
                                                              idle_s=1.0)]
        span_s = (max(out_ts) - min(raw_ts)) / 1000
        return {
            "namespace": ns, "workers": workers, "partitions": partitions or s.partitions, "messages": count,
            "balanced": report["balanced"], "span_s": round(span_s, 3),
            "orders_per_s": round(count / span_s, 1),
            "latency_ms": report["latency_ms"], "breaker_transitions": report["breaker_transitions"],
            "worker_peak_rss_mb": [peak_rss_mb(p.pid) for p in procs[1:]],
        }
    finally:
        for p in procs:
            p.stop()


def rebalance_time(s, port_base: int = 6400) -> dict:
    """Two workers on 8 partitions: time from the second worker's start until both are ready again."""
    from pipeline import processes, stack
    from pipeline.topics import TopicNames

    ns = fresh_namespace("br")
    stack.ensure_topics(s, TopicNames(ns), partitions=8)
    env = {"ORDERSTREAM_PARTITIONS": "8"}
    verifiers, first = start_workers(s, ns, 1, port_base, env)
    try:
        start = time.perf_counter()
        second = processes.start(s, f"{ns}worker-1", ["worker"], {"ORDERSTREAM_NAMESPACE": ns,
                                 "ORDERSTREAM_WORKER_WEB_PORT": str(port_base + 1), **env})
        processes.wait_http(f"http://127.0.0.1:{port_base + 1}/ready", second, timeout=180)
        processes.wait_http(f"http://127.0.0.1:{port_base}/ready", first, timeout=180)
        elapsed = time.perf_counter() - start
        second.stop()
        return {"join_until_both_ready_s": round(elapsed, 2)}
    finally:
        first.stop()
        verifiers.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-seconds", type=int, default=60, help="length of the 800 orders/min run")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()

    from pipeline import stack
    from pipeline.config import load_settings
    s = load_settings()
    stack.up(s)

    baselines, runs = [], []
    for i in range(args.repeats):
        baselines.append(baseline_copy(s, args.orders, seed=100 + i))
        runs.append(pipeline_run(s, args.orders, seed=100 + i))
    base = statistics.median(b["msgs_per_s"] for b in baselines)
    one = statistics.median(r["orders_per_s"] for r in runs)
    result = {
        "benchmark": "bench_pipeline",
        "command": "python -m benchmarks.bench_pipeline " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                    vars(args).items() if v not in (False, True, None))
                   + (" --skip-scale" if args.skip_scale else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "baseline_confluent_copy": {"runs": baselines, "median_msgs_per_s": base},
        "one_worker": {"runs": runs, "median_orders_per_s": one, "ratio_to_baseline": round(one / base, 4)},
    }
    # the seeds' peak: 800 orders/minute, latency from the raw message's broker time to the reservation
    count = int(800 * args.latency_seconds / 60)
    peak = pipeline_run(s, count, seed=7, rate_per_min=800)
    result["peak_800_per_min"] = peak
    if not args.skip_scale:
        two = pipeline_run(s, args.orders, seed=9, workers=2, partitions=8, port_base=6350)
        result["two_workers_8_partitions"] = {**two, "ratio_to_one_worker": round(two["orders_per_s"] / one, 3),
                                              "ratio_to_baseline": round(two["orders_per_s"] / base, 4)}
        result["rebalance"] = rebalance_time(s)
    lat = peak["latency_ms"]
    result["summary"] = [
        f"bare confluent consume->produce: {base:,.0f} msgs/s (median of {args.repeats})",
        f"one worker end to end: {one:,.0f} orders/s = {one / base:.1%} of the bare copy",
        f"at 800 orders/min: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms",
        f"worker peak RSS after {args.orders} orders: {runs[-1]['worker_peak_rss_mb'][0]} MB",
    ]
    if "two_workers_8_partitions" in result:
        two = result["two_workers_8_partitions"]
        result["summary"].append(f"two workers, 8 partitions: {two['orders_per_s']:,.0f} orders/s "
                                 f"({two['ratio_to_one_worker']:.2f}x one worker); join->ready "
                                 f"{result['rebalance']['join_until_both_ready_s']} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
