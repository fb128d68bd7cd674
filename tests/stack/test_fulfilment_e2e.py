"""Issue 17 end to end on the real broker and Redis: shipments deduct stock once, late payments
reserve once, untrusted state changes are flagged (and land in ClickHouse and the execution tier),
the daily consistency check, and a worker SIGKILLed in the middle of a shipment replay."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis

from pipeline.codecs import order_codec
from pipeline.config import PROJECT_ROOT
from pipeline.consistency import check_states, sink_query
from pipeline.contracts import (InventoryEvent, StockUpdate, SuspectTransition, TrackingUpdate, WarehouseStock,
                                WaybillRegistered)
from pipeline.devtools.fake_orders import RawOrderFactory, ReplayMix, drop_shipment
from pipeline.devtools.replay import ReplayConfig, reconcile, run_replay, stock_events
from pipeline.domain.normalize import global_order_id
from pipeline.inventory_store import InventoryStore
from tests.stack.helpers import Watch, settle, sink_json, sink_sql
from tests.stack.test_reliability import FaultyReplay, scrape_counter

pytestmark = [pytest.mark.stack, pytest.mark.slow]
CODEC = order_codec()
QUIET = dict(ORDERSTREAM_BREAKER_OPEN_PER_MIN="100000")   # small bursts here must not degrade the checks


def stock(p, wh: str, sku: str, total: int) -> None:
    p.produce([(p.names.INVENTORY_STOCK, f"{wh}:{sku}".encode(),
                WarehouseStock.encode(StockUpdate("snapshot", wh, sku, total=total, locked=0, presale=0)))])


def raw(p, platform: str, key: str, payload_bytes: bytes):
    return (p.names.raw(platform), key.encode(), payload_bytes)


def inventory(p) -> list[dict]:
    return [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]


def kinds_of(events: list[dict], order_id: str) -> Counter:
    return Counter(e["event"] for e in events if e["order_id"] == order_id)


def wait_for(p, predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.check_alive()
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# -- 1. shipment: once, whatever the redeliveries --------------------------------------------------

def test_a_shipment_deducts_stock_once_whatever_the_redeliveries(pipeline_factory):
    p = pipeline_factory(**QUIET)
    p.start_worker()
    sku = "SKU-0012"
    stock(p, "WH-SH", sku, 20)
    f = RawOrderFactory(seed=1701)
    paid = f.order("TMALL", external_id="S100", status="PAID", skus=[(sku, 3)], province="上海")
    p.produce([raw(p, "TMALL", "S100", f.to_bytes(paid))])
    p.drain()
    shipped = f.update(paid, "SHIPPED", after_s=3600)
    # webhook and polling deliver the shipment three times, two of them in one batch
    p.produce([raw(p, "TMALL", "S100", f.to_bytes(shipped)), raw(p, "TMALL", "S100", f.redelivery_bytes(shipped))])
    p.drain()
    p.produce([raw(p, "TMALL", "S100", f.redelivery_bytes(shipped))])
    delivered = f.update(shipped, "DELIVERED", after_s=7200)   # a later shipped-state update: no second deduction
    p.produce([raw(p, "TMALL", "S100", f.to_bytes(delivered))])
    p.drain()

    oid = global_order_id("TMALL", "S100")
    events = inventory(p)
    assert kinds_of(events, oid) == Counter({"reserved": 1, "shipped": 1})
    [ship] = [e for e in events if e["order_id"] == oid and e["event"] == "shipped"]
    assert ship["units"] == 3 and ship["actor"] == "order_flow"
    assert [(line["sku"], line["quantity"], line["warehouse"]) for line in ship["lines"]] == [(sku, 3, "WH-SH")]
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        level = store.stock("WH-SH", sku)
        record = store.reservation(oid)
    assert (level.total, level.reserved, level.shipped, level.available) == (17, 0, 3, 17)
    assert record["state"] == "shipped" and record["shipped_units"] == 3
    assert len(p.read(p.names.DUPLICATES)) == 2                    # the two redeliveries were dropped
    assert scrape_counter(p.worker_url(), "orderstream_shipments_total") >= 2  # shipped + the DELIVERED no-op


# -- 1b. the shipment registers its waybill: order -> shipped -> registered -> courier scan -> tracking

# (platform, external id, courier as the platform names it or None, the carrier code, the courier's
# first scan as that courier pushes it): the platforms name couriers in their own fields and words
SHIPMENTS = [
    ("TMALL", "W1", "顺丰速运", "SF", lambda wb, t: {"mailno": wb, "opCode": "SF50", "acceptTime": t, "routeId": "r1"}),
    ("JD", "W2", "中通快递", "ZTO", lambda wb, t: {"billCode": wb, "scanType": "收件", "scanTime": t // 1000,
                                                 "scanId": "z1"}),
    ("DOUYIN", "W3", "圆通速递", "YTO", lambda wb, t: {"waybillNo": wb, "infoContent": "GOT", "upload_Time": t,
                                                   "traceId": "y1"}),
    ("SHOPIFY", "W4", "J&T Express", "JT", lambda wb, t: {"billCode": wb, "scanTypeCode": "10", "scanTimeMs": t,
                                                          "id": "j1"}),
    ("KUAISHOU", "W5", "邮政EMS", "EMS", lambda wb, t: {"waybillNo": wb, "opCode": "203", "opTime": t // 1000,
                                                     "traceNo": "e1"}),
    ("PINDUODUO", "W6", None, None, None),            # shipped, but the platform sent no waybill
    ("SHOPEE", "W7", "SPX Express", "SPX Express", None),  # a courier the code table does not know
]


def test_a_shipped_update_registers_its_waybill_once_and_courier_scans_track_it(pipeline_factory):
    p = pipeline_factory(**QUIET)
    p.start_worker()
    n = p.names
    watch = Watch(p, n.WAYBILLS, n.TRACKING)
    sku = "SKU-0015"
    stock(p, "WH-SH", sku, 50)
    f = RawOrderFactory(seed=1719)
    tag = p.ns.strip(".")[-4:].upper()
    paid, shipped, waybill_of = {}, {}, {}
    for platform, ext, courier, _, _ in SHIPMENTS:
        country = {"SHOPEE": "SG", "SHOPIFY": "US"}.get(platform)
        paid[ext] = f.order(platform, external_id=ext, status="PAID", skus=[(sku, 1)],
                            **({"country": country} if country else {"province": "上海"}))
        waybill_of[ext] = f"{ext}{tag}0001" if courier else None
        shipped[ext] = f.update(paid[ext], "SHIPPED", after_s=3600,
                                shipment=(courier, waybill_of[ext]) if courier else None)
        if courier is None:
            drop_shipment(platform, shipped[ext])
    p.produce([raw(p, platform, ext, f.to_bytes(paid[ext])) for platform, ext, *_ in SHIPMENTS])
    p.drain()
    # webhook and polling: the Tmall shipment three times (two in one batch), then a later state
    p.produce([raw(p, platform, ext, f.to_bytes(shipped[ext])) for platform, ext, *_ in SHIPMENTS]
              + [raw(p, "TMALL", "W1", f.redelivery_bytes(shipped["W1"]))])
    p.drain()
    p.produce([raw(p, "TMALL", "W1", f.redelivery_bytes(shipped["W1"])),
               raw(p, "TMALL", "W1", f.to_bytes(f.update(shipped["W1"], "DELIVERED", after_s=7200)))])
    p.drain()

    ids = {ext: global_order_id(platform, ext) for platform, ext, *_ in SHIPMENTS}
    tracked = {ext: code for _, ext, courier, code, scan in SHIPMENTS if scan is not None}

    def registered_once(w):
        shown = [TrackingUpdate.decode(r.value()) for r in w.on(n.TRACKING)]
        return len(shown) >= len(tracked) and shown

    registered = watch.until(registered_once, timeout=60, what="a tracking update per registered waybill",
                             check_alive=p.check_alive)
    regs = [WaybillRegistered.decode(r.value()) for r in watch.on(n.WAYBILLS)]
    # keyed by waybill like the couriers' events; stamped with the shipped version's own time
    assert all(r.key() == WaybillRegistered.decode(r.value()).waybill.encode() for r in watch.on(n.WAYBILLS))
    assert {(r.order_id, r.carrier, r.waybill) for r in regs} == {
        (ids[ext], code, waybill_of[ext]) for ext, code in tracked.items()}
    shipped_at = CODEC.decode(next(r.value for r in p.read(n.UNIQUE) if CODEC.decode(r.value)["order_id"] == ids["W1"]
                                   and CODEC.decode(r.value)["status"] == "SHIPPED"))["updated_at"]
    assert min(r.at_ms for r in regs if r.waybill == waybill_of["W1"]) == int(shipped_at.timestamp() * 1000)
    # the redelivered shipment was dropped by dedupe; the DELIVERED update sent the registration
    # again, and the logistics agent kept the first: one "registered" update per waybill
    assert Counter(r.waybill for r in regs)[waybill_of["W1"]] == 2
    watch.settle(3)
    first = Counter(u.waybill for u in (TrackingUpdate.decode(r.value()) for r in watch.on(n.TRACKING))
                    if u.cause == "registered")
    assert first == Counter({waybill_of[ext]: 1 for ext in tracked}), first
    assert {u.waybill for u in registered} == {waybill_of[ext] for ext in tracked}

    # the couriers scan the parcels: each becomes a tracking update for its order
    now = int(time.time() * 1000)
    p.produce([(n.courier_raw(code), waybill_of[ext].encode(),
                json.dumps(scan(waybill_of[ext], now), ensure_ascii=False).encode())
               for _, ext, _, code, scan in SHIPMENTS if scan is not None])

    def collected(w):
        latest = {}
        for r in w.on(n.TRACKING):
            u = TrackingUpdate.decode(r.value())
            latest[u.waybill] = u
        return all(ext_wb in latest and latest[ext_wb].state == "collected"
                   for ext_wb in (waybill_of[ext] for ext in tracked)) and latest

    latest = watch.until(collected, timeout=60, what="every parcel collected", check_alive=p.check_alive)
    for ext, code in tracked.items():
        u = latest[waybill_of[ext]]
        assert (u.order_id, u.carrier, u.source) == (ids[ext], code, code), ext
    assert waybill_of["W7"] not in latest  # an unknown courier registers nothing: no courier reports it
    counts = {s.labels["outcome"]: s.value for fam in _families(p.worker_url()) for s in fam.samples
              if s.name == "orderstream_waybill_registrations_total" and s.labels.get("platform") in (
                  "PINDUODUO", "SHOPEE")}
    assert counts.get("no_waybill") == 1 and counts.get("unknown_carrier") == 1, counts
    watch.close()


def _families(url: str):
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return list(text_string_to_metric_families(resp.read().decode()))


# -- 2. late payment: reserved again once; out of stock once; a cancelled order never ------------

def test_a_late_payment_reserves_once_and_a_cancelled_order_never(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RESERVATION_TIMEOUT_S="3", **QUIET)
    p.start_worker()
    sku, scarce = "SKU-0013", "SKU-0014"
    stock(p, "WH-SH", sku, 10)
    stock(p, "WH-SH", scarce, 2)
    f = RawOrderFactory(seed=1702)
    late = f.order("JD", external_id="L200", status="PENDING_PAYMENT", skus=[(sku, 3)], province="上海")
    late_oos = f.order("JD", external_id="L201", status="PENDING_PAYMENT", skus=[(scarce, 2)], province="上海")
    gone = f.order("JD", external_id="L202", status="PENDING_PAYMENT", skus=[(sku, 1)], province="上海")
    p.produce([raw(p, "JD", k, f.to_bytes(o)) for k, o in (("L200", late), ("L201", late_oos), ("L202", gone))])
    ids = {k: global_order_id("JD", k) for k in ("L200", "L201", "L202", "P300")}
    wait_for(p, lambda: {e["order_id"] for e in inventory(p) if e["event"] == "expired"} >= {
        ids["L200"], ids["L201"], ids["L202"]}, "the three unpaid reservations to expire")
    # the cancellation comes; someone else buys the scarce units; then the payments come (twice)
    cancelled = f.update(gone, "CANCELLED", after_s=600)
    taker = f.order("JD", external_id="P300", status="PAID", skus=[(scarce, 2)], province="上海")
    p.produce([raw(p, "JD", "L202", f.to_bytes(cancelled)), raw(p, "JD", "P300", f.to_bytes(taker))])
    p.drain()
    paid, paid_oos = f.update(late, "PAID", after_s=900), f.update(late_oos, "PAID", after_s=900)
    paid_after_cancel = f.update(cancelled, "PAID", after_s=600)
    p.produce([raw(p, "JD", "L200", f.to_bytes(paid)), raw(p, "JD", "L201", f.to_bytes(paid_oos)),
               raw(p, "JD", "L202", f.to_bytes(paid_after_cancel))])
    p.drain()
    p.produce([raw(p, "JD", "L200", f.redelivery_bytes(paid)), raw(p, "JD", "L201", f.redelivery_bytes(paid_oos))])
    shipped = f.update(paid, "SHIPPED", after_s=3600)
    p.produce([raw(p, "JD", "L200", f.to_bytes(shipped))])
    p.drain()

    events = inventory(p)
    assert kinds_of(events, ids["L200"]) == Counter({"reserved": 1, "expired": 1, "rereserved": 1, "shipped": 1})
    assert kinds_of(events, ids["L201"]) == Counter({"reserved": 1, "expired": 1, "out_of_stock": 1})
    assert kinds_of(events, ids["L202"]) == Counter({"reserved": 1, "expired": 1})   # nothing after the cancel
    [oos] = [e for e in events if e["order_id"] == ids["L201"] and e["event"] == "out_of_stock"]
    assert oos["reason"].startswith("late payment") and f"{scarce} short 2" in oos["reason"]
    [rereserved] = [e for e in events if e["order_id"] == ids["L200"] and e["event"] == "rereserved"]
    assert rereserved["units"] == 3 and rereserved["actor"] == "order_flow"
    suspects = [SuspectTransition.decode(r.value) for r in p.read(p.names.SUSPECT)]
    assert [(s.order_id, s.rule, s.from_status) for s in suspects] == [(ids["L202"], "backwards", "CANCELLED")]
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        records = {k: store.reservation(oid) for k, oid in ids.items()}
        main, few = store.stock("WH-SH", sku), store.stock("WH-SH", scarce)
    assert records["L200"]["state"] == "shipped" and records["L200"]["late"]
    assert records["L201"]["state"] == "out_of_stock" and records["L202"]["state"] == "released"
    assert (main.total, main.reserved, main.shipped) == (7, 0, 3)        # L200 shipped, L202 holds nothing
    assert (few.total, few.reserved) == (2, 2)                           # only the taker holds the scarce units
    assert scrape_counter(p.worker_url(), "orderstream_late_payments_total") == 2


# -- 2b. paid or shipped while held for risk review --------------------------------------------------

def test_paid_or_shipped_while_held_the_release_honours_it(pipeline_factory):
    # the hold outlasts the updates below landing while it waits, even on a slow run
    p = pipeline_factory(ORDERSTREAM_RESERVATION_TIMEOUT_S="3", ORDERSTREAM_RISK_HOLD_TIMEOUT_S="12", **QUIET)
    p.start_worker()
    sku = "SKU-0016"
    stock(p, "WH-SH", sku, 10)
    f = RawOrderFactory(seed=1706)
    # above 5000 CNY: held by amount_over_5000 until the default policy releases it
    unpaid = f.order("TMALL", external_id="H1", status="PENDING_PAYMENT", skus=[(sku, 1)], amount_minor=600_000,
                     province="上海")
    paid = f.order("TMALL", external_id="H2", status="PAID", skus=[(sku, 2)], amount_minor=700_000, province="上海")
    p.produce([raw(p, "TMALL", "H1", f.to_bytes(unpaid)), raw(p, "TMALL", "H2", f.to_bytes(paid))])
    p.drain()
    ids = {k: global_order_id("TMALL", k) for k in ("H1", "H2")}
    held = {e["order_id"] for e in Watch(p, p.names.RISK_EVENTS).until(
        lambda w: [e for e in w.decoded(p.names.RISK_EVENTS) if e["event"] == "held"], 30, "the holds")}
    assert held == set(ids.values())
    # while they wait: H1 is paid, H2 is shipped by the platform
    p.produce([raw(p, "TMALL", "H1", f.to_bytes(f.update(unpaid, "PAID", after_s=300))),
               raw(p, "TMALL", "H2", f.to_bytes(f.update(paid, "SHIPPED", after_s=3600)))])
    p.drain()
    assert not [e for e in inventory(p) if e["event"] == "reserved"], "released before the updates landed"
    wait_for(p, lambda: {e["order_id"] for e in inventory(p)
                         if e["event"] in ("reserved", "shipped_unreserved")} >= set(ids.values()),
             "the holds to be released by the default policy")
    time.sleep(6)   # twice the unpaid time-out: a paid order's reservation must still be there
    p.drain()
    events = inventory(p)
    assert kinds_of(events, ids["H1"]) == Counter({"reserved": 1})
    assert kinds_of(events, ids["H2"]) == Counter({"shipped_unreserved": 2})   # at the shipment and at the release
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        h1, h2 = store.reservation(ids["H1"]), store.reservation(ids["H2"])
        level = store.stock("WH-SH", sku)
    assert h1["state"] == "reserved" and "deadline_ms" not in h1
    assert h2["state"] == "shipped" and h2["shipped_units"] == 0
    assert (level.total, level.reserved, level.shipped) == (10, 1, 0)


# -- 3. untrusted state changes: flagged, counted, not applied, landed, shown -----------------------

def test_suspect_transitions_are_flagged_counted_landed_and_shown(pipeline_factory):
    p = pipeline_factory(**QUIET)
    p.start_worker()
    p.start_sink()
    sku = "SKU-0015"
    stock(p, "WH-SH", sku, 50)
    f = RawOrderFactory(seed=1703)
    a = f.order("TMALL", external_id="A1", status="PAID", skus=[(sku, 1)], province="上海")
    b = f.order("SHOPEE", external_id="B1", status="PAID", skus=[(sku, 1)])   # under every hold threshold
    c = f.order("KUAISHOU", external_id="C1", status="PAID", skus=[(sku, 4)], province="上海")
    a_shipped = f.update(a, "SHIPPED", after_s=3600)
    a_back = f.update(a_shipped, "PAID", after_s=3600)                 # backwards
    b_packed = f.update(b, "PACKED", after_s=600)
    b_fast = f.update(b_packed, "SHIPPED", after_s=60)                 # 60 s after packing: too fast
    b_again = f.update(b_fast, "SHIPPED", after_s=600)                 # the shipment again, believable now
    c_skip = f.update(c, "DELIVERED", after_s=3600)                    # skips SHIPPED
    p.produce([raw(p, "TMALL", "A1", f.to_bytes(x)) for x in (a, a_shipped, a_back)]
              + [raw(p, "SHOPEE", "B1", f.to_bytes(x)) for x in (b, b_packed, b_fast)]
              + [raw(p, "KUAISHOU", "C1", f.to_bytes(x)) for x in (c, c_skip)])
    p.drain()
    p.produce([raw(p, "SHOPEE", "B1", f.to_bytes(b_again))])
    p.drain()

    ids = {"A": global_order_id("TMALL", "A1"), "B": global_order_id("SHOPEE", "B1"),
           "C": global_order_id("KUAISHOU", "C1")}
    suspects = {s.order_id: s for s in (SuspectTransition.decode(r.value) for r in p.read(p.names.SUSPECT))}
    assert {k: (suspects[oid].rule, suspects[oid].from_status, suspects[oid].to_status) for k, oid in ids.items()} == {
        "A": ("backwards", "SHIPPED", "PAID"), "B": ("too_fast", "PACKED", "SHIPPED"),
        "C": ("illegal_skip", "PAID", "DELIVERED")}
    assert (suspects[ids["B"]].elapsed_ms, suspects[ids["B"]].limit_ms) == (60_000, 180_000)
    assert suspects[ids["B"]].detected_by == "order_flow/dedupe"
    # kept on orders.unique, marked; never sent on to fulfilment
    unique = [(CODEC.decode(r.value), r.headers) for r in p.read(p.names.UNIQUE)]
    marked = {(o["order_id"], o["status"]): h.get("suspect") for o, h in unique if h.get("change") == b"suspect"}
    assert marked == {(ids["A"], "PAID"): b"backwards", (ids["B"], "SHIPPED"): b"too_fast",
                      (ids["C"], "DELIVERED"): b"illegal_skip"}
    accepted = {(o["order_id"], o["status"], o["updated_at"]) for o in
                (CODEC.decode(r.value) for r in p.read(p.names.ACCEPTED))}
    suspect_versions = {(o["order_id"], o["status"], o["updated_at"]) for o, h in unique if h.get("change") == b"suspect"}
    assert not accepted & suspect_versions
    # not applied to the stock: A shipped once (its trusted SHIPPED), B only by the believable
    # shipment, C (never trusted as shipped) still holds its reservation
    events = inventory(p)
    assert kinds_of(events, ids["A"])["shipped"] == 1 and kinds_of(events, ids["B"])["shipped"] == 1
    assert kinds_of(events, ids["C"]) == Counter({"reserved": 1})
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        level = store.stock("WH-SH", sku)
    assert (level.total, level.reserved, level.shipped) == (48, 4, 2)
    for rule in ("backwards", "too_fast", "illegal_skip"):
        assert _labelled(p.worker_url(), "orderstream_suspect_transitions_total", rule=rule) == 1, rule
    # ClickHouse: the facts, the trusted state, the execution tier
    rows = wait_for(p, lambda: (r := sink_sql(p, "SELECT order_id, rule FROM suspect_transitions")) and len(r) == 3 and r,
                    "the suspect transitions to land")
    assert {r["order_id"]: r["rule"] for r in rows} == {ids["A"]: "backwards", ids["B"]: "too_fast",
                                                         ids["C"]: "illegal_skip"}
    states = {r["order_id"]: r["s"] for r in sink_sql(
        p, "SELECT order_id, argMaxMerge(last_status) AS s FROM order_state GROUP BY order_id")}
    assert states == {ids["A"]: "SHIPPED", ids["B"]: "SHIPPED", ids["C"]: "PAID"}
    tier = sink_json(p, "/views/execution")["suspect_transitions"]
    assert tier["by_rule"] == {"backwards": 1, "illegal_skip": 1, "too_fast": 1}
    assert {(r["order_id"], r["rule"]) for r in tier["open"]} == {(ids["A"], "backwards"), (ids["C"], "illegal_skip")}


def _labelled(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# -- 4. a replay with every fulfilment flow balances, and the daily check finds exactly the suspects

FULFILMENT_MIX = ReplayMix(ship=0.08, late_payment=0.04, suspect=0.03, out_of_order=0.02)


def test_a_fulfilment_replay_balances_and_the_daily_check_finds_exactly_the_suspects(pipeline_factory, tmp_path):
    p = pipeline_factory(ORDERSTREAM_RESERVATION_TIMEOUT_S="3", ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", **QUIET)
    p.start_worker()
    p.start_sink()
    cfg = ReplayConfig(count=600, seed=1704, mix=FULFILMENT_MIX, late_after_s=6.0, drain_timeout_s=240)
    report = run_replay(p.s, p.names, p.group, cfg, settle_holds_s=30, check_alive=p.check_alive)
    assert report["balanced"], json.dumps({k: report[k] for k in ("stock", "suspects", "late_payments",
                                                                  "unaccounted_sample", "without_outcome_sample")},
                                          default=str)[:4000]
    stock_report, late = report["stock"], report["late_payments"]
    assert report["shipped"] > 20 and stock_report["units_shipped"] == stock_report["units_shipped_by_events"] > 0
    assert stock_report["units_put_in"] == (stock_report["units_available"] + stock_report["units_reserved"]
                                            + stock_report["units_shipped"])
    # every generated late payment whose reservation had expired got one outcome (balanced says
    # none got two); ordinary payments that came after the 3 s time-out may add to the outcomes
    assert late["expired_before_payment"] > 0
    assert late["rereserved"] + late["out_of_stock"] >= late["expired_before_payment"]
    assert report["suspects"]["flagged"] == report["suspects"]["expected"] > 5
    assert report["stale_dropped"] >= report["stale_expected"] > 0

    # the 02:00 robot for today (China time): every order consistent except those whose latest
    # platform version was flagged, and those differ exactly as a flagged suspect transition
    suspect_orders = {SuspectTransition.decode(r.value).order_id for r in p.read(p.names.SUSPECT)}
    wait_for(p, lambda: int(sink_sql(p, "SELECT count() AS n FROM suspect_transitions")[0]["n"]) == len(suspect_orders)
             and _sink_caught_up(p), "the sink to land everything")
    today = datetime.now(timezone(timedelta(hours=8))).date()
    check = check_states(p.s, p.names, today, sink_query(f"http://127.0.0.1:{p.sink_port}", token=p.s.sink_token),
                         group=p.group)
    kinds = Counter(d["kind"] for d in check["differences"])
    assert set(kinds) <= {"state_differs"}, json.dumps([d for d in check["differences"] if d["kind"] != "state_differs"][:10])
    differing = {d["order_id"] for d in check["differences"]}
    assert differing and differing <= suspect_orders
    assert all(d["cause"].startswith("suspect_transition") for d in check["differences"])
    total = check["total"]
    assert total["orders"] == report["expected_new_orders"]
    assert total["consistent"] == total["orders"] - len(differing)
    assert total["dead_letters"] == report["dead_lettered"] and not check["total"]["meets_target"]

    # the command itself: prints, writes the JSON, exits 3 (below 99.997 %)
    out = tmp_path / "states.json"
    run = subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "orderstream"), "reconcile", "states",
                          "--day", today.isoformat(), "--sink-url", f"http://127.0.0.1:{p.sink_port}", "--out", str(out)],
                         env={**os.environ, **p.env}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    written = json.loads(out.read_text())
    assert written["total"] == total and {d["order_id"] for d in written["differences"]} == differing
    assert "TOTAL" in run.stdout and "state_differs" in run.stdout

    # and a difference nobody flagged: Redis loses a shipped order's record
    shipped_one = next(e["order_id"] for e in inventory(p) if e["event"] == "shipped" and e["order_id"] not in differing)
    client = redis.Redis.from_url(p.s.redis)
    try:
        assert client.delete(f"{p.ns}inv:order:{shipped_one}") == 1
    finally:
        client.close()
    again = check_states(p.s, p.names, today, sink_query(f"http://127.0.0.1:{p.sink_port}", token=p.s.sink_token))
    lost = [d for d in again["differences"] if d.get("order_id") == shipped_one]
    assert [d["kind"] for d in lost] == ["redis_differs_from_events"] and lost[0]["events_say"] == "shipped"


def _sink_caught_up(p) -> bool:
    status = sink_json(p, "/status", timeout=10)
    return status["buffered_rows"] == 0


# -- 5. SIGKILL in the middle of a shipment replay ---------------------------------------------------

def test_worker_sigkilled_mid_shipment_replay_ships_every_order_once(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2")
    p.start_worker(0)
    cfg = ReplayConfig(count=1500, seed=1705, rate_per_min=4800, drain_timeout_s=240,
                       mix=ReplayMix(ship=0.15, suspect=0.02, out_of_order=0.01))
    replay = FaultyReplay(p, cfg).start()
    replay.at(0.45)
    killed_at = int(time.time() * 1000)
    p.procs["worker-0"].kill()             # SIGKILL: no shutdown hooks, no final commit
    p.start_worker(0)
    restarted_at = int(time.time() * 1000)
    messages, produced = replay.finish()
    report = settle(p, messages, produced)
    report = reconcile(p.s, p.names, messages, produced["coordinates"], stock_events(cfg), produced["stock_at_ms"])
    summary = json.dumps({k: report[k] for k in ("raw_lost", "missing_new_orders", "unaccounted_new_orders",
                                                 "accepted_without_outcome", "stock", "suspects")}, default=str)[:4000]
    assert report["raw_lost"] == 0 and report["missing_new_orders"] == 0, summary
    assert report["balanced"], summary
    shipped = [e for e in inventory(p) if e["event"] == "shipped"]
    per_order = Counter(e["order_id"] for e in shipped)
    assert len(per_order) > 100, summary
    # the kill came in the middle of it: shipments before the kill and after the restart
    assert any(e["at_ms"] < killed_at for e in shipped) and any(e["at_ms"] > restarted_at for e in shipped)
    # a re-published shipment (crash) carries the very same lines; Redis deducted each order once
    lines = {}
    for e in shipped:
        key = tuple(sorted((line["warehouse"], line["sku"], line["quantity"]) for line in e["lines"]))
        assert lines.setdefault(e["order_id"], key) == key
    assert report["stock"]["units_shipped"] == sum(q for key in lines.values() for _, _, q in key)


# -- 6. a second replay into the same pipeline: the snapshot re-bases the totals, still balanced -----

def test_a_second_replay_into_the_same_pipeline_still_balances(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="2", **QUIET)
    p.start_worker()
    reports = [run_replay(p.s, p.names, p.group, ReplayConfig(count=250, seed=seed, drain_timeout_s=180,
                                                              mix=ReplayMix(ship=0.15)),
                          settle_holds_s=20, check_alive=p.check_alive) for seed in (1707, 1708)]
    for report in reports:
        assert report["balanced"], json.dumps({k: v for k, v in report.items() if k not in ("produced_by_kind", "config")}, default=str)[:6000]
    # the second run's shipments are on top of the first's: Redis counts both, the snapshot only re-based totals
    assert reports[1]["stock"]["units_shipped"] > reports[0]["stock"]["units_shipped"] > 0
