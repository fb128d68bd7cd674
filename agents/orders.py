"""The hot path: every raw order crosses Faust once, and its stages run over a batch.

    orders.raw.<platform> ─▶ normalize ─▶ dedupe ─▶ risk ─▶ stock ─▶ announce ─▶ flush, ack

Each stage is a function over the batch in its own module (pure logic below it in
pipeline/domain, unit-tested without Kafka); this agent is the one place where the flow reads
top to bottom.

Exactly-once (the default): a batch is one Kafka transaction. Its outputs and the raw topics'
next offsets commit together (`send_offsets_to_transaction`, fenced by the group generation), so
a read_committed reader sees each output once whatever is killed when; Faust never commits the
raw topics itself. The dedupe table's changelog goes through a plain producer and is flushed
before the commit: state may run ahead of an aborted batch (it remembers which raw message each
output came from, so a re-read batch is emitted again, pipeline.domain.dedupe), never behind a
committed one. Redis effects are idempotent per order. A message below its partition's committed
offset is dropped as done; one past it re-reads the partition from there (take_in_order).

At-least-once: outputs are flushed before Faust acks the batch, and Faust commits the offsets
later; a crash re-does at most what was acked since the last commit plus the batch in flight.
"""
from __future__ import annotations

import time

from pipeline import metrics
from pipeline.app import app, raw_orders, settings
from pipeline.outputs import Outputs, TransactionalOutputs, outputs
from pipeline.topics import names

from .breaker import intake
from .common import ExactlyOnce, InFlight, finish_before_ack, transactional_id
from .dedupe import dedupe_batch, persist_changelog_offsets
from .inventory import fulfil_batch
from .normalize import normalize_batch
from .risk import judge_batch

BATCH_MAX = 500
BATCH_WITHIN_S = 0.01  # at low rates a batch waits at most this long for company


@app.agent(raw_orders)
async def order_flow(stream):
    plain = outputs(settings)
    if settings.exactly_once:
        txn = TransactionalOutputs(settings, transactional_id(settings, "order-flow"))
        await txn.start()
        flow = ExactlyOnce("order-flow", txn, app.consumer, settings.crash_at)
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await finish_before_ack(process_exactly_once(events, flow, plain))  # Faust acks after this
    else:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await finish_before_ack(process_at_least_once(events, plain))  # Faust acks the batch after this


async def process(events: list, out: Outputs, changelog: Outputs) -> None:
    intake.record(len(events), time.monotonic())
    metrics.BATCH_SIZE.observe(len(events))
    batch = normalize_batch(events, out)     # dead letters leave here
    batch = dedupe_batch(batch, out, changelog)  # redeliveries and stale versions leave, untrusted updates are flagged
    await judge_batch(batch, out)            # held, rejected and light-path orders are routed
    await fulfil_batch(batch, out)           # stock reserved, settled, re-reserved, shipped or released
    announce(batch, out)


async def process_at_least_once(events: list, out: Outputs) -> None:
    await process(events, out, out)
    await out.flush()                        # every output on the broker before the ack
    persist_changelog_offsets(out)


async def process_exactly_once(events: list, flow: ExactlyOnce, changelog: Outputs) -> None:
    async def work(kept: list[int]) -> None:
        await process([events[i] for i in kept], flow.txn, changelog)
        await changelog.flush()              # the dedupe state is on the broker before the outputs commit
        persist_changelog_offsets(changelog)

    await flow.run([event.message for event in events], work)


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
