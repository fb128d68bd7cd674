"""Dedupe: decisions per second (pure, one core) and the RocksDB state size per million keys.

The state size is measured on the same store and value format the worker uses: rocksdict (Faust's
rocksdb:// store) with JSON-encoded windowed keys and SeenVersion values.

    .venv/bin/python -m benchmarks.bench_dedupe [--keys 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rocksdict import Rdict

from pipeline.domain.dedupe import Change, decide, version_of
from pipeline.domain.normalize import normalize
from pipeline.devtools.fake_orders import ReplayMix, generate_stream

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dedupe.json"


def decisions_per_s(orders: list[dict], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        seen = {}
        start = time.perf_counter()
        for order in orders:
            incoming = version_of(order)
            change = decide(seen.get(order["order_id"]), incoming, "0:1")
            if change in (Change.NEW, Change.UPDATE):
                seen[order["order_id"]] = incoming.remembered_as("0:1", change)
        rates.append(len(orders) / (time.perf_counter() - start))
    return statistics.median(rates)


def state_bytes_per_million(keys: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="dedupe-state-"))
    try:
        db = Rdict(str(directory))
        window = [1795564800.0, 1795651199.9]
        value = {"fingerprint": "9f" * 16, "updated_at_ms": 1795600000000, "status_rank": 1,
                 "source": "3:1234567", "change": "new"}
        start = time.perf_counter()
        for i in range(keys):
            key = json.dumps([f"TM-{i:020x}", window]).encode()
            db[key] = json.dumps({**value, "updated_at_ms": value["updated_at_ms"] + i}).encode()
        db.flush()
        db.compact_range(None, None)
        write_s = time.perf_counter() - start
        db.close()
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        return {"keys": keys, "bytes": size, "mb_per_million_keys": round(size / keys * 1e6 / 2**20, 1),
                "write_s": round(write_s, 2)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc)
    orders = []
    for m in generate_stream(args.orders, 4, ReplayMix(), start=now):
        result = normalize(m.platform, m.value, now)
        if result.order is not None:
            orders.append(result.order)
    rate = decisions_per_s(orders, args.repeats)
    state = state_bytes_per_million(args.keys)
    out = {
        "benchmark": "bench_dedupe",
        "command": f"python -m benchmarks.bench_dedupe --keys {args.keys}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": vars(args),
        "decisions_per_s_median": round(rate),
        "state": state,
        "summary": [f"dedupe decisions (fingerprint + compare), one core: {rate:,.0f} orders/s",
                    f"RocksDB state: {state['mb_per_million_keys']} MB per million order ids"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
