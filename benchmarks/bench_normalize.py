"""Normalization throughput on one core, no Kafka.

Generates the raw messages up front (the default replay mix: all platforms, redeliveries,
updates, ~1% malformed), then times `normalize` over all of them, and separately normalize +
Avro encode of the canonical orders (what the agent does per message). Median of N repeats.

    .venv/bin/python -m benchmarks.bench_normalize [--count 20000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.codecs import order_codec
from pipeline.domain.normalize import content_fingerprint, normalize
from pipeline.devtools.fake_orders import ReplayMix, generate_stream

RESULTS = Path(__file__).resolve().parent / "results" / "bench_normalize.json"


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)

    now = datetime.now(timezone.utc)
    messages = [(m.platform, m.value) for m in
                generate_stream(args.count, args.seed, ReplayMix(), start=now - timedelta(hours=6))]
    codec = order_codec()
    norm = normalize

    def only_normalize():
        for source, value in messages:
            norm(source, value, now)

    def normalize_and_encode():
        encode = codec.encode
        for source, value in messages:
            result = norm(source, value, now)
            if result.order is not None:
                encode(result.order)

    def normalize_encode_fingerprint():
        encode = codec.encode
        for source, value in messages:
            result = norm(source, value, now)
            if result.order is not None:
                encode(result.order)
                content_fingerprint(result.order)

    only_normalize()  # warm-up
    rejected = sum(norm(p, v, now).order is None for p, v in messages)
    variants = {}
    for name, fn in (("normalize", only_normalize), ("normalize+avro_encode", normalize_and_encode),
                     ("normalize+avro_encode+fingerprint", normalize_encode_fingerprint)):
        times = _time(fn, args.repeats)
        med = statistics.median(times)
        variants[name] = {"median_s": round(med, 4), "orders_per_s": round(len(messages) / med),
                          "us_per_order": round(med / len(messages) * 1e6, 2),
                          "runs_s": [round(t, 4) for t in times]}
        print(f"{name:36s} {variants[name]['orders_per_s']:>9,} msg/s  ({variants[name]['us_per_order']} us/msg)")

    report = {
        "benchmark": "bench_normalize",
        "params": {"count": len(messages), "repeats": args.repeats, "seed": args.seed, "mix": "ReplayMix() defaults",
                   "dead_lettered": rejected, "payload_bytes_mean": round(sum(len(v) for _, v in messages) / len(messages))},
        "results": variants,
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "when": now.isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
