"""Issue 17, refunds, on the real broker, Redis, a worker process and the simulated platform refund
APIs: the auto-approval path, the operator path, goods back to stock exactly once, seed 002's key
rotation recovered by a re-drive that pays each refund once, the refunds in ClickHouse and the
tiers, and a SIGKILL of the worker in the middle of refunds."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest
import redis.asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import PROJECT_ROOT
from pipeline.contracts import (FailedRefundInstruction, InventoryEvent, RefundAction, RefundLine, RefundRequest,
                                StockUpdate, WarehouseStock)
from pipeline.devtools.fake_orders import GOODS_SKUS, RawOrderFactory, ReplayMix
from pipeline.devtools.fake_refunds import (RefundMix, RefundPlan, reconcile_refunds, refund_states,
                                            refundable_orders)
from pipeline.devtools.refund_service import (INVALID_KEY, current_keys, initial_keys, received, rotate_key,
                                              write_credentials)
from pipeline.devtools.replay import ReplayConfig, run_replay, stock_audit, stock_events
from pipeline.domain.normalize import global_order_id
from pipeline.domain.refund_rules import DAY_MS
from pipeline.inventory_store import InventoryStore
from pipeline.refund_ledger import RefundLedger
from tests.stack.helpers import Watch, sink_json, sink_sql

pytestmark = [pytest.mark.stack, pytest.mark.slow]

STOCK = 20


# --------------------------------------------------------------------------- helpers


def cli(p, *args: str) -> subprocess.CompletedProcess:
    """`orderstream ...` inside this pipeline's namespace."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, **p.env},
                          capture_output=True, text=True, timeout=120)


def metric(p, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"{p.worker_url()}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def wait_for(condition, timeout: float, what: str, p=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if p is not None:
            p.check_alive()
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def seed_stock(p, warehouses=("WH-SH",)) -> None:
    p.produce([(p.names.INVENTORY_STOCK, f"{wh}:{sku}".encode(),
                WarehouseStock.encode(StockUpdate("snapshot", wh, sku, total=STOCK, locked=0, presale=0)))
               for wh in warehouses for sku in GOODS_SKUS])


def store(p) -> InventoryStore:
    return InventoryStore(p.s.redis, prefix=f"{p.ns}inv")


def rid(platform: str = "JD") -> str:
    return f"{platform}:RF{uuid.uuid4().hex[:10].upper()}"


def request(refund_id: str, *, order_id: str | None = None, platform: str = "JD", kind: str = "return_and_refund",
            reason_code: str = "seven_day_no_reason", amount: int = 19_900, order_total: int = 19_900,
            lines=(("SKU-0001", 1),), custom: bool = False, delivered_days_ago: float | None = 2,
            currency: str = "CNY") -> RefundRequest:
    now = int(time.time() * 1000)
    return RefundRequest(
        refund_id=refund_id, order_id=order_id or global_order_id(platform, refund_id.split(":")[1]),
        platform=platform, kind=kind, reason_code=reason_code, amount_minor=amount, currency=currency,
        order_total_minor=order_total,
        lines=tuple(RefundLine(sku, qty, is_custom=custom) for sku, qty in lines) if kind != "refund_only" else (),
        requested_at_ms=now,
        delivered_at_ms=None if delivered_days_ago is None else int(now - delivered_days_ago * DAY_MS),
        requested_by=f"buyer:{refund_id}")


def send_requests(p, *requests: RefundRequest) -> None:
    p.produce([(p.names.REFUND_REQUESTS, r.refund_id.encode(), r.encode()) for r in requests])


def send_actions(p, *actions: RefundAction) -> None:
    p.produce([(p.names.REFUND_ACTIONS, a.refund_id.encode(), a.encode()) for a in actions])


def receipt(refund_id: str, warehouse: str | None = "WH-SH", operator: str = "clerk.wang") -> RefundAction:
    return RefundAction(refund_id=refund_id, action="receive", operator=operator, at_ms=int(time.time() * 1000),
                        warehouse=warehouse)


class Refunds:
    """refunds.events and refunds.instructions.failed as they arrive, per refund."""

    def __init__(self, p) -> None:
        self.p = p
        self.watch = Watch(p, p.names.REFUND_EVENTS, p.names.REFUND_FAILED)

    def events(self, refund_id: str, kind: str | None = None) -> list[dict]:
        return [e for e in self.watch.decoded(self.p.names.REFUND_EVENTS)
                if e["refund_id"] == refund_id and (kind is None or e["event"] == kind)]

    def state(self, refund_id: str) -> str | None:
        steps = [e for e in self.events(refund_id) if e["event"] not in ("invalid", "ignored")]
        return steps[-1]["status"] if steps else None

    def parked(self, refund_id: str | None = None) -> list[dict]:
        return [FailedRefundInstruction.decode(m.value()).as_dict() for m in self.watch.on(self.p.names.REFUND_FAILED)
                if refund_id is None or m.key() == refund_id.encode()]

    def until(self, condition, what: str, timeout: float = 60):
        return self.watch.until(lambda w: condition(), timeout, what, self.p.check_alive)

    def reach(self, states: dict[str, str], timeout: float = 60) -> None:
        self.until(lambda: all(self.state(r) == s for r, s in states.items()),
                   f"refund states {states} (now {[self.state(r) for r in states]})", timeout)

    def close(self) -> None:
        self.watch.close()


@pytest.fixture(scope="module")
def refund_pipeline(pipeline_factory):
    p = pipeline_factory()
    p.start_verifiers("--latency-ms", "2")
    p.start_refund_service("--latency-ms", "5")
    seed_stock(p, ("WH-SH", "WH-GZ"))
    p.start_worker()
    p.drain()   # the stock is in Redis before any order needs it
    return p


@pytest.fixture()
def refunds(refund_pipeline):
    r = Refunds(refund_pipeline)
    yield r
    r.close()


# --------------------------------------------------------------------------- auto-approval


def test_auto_approved_return_goes_back_to_stock_once_and_is_refunded_once(refund_pipeline, refunds):
    p = refund_pipeline
    n = p.names
    # a real order through the pipeline: its reservation says where the goods shipped from
    f = RawOrderFactory(seed=1701, start=datetime.now(timezone.utc))
    ext = f"AUTO{uuid.uuid4().hex[:8].upper()}"
    p.produce([(n.raw("TMALL"), ext.encode(), f.to_bytes(f.order("TMALL", external_id=ext, amount_minor=19_900,
                                                                 province="上海")))])
    order_id = global_order_id("TMALL", ext)
    orders = Watch(p, n.UNIQUE, n.INVENTORY_EVENTS)
    outcome = orders.until(lambda w: [e["event"] for e in w.decoded(n.INVENTORY_EVENTS) if e["order_id"] == order_id],
                           90, "the order's reservation", p.check_alive)
    assert outcome == ["reserved"], outcome
    [order] = [o for o in orders.orders(n.UNIQUE) if o["order_id"] == order_id]
    orders.close()
    [line] = order["lines"]
    sku, qty = line["sku"], line["quantity"]
    with store(p) as s:
        [(warehouse, _, _)] = s.reservation(order_id)["allocations"]
        before = s.stock(warehouse, sku)
    assert before.reserved == qty

    refund_id = rid("TMALL")
    req = request(refund_id, order_id=order_id, platform="TMALL", amount=order["amounts"]["total_minor"],
                  order_total=order["amounts"]["total_minor"], lines=[(sku, qty)])
    send_requests(p, req)
    refunds.reach({refund_id: "awaiting_return"})
    requested, approved = refunds.events(refund_id)
    assert requested["event"] == "requested" and requested["actor"] == f"buyer:{refund_id}"
    assert (approved["event"], approved["actor"], approved["rule_id"]) == ("approved", "refund_rules",
                                                                           "seven_day_no_reason_small")
    refunds.watch.settle(1.5)
    with store(p) as s:
        assert s.stock(warehouse, sku) == before                  # nothing back in stock before the goods are
    assert refund_id not in received(p.s.refund_api)["received"]  # and no money before the goods either

    # the warehouse receives the goods; the receipt names no warehouse: the reservation's is used
    done = cli(p, "refunds", "receive", refund_id, "--operator", "clerk.wang")
    assert done.returncode == 0, done.stdout + done.stderr
    refunds.reach({refund_id: "refunded"})
    assert [e["event"] for e in refunds.events(refund_id)] == ["requested", "approved", "returned_to_stock",
                                                               "refunding", "refunded"]
    [back] = refunds.events(refund_id, "returned_to_stock")
    assert (back["warehouse"], back["units"], back["actor"]) == (warehouse, qty, "clerk.wang")
    with store(p) as s:
        after = s.stock(warehouse, sku)
        assert after.total == before.total + qty and after.reserved == before.reserved
        assert s.returned_units(warehouse, sku) == qty

    # the same receipt again, and the platform re-sending the request: both ignored, nothing twice
    again = cli(p, "refunds", "receive", refund_id, "--operator", "clerk.wang", "--warehouse", warehouse)
    assert again.returncode == 0, again.stdout + again.stderr
    send_requests(p, req)
    refunds.until(lambda: len(refunds.events(refund_id, "ignored")) == 2, "both repeats ignored")
    reasons = sorted(e["reason"] for e in refunds.events(refund_id, "ignored"))
    assert "cannot receive a refund that is refunded" in reasons[0]
    assert reasons[1].startswith("request already received")
    p.drain()
    with store(p) as s:
        assert s.stock(warehouse, sku).total == before.total + qty
    seen = received(p.s.refund_api)
    assert seen["received"][refund_id] == 1
    assert seen["applied"][refund_id]["amount_minor"] == req.amount_minor


# --------------------------------------------------------------------------- operators


def test_operators_decide_what_no_rule_approves_and_every_action_names_who(refund_pipeline, refunds):
    p = refund_pipeline
    n = p.names
    custom, big, only = rid(), rid(), rid("DOUYIN")
    send_requests(p, request(custom, custom=True),
                  request(big, amount=40_000, order_total=60_000),
                  request(only, platform="DOUYIN", kind="refund_only", reason_code="not_received", amount=5_000,
                          order_total=12_000))
    refunds.reach({custom: "reviewing", big: "reviewing", only: "reviewing"})
    [why] = refunds.events(custom, "reviewing")
    assert "custom item SKU-0001" in why["reason"]
    assert "order amount 60000 CNY minor is not below 50000" in refunds.events(big, "reviewing")[0]["reason"]

    # no operator, no action: refused where the operator sees it, nothing published
    actions_before = len(p.read(n.REFUND_ACTIONS))
    missing = cli(p, "refunds", "approve", custom)
    assert missing.returncode == 2 and "--operator" in missing.stdout + missing.stderr
    blank = cli(p, "refunds", "approve", custom, "--operator", "  ")
    assert blank.returncode == 1 and "'operator' (who did it) is required" in blank.stdout
    no_reason = cli(p, "refunds", "reject", big, "--operator", "li.ops")
    assert no_reason.returncode == 1 and "needs a 'reason'" in no_reason.stdout
    assert len(p.read(n.REFUND_ACTIONS)) == actions_before

    for args in (("approve", custom, "--operator", "li.ops", "--reason", "engraving was wrong, our fault"),
                 ("reject", big, "--operator", "li.ops", "--reason", "worn, tags removed"),
                 ("approve", only, "--operator", "zhao.cs")):
        done = cli(p, "refunds", *args)
        assert done.returncode == 0, done.stdout + done.stderr
    refunds.reach({custom: "awaiting_return", big: "rejected", only: "refunded"})
    [approved] = refunds.events(custom, "approved")
    assert (approved["actor"], approved["rule_id"]) == ("li.ops", "")
    [rejected] = refunds.events(big, "rejected")
    assert (rejected["actor"], rejected["reason"]) == ("li.ops", "worn, tags removed")
    assert [e["event"] for e in refunds.events(only)] == ["requested", "reviewing", "approved", "refunded"]

    # a late second decision changes nothing
    late = cli(p, "refunds", "approve", big, "--operator", "wu.ops")
    assert late.returncode == 0
    refunds.until(lambda: refunds.events(big, "ignored"), "the late approval ignored")
    assert "cannot approve a refund that is rejected" in refunds.events(big, "ignored")[0]["reason"]
    assert refunds.state(big) == "rejected"

    # money: the rejected amount is freed; a refund beyond what was paid is refused
    only_order = global_order_id("DOUYIN", only.split(":")[1])
    rest, over = rid("DOUYIN"), rid("DOUYIN")
    send_requests(p, request(rest, order_id=only_order, platform="DOUYIN", kind="refund_only", amount=7_000,
                             order_total=12_000))
    refunds.reach({rest: "reviewing"})          # 5,000 refunded + 7,000 committed = all that was paid
    send_requests(p, request(over, order_id=only_order, platform="DOUYIN", kind="refund_only", amount=1,
                             order_total=12_000))
    refunds.reach({over: "rejected"})
    assert "would reach 12001 CNY minor, more than the 12000 paid" in refunds.events(over, "rejected")[0]["reason"]

    async def ledger_state():
        client = redis.asyncio.Redis.from_url(p.s.redis)
        try:
            ledger = RefundLedger(client, prefix=f"{p.ns}refund")
            return (await ledger.order(only_order),
                    await ledger.order(global_order_id("JD", big.split(":")[1])))
        finally:
            await client.aclose()
    only_ledger, big_ledger = asyncio.run(ledger_state())
    assert (only_ledger.committed_minor, only_ledger.paid_minor) == (12_000, 12_000)
    assert big_ledger.committed_minor == 0 and big_ledger.paid_minor == 60_000

    # the custom item comes back to another warehouse: stock there, then the money
    with store(p) as s:
        before = s.stock("WH-GZ", "SKU-0001")
    done = cli(p, "refunds", "receive", custom, "--operator", "clerk.li", "--warehouse", "WH-GZ")
    assert done.returncode == 0, done.stdout + done.stderr
    refunds.reach({custom: "refunded"})
    with store(p) as s:
        assert s.stock("WH-GZ", "SKU-0001").total == before.total + 1
    seen = received(p.s.refund_api)
    assert seen["received"][custom] == 1 and seen["received"][only] == 1 and big not in seen["received"]


def test_invalid_requests_and_actions_are_explained_not_lost(refund_pipeline, refunds):
    p = refund_pipeline
    bad, ghost = rid(), rid()
    send_requests(p, request(bad, amount=30_000, order_total=20_000))
    p.produce([(p.names.REFUND_REQUESTS, b"JD:RFGARBAGE", b'{"refund_id": "JD:RFGARBAGE"}')])
    send_actions(p, RefundAction(ghost, "approve", "li.ops", int(time.time() * 1000)))
    refunds.until(lambda: refunds.events(bad, "invalid") and refunds.events("JD:RFGARBAGE", "invalid")
                  and refunds.events(ghost, "ignored"), "the explanations")
    assert "more than the order's total 20000" in refunds.events(bad, "invalid")[0]["reason"]
    assert "not a RefundRequest" in refunds.events("JD:RFGARBAGE", "invalid")[0]["reason"]
    assert "its request has not arrived" in refunds.events(ghost, "ignored")[0]["reason"]
    assert metric(p, "orderstream_refund_steps_total", outcome="invalid") >= 2
    p.drain()   # nothing blocks the agent: the bad messages are consumed, and stay on their topic
    assert len([r for r in p.read(p.names.REFUND_REQUESTS) if r.key == b"JD:RFGARBAGE"]) == 1


# --------------------------------------------------------------------------- seed 002's key rotation


def test_rotated_key_parks_instructions_then_a_redrive_pays_each_refund_once(refund_pipeline, refunds):
    p = refund_pipeline
    api = p.s.refund_api
    assert metric(p, "orderstream_refund_instructions_total", platform="JD", outcome="auth_failed") in (None, 0.0)
    rotate_key(api, "JD")                      # 14:00: JD rotates its key; our credentials still hold the old one
    jd = [rid("JD") for _ in range(3)]
    tmall = rid("TMALL")
    send_requests(p, *(request(r) for r in jd), request(tmall, platform="TMALL"))
    refunds.reach({r: "awaiting_return" for r in [*jd, tmall]})
    send_actions(p, *(receipt(r) for r in [*jd, tmall]))
    refunds.until(lambda: len(refunds.parked()) >= 3 and refunds.state(tmall) == "refunded",
                  "three parked JD instructions and the TMALL refund paid")
    for r in jd:
        [parked] = refunds.parked(r)
        assert (parked["error"], parked["http_status"], parked["platform"]) == (INVALID_KEY, 401, "JD")
        assert refunds.state(r) == "refunding"
        assert refunds.events(r, "instruction_failed")[0]["error"] == INVALID_KEY
    # the metric the alert fires on, and the parked gauge
    assert metric(p, "orderstream_refund_instructions_total", platform="JD", outcome="auth_failed") == 3
    wait_for(lambda: metric(p, "orderstream_refund_instructions_parked", platform="JD") == 3, 20,
             "the parked gauge", p)
    [rule] = [r for g in yaml.safe_load((PROJECT_ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
              for r in g["rules"] if r["alert"] == "OrderstreamRefundApiKeyInvalid"]
    assert 'orderstream_refund_instructions_total{outcome="auth_failed"}' in rule["expr"]

    # a re-drive while the key is still wrong fails again (and parks again); no operator, no re-drive
    assert cli(p, "refunds", "redrive").returncode == 2
    first = cli(p, "refunds", "redrive", "--operator", "ops.chen")
    assert first.returncode == 0 and "re-driven: 3" in first.stdout, first.stdout + first.stderr
    refunds.until(lambda: all(len(refunds.parked(r)) == 2 for r in jd), "the second failures")
    assert all(received(api)["auth_failures"][r] == 2 for r in jd)

    # the credentials are fixed (the file the worker re-reads), then the re-drive pays each once
    write_credentials(p.s.refund_credentials, {**initial_keys(), "JD": current_keys(api)["JD"]})
    fixed = cli(p, "refunds", "redrive", "--operator", "ops.chen")
    assert fixed.returncode == 0 and "re-driven: 3" in fixed.stdout, fixed.stdout + fixed.stderr
    refunds.reach({r: "refunded" for r in jd})
    for r in jd:
        retried = [e for e in refunds.events(r, "refunding") if e["actor"] == "ops.chen"]
        assert len(retried) == 2 and "Invalid API Key" in retried[0]["reason"]
    again = cli(p, "refunds", "redrive", "--operator", "ops.chen", "--from-beginning")
    assert again.returncode == 0
    p.drain()
    refunds.watch.settle(2)
    seen = received(api)
    for r in [*jd, tmall]:
        assert seen["received"][r] == 1, (r, seen["received"].get(r))   # paid exactly once, sent once with a good key
        assert r in seen["applied"]
    assert all(len(refunds.events(r, "refunded")) == 1 for r in jd)
    wait_for(lambda: metric(p, "orderstream_refund_instructions_parked", platform="JD") == 0, 20,
             "the parked gauge back to 0", p)


# --------------------------------------------------------------------------- ClickHouse and the tiers


def test_refunds_land_in_clickhouse_and_the_tiers_show_those_in_flight(refund_pipeline, refunds):
    p = refund_pipeline
    waiting, returning = rid(), rid()
    send_requests(p, request(waiting, custom=True), request(returning))
    refunds.reach({waiting: "reviewing", returning: "awaiting_return"})
    p.start_sink()
    p.drain()
    distinct = {(e["refund_id"], e["event"], e["cause"]) for e in refunds.watch.decoded(p.names.REFUND_EVENTS)}

    def landed():
        rows = sink_sql(p, "SELECT count() AS n FROM refund_events")
        return int(rows[0]["n"]) == len(distinct)
    wait_for(landed, 90, f"{len(distinct)} refund events in ClickHouse", p)
    tactical = sink_json(p, "/views/tactical")["refunds"]
    execution = sink_json(p, "/views/execution")["refunds"]
    states = Counter(refunds.state(r) for r in {e[0] for e in distinct} if refunds.state(r))
    assert tactical["by_state"] == {s: states.get(s, 0) for s in tactical["by_state"]}
    assert tactical["in_flight"] == sum(n for s, n in states.items() if s not in ("refunded", "rejected", "cancelled"))
    assert tactical["parked_instructions"] == []
    queue = {r["refund_id"]: r for r in execution["awaiting_review"]}
    assert waiting in queue and returning not in queue
    assert "custom item" in queue[waiting]["why"] and queue[waiting]["amount_minor"] == 19_900
    refunded = {r["currency"]: r["refunds"] for r in tactical["refunded_in_window"]}
    assert refunded.get("CNY", 0) == sum(1 for e in distinct if e[1] == "refunded"
                                         and refunds.events(e[0], "refunded")[0]["currency"] == "CNY")


# --------------------------------------------------------------------------- rules as data


BAD_REFUND_RULES = """\
version: 3
auto_approve:
  - id: everything_small
    when: {order_total_below_minor: {CNY: -5}}
"""


def test_refund_rules_published_at_run_time_change_the_next_decisions(refund_pipeline, refunds, tmp_path):
    p = refund_pipeline
    worker_pid = p.procs["worker-0"].pid
    v2 = tmp_path / "refund_rules_v2.yaml"
    v2.write_text((PROJECT_ROOT / "pipeline/domain/refund_rules.yaml").read_text(encoding="utf-8")
                  .replace("version: 1\n", "version: 2\n", 1)
                  .replace("order_total_below_minor: {CNY: 50000}", "order_total_below_minor: {CNY: 100000}", 1),
                  encoding="utf-8")
    done = cli(p, "refunds", "rules", "publish", str(v2))
    assert done.returncode == 0 and "version 2" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: metric(p, "orderstream_refund_rules_version") == 2, 30, "refund rules version 2", p)
    six_hundred = rid()
    send_requests(p, request(six_hundred, amount=60_000, order_total=60_000))   # 600 元: the operator's under v1
    refunds.reach({six_hundred: "awaiting_return"})
    assert refunds.events(six_hundred, "approved")[0]["actor"] == "refund_rules"

    # a bad rule set: refused by the tools, and by the worker when it reaches the topic anyway
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_REFUND_RULES, encoding="utf-8")
    for command in ("check", "publish"):
        refused = cli(p, "refunds", "rules", command, str(bad))
        assert refused.returncode == 1 and "everything_small" in refused.stdout, refused.stdout
    p.produce([(p.names.REFUND_RULES, b"refund-rules", BAD_REFUND_RULES.encode())])
    wait_for(lambda: metric(p, "orderstream_refund_rules_rejected_total") == 1, 30, "the rejected rule set", p)
    assert metric(p, "orderstream_refund_rules_version") == 2
    still = rid()
    send_requests(p, request(still, amount=70_000, order_total=70_000))
    refunds.reach({still: "awaiting_return"})                                   # version 2 still decides
    assert p.procs["worker-0"].pid == worker_pid and p.procs["worker-0"].alive()


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_in_the_middle_of_refunds_pays_and_restocks_each_exactly_once(pipeline_factory):
    p = pipeline_factory()
    # slow instructions, so the kill lands while some are in flight
    p.start_refund_service("--latency-ms", "120")
    seed_stock(p)
    p.start_worker()
    p.drain()
    refunds = Refunds(p)
    try:
        ids = [rid() for _ in range(30)]
        reqs = {r: request(r, lines=[(GOODS_SKUS[i % 5], 1 + i % 2)], amount=10_000 + i, order_total=10_000 + i)
                for i, r in enumerate(ids)}
        send_requests(p, *reqs.values())
        refunds.reach({r: "awaiting_return" for r in ids}, timeout=90)
        send_actions(p, *(receipt(r) for r in ids))
        refunds.until(lambda: sum(refunds.state(r) == "refunded" for r in ids) >= 6, "the first refunds paid")
        p.procs["worker-0"].kill()                    # SIGKILL: no shutdown hooks, no commit
        paid_at_kill = sum(refunds.state(r) == "refunded" for r in ids)
        assert paid_at_kill < len(ids), "the worker finished before the kill: nothing was in the middle"
        p.start_worker()
        refunds.reach({r: "refunded" for r in ids}, timeout=180)
        p.drain(timeout=120)
        refunds.watch.settle(2)

        seen = received(p.s.refund_api)
        # the platform paid each refund once, with its amount, whatever was sent again after the kill
        assert set(seen["applied"]) == set(ids)
        assert all(seen["applied"][r]["amount_minor"] == reqs[r].amount_minor for r in ids)
        assert seen["stats"]["applied"] == len(ids)
        assert all(seen["received"][r] >= 1 for r in ids)
        # goods back in stock once per refund
        units = Counter()
        for r in ids:
            for line in reqs[r].lines:
                units[line.sku] += line.quantity
        with store(p) as s:
            for sku, qty in units.items():
                assert s.stock("WH-SH", sku).total == STOCK + qty, sku
                assert s.returned_units("WH-SH", sku) == qty, sku
            assert all(s.returned_record(r) is not None for r in ids)
        # every step of every refund is one fact (a re-published event carries its cause)
        for r in ids:
            facts = Counter((e["event"], e["cause"]) for e in refunds.events(r))
            kinds = Counter(event for event, _ in facts)
            assert kinds == Counter({"requested": 1, "approved": 1, "returned_to_stock": 1, "refunding": 1,
                                     "refunded": 1}), (r, facts)
        assert refunds.parked() == []
        copies = sum(n - 1 for n in Counter((e["refund_id"], e["event"], e["cause"])
                                            for e in refunds.watch.decoded(p.names.REFUND_EVENTS)).values())
        print(f"at the kill {paid_at_kill}/{len(ids)} refunded; re-published copies {copies}; "
              f"instructions received {sum(seen['received'].values())} for {len(ids)} refunds")
    finally:
        refunds.close()


# --------------------------------------------------------------------------- the replay


# shipments, late payments and refunds in one replay (issue 17's "Done when")
FULFILMENT_AND_REFUNDS = ReplayMix(ship=0.08, late_payment=0.04)


def test_replay_with_shipments_late_payments_and_refunds_balances_every_unit_and_fen(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RESERVATION_TIMEOUT_S="3", ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3",
                         ORDERSTREAM_BREAKER_OPEN_PER_MIN="100000")   # the replay's bursts must not degrade it
    p.start_verifiers("--latency-ms", "2")
    p.start_refund_service("--latency-ms", "2")
    p.start_worker()
    cfg = ReplayConfig(count=400, seed=17, mix=FULFILMENT_AND_REFUNDS, late_after_s=6.0, drain_timeout_s=240,
                       refunds=RefundMix(rate=0.25, auto=0.6, approve=0.7, excess=0.1, rotated_key="JD"))
    report = run_replay(p.s, p.names, p.group, cfg, settle_holds_s=30, check_alive=p.check_alive)
    r, after = report["refunds"], report["stock_after_refunds"]
    assert report["balanced"], json.dumps({k: report.get(k) for k in ("stock", "stock_after_refunds", "refunds",
                                                                      "late_payments")}, default=str)[:4000]
    assert r["balanced"] and after["balanced"] and report["stock"]["balanced"]
    assert r["requested"] >= 20 and r["auto_approved"] and r["operator_approved"] and r["operator_rejected"]
    assert r["refused_over_paid"] and r["parked_on_rotated_key"] and r["redriven"] == r["parked_on_rotated_key"]
    assert r["refunded"] == r["auto_approved"] + r["operator_approved"] == r["platform_stats"]["applied"]
    assert r["platform_stats"]["requests"] == r["refunded"] + r["platform_stats"]["auth_failures"]  # sent once each
    assert r["instructions_not_sent_once"] == 0 and r["still_parked"] == 0 and r["over_refunded_orders"] == 0
    # the shipments and late payments happened, and the returns are counted in the stock
    assert report["shipped"] > 5 and report["late_payments"]["expired_before_payment"] > 0
    assert after["units_shipped"] == after["units_shipped_by_events"] > 0
    assert after["units_returned"] == after["units_returned_by_events"] == after["units_returned_since_put_in"] \
        == r["units_returned_to_stock"] > 0
    assert after["returns_of_shipped_orders"] > 0     # goods that left with a shipment came back
    assert after["units_put_in"] + after["units_returned"] == (after["units_available"] + after["units_locked"]
                                                               + after["units_presale"] + after["units_reserved"]
                                                               + after["units_shipped"])
    assert after["negative"] == [] and after["cells_differing"] == 0 and after["unbalanced"] == 0
    print(f"put in {after['units_put_in']} + returned {after['units_returned']} = available "
          f"{after['units_available']} + reserved {after['units_reserved']} + shipped {after['units_shipped']}; "
          f"{r['refunded']} refunds paid once, {r['parked_on_rotated_key']} after the re-drive; "
          f"{after['returns_of_shipped_orders']} of {after['returns']} returns were shipped orders")

    # the reconciliations are not a formality: a unit put back for a refund that was rejected is caught
    plans = plans_as_they_ended(p)
    assert reconcile_refunds(p.s, p.names, plans, refundable_orders(p.s, p.names))["balanced"]
    rejected = next(plan.refund_id for plan in plans if plan.expect == "rejected")
    with store(p) as s:
        s.return_to_stock(rejected, "X", [("WH-SH", "SKU-0001", 1)])
    again = reconcile_refunds(p.s, p.names, plans, refundable_orders(p.s, p.names))
    assert not again["balanced"] and again["restock_mismatch"] == 1 and again["restock_sample"] == [rejected]
    # ... and by the stock audit, which no refund event explains it to
    inventory = [InventoryEvent.decode(m.value) for m in p.read(p.names.INVENTORY_EVENTS)]
    audit = stock_audit(p.s, p.names, inventory, stock_events(cfg), report["stock_at_ms"])
    assert not audit["balanced"] and audit["units_returned"] == audit["units_returned_by_events"] + 1
    assert [c["cell"] for c in audit["unbalanced_sample"]] == ["WH-SH:SKU-0001"]
    assert list(audit["cell_diff_sample"]) == ["WH-SH:SKU-0001"]


def plans_as_they_ended(p):
    """The replay's refunds rebuilt from what it produced, each with the fate it met."""
    states = refund_states(p.s, p.names)
    plans = []
    for r in p.read(p.names.REFUND_REQUESTS):
        req = RefundRequest.decode(r.value)
        state = states[req.refund_id]["state"]
        plans.append(RefundPlan(req, "auto" if state == "refunded" else "reject", state))
    return plans
