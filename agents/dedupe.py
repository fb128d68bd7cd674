"""Stage 2: drop redeliveries, pass real updates, keep a windowed version table per order id."""
from __future__ import annotations

from datetime import timedelta

from pipeline import metrics
from pipeline.app import app, json_table, canonical, settings, unique
from pipeline.codecs import order_codec
from pipeline.domain.dedupe import Change, SeenVersion, decide, version_of

from .common import headers_of, with_header

ORDER_CODEC = order_codec()
WINDOW = timedelta(seconds=settings.dedupe_window_s)

# key = global order id; the window bounds state, RocksDB keeps it on disk, expired windows are dropped
seen_versions = json_table("dedupe-seen", default=dict).tumbling(WINDOW, expires=WINDOW * 2)


def remembered(order_id: str) -> SeenVersion | None:
    """The newest version in the current window or the one before it (a full retention span)."""
    entry = seen_versions[order_id]
    for value in (entry.current(), entry.delta(WINDOW)):
        if value:
            return SeenVersion.from_json(value)
    return None


def risk_partition_key(order: dict) -> bytes:
    """orders.unique is keyed by buyer IP so the risk agent's per-IP window table is co-partitioned."""
    return (order["buyer"].get("ip") or order["order_id"]).encode()


@app.agent(canonical)
async def dedupe_agent(stream):
    async for event in stream.events():
        msg = event.message
        order = ORDER_CODEC.decode(msg.value)
        order_id = order["order_id"]
        incoming = version_of(order)
        source = f"{msg.partition}:{msg.offset}"
        previous = remembered(order_id)
        change = decide(previous, incoming, source)
        metrics.DEDUPE.labels(platform=order["platform"], outcome=change.value).inc()
        if change in (Change.NEW, Change.UPDATE):
            await unique.send(key=risk_partition_key(order), value=msg.value,
                              headers=with_header(headers_of(msg), change=change.value))
            if previous is not None and previous.emitted_by(source):
                continue  # re-emitting after a crash: the table already holds this and newer
            # a crash may land this table write without the send above: the source offset stored
            # with it makes re-processing re-emit (see decide); effects downstream are idempotent
            seen_versions[order_id] = incoming.remembered_as(source, change, previous).to_json()
