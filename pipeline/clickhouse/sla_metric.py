"""The shipping SLA as a Prometheus gauge: open orders by platform and level (green, orange, red,
breached), counted in ClickHouse as the execution tier counts its countdown. The sink owns the
embedded data dir, so the sink exports it, refreshing every `interval_s` from its main loop (like
the settlement scheduler's tick) rather than per scrape: a scrape never waits for a query.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Callable

from pipeline import metrics
from pipeline.topics import PLATFORMS

from .backends import Backend
from .tiers import SLA_LEVELS, sla_levels_by_platform

log = logging.getLogger(__name__)


class ShippingSlaGauge:
    def __init__(self, backend: Backend, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime | None] = lambda: None) -> None:
        self.backend, self.interval_s, self.clock, self.now = backend, interval_s, clock, now  # now: None is "now"
        self.next_at = 0.0   # the first tick refreshes
        self.platforms = set(PLATFORMS)
        metrics.start_sink_series(PLATFORMS, SLA_LEVELS)

    def tick(self) -> bool:
        """Refresh when due; whether it did. A failed query keeps the last values (logged)."""
        if self.clock() < self.next_at:
            return False
        self.next_at = self.clock() + self.interval_s
        try:
            counts = sla_levels_by_platform(self.backend, self.now())
        except Exception as exc:  # noqa: BLE001 - the sink keeps sinking; the next tick tries again
            log.warning("shipping SLA gauge not refreshed: %s", exc)
            return False
        self.platforms.update(platform for platform, _ in counts)
        for platform in self.platforms:  # a level nobody is at any more goes back to 0
            for level in SLA_LEVELS:
                metrics.SHIPPING_SLA_ORDERS.labels(platform=platform, level=level).set(counts.get((platform, level), 0))
        return True
