"""Stage 1: raw platform JSON -> canonical order, or a dead letter with the original bytes."""
from __future__ import annotations

from datetime import datetime, timezone

from pipeline import metrics
from pipeline.app import settings
from pipeline.codecs import dead_letter_codec
from pipeline.domain.normalize import dead_letter_record, normalize
from pipeline.outputs import Outputs
from pipeline.topics import names

from .common import InFlight, provenance_headers, stage

DLQ_CODEC = dead_letter_codec()


def normalize_batch(events, out: Outputs) -> list[InFlight]:
    """Canonical orders of the batch, in message order; the rest go to orders.dlq now."""
    now = datetime.now(timezone.utc)
    orders: list[InFlight] = []
    with stage("normalize", len(events)) as counts:
        for event in events:
            msg = event.message
            platform = names.platform_of(msg.topic)
            counts.came_in(platform)
            result = normalize(platform, msg.value or b"", now, max_bytes=settings.max_payload_bytes)
            if result.order is not None:
                if result.id_fallback:
                    metrics.GHOST_FALLBACKS.labels(platform=platform).inc()
                orders.append(InFlight(event, platform, provenance_headers(msg), result.order))
                counts.went_out(platform, "canonical")
                continue
            record = dead_letter_record(platform, msg.topic, msg.partition, msg.offset, msg.key,
                                        msg.value or b"", result.rejection, now)
            out.send(names.DLQ, msg.key, DLQ_CODEC.encode(record), provenance_headers(msg))
            metrics.DEAD_LETTERS.labels(platform=platform, reason=result.rejection.reason_code).inc()
            counts.went_out(platform, "dead_letter")
    return orders
