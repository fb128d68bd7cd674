"""Orders per buyer IP in Redis (pipeline.velocity) against the real redis-server."""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from pipeline.velocity import IpVelocity

pytestmark = pytest.mark.stack

T0 = 1_700_000_000_000
HOUR_MS = 3_600_000


def counts(redis_url, prefix, *batches, window_s=3600):
    """Count each batch in turn on one IpVelocity; the per-batch results."""
    async def run():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            velocity = IpVelocity(client, prefix, window_s)
            return [await velocity.count(batch) for batch in batches]
        finally:
            keys = [k async for k in client.scan_iter(f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    return asyncio.run(run())


def test_counts_orders_per_ip_within_one_batch(redis_url, redis_prefix):
    batch = [("1.1.1.1", "A", T0), ("2.2.2.2", "B", T0), ("1.1.1.1", "C", T0 + 1), ("1.1.1.1", "D", T0 + 2)]
    assert counts(redis_url, redis_prefix, batch) == [[1, 1, 2, 3]]


def test_an_order_counts_once_however_often_it_is_processed(redis_url, redis_prefix):
    first = [("1.1.1.1", "A", T0), ("1.1.1.1", "B", T0 + 5)]
    replayed = [("1.1.1.1", "A", T0 + 60_000), ("1.1.1.1", "B", T0 + 60_005)]  # after a crash
    assert counts(redis_url, redis_prefix, first, replayed) == [[1, 2], [2, 2]]


def test_orders_older_than_the_window_no_longer_count(redis_url, redis_prefix):
    early = [("1.1.1.1", f"E{i}", T0 + i) for i in range(4)]
    late = [("1.1.1.1", "L", T0 + HOUR_MS + 2)]  # E0..E2 are more than an hour older
    assert counts(redis_url, redis_prefix, early, late) == [[1, 2, 3, 4], [2]]


def test_an_empty_batch_asks_nothing(redis_url, redis_prefix):
    assert counts(redis_url, redis_prefix, []) == [[]]
