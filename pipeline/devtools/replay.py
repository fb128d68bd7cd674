"""Black Friday replay: produce realistic raw orders along a sale-day curve, then reconcile.

The generator (pipeline.devtools.fake_orders) knows what each message should become, so the
reconciliation is exact: every produced message must come out once, as a new order or update
(orders.unique), a dropped copy (orders.duplicates) or a dead letter, every new order must reach
exactly one terminal risk/inventory outcome. The stock is reconciled too (issue 17): every unit
of every SKU put in by the replay's snapshots or returned by a refund is available, locked,
presale, reserved or shipped in Redis, nothing is negative, each cell and each order's record is
exactly what inventory.events (and refunds.events for the returns) say (pipeline.domain.stock_ledger,
pipeline.domain.stock_balance), every late payment got one outcome, and
exactly the updates meant to be suspect were flagged, with the rule meant. After the refunds the
stock is audited again, the returned units counted (pipeline.domain.stock_balance).

Late payments need wall-clock time: their paid updates (the generator's `late` phase) are
produced after the main phase has drained and `late_after_s` has passed, which must be longer
than the worker's ORDERSTREAM_RESERVATION_TIMEOUT_S for the reservations to have timed out.
With a refund rate (ReplayConfig.refunds), refunds of the reserved orders follow, each with the
fate it must meet (pipeline.devtools.fake_refunds.reconcile_refunds accounts for each).
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
from ..codecs import CodecError, dead_letter_codec, order_codec
from ..config import Settings
from ..contracts import (BreakerTransition, DroppedDuplicate, InventoryEvent, RefundEvent, RefundRequest, RiskEvent,
                         StockUpdate, SuspectTransition, WarehouseStock)
from ..domain import stock_balance, stock_ledger
from ..inventory_store import InventoryStore
from ..topics import TopicNames
from .fake_orders import SKUS, RawMessage, ReplayMix, generate_stream
from .fake_refunds import RefundMix, run_refunds

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
    late_after_s: float = 0.0          # wait after the main phase drained before the late payments
    mix: ReplayMix = field(default_factory=ReplayMix)
    refunds: RefundMix = field(default_factory=RefundMix)  # rate 0: no refunds


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


def produce_replay(s: Settings, names: TopicNames, cfg: ReplayConfig, progress=None,
                   before_late=None, stock_applied=None) -> tuple[list[RawMessage], dict]:
    """Produce stock, then the raw stream; returns the messages and their broker coordinates.
    With `stock_applied`, the orders wait until it returns (the snapshots are in Redis: a snapshot
    applied after a shipment would count the shipped units again). Messages of the generator's
    late phase are produced after `before_late()` (e.g. wait for the pipeline to drain) and
    `cfg.late_after_s` seconds."""
    producer = kafka_io.producer(s)
    kafka_io.produce_all(producer, ((names.INVENTORY_STOCK, f"{e.warehouse}:{e.sku}".encode(),
                                     WarehouseStock.encode(e), None) for e in stock_events(cfg)))
    if stock_applied is not None:
        stock_applied()
    stock_at_ms = int(time.time() * 1000)
    # event times start now, so SLA countdowns and time checks see a live sale
    messages = list(generate_stream(cfg.count, cfg.seed, cfg.mix, start=datetime.now(timezone.utc)))
    main = [i for i, m in enumerate(messages) if m.phase != "late"]
    late = [i for i, m in enumerate(messages) if m.phase == "late"]
    offsets = send_offsets(len(main), cfg)
    coordinates: dict[int, tuple[str, int, int]] = {}
    failures: list[str] = []

    def on_delivery(index):
        def done(err, msg):
            if err is not None:
                failures.append(str(err))
            else:
                coordinates[index] = (msg.topic(), msg.partition(), msg.offset())
        return done

    def send(indexes: list[int], due: list[float] | None) -> None:
        start = time.monotonic()
        for n, i in enumerate(indexes):
            m = messages[i]
            if due is not None:
                delay = due[n] - (time.monotonic() - start)
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

    start = time.monotonic()
    send(main, offsets)
    if late:
        if before_late is not None:
            before_late()
        time.sleep(cfg.late_after_s)
        send(late, None)
    if failures:
        raise RuntimeError(f"{len(failures)} raw messages were not acknowledged by the broker: {failures[:3]}")
    return messages, {"coordinates": coordinates, "produce_s": time.monotonic() - start, "stock_at_ms": stock_at_ms}


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
    return [*names.RAW_TOPICS, names.RISK_QUEUE, names.RISK_DECISIONS, names.INVENTORY_STOCK,
            names.REFUND_REQUESTS, names.REFUND_ACTIONS]


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


def _fact(event) -> tuple:
    fields = event.as_dict()
    return tuple(sorted((k, str(v)) for k, v in fields.items() if not k.endswith(("_ms", "_at")) and k != "at"))


def _keys_by_topic(unique: list, accepted: list, risk_events: list, inventory: list) -> dict[str, list]:
    return {
        "orders.unique": [(r.headers.get("src"), r.headers.get("change")) for r in unique],
        "orders.accepted": [(r.headers.get("src"), r.headers.get("change")) for r in accepted],
        "risk.events": [_fact(ev) for ev in risk_events],
        "inventory.events": [_fact(ev) for ev in inventory],
    }


def doubles_by_topic(unique: list, accepted: list, risk_events: list, inventory: list) -> dict[str, int]:
    """Outputs seen more than once by a reader of each topic: on orders.unique and orders.accepted
    the same raw message announced again (its `src` coordinates and change), on risk.events and
    inventory.events the same fact (order, event, and its own fields but the time it was stamped)."""
    return {topic: sum(n - 1 for n in Counter(keys).values() if n > 1)
            for topic, keys in _keys_by_topic(unique, accepted, risk_events, inventory).items()}


def doubles_sample(unique: list, accepted: list, risk_events: list, inventory: list, limit: int = 3) -> dict:
    """Up to `limit` of the outputs seen more than once, per topic (what to look for in the logs)."""
    return {topic: [list(k) for k, n in Counter(keys).items() if n > 1][:limit]
            for topic, keys in _keys_by_topic(unique, accepted, risk_events, inventory).items()}


def reconcile(s: Settings, names: TopicNames, messages: list[RawMessage], coordinates: dict,
              initial_stock: list[StockUpdate] | None = None, stock_at_ms: int | None = None) -> dict:
    """Read every stage's output and account for each produced message exactly once, and for every
    unit of stock (`initial_stock`: the snapshots the replay put in at `stock_at_ms`; without
    them totals are not checked)."""
    codec = order_codec()
    dlq = read_all(s, names.DLQ)
    unique = read_all(s, names.UNIQUE)
    dropped = read_all(s, names.DUPLICATES)
    accepted = read_all(s, names.ACCEPTED)
    risk_events = [RiskEvent.decode(r.value) for r in read_all(s, names.RISK_EVENTS)]
    inventory = [InventoryEvent.decode(r.value) for r in read_all(s, names.INVENTORY_EVENTS)]
    breaker = [BreakerTransition.decode(r.value) for r in read_all(s, names.BREAKER_EVENTS)]
    suspect_records = read_all(s, names.SUSPECT)

    produced_coords = {f"{t}:{p}:{o}" for t, p, o in coordinates.values()}
    # every raw message leaves exactly one trace: a new order or update, a dropped copy, a dead letter
    came_out = Counter(r.headers.get("src", b"").decode() for r in unique + dropped + dlq)
    lost = sorted(produced_coords - set(came_out))
    doubled_raw = sum(n - 1 for c, n in came_out.items() if c in produced_coords and n > 1)

    expected_new = {m.order_id for m in messages if m.kind == "new"}
    unique_new = Counter(codec.decode(r.value)["order_id"] for r in unique if r.headers.get("change") == b"new")
    unique_updates = sum(1 for r in unique if r.headers.get("change") == b"update")
    unique_suspects = sum(1 for r in unique if r.headers.get("change") == b"suspect")

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
    # shipped by the platform before it could be reserved (e.g. while held): nothing to reserve
    shipped_first = {o for o, evs in inv_by_order.items() if "shipped_unreserved" in evs} - reserved
    rejected = verdicts["rejected"]
    still_held = verdicts["held"] - verdicts["approved"] - verdicts["auto_released"] - rejected
    unaccounted = expected_new - accepted_new - rejected - still_held
    not_reserved = accepted_new - reserved - out_of_stock - cancelled - rejected - shipped_first
    latencies = [ev.latency_ms for ev in inventory if ev.latency_ms is not None
                 and ev.event in ("reserved", "out_of_stock", "backorder")]
    units_reserved = sum(ev.units for ev in inventory if ev.event == "reserved")
    stock = stock_audit(s, names, inventory, initial_stock, stock_at_ms)
    suspects = suspect_audit(messages, coordinates, suspect_records)
    late = late_payment_audit(messages, stock_ledger.fold(ev.as_dict() for ev in inventory))
    stale_expected = sum(1 for m in messages if m.kind == "out_of_order")
    return {
        "doubles_by_topic": doubles_by_topic(unique, accepted, risk_events, inventory),
        "doubles_sample": doubles_sample(unique, accepted, risk_events, inventory),
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
        "unique_suspects": unique_suspects,
        "shipped": len({ev.order_id for ev in inventory if ev.event == "shipped"}),
        "units_shipped": stock["units_shipped_by_events"],
        "ship_skipped": len({ev.order_id for ev in inventory if ev.event == "ship_skipped"}),
        "shipped_unreserved": len({ev.order_id for ev in inventory if ev.event == "shipped_unreserved"}),
        "expired": len({ev.order_id for ev in inventory if ev.event == "expired"}),
        "stale_dropped": sum(1 for r in dropped if DroppedDuplicate.decode(r.value).outcome == "stale"),
        "stale_expected": stale_expected,
        "stock": stock,
        "suspects": suspects,
        "late_payments": late,
        # orders.unique is at-least-once (a crash or rebalance re-emits up to a commit interval of
        # work); balance is judged on outcomes, which are idempotent by order id
        "balanced": (not lost and not (expected_new - set(unique_new)) and not unaccounted and not not_reserved
                     and stock["balanced"] and suspects["balanced"] and late["balanced"]),
    }


def read_returns(s: Settings, names: TopicNames) -> tuple[list[stock_balance.Return], list[str]]:
    """The refunds that reached returned_to_stock (refunds.events) with their requests' lines
    (refunds.requests), and the ids of returns the requests do not explain."""
    requests: dict[str, tuple] = {}
    events: list[dict] = []
    for r in kafka_io.read_topics(s, [names.REFUND_REQUESTS, names.REFUND_EVENTS], idle_s=1.5, max_s=600):
        if r.topic == names.REFUND_EVENTS:
            events.append(RefundEvent.decode(r.value).as_dict())
            continue
        try:
            req = RefundRequest.decode(r.value)
        except CodecError:
            continue   # an unreadable request opened no refund (its `invalid` event says so)
        requests.setdefault(req.refund_id, req.lines)   # a repeated request is ignored by the agent
    return stock_balance.returned_facts(events, requests)


def stock_audit(s: Settings, names: TopicNames, inventory: list[InventoryEvent],
                initial_stock: list[StockUpdate] | None = None, stock_at_ms: int | None = None) -> dict:
    """Redis against the inventory and refund events, cell by cell and order by order, and every
    unit put in or returned accounted for as available, locked, presale, reserved or shipped, none
    negative (pipeline.domain.stock_balance).

    A snapshot re-bases `total` (`shipped` and `returned` keep counting), so the units put in by
    the replay's snapshots are balanced against what shipped and came back after them
    (`stock_at_ms`): a replay into a namespace that already had orders and refunds still balances."""
    ledgers = stock_ledger.fold(ev.as_dict() for ev in inventory)
    want_reserved, want_shipped = stock_ledger.expected_cells(ledgers.values())
    shipped_since = stock_ledger.expected_cells(
        ledger for ledger in stock_ledger.fold(ev.as_dict() for ev in inventory
                                               if stock_at_ms is None or ev.event != "shipped"
                                               or ev.at_ms >= stock_at_ms).values())[1]
    returns, unexplained = read_returns(s, names)
    want_returned, unknown_cells = stock_balance.returned_cells(returns, ledgers)
    returned_since = stock_balance.returned_cells(returns, ledgers, stock_at_ms)[0]
    initial = {(u.warehouse, u.sku): u for u in initial_stock or ()}
    skus = sorted({sku for _, sku in initial} | {sku for _, sku in want_reserved} | {sku for _, sku in want_shipped}
                  | {sku for _, sku in want_returned} | set(SKUS))
    with InventoryStore(s.redis, prefix=f"{names.ns}inv") as store:
        levels = {sku: store.stock_by_warehouse(sku) for sku in skus}
        records = store.reservations(ledgers)
    cells = {(wh, sku): level for sku, by_wh in levels.items() for wh, level in by_wh.items()}
    audit = stock_balance.audit_cells(cells, want_reserved, want_shipped, want_returned,
                                      {cell: u.total for cell, u in initial.items()}, shipped_since, returned_since)
    differing, negative, unbalanced = audit["differing"], audit["negative"], audit["unbalanced"]
    order_mismatch = [oid for oid, ledger in ledgers.items() if not stock_ledger.record_agrees(ledger, records[oid])]
    inconsistent = sorted(oid for oid, ledger in ledgers.items() if ledger.inconsistent)
    units = {k: sum(getattr(l, k) for l in cells.values()) for k in stock_balance.LEVEL_NAMES}
    return {
        "cells": len(cells), "cells_differing": len(differing), "cell_diff_sample": dict(list(differing.items())[:5]),
        "negative": negative, "unbalanced": len(unbalanced), "unbalanced_sample": unbalanced[:5],
        "orders_checked": len(ledgers), "record_mismatches": len(order_mismatch),
        "record_mismatch_sample": [{"order_id": oid, "events": sorted(ledgers[oid].kinds),
                                    "redis": (records[oid] or {}).get("state")} for oid in order_mismatch[:5]],
        "inconsistent_events": inconsistent[:5],
        "units_put_in": sum(u.total for u in initial.values()) if initial else None,
        "units_available": sum(max(0, l.available) for l in cells.values()),
        "units_locked": units["locked"], "units_presale": units["presale"],
        "units_reserved": units["reserved"], "units_shipped": units["shipped"], "units_returned": units["returned"],
        "units_reserved_by_events": sum(want_reserved.values()),
        "units_shipped_by_events": sum(want_shipped.values()),
        "units_returned_by_events": sum(want_returned.values()),
        "units_returned_since_put_in": sum(returned_since.values()),
        "returns": len(returns),
        "returns_of_shipped_orders": sum(1 for ret in returns
                                         if ret.order_id in ledgers and "shipped" in ledgers[ret.order_id].kinds),
        "returns_unexplained": unexplained[:5], "returns_without_cells": unknown_cells[:5],
        "balanced": not (differing or negative or unbalanced or order_mismatch or inconsistent or unexplained
                         or unknown_cells),
    }


def suspect_audit(messages: list[RawMessage], coordinates: dict, records) -> dict:
    """Exactly the messages meant to be suspect were flagged, each once, with the rule meant
    (matched by the raw message's coordinates, which ride on orders.suspect as `src`)."""
    expected = {"%s:%s:%s" % coordinates[i]: m.expect_rule for i, m in enumerate(messages)
                if m.expect_rule and i in coordinates}
    produced = {"%s:%s:%s" % c for c in coordinates.values()}
    flagged: dict[str, set] = defaultdict(set)
    for r in records:  # a re-emitted copy (crash) lands on the same src; earlier replays' are not ours
        src = r.headers.get("src", b"").decode()
        if src in produced:
            flagged[src].add(SuspectTransition.decode(r.value).rule)
    by_rule = Counter(rule for rules in flagged.values() for rule in rules)
    missing = sorted(set(expected) - set(flagged))
    unexpected = sorted(set(flagged) - set(expected))
    wrong = sorted(src for src in set(expected) & set(flagged) if flagged[src] != {expected[src]})
    return {"expected": len(expected), "flagged": len(flagged), "by_rule": dict(by_rule), "missing": missing[:5],
            "unexpected": unexpected[:5], "wrong_rule": wrong[:5],
            "balanced": not missing and not unexpected and not wrong}


def late_payment_audit(messages: list[RawMessage], ledgers: dict[str, stock_ledger.OrderLedger]) -> dict:
    """Every order paid after its reservation expired got exactly one outcome (reserved again or
    out of stock), and only orders that were paid got one. The generator's late payments are
    certainly late; an ordinary payment may be too, when it comes after the time-out."""
    late_ids = {m.order_id for m in messages if m.kind == "late_payment"}
    paid_ids = {m.order_id for m in messages if m.order_id and m.status not in ("", "PENDING_PAYMENT", "CANCELLED")}
    ours = {m.order_id for m in messages if m.order_id}   # a namespace may hold earlier replays' orders
    expired = {oid for oid, ledger in ledgers.items() if "expired" in ledger.kinds and oid in ours}
    rereserved = {oid for oid in expired if "rereserved" in ledgers[oid].kinds}
    out_of_stock = {oid for oid in expired if ledgers[oid].late_out_of_stock}
    both = sorted(rereserved & out_of_stock)
    without = sorted((late_ids & expired) - rereserved - out_of_stock)
    unpaid = sorted((rereserved | out_of_stock) - paid_ids)
    return {"late_payments": len(late_ids), "expired_before_payment": len(late_ids & expired),
            "expired": len(expired), "rereserved": len(rereserved), "out_of_stock": len(out_of_stock),
            "both": both[:5], "without_outcome": without[:5], "outcome_without_payment": unpaid[:5],
            "balanced": not both and not without and not unpaid}


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

    def drain_first() -> None:  # the late phase's payments must come after the time-outs
        wait_drained(s, names, app_group, cfg.drain_timeout_s, check_alive=check_alive)

    def stock_in_redis() -> None:  # the worker committed the snapshots: they are applied
        deadline = time.monotonic() + cfg.drain_timeout_s
        while group_lag(s, app_group, [names.INVENTORY_STOCK]) != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stock snapshots were not applied within {cfg.drain_timeout_s:.0f}s")
            if check_alive:
                check_alive()
            time.sleep(0.2)

    messages, produced = produce_replay(s, names, cfg, progress, before_late=drain_first, stock_applied=stock_in_redis)
    if messages_out is not None:
        messages_out.extend(messages)
    drain_s = wait_drained(s, names, app_group, cfg.drain_timeout_s, check_alive=check_alive)
    elapsed = time.monotonic() - t0
    report = reconcile(s, names, messages, produced["coordinates"], stock_events(cfg), produced["stock_at_ms"])
    deadline = time.monotonic() + settle_holds_s
    while report["awaiting_decision"] and time.monotonic() < deadline:
        time.sleep(2)
        wait_drained(s, names, app_group, cfg.drain_timeout_s, settle_s=1.0, check_alive=check_alive)
        report = reconcile(s, names, messages, produced["coordinates"], stock_events(cfg), produced["stock_at_ms"])
    if cfg.refunds.rate > 0:
        # after the orders: refund requests for reserved ones, decisions, receipts, a key rotation
        # and its re-drive (pipeline.devtools.fake_refunds), each refund and fen accounted for
        report["refunds"] = run_refunds(s, names, cfg.refunds, cfg.seed, timeout_s=cfg.drain_timeout_s)
        # the returned goods are back in `total`: every unit again, now with the returns counted
        report["stock_after_refunds"] = stock_audit(
            s, names, [InventoryEvent.decode(r.value) for r in read_all(s, names.INVENTORY_EVENTS)],
            stock_events(cfg), produced["stock_at_ms"])
        report["balanced"] = (report["balanced"] and report["refunds"]["balanced"]
                              and report["stock_after_refunds"]["balanced"])
    report.update({
        "config": {**asdict(cfg), "mix": asdict(cfg.mix)},
        "namespace": names.ns,
        "stock_at_ms": produced["stock_at_ms"],   # the snapshots were in Redis: the audits count from here
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
           "stock_audit", "read_returns", "stock_events", "dead_letter_codec"]
