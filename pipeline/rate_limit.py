"""A token bucket per client address: the public tracking page's brake on scraping and guessing.

Each address holds up to `burst` tokens, refilled at `rate_per_s`; a request takes one or, with none
left, is told when the next one will be there (HTTP 429 with Retry-After). Buckets that have been
full for a while are forgotten, so a crowd of addresses does not grow memory without bound.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if `client` may go on now, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_clients:
                    self._forget_full(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {c: (t, at) for c, (t, at) in self._buckets.items() if now - at < refill_s}


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
