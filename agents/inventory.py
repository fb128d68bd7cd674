"""Stage 4: reserve stock in Redis for accepted orders; release on cancel/refund/rejection.

The reservation itself is one Lua script (all lines or none, idempotent by order id), so
several workers can never oversell. This stage only ranks warehouses, calls the store, retries
while Redis is unreachable (the stream pauses, nothing is skipped) and publishes what happened.
Warehouse stock updates and unpaid time-outs are low-volume paths with their own agent and timer.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from pipeline import metrics
from pipeline.app import app, inventory_stock, settings
from pipeline.contracts import InventoryEvent, InventoryLine, StockEventError, WarehouseStock
from pipeline.domain.channels import channel_events
from pipeline.domain.warehouse import DEFAULT_WAREHOUSES, Ranker, Weights
from pipeline.inventory_store import AsyncInventoryStore, depth_over
from pipeline.outputs import Outputs, outputs
from pipeline.retrying import Backoff, retry_async
from pipeline.topics import PLATFORMS, names

from .common import InFlight, finish_before_ack, ms_since_raw, now_ms, stage

log = logging.getLogger(__name__)
RELEASING_STATES = {"CANCELLED"}
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


def inventory_event(kind: str, order: dict, *, warehouse=None, allocations=(), reason="", latency_ms=None) -> bytes:
    lines = tuple(InventoryLine(sku, qty, wh) for wh, sku, qty in allocations)
    return InventoryEvent(event=kind, order_id=order["order_id"], platform=order["platform"], at_ms=now_ms(),
                          warehouse=warehouse, lines=lines, units=sum(line.quantity for line in lines),
                          reason=reason, latency_ms=latency_ms).encode()


async def release_order(order: dict, reason: str, out: Outputs) -> set[str] | None:
    """Give back what the order holds: the SKUs given back, None when it held nothing (a
    tombstone still blocks a late reserve). The caller publishes channel state for the SKUs."""
    released = await with_redis_retry(store().release, order["order_id"], reason)
    if not released.released:
        return None
    return announce_release(order, released, reason, out)


def announce_release(order: dict, released, reason: str, out: Outputs) -> set[str]:
    """What every release publishes: the metric and the `released` event. Returns its SKUs."""
    metrics.RESERVATIONS.labels(outcome="released").inc()
    out.send(names.INVENTORY_EVENTS, order["order_id"].encode(), inventory_event(
        "released", order, allocations=released.allocations, reason=reason))
    return {sku for _, sku, _ in released.allocations}


async def fulfil_batch(batch: list[InFlight], out: Outputs) -> None:
    """Reserve stock for the batch's accepted new orders, release it for cancellations, take paid
    orders off the unpaid time-out schedule: a few pipelined Redis round trips per batch."""
    reserve: list[tuple[dict, dict]] = []
    cancelled: list[InFlight] = []
    paid: list[str] = []
    with stage("inventory", len(batch)) as counts:
        for item in batch:
            if item.change == "new" and item.verdict.action != "accept":
                continue  # held orders are reserved when released, rejected ones never
            counts.came_in(item.platform)
            counts.went_out(item.platform, item.change)
            status = item.order["status"]
            if status in RELEASING_STATES:
                cancelled.append(item)
            elif item.change == "new":
                reserve.append((item.order, dict(item.headers)))
            elif status != "PENDING_PAYMENT":
                paid.append(item.order_id)
            # other updates: status progress of a reserved order; the sink records it from orders.unique
        # in this order, so an order's own reservation comes before its cancellation or payment
        touched = await reserve_batch(reserve, out)
        for item in cancelled:
            skus = await release_order(item.order, f"order {item.order['status'].lower()}", out)
            if skus is None and item.change == "new":
                # an order that arrives already cancelled never needs stock: say so explicitly
                out.send(names.INVENTORY_EVENTS, item.key, inventory_event(
                    "cancelled", item.order, reason="cancelled before reservation"))
            touched |= skus or set()
        await with_redis_retry(store().settle, paid)  # paid now: keep the stock
        await publish_channel_states(touched, out)


RANKER = Ranker(Weights())


def rank_warehouses(order: dict, lines: list[tuple[str, int]], levels: dict) -> list[str]:
    """Weighted score (distance 40 %, depth 30 %, on-time 20 %, cost 10 %); depth = what this order can get."""
    depth = depth_over({sku: {w: level.available for w, level in levels.get(sku, {}).items()}
                        for sku, _ in lines})
    known = tuple(w for w in DEFAULT_WAREHOUSES if w.id in depth) or DEFAULT_WAREHOUSES
    extra = sorted(set(depth) - {w.id for w in known})
    return RANKER.order(known, order["address"]["province"], depth) + extra


async def reserve_batch(batch: list[tuple[dict, dict]], out: Outputs) -> set[str]:
    """Reserve (order, headers) pairs with one script call; the SKUs whose stock moved."""
    if not batch:
        return set()
    lines_of = [order_lines(order) for order, _ in batch]
    skus = {sku for lines in lines_of for sku, _ in lines}
    levels = await with_redis_retry(store().stock_levels, skus)
    requests = [(order["order_id"], lines, rank_warehouses(order, lines, levels), "next")
                for (order, _), lines in zip(batch, lines_of)]
    results = await with_redis_retry(store().reserve_many, requests)
    for (order, headers), result in zip(batch, results):
        latency = ms_since_raw(headers)
        outcome = result.outcome
        if outcome == "released":
            outcome = "cancelled"  # cancelled (tombstone) before this reservation attempt came
        elif outcome == "duplicate" and result.original_outcome == "reserved":
            # re-processing (crash, replay, approval of a light-path order): Redis kept one
            # reservation; the event is re-published under its natural key (order id, event)
            outcome = "reserved"
        metrics.RESERVATIONS.labels(outcome="cancelled" if result.outcome == "released" else result.outcome).inc()
        fresh = result.outcome != "duplicate"
        if latency is not None and fresh:
            metrics.END_TO_END_LATENCY.labels(platform=order["platform"]).observe(latency / 1000)
        reason = ", ".join(f"{s} short {n}" for s, n in result.short.items()) if outcome == "out_of_stock" else ""
        out.send(names.INVENTORY_EVENTS, order["order_id"].encode(), inventory_event(
            outcome, order, warehouse=result.warehouse, allocations=result.allocations,
            reason=reason, latency_ms=latency if fresh else None))
    await with_redis_retry(store().settle, [order["order_id"] for (order, _), res in zip(batch, results)
                                            if res.outcome == "reserved" and order["status"] != "PENDING_PAYMENT"])
    return {sku for res in results if res.outcome == "reserved" for _, sku, _ in res.allocations}


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
    """Unpaid orders do not hold stock forever: release what passed its deadline (reason timeout)."""
    out = outputs(settings)
    touched: set[str] = set()
    for order_id, released in await with_redis_retry(store().release_expired):
        if released.released:
            touched |= announce_release({"order_id": order_id, "platform": ""}, released, "timeout: unpaid", out)
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
