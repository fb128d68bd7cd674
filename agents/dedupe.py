"""Stage 2: drop redeliveries, pass real updates, keep a windowed version table per order id."""
from __future__ import annotations

from datetime import timedelta

from pipeline import metrics
from pipeline.app import app, canonical, settings, unique
from pipeline.codecs import order_codec
from pipeline.domain.dedupe import Change, SeenVersion, decide, version_of

ORDER_CODEC = order_codec()
WINDOW = timedelta(seconds=settings.dedupe_window_s)

# key = global order id; the window bounds state, RocksDB keeps it on disk
seen_versions = app.Table("dedupe-seen", default=None, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="json",
                          partitions=settings.partitions).tumbling(WINDOW, expires=WINDOW * 2)


def remembered(key: bytes) -> SeenVersion | None:
    """The newest version in the current window or the one before it (a full retention span)."""
    entry = seen_versions[key]
    for value in (entry.current(), entry.delta(WINDOW)):
        if value:
            return SeenVersion.from_json(value)
    return None


@app.agent(canonical)
async def dedupe_agent(stream):
    async for event in stream.events():
        msg = event.message
        order = ORDER_CODEC.decode(msg.value)
        incoming = version_of(order)
        change = decide(remembered(msg.key), incoming)
        metrics.DEDUPE.labels(platform=order["platform"], outcome=change.value).inc()
        if change in (Change.NEW, Change.UPDATE):
            headers = [*(msg.headers or []), ("change", change.value.encode())]
            await unique.send(key=msg.key, value=msg.value, headers=headers)
            # remember only after the send is queued: a crash in between re-emits (idempotent downstream)
            seen_versions[msg.key] = incoming.to_json()
