"""Stage 4: stock in Redis. Accepted new orders are reserved, paid updates settle (or, paid after
their unpaid reservation expired, reserve again once), shipped-state updates take the units out
of the warehouse once, cancellations release.

Every one of those is a Lua script (all lines or none, idempotent by order id), so several
workers can never oversell or ship twice; the batch's reservations, payments and shipments go in
ONE script call, in batch order (an order's own reservation comes before its payment or its
shipment), then the cancellations. A shipped-state update also registers its waybill on
logistics.waybills (courier tracking starts there). Suspect updates (dedupe did not trust the
state change) have no stock or logistics effect. This stage only ranks warehouses, calls the
store, retries while Redis is unreachable (the stream pauses, nothing is skipped) and publishes
what happened on inventory.events, each event naming who did it (`actor`). Re-processing an
order version after a crash re-publishes what that version did (the store records the version),
so nothing is lost and nothing is doubled.
Warehouse stock updates and unpaid time-outs are low-volume paths with their own agent and timer.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from pipeline import metrics
from pipeline.app import app, inventory_stock, settings
from pipeline.contracts import InventoryEvent, InventoryLine, StockEventError, WarehouseStock
from pipeline.domain.channels import channel_events
from pipeline.domain.logistics import waybill_registration
from pipeline.domain.warehouse import DEFAULT_WAREHOUSES, Ranker, Weights
from pipeline.inventory_store import AsyncInventoryStore, Reservation, ReserveRequest, depth_over
from pipeline.outputs import Outputs, outputs
from pipeline.retrying import Backoff, retry_async
from pipeline.topics import PLATFORMS, names

from .common import InFlight, finish_before_ack, ms_since_raw, now_ms, stage

log = logging.getLogger(__name__)
for _outcome in ("shipped", "duplicate", "unreserved", "skipped", "refused"):  # series exist from the start
    metrics.SHIPMENTS.labels(outcome=_outcome)
RELEASING_STATES = {"CANCELLED"}
SHIPPED_STATES = {"SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED"}  # the goods have left the warehouse
UNPAID = "PENDING_PAYMENT"
ACTOR = "order_flow"
TIMER_ACTOR = "reservation_timer"
LATE_REASON = "late payment: paid after its unpaid reservation expired"
UNRESERVED_REASON = "shipped without a reservation here (out of stock, or while held): nothing deducted"
_store: AsyncInventoryStore | None = None


def store() -> AsyncInventoryStore:
    global _store
    if _store is None:
        # two layers of retry: redis-py's own sends a command again on a fresh connection after a
        # blip (a dropped connection: up to 3 more tries within ~0.3 s); a longer outage reaches
        # with_redis_retry, which waits it out, counted and logged
        client = aioredis.Redis.from_url(settings.redis, socket_timeout=5, socket_connect_timeout=2,
                                         retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3))
        # unpaid orders' reservations time out; paid ones are settled (taken off that schedule)
        _store = AsyncInventoryStore(client, prefix=f"{names.ns}inv", reservation_ttl_s=settings.reservation_timeout_s)
    return _store


REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def _redis_down(retry) -> None:
    metrics.REDIS_RETRIES.inc()
    metrics.DEPENDENCY_UP.labels(dependency="redis").set(0)
    log.warning("redis unavailable (%s); retrying in %.1fs", retry.outcome.exception(), retry.upcoming_sleep)


# Redis down (restart, failover): `await with_redis_retry(call, *args)` waits and retries for as
# long as it takes (0.1 s, doubling, at most 5 s apart): the stream simply pauses, nothing is skipped
with_redis_retry = retry_async(REDIS_DOWN, Backoff(0.1, cap_s=5.0), before_sleep=_redis_down)


def order_lines(order: dict) -> list[tuple[str, int]]:
    units: dict[str, int] = defaultdict(int)
    for line in order["lines"]:
        units[line["sku"]] += line["quantity"]
    return sorted(units.items())


def version_ms(order: dict) -> int:
    """The order version's own time (updated_at, epoch ms): what the store records a payment or
    shipment by, so re-processing that version is told apart from a later one."""
    updated = order["updated_at"]
    return int(updated.timestamp() * 1000) if hasattr(updated, "timestamp") else int(updated)


def inventory_event(kind: str, order: dict, *, warehouse=None, allocations=(), reason="", latency_ms=None,
                    actor: str = ACTOR) -> bytes:
    lines = tuple(InventoryLine(sku, qty, wh) for wh, sku, qty in allocations)
    return InventoryEvent(event=kind, order_id=order["order_id"], platform=order["platform"], at_ms=now_ms(),
                          warehouse=warehouse, lines=lines, units=sum(line.quantity for line in lines),
                          reason=reason, latency_ms=latency_ms, actor=actor).encode()


async def release_order(order: dict, reason: str, out: Outputs, actor: str = ACTOR, source: str = "") -> set[str] | None:
    """Give back what the order holds: the SKUs given back, None when it held nothing (a
    tombstone still blocks a late reserve; a shipped order keeps its shipment). The caller
    publishes channel state for the SKUs. The same `source` message (re-processed after its
    outputs were lost) publishes the release again: Redis gave the units back only once."""
    released = await with_redis_retry(store().release, order["order_id"], reason, actor=actor, source=source)
    if not released.released and released.outcome != "again":
        return None
    return announce_release(order, released, reason, out, actor=actor)


def announce_release(order: dict, released, reason: str, out: Outputs, event: str = "released",
                     actor: str = ACTOR) -> set[str]:
    """What every release publishes: the metric and the event (`released`, or `expired` for an
    unpaid time-out). Returns its SKUs."""
    metrics.RESERVATIONS.labels(outcome=event).inc()
    out.send(names.INVENTORY_EVENTS, order["order_id"].encode(), inventory_event(
        event, order, allocations=released.allocations, reason=reason, actor=actor))
    return {sku for _, sku, _ in released.allocations}


class StockRequest(NamedTuple):
    order: dict
    headers: dict
    mode: str          # reserve | pay | ship (pipeline.inventory_store.ReserveRequest)


async def fulfil_batch(batch: list[InFlight], out: Outputs) -> None:
    """Reserve the batch's accepted new orders, settle paid updates (re-reserving late payments),
    ship shipped-state updates, release cancellations: two or three Redis round trips per batch."""
    requests: list[StockRequest] = []
    cancelled: list[InFlight] = []
    with stage("inventory", len(batch)) as counts:
        for item in batch:
            if item.change == "new" and item.verdict.action != "accept":
                continue  # held orders are reserved when released, rejected ones never
            counts.came_in(item.platform)
            counts.went_out(item.platform, item.change)
            if item.change == "suspect":
                continue  # not trusted: no stock effect until a believable update comes
            status = item.order["status"]
            headers = dict(item.headers)
            if status in RELEASING_STATES:
                cancelled.append(item)
                continue
            if item.change == "new":
                requests.append(StockRequest(item.order, headers, "reserve"))
            if status in SHIPPED_STATES:
                requests.append(StockRequest(item.order, headers, "ship"))
            elif status != UNPAID and item.change != "new":
                requests.append(StockRequest(item.order, headers, "pay"))
            # an unpaid update: the reservation keeps its deadline
        # in this order, so an order's own reservation comes before its cancellation
        touched = await stock_batch(requests, out)
        for item in cancelled:
            skus = await release_order(item.order, f"order {item.order['status'].lower()}", out,
                                       source=dict(item.headers).get("src", b"").decode())
            if skus is None and item.change == "new":
                # an order that arrives already cancelled never needs stock: say so explicitly
                out.send(names.INVENTORY_EVENTS, item.key, inventory_event(
                    "cancelled", item.order, reason="cancelled before reservation"))
            touched |= skus or set()
        await publish_channel_states(touched, out)


RANKER = Ranker(Weights())


def rank_warehouses(order: dict, lines: list[tuple[str, int]], levels: dict) -> list[str]:
    """Weighted score (distance 40 %, depth 30 %, on-time 20 %, cost 10 %); depth = what this order can get."""
    depth = depth_over({sku: {w: level.available for w, level in levels.get(sku, {}).items()}
                        for sku, _ in lines})
    known = tuple(w for w in DEFAULT_WAREHOUSES if w.id in depth) or DEFAULT_WAREHOUSES
    extra = sorted(set(depth) - {w.id for w in known})
    return RANKER.order(known, order["address"]["province"], depth) + extra


async def reserve_batch(batch: list[tuple[dict, dict]], out: Outputs, actor: str = ACTOR) -> set[str]:
    """Reserve (order, headers) pairs (held orders released) with one script call; an order that
    was already shipped when it was held is shipped right after. The SKUs whose stock moved."""
    requests = []
    for order, headers in batch:
        requests.append(StockRequest(order, headers, "reserve"))
        if order["status"] in SHIPPED_STATES:
            requests.append(StockRequest(order, headers, "ship"))
    return await stock_batch(requests, out, actor)


async def stock_batch(requests: list[StockRequest], out: Outputs, actor: str = ACTOR) -> set[str]:
    """Reservations, payments and shipments in one script call, in order; publishes each
    outcome and returns the SKUs whose availability may have moved."""
    if not requests:
        return set()
    lines_of = [order_lines(r.order) for r in requests]
    skus = {sku for lines in lines_of for sku, _ in lines}
    levels = await with_redis_retry(store().stock_levels, skus)
    calls = [ReserveRequest(r.order["order_id"], lines, rank_warehouses(r.order, lines, levels), "next", r.mode,
                            paid=r.order["status"] != UNPAID, version_ms=version_ms(r.order), actor=actor)
             for r, lines in zip(requests, lines_of)]
    results = await with_redis_retry(store().reserve_many, calls)
    touched: set[str] = set()
    for request, call, result in zip(requests, calls, results):
        if request.mode == "ship":
            register_waybill(request.order, call.version_ms, out)
        publish = {"reserve": publish_reservation, "pay": publish_payment, "ship": publish_shipment}[request.mode]
        if publish(request, call.version_ms, result, out, actor):
            touched |= {sku for _, sku, _ in result.allocations}
    return touched


def register_waybill(order: dict, version: int, out: Outputs) -> None:
    """The shipped order's waybill on logistics.waybills, whatever the stock outcome (the parcel
    left either way). Every shipped-state version sends it, re-processing too: the logistics agent
    keeps the first and counts the rest as redelivered, so no state is kept here. Keyed by
    waybill, like the couriers' events, so the logistics agent sees both on one partition."""
    reg, outcome = waybill_registration(order, version)
    metrics.WAYBILL_REGISTRATIONS.labels(platform=order["platform"], outcome=outcome).inc()
    if reg is not None:
        out.send(names.WAYBILLS, reg.waybill.encode(), reg.encode())


def _send(order: dict, kind: str, result: Reservation, out: Outputs, actor: str, reason: str = "",
          latency_ms=None, allocations=None) -> None:
    out.send(names.INVENTORY_EVENTS, order["order_id"].encode(), inventory_event(
        kind, order, warehouse=result.warehouse,
        allocations=result.allocations if allocations is None else allocations,
        reason=reason, latency_ms=latency_ms, actor=actor))


def _short(result: Reservation) -> str:
    return ", ".join(f"{s} short {n}" for s, n in result.short.items())


def publish_reservation(request: StockRequest, _version: int, result: Reservation, out: Outputs, actor: str) -> bool:
    """A new order's reservation: reserved, out_of_stock, backorder, or (re-processing) the
    original outcome again. True when stock moved now."""
    order = request.order
    latency = ms_since_raw(request.headers)
    outcome = result.outcome
    if result.record.get("unreserved"):
        # the platform shipped it before it could be reserved (e.g. while held): nothing to take
        metrics.RESERVATIONS.labels(outcome="shipped_unreserved").inc()
        _send(order, "shipped_unreserved", result, out, actor, reason=UNRESERVED_REASON, allocations=())
        return False
    if outcome == "released":
        outcome = "cancelled"  # cancelled (tombstone) before this reservation attempt came
    elif outcome == "duplicate" and (result.original_outcome in ("reserved", "expired", "shipped") or result.late):
        # re-processing (crash, replay, approval of a light-path order): Redis kept one
        # reservation; the event is re-published under its natural key (order id, event)
        outcome = "reserved"
    metrics.RESERVATIONS.labels(outcome="cancelled" if result.outcome == "released" else result.outcome).inc()
    fresh = result.outcome != "duplicate"
    if latency is not None and fresh:
        metrics.END_TO_END_LATENCY.labels(platform=order["platform"]).observe(latency / 1000)
    _send(order, outcome, result, out, actor, reason=_short(result) if outcome == "out_of_stock" else "",
          latency_ms=latency if fresh else None)
    return result.outcome == "reserved"


def publish_payment(request: StockRequest, version: int, result: Reservation, out: Outputs, actor: str) -> bool:
    """A paid update: nothing to say when it only settled; a late payment reserved again or out of
    stock (once: re-processing the same version re-publishes, a later version does not)."""
    order, outcome = request.order, result.outcome
    if outcome in ("rereserved", "out_of_stock"):
        late = "reserved" if outcome == "rereserved" else "out_of_stock"
        metrics.LATE_PAYMENTS.labels(outcome=late).inc()
        metrics.RESERVATIONS.labels(outcome=outcome).inc()
        publish_late(order, result, out, actor)
        return outcome == "rereserved"
    if result.late and result.done_by_version("late", version):
        publish_late(order, result, out, actor)  # re-processing the paid update that did it
    return False


def publish_late(order: dict, result: Reservation, out: Outputs, actor: str) -> None:
    """The late payment's one outcome: reserved again (`rereserved`) or `out_of_stock`."""
    if result.record.get("state") == "out_of_stock":
        _send(order, "out_of_stock", result, out, actor, reason=f"{LATE_REASON}; {_short(result)}", allocations=())
    else:
        _send(order, "rereserved", result, out, actor, reason=LATE_REASON)


def publish_shipment(request: StockRequest, version: int, result: Reservation, out: Outputs, actor: str) -> bool:
    """A shipped-state update: the units left once (`shipped`), or why not (`ship_skipped`)."""
    order, outcome = request.order, result.outcome
    shipped_before = outcome == "duplicate" and result.original_outcome == "shipped"
    if outcome == "unreserved" or (shipped_before and result.record.get("unreserved")):
        metrics.SHIPMENTS.labels(outcome="unreserved" if outcome == "unreserved" else "duplicate").inc()
        if outcome == "unreserved" or result.done_by_version("shipped", version):
            _send(order, "shipped_unreserved", result, out, actor, reason=UNRESERVED_REASON, allocations=())
        return False
    if outcome == "shipped" or shipped_before:
        metrics.SHIPMENTS.labels(outcome="duplicate" if shipped_before else "shipped").inc()
        if result.late and result.done_by_version("late", version):  # this very update reserved it again
            if not shipped_before:
                metrics.LATE_PAYMENTS.labels(outcome="reserved").inc()
            publish_late(order, result, out, actor)
        if not shipped_before or result.done_by_version("shipped", version):
            _send(order, "shipped", result, out, actor, reason=f"order {order['status'].lower()}")
        return not shipped_before
    late_now = outcome == "out_of_stock"  # expired, and the stock is gone meanwhile: nothing to ship
    if late_now:
        metrics.LATE_PAYMENTS.labels(outcome="out_of_stock").inc()
    if late_now or (outcome == "duplicate" and result.late and result.done_by_version("late", version)):
        publish_late(order, result, out, actor)
    metrics.SHIPMENTS.labels(outcome="refused" if outcome == "refused" else "skipped").inc()
    why = {"refused": f"the warehouse reports less than the order takes: {result.record.get('refused_reason', '')}",
           "out_of_stock": "paid after its reservation expired and out of stock"}.get(
        outcome, f"holds no stock ({result.original_outcome})")
    _send(order, "ship_skipped", result, out, actor, reason=why, allocations=())
    return False


async def publish_channel_states(skus, out: Outputs) -> None:
    """Pause every channel but the primary one when a SKU falls below the safety stock; resume after.
    The flag flips are atomic in Redis: among many workers exactly one publishes each change."""
    if not skus:
        return
    levels = await with_redis_retry(store().stock_levels, skus)
    available = {sku: sum(max(0, lv.available) for lv in levels[sku].values()) for sku in levels}
    changed = await with_redis_retry(store().set_channels_paused,
                                     {sku: available[sku] < settings.safety_stock for sku in available})
    for sku, flipped in changed.items():
        if not flipped:
            continue
        paused_now = available[sku] < settings.safety_stock
        for ev in channel_events(sku, available[sku], settings.safety_stock, not paused_now, PLATFORMS,
                                 settings.primary_platform, now_ms()):
            metrics.CHANNEL_CONTROL.labels(action=ev.event).inc()
            out.send(names.CHANNEL_CONTROL, f"{sku}:{ev.platform}".encode(), ev.encode())


@app.timer(interval=2.0)
async def release_timed_out_reservations():
    """Unpaid orders do not hold stock forever: what passed its deadline gives its units back and
    becomes `expired` (a late payment may reserve it again once)."""
    out = outputs(settings)
    touched: set[str] = set()
    for order_id, released in await with_redis_retry(store().release_expired, actor=TIMER_ACTOR):
        if released.released:
            touched |= announce_release({"order_id": order_id, "platform": ""}, released, "timeout: unpaid", out,
                                        event="expired", actor=TIMER_ACTOR)
    await publish_channel_states(touched, out)
    await out.flush()


@app.agent(inventory_stock)
async def stock_agent(stream):
    async for event in stream.events():
        await finish_before_ack(apply_stock(event.message, outputs(settings)))  # Faust acks after this


async def apply_stock(msg, out: Outputs) -> None:
    try:
        stock = WarehouseStock.decode(msg.value)
    except StockEventError as exc:
        log.error("ignored bad stock event at %s:%s: %s", msg.partition, msg.offset, exc)
        return
    await with_redis_retry(store().apply_stock_event, stock)
    await publish_channel_states({stock.sku}, out)
    await out.flush()
