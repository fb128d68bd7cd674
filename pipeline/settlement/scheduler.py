"""The scheduled run after each bill import: the sink tells it which (bill day, platform) pairs got
new lines; once no new line has landed for `quiet_s` (the whole file is in), each pair is reconciled
once, by the sink's own process (the owner of the embedded data directory), recorded as run by
`operator`. A failed run stays pending and is tried again on the next tick."""
from __future__ import annotations

import logging
import time
from typing import Callable

from pipeline.clickhouse.backends import Backend

from .engine import reconcile_platform_day
from .rules import Rules

log = logging.getLogger(__name__)


class SettlementScheduler:
    def __init__(self, backend: Backend, rules: Rules, operator: str = "scheduler@sink", quiet_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend, self.rules, self.operator, self.quiet_s, self.clock = backend, rules, operator, quiet_s, clock
        self.pending: set[tuple[str, str]] = set()
        self.last_landed = 0.0
        self.runs = 0

    def landed(self, rows: list[dict]) -> None:
        """Bill rows the sink has just inserted (settlement_bills columns)."""
        for r in rows:
            self.pending.add((str(r["settle_day"]), r["platform"]))
        if rows:
            self.last_landed = self.clock()

    def tick(self) -> list[dict]:
        if not self.pending or self.clock() - self.last_landed < self.quiet_s:
            return []
        reports = []
        for day, platform in sorted(self.pending):
            try:
                reports.append(reconcile_platform_day(self.backend, self.rules, day, platform, self.operator))
            except Exception as exc:  # noqa: BLE001 - the sink keeps sinking; the pair is tried again
                log.warning("scheduled settlement run %s %s failed: %s", day, platform, exc)
                continue
            self.pending.discard((day, platform))
            self.runs += 1
            log.info("scheduled settlement run %s %s: %d differences", day, platform,
                     len(reports[-1]["differences"]))
        return reports
