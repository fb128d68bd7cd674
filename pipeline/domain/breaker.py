"""Intake rate over a sliding window and the degradation breaker it drives (seed 001: above
500 orders/minute switch to a lightweight path so the core path keeps flowing).

Both are pure: callers pass the clock (`now`, seconds, monotonic) so tests drive them with a
synthetic one.

States and hysteresis (the gap between open and close marks prevents flapping):
  CLOSED    --rate > open_per_min-->                              OPEN
  OPEN      --cooldown_s since opening elapsed and rate < close-->  HALF_OPEN
  HALF_OPEN --rate stayed < close_per_min for probe_s-->          CLOSED
  HALF_OPEN --rate >= close_per_min-->                            OPEN (cool-down starts again)
Only OPEN is degraded. HALF_OPEN is the probe: full checks run again while the rate is watched,
so closing proves the full path copes with the current load.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

from pipeline.contracts import BreakerTransition


class RateMeter:
    """Events per minute over the last `window_s` seconds, in per-second buckets.

    The rate divides by the whole window even right after start-up: a cold worker under-reports
    rather than opening the breaker on one early burst.
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be positive, got {window_s!r}")
        self.window_s = float(window_s)
        self._buckets: deque[list] = deque()  # [second, count], seconds ascending
        self._total = 0

    def record(self, n: int = 1, now: float | None = None) -> None:
        if now is None:
            now = time.monotonic()
        second = int(now // 1)
        if self._buckets and self._buckets[-1][0] >= second:
            # same second (or a clock step back): add to the newest bucket
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._total += n
        self._evict(now)

    def _evict(self, now: float) -> None:
        # a bucket [s, s+1) is gone once it lies entirely before the window
        oldest_kept = now - self.window_s
        buckets = self._buckets
        while buckets and buckets[0][0] + 1 <= oldest_kept:
            self._total -= buckets.popleft()[1]

    def count(self, now: float | None = None) -> int:
        self._evict(time.monotonic() if now is None else now)
        return self._total

    def rate_per_min(self, now: float | None = None) -> float:
        return self.count(now) * 60.0 / self.window_s


class BreakerState(str, Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True)
class Transition:
    from_state: BreakerState
    to_state: BreakerState
    rate_per_min: float
    at: float  # the monotonic clock the breaker was given

    def event(self, at_ms: int, worker: str) -> BreakerTransition:
        """What breaker.events carries about this transition."""
        return BreakerTransition(from_state=self.from_state.value, to_state=self.to_state.value,
                                 rate_per_min=round(self.rate_per_min, 1), at_ms=at_ms, worker=worker)


class DegradationBreaker:
    def __init__(self, open_per_min: float = 500, close_per_min: float = 400, cooldown_s: float = 30,
                 probe_s: float | None = None) -> None:
        if close_per_min >= open_per_min:
            raise ValueError(f"close mark ({close_per_min}/min) must be below the open mark ({open_per_min}/min)")
        if cooldown_s < 0 or (probe_s is not None and probe_s < 0):
            raise ValueError("cooldown and probe durations must not be negative")
        self.open_per_min = open_per_min
        self.close_per_min = close_per_min
        self.cooldown_s = cooldown_s
        self.probe_s = cooldown_s / 2 if probe_s is None else probe_s
        self.state = BreakerState.CLOSED
        self.since: float | None = None   # when the current state was entered
        self.last_rate = 0.0

    @property
    def degraded(self) -> bool:
        """Skip non-essential checks only while OPEN; HALF_OPEN runs the full path as a probe."""
        return self.state is BreakerState.OPEN

    def observe(self, rate_per_min: float, now: float) -> Transition | None:
        """Feed the current rate; returns the transition this observation caused, if any."""
        self.last_rate = rate_per_min
        state = self.state
        if state is BreakerState.CLOSED:
            if rate_per_min > self.open_per_min:
                return self._move(BreakerState.OPEN, rate_per_min, now)
        elif state is BreakerState.OPEN:
            if now - self.since >= self.cooldown_s and rate_per_min < self.close_per_min:
                return self._move(BreakerState.HALF_OPEN, rate_per_min, now)
        else:  # HALF_OPEN
            if rate_per_min >= self.close_per_min:
                return self._move(BreakerState.OPEN, rate_per_min, now)
            if now - self.since >= self.probe_s:
                return self._move(BreakerState.CLOSED, rate_per_min, now)
        return None

    def _move(self, to: BreakerState, rate: float, now: float) -> Transition:
        transition = Transition(self.state, to, rate, now)
        self.state = to
        self.since = now
        return transition

    def status(self) -> dict:
        return {"state": self.state.value, "degraded": self.degraded, "since": self.since,
                "rate_per_min": round(self.last_rate, 1), "open_per_min": self.open_per_min,
                "close_per_min": self.close_per_min, "cooldown_s": self.cooldown_s, "probe_s": self.probe_s}
