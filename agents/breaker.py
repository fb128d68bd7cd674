"""Stage 5: measure this worker's intake and open/close the degradation breaker.

The order flow records every raw message in `intake`; a one-second timer feeds the rate
to the breaker, publishes transitions on breaker.events and exports state as metrics. The
risk stage reads `breaker.degraded` to choose the full or the lightweight path.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from pipeline import metrics
from pipeline.app import app, settings
from pipeline.faust_internals import consumer_lag
from pipeline.outputs import outputs
from pipeline.topics import names
from pipeline.domain.breaker import BreakerState, DegradationBreaker, RateMeter

from .common import now_ms

log = logging.getLogger(__name__)

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
WORKER_NAME = f"{socket.gethostname()}:{settings.worker_web_port}:{os.getpid()}"

intake = RateMeter(settings.breaker_window_s)


def backlog() -> int:
    """Raw orders waiting on this worker's partitions (end - committed).

    The intake rate alone would let the breaker close while thousands of orders that arrived
    during the burst still queue in front of the slow full path; counting the queue keeps the
    light path on until it is worked off. Self-correcting: it is read from the broker offsets."""
    return sum(consumer_lag(app.consumer, set(names.RAW_TOPICS)).values())



breaker = DegradationBreaker(open_per_min=settings.breaker_open_per_min,
                             close_per_min=settings.breaker_close_per_min,
                             cooldown_s=settings.breaker_cooldown_s)
metrics.BREAKER_STATE.set(0)


@app.timer(interval=1.0)
async def observe_intake():
    now = time.monotonic()
    rate = intake.rate_per_min(now)
    metrics.INTAKE_RATE.set(rate)
    # a queue of N orders is treated like N orders arriving within the next minute
    transition = breaker.observe(max(rate, backlog()), now)
    if transition is None:
        return
    src, dst = transition.from_state.value, transition.to_state.value
    metrics.BREAKER_STATE.set(STATE_VALUE[transition.to_state])
    metrics.BREAKER_TRANSITIONS.labels(from_state=src, to_state=dst).inc()
    log.warning("breaker %s -> %s at %.0f orders/min", src, dst, rate)
    out = outputs(settings)
    out.send(names.BREAKER_EVENTS, WORKER_NAME.encode(), transition.event(now_ms(), WORKER_NAME).encode())
    await out.flush()
