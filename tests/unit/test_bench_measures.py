"""The benchmarks' own measures: CPU time from /proc/PID/stat, the RSS slope fit, the command line."""
import argparse
import os
import time
from pathlib import Path

import pytest

from benchmarks.bench_pipeline import command_line, cpu_per_1000, cpu_seconds, cpu_ticks, medians, per_core
from benchmarks.bench_worker_memory import mb_per_1000_orders

# pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime ...
STAT = "4242 (java) odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 89 10 20 0 12 0 3 0"


def test_cpu_ticks_are_utime_plus_stime_after_the_last_parenthesis():
    assert cpu_ticks(STAT) == 1234 + 567


def test_cpu_seconds_of_this_process_follow_its_cpu_time():
    start = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) - start == pytest.approx(0.3, abs=0.05)


def test_cpu_per_1000_orders_divides_each_groups_difference():
    got = cpu_per_1000({"worker": 10.0, "broker": 2.0}, {"worker": 16.0, "broker": 2.5}, 3000)
    assert got == {"worker": 2.0, "broker": pytest.approx(0.1667)}


def test_medians_take_rate_and_each_cpu_group_separately():
    runs = [{"msgs_per_s": r, "cpu_s_per_1000": {"worker": w, "broker": b}}
            for r, w, b in [(100, 0.5, 0.3), (300, 0.4, 0.1), (200, 0.6, 0.2)]]
    got = medians(runs, "msgs_per_s")
    assert (got["median_msgs_per_s"], got["median_cpu_s_per_1000"]) == (200, {"worker": 0.5, "broker": 0.2})


def test_cpu_per_1000_reads_as_orders_per_second_on_one_core():
    assert per_core(0.5) == "0.5 s (~2,000/s per core)"
    assert per_core(0.0) == "0.0 s"


def test_rss_slope_is_fitted_only_after_the_warm_up():
    # 100 MB flat during the warm-up, then +0.5 MB per 1,000 orders; samples without a count are skipped
    samples = [(0, 50.0, 0), (5, 100.0, 50_000), (10, 400.0, None)]
    samples += [(15 + i, 100.0 + 0.5 * i * 10, 100_000 + i * 10_000) for i in range(1, 6)]
    assert mb_per_1000_orders(samples, after=100_000) == pytest.approx(0.5)


def test_rss_slope_needs_two_order_counts():
    assert mb_per_1000_orders([(5, 100.0, 150_000), (10, 120.0, 150_000)], after=100_000) is None
    assert mb_per_1000_orders([(5, 100.0, 50_000), (10, 120.0, 90_000)], after=100_000) is None


def test_command_line_names_the_results_file_only_when_it_moved():
    default = Path("benchmarks/results/x.json")
    args = argparse.Namespace(orders=20000, skip_scale=True, quiet=False, results=default)
    assert command_line("x", args, default) == "python -m benchmarks.x --orders 20000 --skip-scale"
    args.results = Path("/tmp/x.json")
    assert command_line("x", args, default).endswith("--skip-scale --results /tmp/x.json")


def test_bench_analyst_summarizes_insert_latencies_in_ms():
    from benchmarks.bench_analyst import percentile, summarize
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 5.0 and percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert summarize([0.010, 0.020, 0.030, 2.5]) == {"inserts": 4, "median_ms": 25.0, "p95_ms": 2500.0,
                                                     "max_ms": 2500.0}
