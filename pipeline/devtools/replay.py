"""Black Friday replay: produce realistic raw orders along a sale-day curve, then reconcile.

The generator (pipeline.devtools.fake_orders) knows what each message should become, so the
reconciliation is exact: every produced message must come out once, as a new order or update
(orders.unique), a dropped copy (orders.duplicates) or a dead letter, every new order must reach exactly one terminal risk/inventory outcome.
"""
from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timezone
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from .. import kafka_io
from ..codecs import dead_letter_codec, order_codec
from ..config import Settings
from ..contracts import BreakerTransition, InventoryEvent, RiskEvent, StockUpdate, WarehouseStock
from ..topics import TopicNames
from .fake_orders import SKUS, RawMessage, ReplayMix, generate_stream

# Relative orders per hour of a sale day (seeds: 12,000 in the first hour after midnight,
# a daytime plateau, an evening rise). Only the shape matters; `--speed` sets the clock.
SALE_DAY_PROFILE = (12000, 4200, 1600, 700, 400, 300, 350, 600, 900, 1200, 1400, 1500,
                    1600, 1500, 1400, 1500, 1700, 1900, 2200, 2600, 3000, 3400, 3000, 2000)
WAREHOUSES = ("WH-SH", "WH-GZ", "WH-BJ", "WH-CD")


@dataclass
class ReplayConfig:
    count: int = 2000
    seed: int = 11
    speed: str = "max"                 # "max", or a factor applied to the 24 h sale-day curve
    rate_per_min: float | None = None  # a constant rate instead of the curve (latency tests)
    stock_per_sku: int = 400           # units per SKU per warehouse seeded before the replay
    scarce_skus: int = 3               # SKUs seeded with little stock: out-of-stock and channel pauses
    drain_timeout_s: float = 300.0
    mix: ReplayMix = field(default_factory=ReplayMix)


def send_offsets(count: int, cfg: ReplayConfig) -> list[float] | None:
    """Seconds after start at which each message is due; None means as fast as possible."""
    if cfg.rate_per_min:
        return [i * 60.0 / cfg.rate_per_min for i in range(count)]
    if cfg.speed == "max":
        return None
    factor = float(cfg.speed)
    rng = random.Random(cfg.seed)
    hours = rng.choices(range(24), weights=SALE_DAY_PROFILE, k=count)
    return sorted((h + rng.random()) * 3600.0 / factor for h in hours)


def stock_events(cfg: ReplayConfig) -> list[StockUpdate]:
    events = []
    for i, sku in enumerate(SKUS):
        units = 4 if i < cfg.scarce_skus else cfg.stock_per_sku
        for wh in WAREHOUSES:
            events.append(StockUpdate("snapshot", wh, sku, total=units, locked=0, presale=0))
    return events


def produce_replay(s: Settings, names: TopicNames, cfg: ReplayConfig, progress=None) -> tuple[list[RawMessage], dict]:
    """Produce stock, then the raw stream; returns the messages and their broker coordinates."""
    producer = kafka_io.producer(s)
    kafka_io.produce_all(producer, ((names.INVENTORY_STOCK, f"{e.warehouse}:{e.sku}".encode(),
                                     WarehouseStock.encode(e), None) for e in stock_events(cfg)))
    # event times start now, so SLA countdowns and time checks see a live sale
    messages = list(generate_stream(cfg.count, cfg.seed, cfg.mix, start=datetime.now(timezone.utc)))
    offsets = send_offsets(len(messages), cfg)
    coordinates: dict[int, tuple[str, int, int]] = {}
    failures: list[str] = []

    def on_delivery(index):
        def done(err, msg):
            if err is not None:
                failures.append(str(err))
            else:
                coordinates[index] = (msg.topic(), msg.partition(), msg.offset())
        return done

    start = time.monotonic()
    for i, m in enumerate(messages):
        if offsets is not None:
            delay = offsets[i] - (time.monotonic() - start)
            if delay > 0:
                producer.poll(0)
                time.sleep(delay)
        while True:
            try:
                producer.produce(names.raw(m.platform), key=m.key, value=m.value, on_delivery=on_delivery(i))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if progress:
            progress(1)
    producer.flush(120)
    if failures:
        raise RuntimeError(f"{len(failures)} raw messages were not acknowledged by the broker: {failures[:3]}")
    return messages, {"coordinates": coordinates, "produce_s": time.monotonic() - start}


def group_lag_by_partition(s: Settings, group: str, topics: list[str]) -> dict[tuple[str, int], int] | None:
    """(topic, partition) -> end offset - committed offset of `group`; None when unknown yet."""
    admin = kafka_io.admin(s)
    ends = kafka_io.end_offsets(s, topics)
    if not ends:
        return None
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])]
    try:
        result = admin.list_consumer_group_offsets(request)[group].result()
    finally:
        admin.poll(0)  # its log lines (a coordinator still loading) go through logging
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
    return {tp: end - max(committed.get(tp, -1), 0) for tp, end in ends.items()}


def group_lag(s: Settings, group: str, topics: list[str]) -> int | None:
    """Sum of (end offset - committed offset) of `group` over `topics`; None when unknown yet."""
    lags = group_lag_by_partition(s, group, topics)
    return None if lags is None else sum(lags.values())


def worker_inputs(names: TopicNames) -> list[str]:
    """The topics the worker group consumes (risk.recheck has a group of its own)."""
    return [*names.RAW_TOPICS, names.RISK_QUEUE, names.RISK_DECISIONS, names.INVENTORY_STOCK]


def wait_drained(s: Settings, names: TopicNames, app_group: str, timeout: float, settle_s: float = 2.0,
                 check_alive=None) -> float:
    """Wait until the worker group has committed everything on every pipeline input topic.
    `check_alive()` may raise to stop waiting early (a worker that crashed will never drain)."""
    topics = worker_inputs(names)
    start = time.monotonic()
    zero_since = None
    while time.monotonic() - start < timeout:
        try:
            lags = group_lag_by_partition(s, app_group, topics)
        except KafkaException:
            lags = None  # the broker is (re)electing leaders, e.g. right after a restart: keep polling
        lag = None if lags is None else sum(lags.values())
        if lag == 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= settle_s:
                return time.monotonic() - start
        else:
            zero_since = None
        if check_alive:
            check_alive()
        time.sleep(0.5)
    behind = {f"{t}[{p}]": n for (t, p), n in (lags or {}).items() if n}
    raise TimeoutError(f"pipeline did not drain within {timeout:.0f}s (lag {lag}: {behind})")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def read_all(s: Settings, topic: str):
    return list(kafka_io.read_topics(s, [topic], idle_s=1.5, max_s=600))


def reconcile(s: Settings, names: TopicNames, messages: list[RawMessage], coordinates: dict) -> dict:
    """Read every stage's output and account for each produced message exactly once."""
    codec = order_codec()
    dlq = read_all(s, names.DLQ)
    unique = read_all(s, names.UNIQUE)
    dropped = read_all(s, names.DUPLICATES)
    accepted = read_all(s, names.ACCEPTED)
    risk_events = [RiskEvent.decode(r.value) for r in read_all(s, names.RISK_EVENTS)]
    inventory = [InventoryEvent.decode(r.value) for r in read_all(s, names.INVENTORY_EVENTS)]
    breaker = [BreakerTransition.decode(r.value) for r in read_all(s, names.BREAKER_EVENTS)]

    produced_coords = {f"{t}:{p}:{o}" for t, p, o in coordinates.values()}
    # every raw message leaves exactly one trace: a new order or update, a dropped copy, a dead letter
    came_out = Counter(r.headers.get("src", b"").decode() for r in unique + dropped + dlq)
    lost = sorted(produced_coords - set(came_out))
    doubled_raw = sum(n - 1 for c, n in came_out.items() if c in produced_coords and n > 1)

    expected_new = {m.order_id for m in messages if m.kind == "new"}
    unique_new = Counter(codec.decode(r.value)["order_id"] for r in unique if r.headers.get("change") == b"new")
    unique_updates = sum(1 for r in unique if r.headers.get("change") == b"update")

    verdicts = defaultdict(set)
    for ev in risk_events:
        verdicts[ev.event].add(ev.order_id)
    accepted_new = {codec.decode(r.value)["order_id"] for r in accepted if r.headers.get("change") != b"update"}
    inv_by_order: dict[str, set] = defaultdict(set)
    for ev in inventory:
        inv_by_order[ev.order_id].add(ev.event)
    reserved = {o for o, evs in inv_by_order.items() if "reserved" in evs}
    out_of_stock = {o for o, evs in inv_by_order.items() if evs & {"out_of_stock", "backorder"}} - reserved
    released = {o for o, evs in inv_by_order.items() if "released" in evs}
    cancelled = {o for o, evs in inv_by_order.items() if "cancelled" in evs} - reserved
    rejected = verdicts["rejected"]
    still_held = verdicts["held"] - verdicts["approved"] - verdicts["auto_released"] - rejected
    unaccounted = expected_new - accepted_new - rejected - still_held
    not_reserved = accepted_new - reserved - out_of_stock - cancelled - rejected
    latencies = [ev.latency_ms for ev in inventory if ev.latency_ms is not None
                 and ev.event in ("reserved", "out_of_stock", "backorder")]
    units_reserved = sum(ev.units for ev in inventory if ev.event == "reserved")
    return {
        "produced": len(messages),
        "produced_by_kind": dict(Counter(m.kind for m in messages)),
        "canonical": len(unique) + len(dropped),
        "dead_lettered": len(dlq),
        "expected_dead_letters": sum(1 for m in messages if m.expect == "dlq"),
        "raw_lost": len(lost),
        "lost_sample": lost[:10],
        "raw_doubled": doubled_raw,
        "unique_new_orders": len(unique_new),
        "unique_updates": unique_updates,
        "deduplicated_dropped": len(dropped),
        "new_orders_emitted_twice": sum(1 for n in unique_new.values() if n > 1),  # re-emissions (absorbed)
        "expected_new_orders": len(expected_new),
        "missing_new_orders": len(expected_new - set(unique_new)),
        "missing_sample": sorted(expected_new - set(unique_new))[:5],
        "unaccounted_sample": sorted(unaccounted)[:5],
        "without_outcome_sample": sorted(not_reserved)[:5],
        "flagged": len(verdicts["flagged"]),
        "held": len(verdicts["held"]),
        "approved": len(verdicts["approved"]),
        "auto_released": len(verdicts["auto_released"]),
        "rejected": len(rejected),
        "awaiting_decision": len(still_held),
        "rechecked": len(verdicts["rechecked"]),
        "accepted_new_orders": len(accepted_new),
        "reserved": len(reserved),
        "units_reserved": units_reserved,
        "out_of_stock": len(out_of_stock),
        "released": len(released),
        "cancelled_before_reservation": len(cancelled),
        "breaker_transitions": [f"{b.from_state}->{b.to_state}" for b in breaker],
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99), "samples": len(latencies)},
        "unaccounted_new_orders": len(unaccounted),
        "accepted_without_outcome": len(not_reserved),
        # orders.unique is at-least-once (a crash or rebalance re-emits up to a commit interval of
        # work); balance is judged on outcomes, which are idempotent by order id
        "balanced": not lost and not (expected_new - set(unique_new)) and not unaccounted and not not_reserved,
    }


def worker_peak_rss_mb(s: Settings) -> float | None:
    """VmHWM (peak resident memory) of worker-0, read from /proc."""
    try:
        pid = int((s.var / "run" / "worker-0.pid").read_text())
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_replay(s: Settings, names: TopicNames, app_group: str, cfg: ReplayConfig, progress=None,
               settle_holds_s: float = 0.0, check_alive=None, messages_out: list | None = None) -> dict:
    """Produce, wait for the pipeline to drain, reconcile. With settle_holds_s, also wait that long
    for held orders to be decided or released by the default policy before the final count.
    messages_out receives the raw messages sent (the settlement bill writer bills their orders)."""
    t0 = time.monotonic()
    messages, produced = produce_replay(s, names, cfg, progress)
    if messages_out is not None:
        messages_out.extend(messages)
    drain_s = wait_drained(s, names, app_group, cfg.drain_timeout_s, check_alive=check_alive)
    elapsed = time.monotonic() - t0
    report = reconcile(s, names, messages, produced["coordinates"])
    deadline = time.monotonic() + settle_holds_s
    while report["awaiting_decision"] and time.monotonic() < deadline:
        time.sleep(2)
        wait_drained(s, names, app_group, cfg.drain_timeout_s, settle_s=1.0, check_alive=check_alive)
        report = reconcile(s, names, messages, produced["coordinates"])
    report.update({
        "config": {**asdict(cfg), "mix": asdict(cfg.mix)},
        "namespace": names.ns,
        "produce_s": round(produced["produce_s"], 3),
        "drain_after_produce_s": round(drain_s, 3),
        "elapsed_s": round(elapsed, 3),
        "throughput_msgs_per_s": round(len(messages) / elapsed, 1),
        "worker_peak_rss_mb": worker_peak_rss_mb(s),
        "pid": os.getpid(),
    })
    return report


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


__all__ = ["ReplayConfig", "run_replay", "reconcile", "produce_replay", "wait_drained", "write_report",
           "dead_letter_codec"]
