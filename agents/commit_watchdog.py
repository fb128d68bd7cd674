"""Un-stick partitions whose offset commit stopped advancing (see pipeline.faust_internals.consumer).

A stall that lasts two checks is healed in one of two ways. When the broker already holds a
newer committed offset than the worker remembers (a stale seek wrote an old one back), the
worker adopts the broker's: nothing is re-read. Otherwise the hole is real and the partition is
sought back to its committed offset so the hole is consumed again. Processing is at-least-once
with idempotent effects downstream, so re-reading a few messages is safe, while a stuck commit
re-delivers the whole backlog on the next restart and keeps the lag alert firing.
"""
from __future__ import annotations

import logging

from pipeline import metrics
from pipeline.app import app
from pipeline.faust_internals import adopt_committed, broker_committed, caught_up, reread_from, stalled_commits
from pipeline.topics import names

log = logging.getLogger(__name__)
CHECK_EVERY_S = 5.0
_suspects: dict = {}
REMEDIES = ("adopted", "reread")
for _topic in (*names.RAW_TOPICS, names.RISK_QUEUE, names.RISK_DECISIONS, names.INVENTORY_STOCK):
    for _remedy in REMEDIES:  # zero series from the start, so the alert's increase() has a baseline
        metrics.COMMIT_STALLS_HEALED.labels(topic=_topic, remedy=_remedy)


@app.timer(interval=CHECK_EVERY_S)
async def heal_stalled_commits():
    consumer = app.consumer
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        _suspects.clear()
        return
    stalled = stalled_commits(consumer)
    for tp, (committed, low) in stalled.items():
        if _suspects.get(tp) != (committed, low):
            _suspects[tp] = (committed, low)  # first sighting: give in-flight work one more period
            continue
        _suspects.pop(tp, None)
        on_broker = await committed_on_broker(consumer, tp)
        if on_broker is not None and on_broker > committed:
            log.warning("offset commit of %s[%s] stuck at %s (acked from %s); the broker has %s: adopted",
                        tp.topic, tp.partition, committed, low, on_broker)
            adopt_committed(consumer, tp, on_broker)
            metrics.COMMIT_STALLS_HEALED.labels(topic=tp.topic, remedy="adopted").inc()
        elif caught_up(consumer, tp):
            log.warning("offset commit of %s[%s] stuck at %s (acked from %s): re-reading from %s",
                        tp.topic, tp.partition, committed, low, committed)
            await reread_from(consumer, tp, committed)
            metrics.COMMIT_STALLS_HEALED.labels(topic=tp.topic, remedy="reread").inc()
        else:
            _suspects[tp] = (committed, low)  # still fetching this partition: try again next period
    for tp in list(_suspects):
        if tp not in stalled:
            _suspects.pop(tp)


async def committed_on_broker(consumer, tp) -> int | None:
    try:
        return await broker_committed(consumer, tp)
    except Exception as exc:  # noqa: BLE001 - a failed lookup only delays the heal to the next check
        log.warning("could not read the committed offset of %s: %s", tp, exc)
        return None
