"""Stage 3b: the risk queue. Held orders wait for an operator's decision or the default policy.

One agent reads risk.queue and risk.decisions (both keyed by order id, so co-partitioned) and
keeps held orders in a changelogged table. A timer turns holds that passed their deadline into
default-policy decisions on risk.decisions, so the timeout survives restarts: the table is
rebuilt from its changelog and the timer of whichever worker owns the partition fires it.
"""
from __future__ import annotations

import base64
import logging

from pipeline import metrics
from pipeline.app import accepted, app, risk_decisions, risk_events, risk_queue, settings
from pipeline.codecs import encode_json, order_codec
from pipeline.domain.holds import DecisionError, apply_decision, due_holds, new_hold, parse_decision, timeout_decision
from pipeline.domain.risk import evaluate_summary
from pipeline.topics import names

from .common import headers_of, now_ms
from .inventory import release_order

log = logging.getLogger(__name__)
ORDER_CODEC = order_codec()

holds = app.Table("risk-holds", default=None, key_type=str, value_type=bytes,
                  key_serializer="json", value_serializer="json", partitions=settings.partitions)


@app.agent(app.topic(names.RISK_QUEUE, names.RISK_DECISIONS, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw"))
async def holds_agent(stream):
    async for event in stream.events():
        msg = event.message
        if msg.topic == names.RISK_QUEUE:
            await hold(msg)
        else:
            await decide(msg)
        metrics.RISK_HELD.set(len(holds))


async def hold(msg) -> None:
    order = ORDER_CODEC.decode(msg.value)
    order_id = order["order_id"]
    if holds.get(order_id) is not None:
        return  # a redelivered hold keeps its original deadline
    summary = evaluate_summary(order)
    record = new_hold(order_id, order["platform"], now_ms(), summary, settings.risk_hold_timeout_s, msg.partition)
    record["order_b64"] = base64.b64encode(msg.value).decode()
    record["headers"] = {k: v.decode(errors="replace") for k, v in headers_of(msg).items()}
    holds[order_id] = record
    log.info("held", extra={"order_id": order_id})


async def decide(msg) -> None:
    try:
        decision = parse_decision(msg.value)
    except DecisionError as exc:
        log.error("ignored malformed decision at %s:%s:%s: %s", msg.topic, msg.partition, msg.offset, exc)
        metrics.RISK_DECISIONS.labels(outcome="malformed").inc()
        return
    record = holds.get(decision.order_id)
    resolution = apply_decision(record, decision)
    metrics.RISK_DECISIONS.labels(outcome=resolution.outcome).inc()
    if resolution.outcome == "ignored":
        return
    key = decision.order_id.encode()
    order_bytes = base64.b64decode(record["order_b64"])
    if resolution.outcome in ("approved", "auto_released"):
        headers = [(k, v.encode()) for k, v in record.get("headers", {}).items()]
        await accepted.send(key=key, value=order_bytes, headers=headers + [("risk", resolution.outcome.encode())])
    else:
        # a light-path order may already hold stock; releasing an unreserved order is a no-op
        await release_order(ORDER_CODEC.decode(order_bytes), reason="risk_rejected")
    await risk_events.send(key=key, value=encode_json(resolution.event))
    holds.pop(decision.order_id, None)
    log.info("hold %s", resolution.outcome, extra={"order_id": decision.order_id})


@app.timer(interval=1.0)
async def release_overdue_holds():
    """Default policy: no decision within the timeout -> release. Only this worker's partitions."""
    due = due_holds(list(holds.items()), now_ms())
    for order_id in due:
        decision = timeout_decision(order_id, now_ms())
        await risk_decisions.send(key=order_id.encode(), value=encode_json(decision.to_json()))
