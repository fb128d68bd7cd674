"""The hot path: every raw order crosses Faust once, and its stages run over a batch.

    orders.raw.<platform> ─▶ normalize ─▶ dedupe ─▶ risk ─▶ stock ─▶ announce ─▶ flush, ack

Each stage is a function over the batch in its own module (pure logic below it in
pipeline/domain, unit-tested without Kafka); this agent is the one place where the flow reads
top to bottom. Outputs go through one librdkafka producer and are flushed before Faust acks the
batch, so nothing is committed ahead of what it produced.
"""
from __future__ import annotations

import time

from pipeline import metrics
from pipeline.app import app, raw_orders, settings
from pipeline.outputs import Outputs, outputs
from pipeline.topics import names

from .breaker import intake
from .common import InFlight, finish_before_ack
from .dedupe import dedupe_batch, persist_changelog_offsets
from .inventory import fulfil_batch
from .normalize import normalize_batch
from .risk import judge_batch

BATCH_MAX = 500
BATCH_WITHIN_S = 0.01  # at low rates a batch waits at most this long for company


@app.agent(raw_orders)
async def order_flow(stream):
    out = outputs(settings)
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        await finish_before_ack(process(events, out))  # Faust acks the batch after this


async def process(events: list, out: Outputs) -> None:
    intake.record(len(events), time.monotonic())
    metrics.BATCH_SIZE.observe(len(events))
    batch = normalize_batch(events, out)     # dead letters leave here
    batch = dedupe_batch(batch, out)         # redeliveries and stale versions leave, untrusted updates are flagged
    await judge_batch(batch, out)            # held, rejected and light-path orders are routed
    await fulfil_batch(batch, out)           # stock reserved, settled, re-reserved, shipped or released
    announce(batch, out)
    await out.flush()                        # every output on the broker before the ack
    persist_changelog_offsets(out)


def announce(batch: list[InFlight], out: Outputs) -> None:
    """orders.unique: every new order and real update (with its verdict), and the suspect updates
    (change=suspect, header `suspect` = the rule); orders.accepted: those cleared for fulfilment
    (held ones follow when released; suspect updates never: seed 003 stops the logistics order)."""
    for item in batch:
        action = item.verdict.action if item.verdict is not None else ""
        headers = item.headers + [("change", item.change.encode())] + ([("risk", action.encode())] if action else [])
        if item.suspect is not None:
            headers.append(("suspect", item.suspect.rule.encode()))
        out.send(names.UNIQUE, item.key, item.encoded, headers)
        if item.change == "update" or action == "accept":
            out.send(names.ACCEPTED, item.key, item.encoded, headers)
