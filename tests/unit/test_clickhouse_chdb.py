"""The ClickHouse sink and the three tiers against embedded chDB, checked against counts computed
in Python from the very messages fed in (built with the pipeline's real codecs).

`SinkSuite` is backend-neutral; test_clickhouse_server.py runs it against a ClickHouse server.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import tenacity
from aiohttp import test_utils

from pipeline.clickhouse.backends import BackendError, ChdbBackend, ReadOnlyQueryError, readonly_query
from pipeline.clickhouse.http import make_app, serve_http
from pipeline.clickhouse.migrate import discover, migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import execution, open_dead_letters, open_holds, strategic, tactical
from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.contracts import BreakerTransition, ChannelEvent, InventoryEvent, RiskEvent
from pipeline.credentials import Credentials
from pipeline.kafka_io import Record
from pipeline.topics import PLATFORMS, TopicNames

NOW = datetime(2026, 3, 10, 12, 7, 30, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
HOUR_MS = 3_600_000
SHIPPED = {"SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED"}
CLOSED = SHIPPED | {"CANCELLED"}
WAREHOUSES = ("WH-SH", "WH-GZ", "WH-BJ")
INJECTION = "x'); DROP TABLE order_events; --"

ANALYST_TOKEN = "analyst-token-0123456789"  # the sink's /views, /sql, /metrics need a token (issue 26)
AUTH = {"Authorization": f"Bearer {ANALYST_TOKEN}"}
CREDENTIALS = Credentials([(ANALYST_TOKEN, "anna", "analyst")])


# -- input: real messages, built with the pipeline's codecs ------------------------------------

def canonical_order(rng: random.Random, order_id: str, platform: str, created_ms: int, status: str,
                    updated_ms: int, ship_by_ms: int | None) -> dict:
    qty = rng.randint(1, 3)
    price = rng.randint(500, 50_000)
    shipping = rng.choice((0, 800))
    return {
        "schema_version": 2, "order_id": order_id, "platform": platform, "external_order_id": order_id[3:],
        "external_ids": {"order_id": order_id[3:]}, "id_fallback": False, "status": status, "status_raw": status,
        "currency": "USD" if platform == "SHOPIFY" else "CNY",
        "amounts": {"goods_minor": qty * price, "discount_minor": 0, "coupon_minor": 0,
                    "shipping_minor": shipping, "total_minor": qty * price + shipping},
        "lines": [{"sku": f"SKU-{rng.randint(1, 20)}", "title": "t", "quantity": qty, "unit_price_minor": price,
                   "is_gift_card": False, "is_custom": False}],
        "buyer": {"buyer_id": f"b{rng.randint(1, 50)}", "name": INJECTION, "phone": "", "ip": None},
        "address": {"country": "CN", "province": rng.choice(("Zhejiang", "Guangdong", INJECTION)), "city": "",
                    "district": "", "detail": "", "postal_code": ""},
        "note": INJECTION, "flags": {"invoice": False, "gift": False, "urgent": rng.random() < 0.1,
                                     "gift_card": False},
        "created_at": created_ms, "paid_at": created_ms + 60_000, "updated_at": updated_ms, "ship_by": ship_by_ms,
        "risk_flags": [], "checked_lightly": False, "ingest_time": updated_ms + 5,
    }


class FailingFirstInserts:
    """The real backend, whose first `failures` inserts fail as a refused connection would."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.calls = inner, failures, 0

    def insert(self, *args):
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendError("connection refused (simulated)")
        return self.inner.insert(*args)

    def query(self, *a, **k):
        return self.inner.query(*a, **k)


class Feed:
    """Messages with Kafka coordinates: offsets count up per (topic, partition)."""

    def __init__(self, names: TopicNames, partitions: int = 3) -> None:
        self.names, self.partitions = names, partitions
        self.next: Counter = Counter()
        self.messages: list[Record] = []

    def send(self, topic: str, value: bytes, ts_ms: int, key: str = "", headers: dict | None = None) -> Record:
        p = (sum(key.encode()) % self.partitions) if key else 0
        msg = Record(topic, p, self.next[(topic, p)], key.encode() or None, value, headers or {}, ts_ms)
        self.next[(topic, p)] += 1
        self.messages.append(msg)
        return msg


def sunk_dataset(path, names: TopicNames) -> ChdbBackend:
    """A chDB data dir at `path` holding make_dataset(names) as the real sink lands it."""
    backend = ChdbBackend(path)
    migrate(backend)
    sink = ClickHouseSink(backend, names, max_rows=500, max_seconds=60.0)
    for m in make_dataset(names).messages:
        sink.add(m)
    sink.flush(force=True)
    assert sink.buffered_rows() == 0, sink.last_error
    return backend


def make_dataset(names: TopicNames, orders: int = 400, seed: int = 8) -> Feed:
    rng = random.Random(seed)
    feed = Feed(names)
    codec = order_codec()
    oid = 0
    for _ in range(orders):
        oid += 1
        platform = rng.choice(PLATFORMS)
        order_id = f"{platform[:2]}-{oid:06d}"
        created = NOW_MS - rng.randint(0, 9 * 24 * HOUR_MS)  # some fall outside the 7-day window
        sla_h = 48 if platform == "DOUYIN" else 24
        ship_by = None if rng.random() < 0.05 else created + 60_000 + sla_h * HOUR_MS
        head = {"change": b"new", "src": f"raw:{oid % 3}:{oid}".encode(), "raw_ts": str(created).encode()}
        feed.send(names.UNIQUE, codec.encode(canonical_order(rng, order_id, platform, created, "PAID", created,
                                                             ship_by)), created + 10, order_id, head)
        # status progress: some ship (before or after the deadline), some cancel, some stay open
        fate = rng.random()
        if fate < 0.45 and ship_by is not None:
            shipped_at = created + rng.randint(1, sla_h + 6) * HOUR_MS
            if shipped_at <= NOW_MS:
                feed.send(names.UNIQUE, codec.encode(canonical_order(
                    rng, order_id, platform, created, rng.choice(sorted(SHIPPED)), shipped_at, ship_by)),
                    shipped_at, order_id, {"change": b"update"})
        elif fate < 0.55:
            cancelled_at = created + rng.randint(1, 10) * 60_000
            if cancelled_at <= NOW_MS:
                feed.send(names.UNIQUE, codec.encode(canonical_order(
                    rng, order_id, platform, created, "CANCELLED", cancelled_at, ship_by)),
                    cancelled_at, order_id, {"change": b"update"})
        # inventory: most orders reserve, split over warehouses sometimes; a few go out of stock
        at = created + rng.randint(50, 4000)
        if rng.random() < 0.1:  # decisions inside the execution tier's 5-minute window
            at = NOW_MS - rng.randint(1, 290_000)
        roll = rng.random()
        if roll < 0.8:
            whs = rng.sample(WAREHOUSES, rng.choice((1, 1, 2)))
            lines = [{"sku": f"SKU-{i}", "quantity": rng.randint(1, 4), "warehouse": wh} for i, wh in enumerate(whs)]
            event = {"event": "reserved", "warehouse": whs[0] if len(whs) == 1 else None, "lines": lines,
                     "units": sum(line["quantity"] for line in lines)}
        elif roll < 0.9:
            event = {"event": "out_of_stock", "warehouse": None, "lines": [], "units": 0,
                     "reason": "SKU-1 short 2"}
        else:
            event = {"event": "duplicate", "warehouse": None, "lines": [], "units": 0}
        feed.send(names.INVENTORY_EVENTS, InventoryEvent.from_dict({
            "order_id": order_id, "platform": platform, "at_ms": at, "reason": "",
            "latency_ms": round(rng.uniform(5, 900), 3), **event}).encode(), at, order_id)
        # risk: some orders are held, some of those get a decision, some are held again afterwards
        if rng.random() < 0.2:
            held_at = created + rng.randint(10, 500)
            if rng.random() < 0.3:
                held_at = NOW_MS - rng.randint(1, 3 * HOUR_MS)
            approvers = rng.choice(([], ["alice"], ["alice", "bob"], ["carol"]))
            operator = rng.choice((None, "dave")) if not approvers else None
            base = {"order_id": order_id, "platform": platform, "rule_ids": ["high_amount"], "severity": "high",
                    "approvers": approvers, "operator": operator, "reason": INJECTION, "amount_minor": 12345,
                    "currency": "CNY", "ruleset_version": 3}
            feed.send(names.RISK_EVENTS, RiskEvent.from_dict({**base, "event": "flagged", "at_ms": held_at - 1}).encode(),
                      held_at, order_id)
            feed.send(names.RISK_EVENTS, RiskEvent.from_dict({**base, "event": "held", "at_ms": held_at}).encode(), held_at, order_id)
            r = rng.random()
            if r < 0.5:
                decided = held_at + rng.randint(1000, 600_000)
                if decided <= NOW_MS:
                    feed.send(names.RISK_EVENTS, RiskEvent.from_dict({
                        **base, "event": rng.choice(("approved", "rejected", "auto_released")), "at_ms": decided,
                        "operator": "alice", "waited_ms": decided - held_at}).encode(), decided, order_id)
                    if rng.random() < 0.2 and decided + 1000 <= NOW_MS:
                        feed.send(names.RISK_EVENTS, RiskEvent.from_dict({**base, "event": "held", "at_ms": decided + 1000}).encode(),
                                  decided + 1000, order_id)
    for i in range(25):
        failed = NOW_MS - rng.randint(0, 30 * HOUR_MS)
        payload = INJECTION.encode() if i % 2 else bytes(range(256))
        feed.send(names.DLQ, dead_letter_codec().encode({
            "source_topic": names.raw("JD"), "partition": 0, "offset": i, "platform": "JD",
            "reason_code": "malformed_json", "reason": INJECTION, "key": None if i % 3 else b"k\x00",
            "payload": payload, "failed_at": failed}), failed, f"dlq{i}")
    for i in range(6):
        feed.send(names.CHANNEL_CONTROL, ChannelEvent.from_dict({"event": ("pause", "resume")[i % 2], "sku": INJECTION,
                                                      "platform": "JD", "available": 3, "threshold": 10,
                                                      "at_ms": NOW_MS - i}).encode(), NOW_MS - i, f"c{i}")
    feed.send(names.BREAKER_EVENTS, BreakerTransition.from_dict({"from_state": "closed", "to_state": "open",
                                                 "rate_per_min": 612.5, "at_ms": NOW_MS - 5000,
                                                 "worker": INJECTION}).encode(), NOW_MS - 5000, "w1")
    # undecodable input: skipped and counted, never fatal
    feed.send(names.UNIQUE, b"\xc3\x01garbage-not-avro", NOW_MS, "bad1")
    feed.send(names.RISK_EVENTS, b"{not json", NOW_MS, "bad2")
    feed.send(names.INVENTORY_EVENTS, b"[1,2,3]", NOW_MS, "bad3")
    feed.send(names.DLQ, b"plain bytes", NOW_MS, "bad4")
    return feed


# -- the independent count ---------------------------------------------------------------------

def floor_ms(ms: int, step_ms: int) -> int:
    return ms - ms % step_ms


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def r7_quantile(values: list[float], q: float) -> float:
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    return xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])


class Expected:
    """Everything the tiers report, recomputed from the decoded input messages."""

    def __init__(self, feed: Feed, names: TopicNames) -> None:
        codec = order_codec()
        self.orders, self.risk, self.inventory, self.dlq = [], [], [], []
        self.undecodable = 0
        for m in feed.messages:
            try:
                if m.topic == names.UNIQUE:
                    self.orders.append((m.headers.get("change"), codec.decode(m.value)))
                elif m.topic == names.RISK_EVENTS:
                    self.risk.append(RiskEvent.decode(m.value).as_dict())
                elif m.topic == names.INVENTORY_EVENTS:
                    self.inventory.append(InventoryEvent.decode(m.value).as_dict())
                elif m.topic == names.DLQ:
                    self.dlq.append(dead_letter_codec().decode(m.value))
            except Exception:
                self.undecodable += 1

    @staticmethod
    def ms(dt) -> int:
        return int(round(dt.timestamp() * 1000))

    def order_states(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for _, o in self.orders:
            s = out.setdefault(o["order_id"], {"platform": o["platform"], "deadline": None, "shipped": None,
                                               "status": None, "updated": -1})
            if o["ship_by"] is not None:
                sb = self.ms(o["ship_by"])
                s["deadline"] = sb if s["deadline"] is None else max(s["deadline"], sb)
            up = self.ms(o["updated_at"])
            if o["status"] in SHIPPED:
                s["shipped"] = up if s["shipped"] is None else min(s["shipped"], up)
            if up > s["updated"]:
                s["status"], s["updated"] = o["status"], up
        return out

    def strategic(self, days: int) -> dict:
        start = floor_ms(NOW_MS - days * 24 * HOUR_MS, HOUR_MS)
        per_hour, per_day, aov, plat = Counter(), Counter(), defaultdict(lambda: [0, 0]), Counter()
        for change, o in self.orders:
            c = self.ms(o["created_at"])
            if change != b"new" or c < start:
                continue
            h = floor_ms(c, HOUR_MS)
            per_hour[iso(h)] += 1
            per_day[iso(h)[:10]] += 1
            aov[(iso(h), o["currency"])][0] += 1
            aov[(iso(h), o["currency"])][1] += o["amounts"]["total_minor"]
            plat[o["platform"]] += 1
        return {"per_hour": dict(per_hour), "per_day": dict(per_day),
                "aov": {k: v[1] / v[0] for k, v in aov.items()}, "platform": dict(plat), "start": iso(start)}

    def tactical(self, hours: int) -> dict:
        start = floor_ms(NOW_MS - hours * HOUR_MS, 15 * 60_000)
        states = self.order_states()
        reserved, units, shipped_pairs = Counter(), Counter(), set()
        for ev in self.inventory:
            if ev["event"] != "reserved" or ev["at_ms"] < start:
                continue
            whs = {line["warehouse"] or ev["warehouse"] for line in ev["lines"]} or {ev["warehouse"]}
            for wh in whs:
                reserved[wh] += 1
                units[wh] += sum(line["quantity"] for line in ev["lines"] if (line["warehouse"] or ev["warehouse"]) == wh)
                if states[ev["order_id"]]["shipped"] is not None:
                    shipped_pairs.add((ev["order_id"], wh))
        shipped = Counter(wh for _, wh in shipped_pairs)
        exc: dict[tuple[str, str], int] = Counter()

        def bucket(ms: int) -> str:
            return iso(floor_ms(ms, 15 * 60_000))
        for ev in self.risk:
            if ev["event"] == "held" and ev["at_ms"] >= start:
                exc[(bucket(ev["at_ms"]), "risk_hold")] += 1
        for ev in self.inventory:
            if ev["event"] == "out_of_stock" and ev["at_ms"] >= start:
                exc[(bucket(ev["at_ms"]), "out_of_stock")] += 1
        for d in self.dlq:
            if self.ms(d["failed_at"]) >= start:
                exc[(bucket(self.ms(d["failed_at"])), "dead_letter")] += 1
        for s in states.values():
            dl = s["deadline"]
            if dl is None or dl < start or dl > NOW_MS or s["status"] == "CANCELLED":
                continue
            if s["shipped"] is None or s["shipped"] > dl:
                exc[(bucket(dl), "sla_breach")] += 1
        return {"reserved": dict(reserved), "units": dict(units), "shipped": dict(shipped), "exceptions": dict(exc)}

    def execution(self) -> dict:
        by_order: dict[str, list[dict]] = defaultdict(list)
        for ev in self.risk:
            if ev["at_ms"] <= NOW_MS:
                by_order[ev["order_id"]].append(ev)
        todo: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for oid, evs in by_order.items():
            held = [e for e in evs if e["event"] == "held"]
            res = [e["at_ms"] for e in evs if e["event"] in ("approved", "rejected", "auto_released")]
            if not held:
                continue
            last = max(held, key=lambda e: e["at_ms"])
            if res and max(res) >= last["at_ms"]:
                continue
            for who in last["approvers"] or [last["operator"] or "unassigned"]:
                todo[who].append((last["at_ms"], oid))
        lat = [ev["latency_ms"] for ev in self.inventory
               if ev["event"] in ("reserved", "out_of_stock", "backorder") and NOW_MS - 300_000 < ev["at_ms"] <= NOW_MS]
        levels = Counter()
        open_orders = []
        for oid, s in self.order_states().items():
            if s["deadline"] is None or s["status"] in CLOSED:
                continue
            left = (s["deadline"] - NOW_MS) / HOUR_MS
            levels["breached" if left <= 0 else "red" if left <= 2 else "orange" if left <= 8 else "green"] += 1
            open_orders.append((left, oid))
        return {"todo": {k: [oid for _, oid in sorted(v)] for k, v in todo.items()},
                "ages": {oid: (NOW_MS - at) / 1000 for v in todo.values() for at, oid in v},
                "p50": r7_quantile(lat, 0.5), "p95": r7_quantile(lat, 0.95), "n": len(lat),
                "levels": dict(levels), "open": sorted(open_orders)}


# -- the backend-neutral suite -------------------------------------------------------------------

class SinkSuite:
    """Needs fixtures `backend` (migrated, empty, module scope) and `names`."""

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, backend, names):
        feed = make_dataset(names)
        sink = ClickHouseSink(backend, names, max_rows=97, max_seconds=60.0)
        assert sink.resume_positions() == {}
        for m in feed.messages:
            sink.add(m)
        sink.flush(force=True)
        assert sink.buffered_rows() == 0, sink.last_error
        return feed, Expected(feed, names), sink

    def test_every_decodable_message_lands_once(self, backend, loaded, names):
        feed, exp, sink = loaded
        counts = {t: backend.query(f"SELECT count() AS n FROM {t}")[0]["n"]
                  for t in ("order_events", "risk_events", "inventory_events", "dead_letters", "channel_events",
                            "breaker_events")}
        assert counts == {"order_events": len(exp.orders), "risk_events": len(exp.risk),
                          "inventory_events": len(exp.inventory), "dead_letters": len(exp.dlq),
                          "channel_events": 6, "breaker_events": 1}
        assert sink.stats["undecodable"] == exp.undecodable == 4

    def test_strategic_matches_input(self, backend, loaded):
        _, exp, _ = loaded
        got, want = strategic(backend, days=7, now=NOW), exp.strategic(7)
        assert got["from"] == want["start"]
        assert {r["hour"]: r["orders"] for r in got["orders_per_hour"]} == want["per_hour"]
        assert {r["day"]: r["orders"] for r in got["orders_per_day"]} == want["per_day"]
        assert {(r["hour"], r["currency"]): r["aov_minor"] for r in got["aov_per_hour"]} == pytest.approx(want["aov"])
        assert {r["platform"]: r["orders"] for r in got["channel_share"]} == want["platform"]
        total = sum(want["platform"].values())
        assert got["total_orders"] == total
        assert {r["platform"]: r["share"] for r in got["channel_share"]} == pytest.approx(
            {p: n / total for p, n in want["platform"].items()})
        # the window matters: a 1-day view holds fewer orders than the 7-day one
        assert 0 < strategic(backend, days=1, now=NOW)["total_orders"] < total

    def test_tactical_matches_input(self, backend, loaded):
        _, exp, _ = loaded
        got, want = tactical(backend, hours=24, now=NOW), exp.tactical(24)
        wh = {r["warehouse"]: r for r in got["warehouses"]}
        assert {k: r["reserved_orders"] for k, r in wh.items()} == want["reserved"]
        assert {k: r["reserved_units"] for k, r in wh.items()} == want["units"]
        assert {k: r["shipped_orders"] for k, r in wh.items() if r["shipped_orders"]} == want["shipped"]
        for r in got["warehouses"]:
            assert r["progress_pct"] == pytest.approx(round(100 * r["shipped_orders"] / r["reserved_orders"], 2))
        flat = {(b["bucket"], kind): b[kind] for b in got["exceptions"]
                for kind in ("risk_hold", "out_of_stock", "dead_letter", "sla_breach") if b[kind]}
        assert flat == want["exceptions"]
        assert all(got["exception_totals"][k] > 0 for k in ("risk_hold", "out_of_stock", "dead_letter", "sla_breach"))

    def test_execution_matches_input(self, backend, loaded):
        _, exp, _ = loaded
        got, want = execution(backend, NOW), exp.execution()
        assert {who: [r["order_id"] for r in rows] for who, rows in got["todo"].items()} == want["todo"]
        for rows in got["todo"].values():
            for r in rows:
                assert r["age_s"] == pytest.approx(want["ages"][r["order_id"]])
            assert [r["held_at"] for r in rows] == sorted(r["held_at"] for r in rows)  # oldest first
        assert got["processing"]["decisions"] == want["n"] > 0
        assert got["processing"]["p50_ms"] == pytest.approx(want["p50"])
        assert got["processing"]["p95_ms"] == pytest.approx(want["p95"])
        assert {k: v for k, v in got["sla"]["levels"].items() if v} == want["levels"]
        assert [r["order_id"] for r in got["sla"]["orders"]] == [oid for _, oid in want["open"][:200]]
        assert all(r["level"] in ("green", "orange", "red", "breached") for r in got["sla"]["orders"])

    def test_strategic_days_are_the_asked_zones_calendar_days(self, backend, loaded):
        _, exp, _ = loaded
        shanghai = ZoneInfo("Asia/Shanghai")
        got = strategic(backend, days=7, now=NOW, tz="Asia/Shanghai")
        utc = strategic(backend, days=7, now=NOW)
        assert got["tz"] == "Asia/Shanghai" and utc["tz"] == "UTC"
        # the same hours, regrouped: an hour belongs to the day it falls on in Shanghai (UTC+8)
        assert got["orders_per_hour"] == [{**h, "day": datetime.fromisoformat(h["hour"].replace("Z", "+00:00"))
                                           .astimezone(shanghai).date().isoformat()} for h in utc["orders_per_hour"]]
        per_day, gmv, revenue, orders = Counter(), Counter(), Counter(), Counter()
        start = datetime.fromisoformat(exp.strategic(7)["start"].replace("Z", "+00:00"))
        for change, o in exp.orders:
            if change != b"new" or o["created_at"] < start:
                continue
            day = o["created_at"].astimezone(shanghai).date().isoformat()
            per_day[day] += 1
            gmv[(day, o["currency"])] += o["amounts"]["total_minor"]
            revenue[o["currency"]] += o["amounts"]["total_minor"]
            orders[o["currency"]] += 1
        assert {r["day"]: r["orders"] for r in got["orders_per_day"]} == per_day
        assert {r["day"]: r["orders"] for r in got["orders_per_day"]} != {r["day"]: r["orders"]
                                                                          for r in utc["orders_per_day"]}
        assert {(r["day"], r["currency"]): r["revenue_minor"] for r in got["gmv_per_day"]} == gmv
        assert all(isinstance(r["revenue_minor"], int) for r in got["gmv_per_day"])
        assert {r["currency"]: (r["orders"], r["revenue_minor"]) for r in got["revenue_per_currency"]} == \
            {c: (orders[c], revenue[c]) for c in revenue}
        for r in got["revenue_per_currency"]:
            assert r["aov_minor"] == pytest.approx(r["revenue_minor"] / r["orders"])
        with pytest.raises(ValueError, match="unknown time zone"):
            strategic(backend, now=NOW, tz="Mars/Olympus_Mons")
        with pytest.raises(ValueError, match="unknown time zone"):
            strategic(backend, now=NOW, tz="'); DROP TABLE orders_hourly; --")

    def test_tactical_lists_channels_whose_latest_event_is_a_pause(self, backend, loaded):
        # the dataset's channel (INJECTION, JD): pause at NOW, resume 1 ms before, pause 2 ms before ...
        paused = [c for c in tactical(backend, now=NOW)["paused_channels"] if c["sku"] == INJECTION]
        assert paused == [{"sku": INJECTION, "platform": "JD", "since": iso(NOW_MS), "available": 3, "threshold": 10}]
        earlier = datetime.fromtimestamp((NOW_MS - 1) / 1000, timezone.utc)
        assert [c for c in tactical(backend, now=earlier)["paused_channels"] if c["sku"] == INJECTION] == []

    def test_execution_lists_breakers_risk_queue_and_dead_letters(self, backend, loaded, names):
        _, exp, _ = loaded
        got = execution(backend, NOW)
        assert [b for b in got["breakers"] if b["worker"] == INJECTION] == [
            {"worker": INJECTION, "state": "open", "since": iso(NOW_MS - 5000), "rate_per_min": 612.5,
             "transitions": 1}]
        queue = got["risk_queue"]
        assert len(queue) == got["held_orders"] == len({oid for rows in got["todo"].values() for oid in
                                                        (r["order_id"] for r in rows)})
        assert [h["held_at"] for h in queue] == sorted(h["held_at"] for h in queue)
        for h in queue:
            assert h["reason"] == INJECTION and h["held_at"] == iso(h["held_at_ms"])
            for who in h["assignees"]:
                assert h["order_id"] in {r["order_id"] for r in got["todo"][who]}
        assert open_holds(backend, NOW, order_id=queue[0]["order_id"]) == [queue[0]]
        assert open_holds(backend, NOW, order_id="no-such-order") == []
        letters = got["dead_letters"]
        failed = sorted((exp.ms(d["failed_at"]) for d in exp.dlq), reverse=True)
        assert letters["waiting"] == len(exp.dlq) == 25
        assert letters["by_reason"] == [{"reason_code": "malformed_json", "letters": 25}]
        assert [row["failed_at"] for row in letters["letters"]] == [iso(ms) for ms in failed]
        first = letters["letters"][0]
        assert first["reason"] == INJECTION and first["source"].startswith(f"{names.raw('JD')}:0:")
        assert open_dead_letters(backend, NOW, letter_id=first["id"])["letters"] == [first]
        # a letter re-driven from the console leaves the list
        backend.insert("console_actions", [{"key": "t", "action": "redrive", "target": first["id"], "operator": "o",
                                            "reason": "", "detail": "", "at": f"{NOW_MS // 1000}.000"}],
                       ["key", "action", "target", "operator", "reason", "detail", "at"], None)
        after = execution(backend, NOW)["dead_letters"]
        assert after["waiting"] == 24 and first["id"] not in {row["id"] for row in after["letters"]}
        assert open_dead_letters(backend, NOW, letter_id=first["id"])["letters"] == []

    def test_string_parameters_arrive_as_sent(self, backend):
        """Backslashes, tabs and line breaks in a {name:String} value: the same on every backend."""
        for text in ("a\\b", "tab\there", "line\nbreak", "\\n is not a newline", "quote ' and \"", INJECTION):
            assert backend.query("SELECT {s:String} AS s, length({s:String}) AS n", {"s": text}) == \
                [{"s": text, "n": len(text.encode())}]

    def test_injection_text_is_stored_verbatim(self, backend, loaded):
        assert backend.query("SELECT count() AS n FROM order_events WHERE province = {p:String}",
                             {"p": INJECTION})[0]["n"] > 0
        assert {r["sku"] for r in backend.query("SELECT DISTINCT sku FROM channel_events")} == {INJECTION}
        assert backend.query("SELECT worker FROM breaker_events")[0]["worker"] == INJECTION
        payloads = {base64.b64decode(r["payload_b64"]) for r in backend.query("SELECT payload_b64 FROM dead_letters")}
        assert payloads == {INJECTION.encode(), bytes(range(256))}

    def test_retried_batch_lands_once_in_facts_and_rollups(self, backend, names):
        feed = Feed(TopicNames("retry."))
        codec = order_codec()
        rng = random.Random(1)
        for i in range(5):
            feed.send("retry.orders.unique", codec.encode(canonical_order(
                rng, f"RT-{i}", "JD", NOW_MS, "PAID", NOW_MS, NOW_MS + HOUR_MS)), NOW_MS, f"RT-{i}", {"change": b"new"})
        sink = ClickHouseSink(backend, TopicNames("retry."), max_rows=100, max_seconds=60)
        for m in feed.messages:
            sink.add(m)
        batch = sink._batchers["order_events"].take()
        columns = sink._columns["order_events"]
        for _ in range(3):  # the "insert timed out but did land" case: same rows, same token
            backend.insert("order_events", batch.rows, columns, batch.token)
        assert backend.query("SELECT count() AS n FROM order_events WHERE src_topic = 'retry.orders.unique'")[0]["n"] == 5
        hourly = backend.query("SELECT sum(orders) AS n FROM orders_hourly WHERE hour = toStartOfHour("
                               "fromUnixTimestamp64Milli({t:Int64}, 'UTC')) AND platform = 'JD'", {"t": NOW_MS})
        raw = backend.query("SELECT count() AS n FROM order_events WHERE change = 'new' AND platform = 'JD' AND "
                            "toStartOfHour(created_at) = toStartOfHour(fromUnixTimestamp64Milli({t:Int64}, 'UTC'))",
                            {"t": NOW_MS})
        assert hourly[0]["n"] == raw[0]["n"]
        # a new batch with other offsets is a different token: it does land
        more = ClickHouseSink(backend, TopicNames("retry."), max_rows=100, max_seconds=60)
        more.resume_positions()
        feed.send("retry.orders.unique", codec.encode(canonical_order(
            rng, "RT-9", "JD", NOW_MS, "PAID", NOW_MS, None)), NOW_MS, "RT-9", {"change": b"new"})
        for m in feed.messages:
            more.add(m)  # the first five are below the resume point and ignored
        assert more.flush(force=True) == 1
        assert more.stats["already_seen"] == 5

    def test_resume_positions_after_restart(self, backend, loaded, names):
        feed, _, _ = loaded
        restarted = ClickHouseSink(backend, names)
        positions = restarted.resume_positions()
        stored_last: dict = {}
        for m in feed.messages:
            if not (m.value.startswith(b"\xc3\x01garbage") or m.value in (b"{not json", b"[1,2,3]", b"plain bytes")):
                stored_last[(m.topic, m.partition)] = max(stored_last.get((m.topic, m.partition), -1), m.offset)
        assert positions == {tp: last + 1 for tp, last in stored_last.items()}
        for m in feed.messages:  # a replay from the start lands nothing twice
            restarted.add(m)
        assert restarted.flush(force=True) == 0

    def test_failed_insert_is_retried_without_loss(self, backend):
        names = TopicNames("flaky.")
        feed = Feed(names)
        for i in range(7):
            feed.send(names.CHANNEL_CONTROL, ChannelEvent.from_dict({"event": "pause", "sku": f"S{i}", "platform": "JD",
                                                          "available": i, "threshold": 10, "at_ms": NOW_MS}).encode(),
                      NOW_MS, f"S{i}")

        clock = [0.0]
        flaky = FailingFirstInserts(backend, failures=2)
        sink = ClickHouseSink(flaky, names, max_rows=3, max_seconds=60, clock=lambda: clock[0],
                              backoff_base_s=1.0)
        for m in feed.messages:
            sink.add(m)
        assert sink.flush() == 0 and sink.pending_rows() == 6  # two full batches wait behind the failure
        assert sink.flush() == 0  # back-off: no attempt before 1 s
        assert flaky.calls == 1
        clock[0] = 1.0
        assert sink.flush() == 0 and flaky.calls == 2  # second failure, back-off doubles
        clock[0] = 2.5
        assert sink.flush() == 0
        clock[0] = 3.0
        assert sink.flush(force=True) == 7
        rows = backend.query("SELECT sku FROM channel_events WHERE src_topic = {t:String} ORDER BY src_offset",
                             {"t": names.CHANNEL_CONTROL})
        assert [r["sku"] for r in rows] == [f"S{i}" for i in range(7)]

    def test_drain_retries_with_backoff_until_everything_landed_or_time_is_up(self, backend, monkeypatch):
        names = TopicNames("draining.")
        feed = Feed(names)
        for i in range(4):
            feed.send(names.CHANNEL_CONTROL, ChannelEvent.from_dict({"event": "pause", "sku": f"D{i}", "platform": "JD",
                                                          "available": i, "threshold": 10, "at_ms": NOW_MS}).encode(),
                      NOW_MS, f"D{i}")

        now = [0.0]
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds

        monkeypatch.setattr(tenacity, "time", SimpleNamespace(monotonic=lambda: now[0]))
        flaky = FailingFirstInserts(backend, failures=2)
        sink = ClickHouseSink(flaky, names, max_rows=100, max_seconds=60, clock=lambda: now[0], backoff_base_s=0.5)
        for m in feed.messages:
            sink.add(m)
        assert sink.drain(timeout_s=30, sleep=sleep) is True
        assert flaky.calls == 3 and slept == [0.5, 1.0] and sink.buffered_rows() == 0
        assert backend.query("SELECT count() AS n FROM channel_events WHERE src_topic = {t:String}",
                             {"t": names.CHANNEL_CONTROL})[0]["n"] == 4

        # ClickHouse stays away: the drain gives up before a back-off would end past the timeout
        down = FailingFirstInserts(backend, failures=10**6)
        stuck = ClickHouseSink(down, TopicNames("stuck."), max_rows=100, max_seconds=60, backoff_base_s=1.0,
                               backoff_max_s=4.0)
        stuck.add(Record("stuck.channel.control", 0, 0, None, feed.messages[0].value, {}, NOW_MS))
        slept.clear()
        assert stuck.drain(timeout_s=10, sleep=sleep) is False
        assert slept == [1.0, 2.0, 4.0] and down.calls == 4 and stuck.buffered_rows() == 1

    def test_readonly_sql_refuses_writes(self, backend, loaded):
        assert readonly_query(backend, "SELECT count() AS n FROM order_events;")[0]["n"] > 0
        assert readonly_query(backend, "SELECT ';' AS s -- trailing comment")[0]["s"] == ";"
        before = backend.query("SELECT count() AS n FROM order_events")[0]["n"]
        for sql in ("SELECT 1) SETTINGS readonly=0 --",
                    "SELECT count() FROM numbers(100000000000) WHERE number % 7 = 3"):  # over max_execution_s
            with pytest.raises(BackendError):
                readonly_query(backend, sql, max_execution_s=1.0)
        for sql in ("SELECT 1; DROP TABLE order_events", "SELECT 1; SELECT 2", "SELECT 'unterminated", "  ;",
                    "INSERT INTO order_events (order_id) VALUES ('x')",
                    "INSERT INTO order_events (order_id) SELECT 'x'",
                    "DROP TABLE order_events", "ALTER TABLE order_events DELETE WHERE 1",
                    "TRUNCATE TABLE order_events",
                    # refused by the guard the analyst interface uses, before they run
                    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
                    "SELECT * FROM file('/etc/passwd', 'LineAsString') SETTINGS readonly = 0",
                    "SELECT file('/etc/hostname')",  # readonly=1 alone lets this read the file
                    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a String')",
                    "SELECT 1 INTO OUTFILE '/tmp/orderstream-sql-outfile'"):
            with pytest.raises(ReadOnlyQueryError):
                readonly_query(backend, sql)
        assert backend.query("SELECT count() AS n FROM order_events")[0]["n"] == before
        # an inner SETTINGS clause cannot lift the outer readonly=1
        got = readonly_query(backend, "SELECT getSetting('readonly') AS r SETTINGS readonly = 0")
        assert int(got[0]["r"]) == 1

    def test_http_serves_views_sql_and_metrics(self, backend, loaded):
        server = serve_http(backend, 0, status=lambda: {"buffered_rows": 0}, credentials=CREDENTIALS)
        base = f"http://127.0.0.1:{server.port}"
        try:
            def get(path):
                with urllib.request.urlopen(urllib.request.Request(base + path, headers=AUTH), timeout=30) as r:
                    return r.status, r.read()
            assert json.loads(get("/health")[1]) == {"status": "ok"}
            assert json.loads(get("/status")[1])["buffered_rows"] == 0
            now = urllib.parse.quote(NOW.isoformat())
            for tier in ("strategic", "tactical", "execution"):
                assert json.loads(get(f"/views/{tier}?now={now}")[1])["tier"] == tier
            direct = tactical(backend, hours=24, now=NOW)
            assert json.loads(get(f"/views/tactical?now={now}&hours=24")[1]) == json.loads(json.dumps(direct))
            q = urllib.parse.quote("SELECT count() AS n FROM risk_events")
            assert json.loads(get(f"/sql?q={q}")[1])["rows"][0]["n"] > 0
            assert b"orderstream_sink_rows_total" in get("/metrics")[1]
            with pytest.raises(urllib.error.HTTPError) as err:
                get("/sql?q=" + urllib.parse.quote("DROP TABLE risk_events"))
            assert err.value.code == 400
            req = urllib.request.Request(base + "/sql", data=b"SELECT 2 AS two", method="POST", headers=AUTH)
            with urllib.request.urlopen(req, timeout=30) as r:
                assert json.loads(r.read())["rows"] == [{"two": 2}]
        finally:
            server.stop()

    def test_http_answers_bad_requests_in_json(self, backend, loaded):
        """Through aiohttp's test client: every refusal is a JSON {"error": ...} with its status."""
        async def check():
            async with test_utils.TestClient(test_utils.TestServer(make_app(backend, credentials=CREDENTIALS)),
                                             headers=AUTH) as client:
                async def call(method, path, status, **kw):
                    resp = await client.request(method, path, **kw)
                    assert (resp.status, resp.content_type) == (status, "application/json"), path
                    return await resp.json()

                assert (await call("GET", "/nope", 404))["endpoints"] == ["/health", "/status", "/metrics",
                                                                         "/views/<tier>", "/sql?q="]
                assert (await call("GET", "/views/monthly", 404))["tiers"] == ["execution", "strategic", "tactical"]
                assert (await call("GET", "/views/", 404))["error"] == "unknown tier ''"
                assert "invalid literal" in (await call("GET", "/views/strategic?days=many", 400))["error"]
                await call("GET", "/views/tactical?now=yesterday", 400)
                assert "unknown time zone" in (await call("GET", "/views/strategic?tz=Nowhere/City", 400))["error"]
                assert (await call("GET", "/views/strategic?tz=Asia/Shanghai", 200))["tz"] == "Asia/Shanghai"
                assert (await call("GET", "/views/strategic?days=&now=" + urllib.parse.quote(NOW.isoformat()),
                                   200))["tier"] == "strategic"  # a blank parameter counts as absent
                for path, kw in (("/sql", {}), ("/sql?q=", {}), ("/sql", {"data": b""})):
                    assert "give the query" in (await call("POST" if kw else "GET", path, 400, **kw))["error"]
                assert (await call("POST", "/sql", 413, data=b"SELECT '" + b"x" * 70_000 + b"'")) == \
                    {"error": "request body too large"}
                assert (await call("POST", "/sql", 200, json={"q": "SELECT 3 AS three"}))["rows"] == [{"three": 3}]
                assert (await call("POST", "/sql?q=", 200, data=b"SELECT 4 AS four"))["count"] == 1
                assert "one statement" in (await call("GET", "/sql?q=SELECT 1; SELECT 2", 400))["error"]
                assert (await call("GET", "/sql?q=SELEC nonsense", 400))["error"]
                await call("POST", "/sql", 400, data=b"{not json", headers={"Content-Type": "application/json"})
        asyncio.run(check())

    def test_http_slow_query_holds_up_no_other_request(self, backend):
        """Queries run in worker threads: while one sleeps in the backend, /health and /metrics
        answer at once and a second query waits its turn at the backend, then answers right."""
        server = serve_http(backend, 0, credentials=CREDENTIALS)
        base = f"http://127.0.0.1:{server.port}"

        def get(path):
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=AUTH), timeout=30) as r:
                return json.loads(r.read()) if path != "/metrics" else r.read()
        try:
            slow_sql = urllib.parse.quote("SELECT sleepEachRow(0.75) AS s FROM numbers(3)")  # ~2.25 s
            with ThreadPoolExecutor(2) as pool:
                slow = pool.submit(get, f"/sql?q={slow_sql}")
                time.sleep(0.3)
                for path in ("/health", "/metrics"):
                    started = time.monotonic()
                    get(path)
                    assert time.monotonic() - started < 1.0 and not slow.done(), path
                second = pool.submit(get, "/sql?q=" + urllib.parse.quote("SELECT 7 AS seven"))
                assert second.result(timeout=30)["rows"] == [{"seven": 7}]
                assert slow.result(timeout=30) == {"rows": [{"s": 0}] * 3, "count": 3}
        finally:
            server.stop()

    def test_http_server_starts_and_stops_cleanly(self, backend):
        server = serve_http(backend, 0, credentials=CREDENTIALS)
        port = server.port
        with pytest.raises(OSError):  # the port is taken: start() says so instead of a silent thread
            serve_http(backend, port, credentials=CREDENTIALS)
        server.stop()
        assert not server.thread.is_alive()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        again = serve_http(backend, port, credentials=CREDENTIALS)  # the port is free again
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
                assert json.loads(r.read())["status"] == "ok"
        finally:
            again.stop()

    def test_migrations_are_idempotent(self, backend):
        assert migrate(backend) == []
        versions = [r["version"] for r in backend.query("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == sorted(set(versions)) and versions[:3] == [1, 2, 3]


# -- chDB ------------------------------------------------------------------------------------------

def test_chdb_reopen_resumes_from_stored_offsets(tmp_path):
    """A real restart: close the data dir, open it again, positions come back from the tables."""
    names = TopicNames("reopen.")
    feed = Feed(names)
    for i in range(4):
        feed.send(names.BREAKER_EVENTS, BreakerTransition.from_dict({"from_state": "closed", "to_state": "open",
                                                     "rate_per_min": 1.0, "at_ms": NOW_MS, "worker": "w"}).encode(), NOW_MS,
                  f"k{i}")
    b = ChdbBackend(tmp_path / "chdb")
    migrate(b)
    sink = ClickHouseSink(b, names)
    for m in feed.messages:
        sink.add(m)
    sink.flush(force=True)
    b.close()
    b = ChdbBackend(tmp_path / "chdb")
    try:
        assert migrate(b) == []
        expected = {}
        for m in feed.messages:
            expected[(m.topic, m.partition)] = max(expected.get((m.topic, m.partition), 0), m.offset + 1)
        assert ClickHouseSink(b, names).resume_positions() == expected
    finally:
        b.close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("chdb") / "data")
    assert migrate(b) == [m.version for m in discover()]  # every migration, in order
    yield b
    b.close()


@pytest.fixture(scope="module")
def names():
    return TopicNames("chdbtest.")


class TestChdb(SinkSuite):
    pass
