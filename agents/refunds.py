"""Refunds: their own state machine beside the order states (pipeline.domain.refunds).

A low-volume path like the risk queue: one agent reads refunds.requests and refunds.actions
(both keyed by refund id, so co-partitioned) and keeps every refund in a changelogged table
(`refunds`, `Refund` records), so it survives restarts and rebalances. A request is approved by
the auto-approval rules (data, from the compacted refunds.rules topic) or waits for an operator;
its amount is committed against the order in the Redis ledger first (pipeline.refund_ledger),
so an order's refunds never exceed what was paid. Goods go back to stock when the warehouse
receives them (an idempotent inventory-store script), then the refund instruction goes to the
platform's API (pipeline.refund_api); a failure is parked on refunds.instructions.failed with
the platform's error until `orderstream refunds redrive` asks for it again.

Idempotence, message by message: the refund keeps the coordinates of the message that last
changed it and the events it published. Processing that message again (a crash before the
commit) re-publishes those events; an instruction that was in flight is sent again, which the
platform answers `duplicate` (its API is idempotent by refund id). Redis effects are idempotent
per refund id. Any other repeat finds the refund in a state the action does not fit: ignored.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from pipeline import metrics
from pipeline.app import app, changelogged_table, refund_inputs, settings
from pipeline.contracts import Refund, RefundEvent
from pipeline.domain.refund_rules import RefundRuleError, RefundRules, load_refund_rules
from pipeline.domain.refunds import (AWAITING_RETURN, FAILED, PENDING, STATES, RefundError, Step, after_instruction,
                                     apply_action, ignored, open_key, open_refund, parse_action, parse_open_key,
                                     validate_request)
from pipeline.faust_internals import keys_in_order
from pipeline.outputs import Outputs, outputs
from pipeline.refund_api import AUTH_FAILED, REJECTED, UNAVAILABLE, Credentials, RefundApiClient, failure_kind
from pipeline.refund_ledger import RefundLedger
from pipeline.topics import PLATFORMS, names

from .common import ActiveRules, finish_before_ack, follow_rule_texts, stage
from .inventory import publish_channel_states, store, with_redis_retry

log = logging.getLogger(__name__)

refunds = changelogged_table("refunds", values="raw")  # Refund records (Avro), see refund_of / keep
# the refunds in flight, keyed by status|instruction|platform|refund id (domain.refunds.open_key):
# the gauges count them from the keys alone, without reading every refund ever made
open_refunds = changelogged_table("refunds-open")


active = ActiveRules(load_refund_rules(settings.refund_rules_file), RefundRules.parse, RefundRuleError,
                     names.REFUND_RULES, metrics.REFUND_RULES_VERSION, metrics.REFUND_RULES_REJECTED)
# every series exists from the start, so the alerts' increase() sees 0 rather than nothing
for _platform in PLATFORMS:
    for _outcome in ("accepted", "duplicate", AUTH_FAILED, REJECTED, UNAVAILABLE):
        metrics.REFUND_INSTRUCTIONS.labels(platform=_platform, outcome=_outcome)
_ledger: RefundLedger | None = None
_api: RefundApiClient | None = None


def ledger() -> RefundLedger:
    global _ledger
    if _ledger is None:
        _ledger = RefundLedger(store().redis, prefix=f"{names.ns}refund")
    return _ledger


def api() -> RefundApiClient:
    global _api
    if _api is None:
        _api = RefundApiClient(settings.refund_api, Credentials(settings.refund_credentials),
                               timeout_s=settings.refund_api_timeout_s)
    return _api


@app.task
async def follow_refund_rules():
    """Every worker reads the whole compacted refund-rules topic: the same version everywhere."""
    await follow_rule_texts(settings.bootstrap, names.REFUND_RULES, active.offer)


# --------------------------------------------------------------------------- the table


def refund_of(refund_id: str) -> Refund | None:
    value = refunds.get(refund_id)
    return None if value is None else Refund.decode(value)


def keep(before: Refund | None, after: Refund) -> None:
    """Write the refund and move it in the open index (the index first: see reprocessed)."""
    old, new = (open_key(before) if before else None), open_key(after)
    if old is not None and old != new:
        open_refunds.pop(old, None)
    if new is not None:
        open_refunds[new] = after.status
    refunds[after.refund_id] = after.encode()


def forget_open_keys(refund: Refund) -> None:
    """Drop every key the open index could hold for this refund (a crash between the writes)."""
    for status in STATES:
        for instruction in ("", PENDING, FAILED, "accepted"):
            open_refunds.pop(open_key(replace(refund, status=status, instruction=instruction)) or "", None)


# --------------------------------------------------------------------------- the agent


@app.agent(refund_inputs)
async def refunds_agent(stream):
    out = outputs(settings)
    async for event in stream.events():
        await finish_before_ack(handle(event.message, out))  # Faust acks the message after this


async def handle(msg, out: Outputs) -> None:
    with stage("refunds", 1) as counts:
        platform, outcome = await process(msg, out)
        counts.came_in(platform)
        counts.went_out(platform, outcome)
    await out.flush()


async def process(msg, out: Outputs) -> tuple[str, str]:
    """(platform, outcome) of one request or action."""
    cause = f"{msg.topic}:{msg.partition}:{msg.offset}"
    at_ms = int(msg.timestamp * 1000)  # the message's broker time: the same when it is processed again
    is_request = msg.topic == names.REFUND_REQUESTS
    try:
        item = validate_request(msg.value) if is_request else parse_action(msg.value)
    except RefundError as exc:
        refund_id = (msg.key or b"").decode(errors="replace")
        log.error("invalid refund %s at %s: %s", "request" if is_request else "action", cause, exc)
        metrics.REFUND_STEPS.labels(outcome="invalid").inc()
        publish(refund_id, [RefundEvent(event="invalid", refund_id=refund_id, at_ms=at_ms, reason=str(exc)[:1000],
                                        cause=cause).encode()], None, out)
        return "", "invalid"
    current = refund_of(item.refund_id)
    if current is not None and current.applied == cause:
        return await reprocessed(current, at_ms, cause, out)
    if not is_request:
        allocations = []
        receiving = item.action == "receive" and current is not None and current.status == AWAITING_RETURN
        if receiving and not item.warehouse:  # the order's reservation says where the goods shipped from
            record = await with_redis_retry(store().reservation, current.order_id)
            allocations = (record or {}).get("allocations") or []
        step = apply_action(current, item, at_ms, cause, allocations)
    elif current is not None:
        step = ignored(current, current.refund_id, f"request already received (the refund is {current.status})",
                       at_ms, item.requested_by, cause)
    else:
        money = await with_redis_retry(ledger().commit, item.order_id, item.refund_id, item.amount_minor,
                                       item.order_total_minor, item.currency)
        step = open_refund(item, active.rules.evaluate(item), money, at_ms, cause)
    return await carry_out(current, step, at_ms, cause, out)


async def carry_out(before: Refund | None, step: Step, at_ms: int, cause: str, out: Outputs) -> tuple[str, str]:
    """The step's effects (Redis first: idempotent per refund), the record, then the instruction."""
    metrics.REFUND_STEPS.labels(outcome=step.outcome).inc()
    published = [e.encode() for e in step.events]
    if step.refund is None:  # ignored: nothing changes, the event says why
        publish(step.events[0].refund_id, published, None, out)
        return (before.platform if before else ""), step.outcome
    refund = step.refund
    if step.release_money:
        await with_redis_retry(ledger().release, refund.order_id, refund.refund_id)
    if step.restock:
        restocked = await with_redis_retry(store().return_to_stock, refund.refund_id, refund.order_id, step.restock)
        await publish_channel_states({sku for _, sku, _ in restocked.lines}, out)
    kept = replace(refund, applied=cause, published=tuple(published), parked=None)
    keep(before, kept)
    if step.instruct:
        return refund.platform, await instruct(kept, at_ms, cause, out)
    publish(refund.refund_id, published, None, out)
    log.info("refund %s %s", refund.refund_id, step.outcome, extra={"order_id": refund.order_id})
    return refund.platform, step.outcome


async def instruct(refund: Refund, at_ms: int, cause: str, out: Outputs) -> str:
    """Send the refund instruction (the record already says it is pending: a crash during the
    call sends it again), keep the result with what the message published, publish all of it."""
    result = await api().instruct(refund)
    outcome = result.outcome if result.done else failure_kind(result)
    metrics.REFUND_INSTRUCTIONS.labels(platform=refund.platform, outcome=outcome).inc()
    step = after_instruction(refund, result, at_ms, cause)
    metrics.REFUND_STEPS.labels(outcome=step.outcome).inc()
    published = refund.published + tuple(e.encode() for e in step.events)
    parked = step.parked.encode() if step.parked is not None else None
    keep(refund, replace(step.refund, applied=cause, published=published, parked=parked))
    if parked is not None:
        log.warning("refund instruction for %s to %s failed: %s", refund.refund_id, refund.platform, result.error)
    else:
        log.info("refund %s refunded", refund.refund_id, extra={"order_id": refund.order_id})
    publish(refund.refund_id, list(published), parked, out)
    return step.outcome


async def reprocessed(refund: Refund, at_ms: int, cause: str, out: Outputs) -> tuple[str, str]:
    """The message that last changed this refund, again (a crash before its offset was committed):
    its effects are in Redis and the table; finish an instruction left in flight, re-publish."""
    forget_open_keys(refund)
    keep(None, refund)
    metrics.REFUND_STEPS.labels(outcome="republished").inc()
    if refund.instruction == PENDING:
        return refund.platform, await instruct(refund, at_ms, cause, out)
    publish(refund.refund_id, list(refund.published), refund.parked, out)
    return refund.platform, "republished"


def publish(refund_id: str, events: list[bytes], parked: bytes | None, out: Outputs) -> None:
    key = refund_id.encode()
    for data in events:
        out.send(names.REFUND_EVENTS, key, data)
    if parked is not None:
        out.send(names.REFUND_FAILED, key, parked)


# --------------------------------------------------------------------------- gauges


def open_index_partitions() -> list:
    if settings.table_store == "rocksdb":
        return keys_in_order(open_refunds)
    return [iter(list(open_refunds.keys()))]


@app.timer(interval=5.0)
async def count_open_refunds():
    """Refunds in flight per state and parked instructions per platform, from the open index's keys."""
    states = dict.fromkeys(STATES, 0)
    parked = dict.fromkeys(PLATFORMS, 0)
    for key in (k for keys in open_index_partitions() for k in keys):
        try:
            status, instruction, platform, _ = parse_open_key(key)
        except ValueError:
            continue
        states[status] = states.get(status, 0) + 1
        if instruction == FAILED:
            parked[platform] = parked.get(platform, 0) + 1
    for status, n in states.items():
        metrics.REFUNDS_OPEN.labels(state=status).set(n)
    for platform, n in parked.items():
        metrics.REFUND_INSTRUCTIONS_PARKED.labels(platform=platform).set(n)


@app.on_before_shutdown.connect
async def close_refund_api(app, **kwargs) -> None:
    if _api is not None:
        await _api.close()
