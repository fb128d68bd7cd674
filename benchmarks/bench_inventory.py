"""Reservations per second against the real redis-server: one at a time vs pipelined batches.

The worker's own store (AsyncInventoryStore over redis.asyncio) on one event loop. Each repeat
uses a fresh key prefix with deep stock (every order succeeds, so both modes do the same work),
orders of 1-3 lines over 20 SKUs and four candidate warehouses, policy "next". Reports the
median over the repeats and writes benchmarks/results/bench_inventory.json.

    .venv/bin/python -m benchmarks.bench_inventory [--orders 4000] [--batch 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio

from pipeline.config import load_settings
from pipeline.devtools import stack
from pipeline.domain.warehouse import DEFAULT_WAREHOUSES
from pipeline.inventory_store import AsyncInventoryStore

RESULTS = Path(__file__).resolve().parent / "results" / "bench_inventory.json"
SKUS = [f"SKU-{i:03d}" for i in range(20)]
WAREHOUSES = [w.id for w in DEFAULT_WAREHOUSES]


def make_orders(n: int, seed: int):
    rng = random.Random(seed)
    return [(f"bench-{seed}-{i}", [(sku, rng.randint(1, 3)) for sku in rng.sample(SKUS, rng.randint(1, 3))],
             rng.sample(WAREHOUSES, len(WAREHOUSES)), "next") for i in range(n)]


async def fresh_store(client: redis.asyncio.Redis) -> AsyncInventoryStore:
    store = AsyncInventoryStore(client, prefix=f"bench{uuid.uuid4().hex[:8]}")
    for wh in WAREHOUSES:
        for sku in SKUS:
            await store.apply_snapshot(wh, sku, total=1_000_000)
    return store


async def purge(client: redis.asyncio.Redis, prefix: str) -> None:
    batch = []
    async for key in client.scan_iter(f"{prefix}:*", count=2000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch.clear()
    if batch:
        await client.delete(*batch)


async def run_once(client: redis.asyncio.Redis, orders, batch: int) -> float:
    store = await fresh_store(client)
    try:
        t0 = time.perf_counter()
        if batch <= 1:
            outcomes = [(await store.reserve(*o)).outcome for o in orders]
        else:
            outcomes = [r.outcome for i in range(0, len(orders), batch)
                        for r in await store.reserve_many(orders[i:i + batch])]
        elapsed = time.perf_counter() - t0
        assert outcomes.count("reserved") == len(orders), "benchmark orders must all succeed"
        return len(orders) / elapsed
    finally:
        await purge(client, store.keys.prefix)


async def measure(url: str, repeats: int, n_orders: int, modes: dict[str, int]) -> tuple[dict, str]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        rates: dict[str, list[float]] = {m: [] for m in modes}
        await run_once(client, make_orders(200, seed=999), 1)   # warm-up: script load, connection
        for rep in range(repeats):
            orders = make_orders(n_orders, seed=rep)
            for mode, batch in modes.items():
                rates[mode].append(await run_once(client, orders, batch))
        return rates, (await client.info("server")).get("redis_version")
    finally:
        await client.aclose()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    settings = load_settings()
    stack.redis_up(settings)
    modes = {"one_at_a_time": 1, f"pipelined_batch_{args.batch}": args.batch}
    rates, redis_version = asyncio.run(measure(settings.redis, args.repeats, args.orders, modes))
    result = {
        "benchmark": "bench_inventory",
        "unit": "reservations/s",
        "median": {m: round(statistics.median(v), 1) for m, v in rates.items()},
        "runs": {m: [round(x, 1) for x in v] for m, v in rates.items()},
        "params": {"orders_per_repeat": args.orders, "batch": args.batch, "repeats": args.repeats,
                   "skus": len(SKUS), "warehouses": len(WAREHOUSES), "lines_per_order": "1-3",
                   "policy": "next", "client": "redis-py asyncio, one connection"},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "redis_server": redis_version, "redis_py": redis.__version__},
    }
    one, piped = result["median"].values()
    result["speedup"] = round(piped / one, 2) if one else None
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
