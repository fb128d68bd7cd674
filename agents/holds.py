"""Stage 3b: the risk queue. Held orders wait for an operator's decision or the default policy.

A low-volume path: one agent reads risk.queue and risk.decisions (both keyed by order id, so co-partitioned) and
keeps held orders in a changelogged table. A timer turns holds that passed their deadline into
default-policy decisions on risk.decisions, so the timeout survives restarts: the table is
rebuilt from its changelog and the timer of whichever worker owns the partition fires it.
A released hold is reserved here and announced on orders.accepted.
"""
from __future__ import annotations

import logging

from pipeline import metrics
from pipeline.app import app, changelogged_table, held_and_decided, settings
from pipeline.contracts import ORDER, CodecError, Hold, HoldVerdict, RiskEvent
from pipeline.domain.holds import (HELD, DecisionError, apply_decision, due_order_ids, new_hold, open_key,
                                   parse_decision, resolved, timeout_decision)
from pipeline.faust_internals import keys_in_order
from pipeline.outputs import Outputs, TransactionalOutputs, outputs
from pipeline.topics import names

from .common import ExactlyOnce, finish_before_ack, forget_older_than, headers_of, now_ms, stage, transactional_id
from .inventory import publish_channel_states, release_order, reserve_batch

log = logging.getLogger(__name__)
ORDER_CODEC = ORDER

holds = changelogged_table("risk-holds", values="raw", fenced=True)  # Hold records (Avro), see hold_of / keep
# the holds still waiting, keyed by deadline then order id (domain.holds.open_key): the timer
# reads only the due ones, in deadline order, instead of every hold ever made or still open
open_holds = changelogged_table("risk-holds-open", fenced=True)


def open_index_key(record: Hold) -> str:
    return open_key(record.due_at_ms, record.order_id)


def hold_of(order_id: str) -> Hold | None:
    value = holds.get(order_id)
    return None if value is None else Hold.decode(value)


def keep(record: Hold) -> None:
    holds[record.order_id] = record.encode()


@app.agent(held_and_decided)
async def holds_agent(stream):
    if settings.exactly_once:
        # each hold or decision is a transaction: its outputs and its offset commit together; the
        # hold tables run ahead of an aborted one at most, and a decision read again re-publishes
        # its resolution (decide)
        txn = TransactionalOutputs(settings, transactional_id(settings, "holds"))
        await txn.start()
        flow = ExactlyOnce("holds", txn, app.consumer, settings.crash_at)
        app.consumer.commit_markers_with(flow.commit_offsets, (names.RISK_QUEUE, names.RISK_DECISIONS))
        async for event in stream.events():
            work = lambda kept, msg=event.message: handle_exactly_once(msg, txn)  # noqa: E731 - kept is [0]
            await finish_before_ack(flow.run([event.message], work))  # Faust acks the message after this
    else:
        out = outputs(settings)
        async for event in stream.events():
            await finish_before_ack(handle(event.message, out))  # Faust acks the message after this


async def handle(msg, out: Outputs) -> None:
    with stage("holds", 1) as counts:
        platform, outcome = hold(msg) if msg.topic == names.RISK_QUEUE else await decide(msg, out)
        counts.came_in(platform)
        counts.went_out(platform, outcome)
    await out.flush()


async def handle_exactly_once(msg, txn: TransactionalOutputs) -> None:
    await handle(msg, txn)
    # the hold tables' changelog (Faust's producer, outside the transaction) is on the broker
    # before the offset commits: else a kill right after the commit loses the hold for good
    await app.producer.flush()


def hold(msg) -> tuple[str, str]:
    """(platform, outcome) of a held order arriving: held, or redelivered (kept as it was)."""
    order = ORDER_CODEC.decode(msg.value)
    order_id = order["order_id"]
    existing = hold_of(order_id)
    if existing is not None:
        # a redelivered hold keeps its original deadline (and a decided one stays decided)
        if existing.status == HELD and open_holds.get(open_index_key(existing)) is None:
            open_holds[open_index_key(existing)] = HELD  # a crash came between the two writes
        return order["platform"], "redelivered"
    headers = headers_of(msg)
    verdict = hold_verdict(headers.get(HoldVerdict.HEADER), order_id)
    record = new_hold(order_id, order["platform"], now_ms(), verdict, settings.risk_hold_timeout_s, msg.partition,
                      order=bytes(msg.value), headers=headers)
    keep(record)
    open_holds[open_index_key(record)] = HELD
    log.info("held", extra={"order_id": order_id})
    return order["platform"], "held"


def hold_verdict(header: bytes | None, order_id: str) -> HoldVerdict:
    """The verdict that came with a held order; a missing or unreadable one still holds the order
    (an operator decides, or the default policy releases it), it only lacks the why."""
    try:
        return HoldVerdict.decode(header) if header else HoldVerdict()
    except CodecError as exc:
        log.error("held order %s came with an unreadable verdict header: %s", order_id, exc)
        return HoldVerdict()


async def decide(msg, out: Outputs) -> tuple[str, str]:
    """(platform, outcome) of a decision: approved, rejected, auto_released, ignored or malformed."""
    try:
        decision = parse_decision(msg.value)
    except DecisionError as exc:
        log.error("ignored malformed decision at %s:%s:%s: %s", msg.topic, msg.partition, msg.offset, exc)
        metrics.RISK_DECISIONS.labels(outcome="malformed").inc()
        return "", "malformed"
    source = f"{msg.partition}:{msg.offset}"
    record = hold_of(decision.order_id)
    resolution = apply_decision(record, decision)
    if resolution.outcome == "ignored":
        if record is not None and record.status != HELD:
            open_holds.pop(open_index_key(record), None)  # nothing left to time out
        if record is not None and record.decided_by == source and record.resolution_event:
            # re-processing after a crash: the table kept the resolution, the outputs may be lost
            await publish_resolution(record, RiskEvent.decode(record.resolution_event), out, f"{msg.topic}:{source}")
        else:
            metrics.RISK_DECISIONS.labels(outcome="ignored").inc()
        return (record.platform if record else ""), "ignored"
    metrics.RISK_DECISIONS.labels(outcome=resolution.outcome).inc()
    keep(resolved(record, resolution, decided_by=source))
    open_holds.pop(open_index_key(record), None)
    await publish_resolution(record, resolution.event, out, f"{msg.topic}:{source}")
    log.info("hold %s", resolution.outcome, extra={"order_id": decision.order_id})
    return record.platform, resolution.outcome


async def publish_resolution(record: Hold, event: RiskEvent, out: Outputs, source: str = "") -> None:
    """The resolution's outputs; `source` names the decision message (a re-processed one says
    its release again)."""
    key = record.order_id.encode()
    order_bytes = record.order
    order = ORDER_CODEC.decode(order_bytes)
    if event.event in ("approved", "auto_released"):
        headers = [(k, v) for k, v in record.headers.items() if k != "risk"]
        headers.append(("risk", event.event.encode()))
        out.send(names.ACCEPTED, key, order_bytes, headers)
        touched = await reserve_batch([(order, dict(headers))], out, actor="holds")
    else:
        # a light-path order may already hold stock; releasing an unreserved order is a no-op
        touched = await release_order(order, "risk_rejected", out, actor="holds", source=source) or set()
    await publish_channel_states(touched, out)
    out.send(names.RISK_EVENTS, key, event.encode())


_requested: dict[str, float] = {}


@app.timer(interval=1.0)
async def release_overdue_holds():
    """Default policy: no decision within the timeout -> release. Only this worker's partitions."""
    out = outputs(settings)
    now = now_ms()
    forget_older_than(_requested, now, 10_000)
    for order_id in due_order_ids(partitions_in_key_order(), now, limit=2000):
        if now - _requested.get(order_id, 0) < 10_000:
            continue  # already requested; the decision is on its way through risk.decisions
        _requested[order_id] = now
        decision = timeout_decision(order_id, now, settings.risk_hold_timeout_s)
        out.send(names.RISK_DECISIONS, order_id.encode(), decision.encode())
    await out.flush()


def partitions_in_key_order() -> list:
    if settings.table_store == "rocksdb":
        return keys_in_order(open_holds)
    return [iter(sorted(open_holds.keys()))]


@app.timer(interval=15.0)
async def count_open_holds():
    """The held-orders gauge: keys only, every 15 s (an open hold's value is not read)."""
    metrics.RISK_HELD.set(sum(1 for keys in partitions_in_key_order() for _ in keys))
