"""Stage 1: raw platform JSON -> canonical Avro order, or a dead letter with the original bytes."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from pipeline import metrics
from pipeline.app import app, canonical, dlq, raw_orders, settings
from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.domain.normalize import dead_letter_record, normalize
from pipeline.topics import names

from .breaker import intake

ORDER_CODEC = order_codec()
DLQ_CODEC = dead_letter_codec()


def provenance_headers(msg) -> list[tuple[str, bytes]]:
    """Where this order came from and when it was produced: reconciliation and e2e latency use both."""
    return [("src", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
            ("raw_ts", str(int(msg.timestamp * 1000)).encode())]


@app.agent(raw_orders, concurrency=1)
async def normalize_agent(stream):
    async for event in stream.events():
        msg = event.message
        platform = names.platform_of(msg.topic)
        now = datetime.now(timezone.utc)
        intake.record(1, time.monotonic())
        metrics.STAGE_IN.labels(stage="normalize", platform=platform).inc()
        result = normalize(platform, msg.value or b"", now, max_bytes=settings.max_payload_bytes)
        if result.order is not None:
            order = result.order
            if result.id_fallback:
                metrics.GHOST_FALLBACKS.labels(platform=platform).inc()
            await canonical.send(key=order["order_id"].encode(), value=ORDER_CODEC.encode(order),
                                 headers=provenance_headers(msg))
            metrics.STAGE_OUT.labels(stage="normalize", platform=platform, outcome="canonical").inc()
        else:
            record = dead_letter_record(platform, msg.topic, msg.partition, msg.offset, msg.key,
                                        msg.value or b"", result.rejection, now)
            await dlq.send(key=msg.key, value=DLQ_CODEC.encode(record), headers=provenance_headers(msg))
            metrics.DEAD_LETTERS.labels(platform=platform, reason=result.rejection.reason_code).inc()
            metrics.STAGE_OUT.labels(stage="normalize", platform=platform, outcome="dead_letter").inc()
