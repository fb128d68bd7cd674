"""ClickHouse (chDB) benchmark: rows/s into the fact tables and each tier view's query time.

Two ingest figures:
- sink_path: Kafka-shaped messages (real Avro orders, JSON events) through ClickHouseSink:
  decode + row mapping + batched insert (10k rows) with dedup tokens and materialized views.
- bulk_insert: pre-mapped rows straight into backend.insert in 10k batches, which is how the
  1,000,000-order data set for the view timings is loaded.
Then every tier is queried `--repeats` times (after one warm-up) and the median reported.

    .venv/bin/python -m benchmarks.bench_clickhouse [--orders 1000000] [--sink-messages 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.rows import (INVENTORY_COLUMNS, ORDER_COLUMNS, RISK_COLUMNS, ch_time)
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import TIERS
from pipeline.codecs import order_codec
from pipeline.contracts import InventoryEvent, InventoryLine, RiskEvent
from pipeline.kafka_io import Record
from pipeline.topics import PLATFORMS, TopicNames

RESULTS = Path(__file__).resolve().parent / "results" / "bench_clickhouse.json"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
HOUR = 3_600_000
WAREHOUSES = ("WH-SH", "WH-GZ", "WH-BJ", "WH-CD")
SHIPPED = ("SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED")


def _order(rng: random.Random, i: int, created: int) -> dict:
    plat = PLATFORMS[i % len(PLATFORMS)]
    qty, price = rng.randint(1, 3), rng.randint(500, 30_000)
    return {
        "schema_version": 2, "order_id": f"O{i:09d}", "platform": plat, "external_order_id": str(i),
        "external_ids": {}, "id_fallback": False, "status": "PAID", "status_raw": "PAID",
        "currency": "USD" if plat == "SHOPIFY" else "CNY",
        "amounts": {"goods_minor": qty * price, "discount_minor": 0, "coupon_minor": 0, "shipping_minor": 0,
                    "total_minor": qty * price},
        "lines": [{"sku": f"SKU-{i % 500}", "title": "", "quantity": qty, "unit_price_minor": price,
                   "is_gift_card": False, "is_custom": False}],
        "buyer": {"buyer_id": f"b{i % 9973}", "name": "", "phone": "", "ip": None},
        "address": {"country": "CN", "province": "Zhejiang", "city": "", "district": "", "detail": "",
                    "postal_code": ""},
        "note": None, "flags": {"invoice": False, "gift": False, "urgent": False, "gift_card": False},
        "created_at": created, "paid_at": created, "updated_at": created, "ship_by": created + 48 * HOUR,
        "risk_flags": [], "checked_lightly": False, "ingest_time": created,
    }


def bench_sink_path(backend, n: int, batch: int) -> dict:
    """Real messages through ClickHouseSink: 60% orders, 30% inventory events, 10% risk events."""
    rng = random.Random(1)
    names = TopicNames("benchsink.")
    codec = order_codec()
    msgs, offsets = [], {}
    for i in range(n):
        created = NOW_MS - rng.randint(0, 7 * 24 * HOUR)
        kind = i % 10
        if kind < 6:
            topic, value, headers = names.UNIQUE, codec.encode(_order(rng, 10_000_000 + i, created)), {"change": b"new"}
        elif kind < 9:
            topic, headers = names.INVENTORY_EVENTS, {}
            value = InventoryEvent("reserved", f"O{i}", "JD", created, warehouse="WH-SH",
                                   lines=(InventoryLine("s", 2, "WH-SH"),), units=2, latency_ms=12.5).encode()
        else:
            topic, headers = names.RISK_EVENTS, {}
            value = RiskEvent("held", f"O{i}", "JD", created, rule_ids=("r",), severity="high", approvers=("alice",),
                              amount_minor=1, currency="CNY", ruleset_version=1).encode()
        p = i % 4
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        msgs.append(Record(topic, p, off, None, value, headers, created))
    sink = ClickHouseSink(backend, names, max_rows=batch, max_seconds=3600)
    started = time.perf_counter()
    for m in msgs:
        sink.add(m)
        if sink.pending_rows():
            sink.flush()
    sink.flush(force=True)
    elapsed = time.perf_counter() - started
    return {"messages": n, "seconds": round(elapsed, 3), "rows_per_s": round(n / elapsed)}


def _fact_rows(n_orders: int, batch: int):
    """(table, columns, rows) batches for n_orders: new orders, shipments, reservations, holds."""
    rng = random.Random(2)
    src = {"src_partition": 0, "kafka_ts": ch_time(NOW_MS)}
    orders, updates, inventory, risk = [], [], [], []
    offsets = {"order_events": 0, "inventory_events": 0, "risk_events": 0}

    def emit(table, rows, columns):
        for r in rows:
            r.update(src, src_topic=f"bench.{table}", src_offset=offsets[table])
            offsets[table] += 1
        return table, columns, rows

    for i in range(n_orders):
        created = NOW_MS - rng.randint(0, 10 * 24 * HOUR)
        plat = PLATFORMS[i % len(PLATFORMS)]
        total = rng.randint(500, 90_000)
        base = {"order_id": f"O{i:09d}", "platform": plat, "status": "PAID", "change": "new",
                "currency": "USD" if plat == "SHOPIFY" else "CNY", "total_minor": total, "goods_minor": total,
                "discount_minor": 0, "coupon_minor": 0, "shipping_minor": 0, "country": "CN",
                "province": "Zhejiang", "created_at": ch_time(created), "paid_at": ch_time(created),
                "ship_by": ch_time(created + (48 if plat == "DOUYIN" else 24) * HOUR),
                "updated_at": ch_time(created), "ingest_time": ch_time(created), "buyer_id": f"b{i % 9973}",
                "line_count": 1, "units": 2, "flag_invoice": False, "flag_gift": False, "flag_urgent": False,
                "flag_gift_card": False, "id_fallback": False, "risk_flags": [], "checked_lightly": False}
        orders.append(base)
        if rng.random() < 0.6:
            shipped = created + rng.randint(1, 40) * HOUR
            if shipped <= NOW_MS:
                updates.append({**base, "status": rng.choice(SHIPPED), "change": "update",
                                "updated_at": ch_time(shipped)})
        at = created + rng.randint(100, 5000)
        wh = WAREHOUSES[i % len(WAREHOUSES)]
        ok = rng.random() < 0.93
        inventory.append({"event": "reserved" if ok else "out_of_stock", "order_id": base["order_id"],
                          "platform": plat, "at": ch_time(at), "warehouse": wh if ok else "",
                          "line_skus": [f"SKU-{i % 500}"] if ok else [], "line_quantities": [2] if ok else [],
                          "line_warehouses": [wh] if ok else [], "units": 2 if ok else 0, "reason": "",
                          "latency_ms": rng.uniform(5, 800)})
        if rng.random() < 0.05:
            risk.append({"event": "held", "order_id": base["order_id"], "platform": plat, "at": ch_time(at),
                         "rule_ids": ["high_amount"], "severity": "high", "approvers": [rng.choice("abcde")],
                         "operator": None, "reason": "", "amount_minor": total, "currency": base["currency"],
                         "ruleset_version": 1, "waited_ms": None})
        if len(orders) >= batch:
            yield emit("order_events", orders, list(ORDER_COLUMNS))
            orders = []
        if len(updates) >= batch:
            yield emit("order_events", updates, list(ORDER_COLUMNS))
            updates = []
        if len(inventory) >= batch:
            yield emit("inventory_events", inventory, list(INVENTORY_COLUMNS))
            inventory = []
        if len(risk) >= batch:
            yield emit("risk_events", risk, list(RISK_COLUMNS))
            risk = []
    for table, rows, cols in (("order_events", orders, ORDER_COLUMNS), ("order_events", updates, ORDER_COLUMNS),
                              ("inventory_events", inventory, INVENTORY_COLUMNS), ("risk_events", risk, RISK_COLUMNS)):
        if rows:
            yield emit(table, rows, list(cols))


def bench_bulk(backend, n_orders: int, batch: int) -> dict:
    rows = 0
    insert_s = 0.0
    started = time.perf_counter()
    for i, (table, columns, chunk) in enumerate(_fact_rows(n_orders, batch)):
        t0 = time.perf_counter()
        backend.insert(table, chunk, columns, f"bench|{table}|{i}")
        insert_s += time.perf_counter() - t0
        rows += len(chunk)
    return {"orders": n_orders, "rows": rows, "insert_seconds": round(insert_s, 3),
            "rows_per_s": round(rows / insert_s), "wall_seconds_incl_generation": round(time.perf_counter() - started, 3)}


def bench_views(backend, repeats: int) -> dict:
    out = {}
    for name, fn in TIERS.items():
        fn(backend, now=NOW)  # warm-up: first touch of the parts
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(backend, now=NOW)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_ms": round(statistics.median(times) * 1000, 2),
                     "min_ms": round(min(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--sink-messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-chdb-"))
    backend = ChdbBackend(workdir / "data")
    try:
        migrate(backend)
        sink = bench_sink_path(backend, args.sink_messages, args.batch)
        print(f"sink path: {sink['rows_per_s']:,} rows/s ({sink['messages']:,} messages)", flush=True)
        bulk = bench_bulk(backend, args.orders, args.batch)
        print(f"bulk insert: {bulk['rows_per_s']:,} rows/s ({bulk['rows']:,} rows for {args.orders:,} orders)",
              flush=True)
        views = bench_views(backend, args.repeats)
        for name, v in views.items():
            print(f"view {name}: median {v['median_ms']} ms over {args.repeats}", flush=True)
        counts = {t: backend.query(f"SELECT count() AS n FROM {t}")[0]["n"]
                  for t in ("order_events", "inventory_events", "risk_events", "order_state")}
    finally:
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)
    import chdb
    result = {
        "benchmark": "bench_clickhouse", "backend": "chdb", "chdb_version": chdb.__version__,
        "params": vars(args) | {"out": str(args.out)},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "sink_path": sink, "bulk_insert": bulk, "views": views, "table_rows": counts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
