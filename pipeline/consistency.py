"""`orderstream reconcile states --day D`: the daily consistency check (seed 003's 02:00 robot).

Reads what the platforms sent on day D (the raw topics, from the first offset at D's start to
the end offsets when the check starts, normalized exactly as the worker does), what the sink
holds for those orders (ClickHouse, through the sink's read-only /sql endpoint while it runs,
or the chDB data directory directly when it does not) and what Redis holds, and compares them
(pipeline.domain.consistency). The report (JSON) lists every difference and the consistency
ratio per platform against the 99.997 % target.

Read-only everywhere: it never writes to Kafka (no consumer group commits), ClickHouse
(readonly=1) or Redis (MGET).
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from . import kafka_io
from .config import Settings
from .domain import stock_ledger
from .domain.consistency import TARGET_RATIO, Inputs, latest_views, compare
from .domain.normalize import normalize
from .inventory_store import InventoryStore
from .kafka_io import Record
from .topics import TopicNames

Query = Callable[[str], list[dict]]
CHUNK = 1000                      # order ids per ClickHouse query (the /sql endpoint returns <= 10,000 rows)
MAX_ROWS = 10_000
MARGIN_MS = 10 * 60_000           # read this much before the day too: orders whose message straddles midnight
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
DEFAULT_UTC_OFFSET_H = 8.0        # the seeds' business day is China time


class CheckError(RuntimeError):
    """The check could not read one of its sources; the message says which and why."""


# -- the day ------------------------------------------------------------------------------------

def day_window(day: date, utc_offset_h: float = DEFAULT_UTC_OFFSET_H) -> tuple[int, int]:
    """[start, end) of the local day in epoch ms."""
    tz = timezone(timedelta(hours=utc_offset_h))
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


# -- Kafka: the raw topics ----------------------------------------------------------------------

def read_raw(s: Settings, names: TopicNames, from_ms: int, idle_s: float = 2.0) -> Iterator[Record]:
    """Every raw message from the first offset at `from_ms` up to the end offsets as of now."""
    c = kafka_io.consumer(s, group=f"consistency-{time.monotonic_ns()}")
    try:
        md = c.list_topics(timeout=10)
        wanted = [TopicPartition(t, p, from_ms) for t in names.RAW_TOPICS if t in md.topics
                  for p in md.topics[t].partitions]
        if not wanted:
            return
        starts = c.offsets_for_times(wanted, timeout=15)
        ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted}
        assign = []
        for tp in starts:
            end = ends[(tp.topic, tp.partition)]
            start = end if tp.offset < 0 else tp.offset  # -1: nothing at or after from_ms
            if start < end:
                assign.append(TopicPartition(tp.topic, tp.partition, start))
        remaining = {(tp.topic, tp.partition): ends[(tp.topic, tp.partition)] for tp in assign}
        if not assign:
            return
        c.assign(assign)
        last = time.monotonic()
        while remaining:
            msgs = c.consume(1000, timeout=0.5)
            if not msgs:
                if time.monotonic() - last > idle_s * 10:
                    raise CheckError(f"raw topics stopped short of their end offsets: {remaining}")
                continue
            last = time.monotonic()
            for m in msgs:
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                tp = (m.topic(), m.partition())
                if tp not in remaining or m.offset() >= remaining[tp]:
                    continue
                yield Record.from_confluent(m)
                if m.offset() + 1 >= remaining[tp]:
                    del remaining[tp]
    finally:
        c.close()


def worker_lag(s: Settings, names: TopicNames, group: str) -> int | None:
    """Raw messages the worker group has not committed yet (a caveat on a check run while busy)."""
    try:
        ends = kafka_io.end_offsets(s, list(names.RAW_TOPICS))
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        req = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])]
        got = admin.list_consumer_group_offsets(req)[group].result()
        committed = {(tp.topic, tp.partition): tp.offset for tp in got.topic_partitions}
        return sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())
    except Exception:  # noqa: BLE001 - a caveat only; the check itself does not depend on it
        return None


# -- ClickHouse: through the sink, or directly ---------------------------------------------------

def sink_query(url: str, timeout_s: float = 60.0, token: str = "") -> Query:
    """Read-only SQL through the running sink's /sql endpoint (POST body), as the analyst `token`
    names (ORDERSTREAM_SINK_TOKEN for the CLI)."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def run(sql: str) -> list[dict]:
        req = urllib.request.Request(f"{url.rstrip('/')}/sql", data=sql.encode(), method="POST",
                                     headers={"Content-Type": "text/plain", **auth})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.loads(resp.read())["rows"]
        except urllib.error.HTTPError as exc:
            raise CheckError(f"the sink refused a query ({exc.code}): {exc.read()[:500]!r}") from None
        except OSError as exc:
            raise CheckError(f"the sink at {url} did not answer: {exc}") from None
    return run


def backend_query(backend) -> Query:
    from .clickhouse.backends import readonly_query
    return lambda sql: readonly_query(backend, sql, MAX_ROWS)


def _ids(order_ids: Iterable[str]) -> str:
    ids = list(order_ids)
    bad = [o for o in ids if not _SAFE_ID.match(o)]
    if bad:
        raise CheckError(f"order ids the check will not put in SQL: {bad[:3]}")
    return ", ".join(f"'{o}'" for o in ids)


def _chunks(items: list, n: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _bounded(rows: list[dict], what: str) -> list[dict]:
    if len(rows) >= MAX_ROWS:
        raise CheckError(f"{what}: {len(rows)} rows, the read-only endpoint's limit; use a smaller chunk")
    return rows


def _ts(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({int(ms)}, 'UTC')"


def read_sink(query: Query, order_ids: list[str], day: tuple[int, int]) -> dict:
    """What ClickHouse holds: trusted states, suspects and inventory events of `order_ids`, the
    orders it first saw during the day, and the dead letters it holds from the raw topics."""
    status, platform_of, suspects = {}, {}, defaultdict(set)
    events: list[dict] = []
    for chunk in _chunks(sorted(order_ids)):
        ids = _ids(chunk)
        for r in _bounded(query(f"SELECT order_id, any(platform) AS platform, argMaxMerge(last_status) AS status "
                                f"FROM order_state WHERE order_id IN ({ids}) GROUP BY order_id"), "order_state"):
            status[r["order_id"]], platform_of[r["order_id"]] = r["status"], r["platform"]
        for r in _bounded(query(f"SELECT order_id, to_status, rule FROM suspect_transitions "
                                f"WHERE order_id IN ({ids})"), "suspect_transitions"):
            suspects[r["order_id"]].add((r["to_status"], r["rule"]))
        for r in _bounded(query(f"SELECT order_id, event, warehouse, line_skus, line_quantities, line_warehouses, "
                                f"reason FROM inventory_events WHERE order_id IN ({ids})"), "inventory_events"):
            events.append({"order_id": r["order_id"], "event": r["event"], "warehouse": r["warehouse"] or None,
                           "reason": r["reason"],
                           "lines": [{"sku": s, "quantity": int(q), "warehouse": w or None}
                                     for s, q, w in zip(r["line_skus"], r["line_quantities"], r["line_warehouses"])]})
    first_seen: dict[str, str] = {}
    after = ""
    while True:  # orders announced new during the day (keyset pages)
        rows = _bounded(query(
            f"SELECT order_id, any(platform) AS platform FROM order_events "
            f"WHERE change = 'new' AND ingest_time >= {_ts(day[0])} AND ingest_time < {_ts(day[1])} "
            f"AND order_id > '{after}' GROUP BY order_id ORDER BY order_id LIMIT {CHUNK}"), "order_events")
        first_seen.update({r["order_id"]: r["platform"] for r in rows})
        if len(rows) < CHUNK:
            break
        after = rows[-1]["order_id"]
        if not _SAFE_ID.match(after):
            raise CheckError(f"unexpected order id {after!r} in order_events")
    return {"status": status, "platform": platform_of, "suspects": dict(suspects), "events": events,
            "first_seen": first_seen}


def landed_dead_letters(query: Query, coords: list[tuple[str, int, int]]) -> set[str]:
    by_tp: dict[tuple[str, int], list[int]] = defaultdict(list)
    for t, p, o in coords:
        by_tp[(t, p)].append(o)
    landed: set[str] = set()
    for (t, p), offsets in by_tp.items():
        if not _SAFE_ID.match(t):
            raise CheckError(f"unexpected topic name {t!r}")
        for chunk in _chunks(sorted(offsets)):
            rows = query(f"SELECT source_offset FROM dead_letters WHERE source_topic = '{t}' AND source_partition = "
                         f"{int(p)} AND source_offset IN ({', '.join(str(int(o)) for o in chunk)})")
            landed |= {f"{t}:{p}:{int(r['source_offset'])}" for r in rows}
    return landed


# -- the check ------------------------------------------------------------------------------------

def check_states(s: Settings, names: TopicNames, day: date, query: Query, utc_offset_h: float = DEFAULT_UTC_OFFSET_H,
                 target: float = TARGET_RATIO, group: str | None = None) -> dict:
    """The whole check for one day: the report (see pipeline.domain.consistency.compare), with the
    sources' coordinates and how much the worker still had to process when it ran."""
    started = time.time()
    start_ms, end_ms = day_window(day, utc_offset_h)
    orders, in_day, seen, dead = [], set(), set(), []
    messages = 0
    for r in read_raw(s, names, start_ms - MARGIN_MS):
        messages += 1
        platform = names.platform_of(r.topic)
        result = normalize(platform, r.value or b"", datetime.fromtimestamp(max(r.timestamp_ms, 0) / 1000, timezone.utc),
                           max_bytes=s.max_payload_bytes)
        during = start_ms <= r.timestamp_ms < end_ms
        if result.order is None:
            if during:
                dead.append((platform, (r.topic, r.partition, r.offset)))
            continue
        orders.append(result.order)
        seen.add(result.order["order_id"])
        if during:
            in_day.add(result.order["order_id"])
    views = {oid: v for oid, v in latest_views(orders).items() if oid in in_day}
    sink = read_sink(query, sorted(views), (start_ms, end_ms))
    with InventoryStore(s.redis, prefix=f"{names.ns}inv") as store:
        records = store.reservations(sorted(views))
    landed = landed_dead_letters(query, [c for _, c in dead])
    inputs = Inputs(
        views=views, sink_status=sink["status"], suspects=sink["suspects"],
        ledgers=stock_ledger.fold(sink["events"]), records=records,
        extras={oid: plat for oid, plat in sink["first_seen"].items() if oid not in seen},
        dead_letters=[(plat, "%s:%s:%s" % c) for plat, c in dead], dead_letters_landed=landed)
    report = compare(inputs, target)
    return {
        "day": day.isoformat(), "utc_offset_h": utc_offset_h,
        "window": {"from": _iso(start_ms), "to": _iso(end_ms)},
        "checked_at": _iso(int(started * 1000)), "namespace": names.ns,
        "raw_messages_read": messages, "orders_of_the_day": len(views),
        "worker_lag_at_check": worker_lag(s, names, group) if group else None,
        **report,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_report(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
