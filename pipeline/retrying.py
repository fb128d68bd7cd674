"""Back-off and retries, one place for the whole pipeline, built on tenacity.

- `Backoff`: the one exponential curve (`first_s`, doubling, at most `cap_s`). It is a tenacity
  wait strategy, and `delay(failures)` serves callers that schedule a retry on their own clock
  (the ClickHouse sink's non-blocking flush).
- `retry_async(errors, backoff, attempts=None)`: an async caller that retries `fn(*args)` while
  it raises one of `errors` (for ever when `attempts` is None), stops at once on anything else
  and re-raises the last error when the attempts run out. `before_sleep` sees each failure
  before its back-off (the Redis retries count a metric and log there).
- `retry_until(attempt, backoff, timeout_s)`: a blocking loop that calls `attempt()` until it
  returns True or the next back-off would end past `timeout_s` (the sink's drain at shutdown).

The first attempt of `retry_async` runs outside tenacity: setting up one tenacity call costs
tens of microseconds, and the worker calls Redis and the verifiers many times per batch, so the
common case (it works) costs a try block. On a failure tenacity takes over from that very
failure: it is replayed as tenacity's attempt 1, so the waits, counts and stop rule are exactly
tenacity's.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import tenacity

T = TypeVar("T")
Errors = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Backoff:
    """Wait `first_s` after the first failure in a row, twice that after the second, ... at most `cap_s`."""
    first_s: float
    cap_s: float = float("inf")

    def delay(self, failures: int) -> float:
        # the exponent is bounded: an outage of thousands of attempts must not overflow a float
        return min(self.cap_s, self.first_s * 2 ** min(max(failures, 1) - 1, 64))

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """tenacity's wait protocol: the delay after attempt number `attempt_number` failed."""
        return self.delay(retry_state.attempt_number)


def retry_async(errors: Errors, backoff: Backoff, *, attempts: int | None = None,
                before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
    """`await call(fn, *args, **kwargs)`: `fn(*args, **kwargs)` with retries on `errors`."""
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be at least 1")
    policy = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(errors), wait=backoff,
        stop=tenacity.stop_never if attempts is None else tenacity.stop_after_attempt(attempts),
        before_sleep=before_sleep, sleep=sleep, reraise=True)

    async def call(fn: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except errors as exc:
            failed: BaseException | None = exc

        async def attempt() -> T:
            nonlocal failed
            if failed is not None:  # tenacity's attempt 1 is the one that just failed
                exc, failed = failed, None
                raise exc
            return await fn(*args, **kwargs)

        # a copy per call: a tenacity object keeps per-call state, and calls overlap in the loop
        return await policy.copy()(attempt)

    return call


def retry_until(attempt: Callable[[], bool], backoff: Backoff, timeout_s: float,
                sleep: Callable[[float], None] = time.sleep) -> bool:
    """Call `attempt()` until it returns True; False once the next back-off would pass `timeout_s`."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda done: not done), wait=backoff,
        stop=tenacity.stop_before_delay(timeout_s), sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result())(attempt)
