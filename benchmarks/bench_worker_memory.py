"""Worker memory over a long drain: one worker works through a backlog of --orders raw orders (a
million by default: over an hour at today's speed) while its RSS is read every 5 s together with
how many orders its group has committed; the slope after the first --warmup-orders says how much
memory grows per order processed.

    .venv/bin/python -m benchmarks.bench_worker_memory                        # 1,000,000 orders
    .venv/bin/python -m benchmarks.bench_worker_memory --orders 20000 --warmup-orders 5000 \
        --results benchmarks/results/tmp/bench_worker_memory.json            # a check of the harness

Writes benchmarks/results/bench_worker_memory.json (or --results). Nothing is reconciled (the run
is about memory): completeness is the worker group's lag reaching 0 on every input topic.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.bench_pipeline import (broker_pid, check_alive, command_line, cpu_now, cpu_per_1000, fresh_namespace,
                                       machine, peak_rss_mb, per_core, start_workers, write_result)
from benchmarks.bench_worker_profile import RssSampler, rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "bench_worker_memory.json"
PORT_BASE = 6540  # worker web port; its verifier service takes PORT_BASE + 50


def mb_per_1000_orders(samples: list[tuple], after: int) -> float | None:
    """Least-squares slope of RSS against orders processed, in MB per 1,000 orders, over the
    (seconds, MB, orders) samples taken once more than `after` orders were done; None without two."""
    points = [(orders, mb) for _, mb, orders in samples if orders is not None and orders > after]
    if len({orders for orders, _ in points}) < 2:
        return None
    return round(statistics.linear_regression(*zip(*points)).slope * 1000, 4)


def orders_done(s, group: str, raw_topics: list[str], total: int) -> int | None:
    """Raw orders the worker group has committed: all produced minus its lag on the raw topics."""
    from confluent_kafka import KafkaException

    from pipeline.devtools.replay import group_lag

    try:
        lag = group_lag(s, group, raw_topics)
    except KafkaException:  # a slow broker answer: this sample has no order count
        return None
    return None if lag is None else total - lag


def table_store_mb(port: int) -> dict[str, float] | None:
    """The worker's RocksDB memory by kind (orderstream_table_store_memory_bytes), in MB; None
    when /metrics does not answer."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return {sample.labels["kind"]: round(sample.value / 2**20, 1)
            for family in text_string_to_metric_families(text) if family.name == "orderstream_table_store_memory_bytes"
            for sample in family.samples}


def drain(s, names, worker, total: int, warmup: int) -> dict:
    """RSS (with orders done and RocksDB's memory) every 5 s, and the worker's and broker's CPU,
    until the group's lag is 0."""
    from pipeline.devtools.replay import wait_drained

    group, raw = names.ns + s.app_id, list(names.RAW_TOPICS)
    rocksdb_mb: list = []

    def orders_and_rocksdb() -> int | None:
        rocksdb_mb.append(table_store_mb(PORT_BASE))
        return orders_done(s, group, raw, total)

    sampler = RssSampler(worker.pid, probe=orders_and_rocksdb)
    pids = {"worker": [worker.pid], "broker": [broker_pid(s)]}
    done_before, before = orders_done(s, group, raw, total) or 0, cpu_now(pids)
    sampler.start()
    drained_s = wait_drained(s, names, group, timeout=12 * 3600, check_alive=check_alive([worker]))
    cpu = cpu_per_1000(before, cpu_now(pids), total - done_before)
    sampler.done.set()
    sampler.join()
    return {
        "messages": total, "drain_s": round(drained_s, 1),
        "orders_per_s": round((total - done_before) / drained_s, 1),
        "worker_rss_mb_at_end": rss_mb(worker.pid), "worker_peak_rss_mb": peak_rss_mb(worker.pid),
        "warmup_orders": warmup, "rss_mb_per_1000_orders": mb_per_1000_orders(sampler.samples, warmup),
        "cpu_s_per_1000": cpu,
        # (seconds into the drain, MB, orders done), at most ~100 of them: the fit used every sample
        "worker_rss_mb_over_time": sampler.samples[:: max(1, len(sampler.samples) // 100)],
        # RocksDB's own memory (memtables, block cache, table readers) at the same samples
        "rocksdb_mb_over_time": rocksdb_mb[:: max(1, len(sampler.samples) // 100)],
    }


def summary_of(r: dict) -> list[str]:
    slope, cpu = r["rss_mb_per_1000_orders"], r["cpu_s_per_1000"]
    growth = (f"{slope:+.3f} MB per 1,000 orders after the first {r['warmup_orders']:,} (linear fit)"
              if slope is not None else f"no slope: fewer than two samples after the first {r['warmup_orders']:,} orders")
    return [
        f"one worker draining a {r['messages']:,}-order backlog: {r['orders_per_s']:,.0f} orders/s, group lag 0 at the end",
        f"worker RSS after {r['messages']:,} orders: {r['worker_rss_mb_at_end']} MB "
        f"(peak {r['worker_peak_rss_mb']} MB); {growth}",
        f"CPU per 1,000 orders while draining: worker {per_core(cpu['worker'])}, broker {per_core(cpu['broker'])}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--warmup-orders", type=int, default=100_000, help="orders before the slope fit starts")
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()

    from pipeline.config import load_settings
    from pipeline.devtools import stack
    from pipeline.devtools.replay import ReplayConfig, produce_replay
    from pipeline.kafka_io import ensure_topics
    from pipeline.topics import TopicNames

    s = load_settings()
    stack.up(s)
    ns = fresh_namespace("bm")
    names = TopicNames(ns)
    ensure_topics(s, names)
    # the whole backlog before the worker starts; the returned messages are dropped at once
    produce_replay(s, names, ReplayConfig(count=args.orders, seed=args.seed))
    procs = start_workers(s, ns, 1, PORT_BASE)
    try:
        result = drain(s, names, procs[1], args.orders, args.warmup_orders)
    finally:
        for p in procs:
            p.stop()
    result = {"benchmark": "bench_worker_memory", "command": command_line("bench_worker_memory", args, RESULTS),
              "machine": machine(), "namespace": ns, **result}
    result["summary"] = summary_of(result)
    write_result(args.results, result)


if __name__ == "__main__":
    main()
