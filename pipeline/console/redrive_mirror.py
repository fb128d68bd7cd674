"""Re-drives made with `orderstream dlq replay` enter the console's own record (console_actions),
so those letters leave the execution page's list (tiers.open_dead_letters) without a click.

The CLI cannot write to ClickHouse (the sink owns the embedded data dir); the ledger it shares with
the console (pipeline.redrive_ledger, Redis) says what it re-drove. The sink copies each confirmed
re-drive it does not have yet, every `interval_s`, from its main loop (like the settlement
scheduler's tick), naming the operator and `via cli`.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from pipeline.redrive_ledger import RedriveLedger

from .actions import ActionLog

log = logging.getLogger(__name__)


class RedriveMirror:
    def __init__(self, ledger: RedriveLedger, actions: ActionLog, dlq_topic: str, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger, self.actions, self.dlq_topic = ledger, actions, dlq_topic
        self.interval_s, self.clock = interval_s, clock
        self.next_at = 0.0

    def tick(self) -> int:
        """Copy what is due; how many re-drives entered console_actions. Redis or ClickHouse away:
        logged, tried again next time (the console still refuses a second re-drive through the ledger)."""
        if self.clock() < self.next_at:
            return 0
        self.next_at = self.clock() + self.interval_s
        try:
            sent = self.ledger.sent(self.dlq_topic)
            if not sent:
                return 0
            known = {r["target"] for r in self.actions.backend.query(
                "SELECT DISTINCT target FROM console_actions WHERE action = 'redrive'")}
            new = [r for r in sent if r.letter_id not in known]
            for r in new:
                self.actions.record(f"redrive:{r.letter_id}", "redrive", r.letter_id, r.operator, "",
                                    f"via {r.via}", r.at_ms)
        except Exception as exc:  # noqa: BLE001 - the sink keeps sinking
            log.warning("re-drives not mirrored into console_actions: %s", exc)
            return 0
        if new:
            log.info("%d re-drives made elsewhere entered console_actions", len(new))
        return len(new)
