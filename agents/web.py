"""Worker HTTP endpoints (Faust's own web server): /metrics, /health, /ready, plus the lag gauge."""
from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pipeline import metrics
from pipeline.app import ROCKSDB_BUDGET, app
from pipeline.faust_internals import consumer_lag, offsets_report, rocksdb_memory

from .inventory import store


@app.page("/metrics")
async def metrics_page(web, request):
    return web.bytes(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])


async def dependency_health() -> dict[str, bool]:
    broker_ok = bool(app.consumer and app.consumer.assignment()) or not app.rebalancing
    try:
        redis_ok = bool(await asyncio.wait_for(store().redis.ping(), timeout=1.0))
    except Exception:  # any failure is "down" for a probe
        redis_ok = False
    status = {"broker": broker_ok, "redis": redis_ok}
    for name, ok in status.items():
        metrics.DEPENDENCY_UP.labels(dependency=name).set(1 if ok else 0)
    return status


@app.page("/health")
async def health_page(web, request):
    status = await dependency_health()
    return web.json({"ok": all(status.values()), **status}, status=200 if all(status.values()) else 503)


def is_ready() -> bool:
    """Assigned partitions, recovered tables, no rebalance in progress."""
    return (not app.rebalancing and app.tables.recovery.completed.is_set()
            and bool(app.consumer.assignment()))


@app.page("/ready")
async def ready_page(web, request):
    ready = is_ready()
    return web.json({"ready": ready}, status=200 if ready else 503)


@app.page("/debug/offsets")
async def offsets_page(web, request):
    """Per assigned partition: committed, last read, acked-but-uncommitted and unacked offsets.
    A lag that never shrinks shows up here as an offset that was read but never acked."""
    return web.json(offsets_report(app.consumer))


@app.timer(interval=5.0)
async def export_consumer_lag_and_health():
    """Prometheus sees lag and dependency health every 5 s, whether or not anyone calls /health."""
    await dependency_health()
    for tp, lag in consumer_lag(app.consumer).items():
        metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)


@app.timer(interval=15.0)
async def export_table_store_memory():
    """What RocksDB keeps in memory, per table: the native part of a worker's RSS that Python's
    allocation tracing cannot see."""
    if ROCKSDB_BUDGET is None:
        return
    totals = {"memtables": 0, "table_readers": 0}
    for table in app.tables.values():
        for kind, size in rocksdb_memory(table).items():
            totals[kind] += size
    totals["shared_cache"] = ROCKSDB_BUDGET.usage_bytes()
    for kind, size in totals.items():
        metrics.TABLE_STORE_MEMORY.labels(kind=kind).set(size)


_baseline = None


@app.page("/debug/memory")
async def memory_page(web, request):
    """With PYTHONTRACEMALLOC set: the allocation sites that grew most since the first call."""
    import tracemalloc
    global _baseline
    if not tracemalloc.is_tracing():
        return web.json({"error": "start the worker with PYTHONTRACEMALLOC=1"}, status=409)
    snapshot = tracemalloc.take_snapshot()
    _baseline = _baseline or snapshot
    top = snapshot.compare_to(_baseline, "lineno")[:30]
    return web.json({"traced_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 1),
                     "growth": [str(stat) for stat in top]})
