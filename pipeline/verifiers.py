"""External verifiers (seed 000: payment authenticity, address validity) behind one interface.

`VerifierClient` is what the risk agent calls. External services are slow and fail, and the
stream must never stall on them, so every call has a timeout, a few retries with exponential
back-off, a per-verifier failure breaker (after N failed calls, skip the verifier for a while)
and `verify_all` a total deadline. The client never raises: an unavailable verifier is ok=None
and the rule set decides what that means.

`order_summary` is the request body, the wire contract with the verifier services (the local
stand-in for the demo and the tests is pipeline.devtools.verifier_service).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from pipeline.retrying import Backoff, retry_async

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- request body


def order_summary(order: dict) -> dict:
    """The part of an order the verifiers need (no buyer contact data leaves the pipeline)."""
    amounts = order.get("amounts") or {}
    address = order.get("address") or {}
    return {
        "order_id": order.get("order_id", ""),
        "platform": order.get("platform", ""),
        "amount_minor": amounts.get("total_minor", 0),
        "currency": order.get("currency") or amounts.get("currency", ""),
        "address": {k: address.get(k, "") or "" for k in ("country", "province", "city", "district",
                                                          "detail", "postal_code")},
    }


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class VerifierResult:
    name: str
    ok: bool | None          # None: unavailable (timeouts, errors, skipped by the breaker)
    reason: str
    attempts: int = 0
    skipped: bool = False


@dataclass
class _CallBreaker:
    failures: int = 0               # consecutive failed calls
    open_until: float = 0.0         # skip calls until this monotonic time
    trial_in_flight: bool = False   # after the pause exactly one call tries the service again


class _Retryable(Exception):
    """An answer worth asking again for: HTTP 5xx or 429, or a malformed body."""


# timeouts, 5xx and 429, a malformed answer, a refused or broken connection, a body that is not JSON
_RETRYABLE = (asyncio.TimeoutError, _Retryable, aiohttp.ClientError, OSError, ValueError)


class VerifierClient:
    def __init__(self, base_url: str, timeout_s: float = 0.5, retries: int = 2, backoff_s: float = 0.05,
                 failure_threshold: int = 5, reset_s: float = 10.0, deadline_s: float | None = None,
                 clock=time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        # by default: enough for every attempt of one call plus its back-offs
        self.deadline_s = deadline_s if deadline_s is not None else (
            timeout_s * (retries + 1) + backoff_s * (2 ** retries - 1) + 0.1)
        self._clock = clock
        # `retries` more attempts after the first, backoff_s, 2 x backoff_s, ... apart
        self._retry = retry_async(_RETRYABLE, Backoff(backoff_s), attempts=retries + 1)
        self._session: aiohttp.ClientSession | None = None
        self._breakers: dict[str, _CallBreaker] = {}

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    def breaker_open(self, name: str) -> bool:
        b = self._breakers.get(name)
        return b is not None and b.failures >= self.failure_threshold and self._clock() < b.open_until

    async def verify(self, name: str, order: dict) -> VerifierResult:
        breaker = self._breakers.setdefault(name, _CallBreaker())
        trial = False
        if breaker.failures >= self.failure_threshold:
            if self._clock() < breaker.open_until or breaker.trial_in_flight:
                return VerifierResult(name, None, "verifier breaker open: call skipped", 0, True)
            trial = breaker.trial_in_flight = True
        try:
            result = await self._call_with_retries(name, order)
        except asyncio.CancelledError:
            if trial:
                breaker.trial_in_flight = False
            raise
        if trial:
            breaker.trial_in_flight = False
        if result.ok is None and result.reason.startswith("unavailable"):
            breaker.failures += 1
            if breaker.failures >= self.failure_threshold:
                breaker.open_until = self._clock() + self.reset_s
                if breaker.failures == self.failure_threshold or trial:
                    log.warning("verifier %s: %d failed calls, skipping it for %.1fs",
                                name, breaker.failures, self.reset_s)
        elif result.ok is not None:
            breaker.failures = 0
        return result

    async def _call_with_retries(self, name: str, order: dict) -> VerifierResult:
        url = f"{self.base_url}/verify/{name}"
        body = order_summary(order)
        attempts = 0

        async def attempt() -> VerifierResult:
            nonlocal attempts
            attempts += 1
            session = await self._get_session()
            async with session.post(url, json=body) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise _Retryable(f"HTTP {resp.status}")
                if resp.status != 200:
                    # our request is wrong (unknown verifier, bad body): retrying will not help
                    text = (await resp.text())[:200]
                    return VerifierResult(name, None, f"rejected request: HTTP {resp.status} {text}", attempts)
                data = await resp.json()
            ok = data.get("ok") if isinstance(data, dict) else None
            if not isinstance(ok, bool):
                raise _Retryable(f"malformed answer {str(data)[:100]}")
            return VerifierResult(name, ok, str(data.get("reason", "")), attempts)

        try:
            return await self._retry(attempt)
        except asyncio.TimeoutError:
            problem = f"timeout after {self.timeout_s}s"
        except _Retryable as exc:
            problem = str(exc)
        except _RETRYABLE as exc:
            problem = f"{type(exc).__name__}: {exc}"
        return VerifierResult(name, None, f"unavailable: {problem}", attempts)

    async def verify_all(self, names, order: dict) -> dict[str, VerifierResult]:
        """Run the verifiers concurrently; whatever is not done by the deadline is unavailable."""
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        tasks = {name: asyncio.ensure_future(self.verify(name, order)) for name in names}
        done, pending = await asyncio.wait(tasks.values(), timeout=self.deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        results = {}
        for name, task in tasks.items():
            if task in done and not task.cancelled() and task.exception() is None:
                results[name] = task.result()
            elif task in done and not task.cancelled():
                results[name] = VerifierResult(name, None, f"unavailable: {task.exception()!r}")
            else:
                results[name] = VerifierResult(name, None, f"unavailable: deadline {self.deadline_s:.2f}s exceeded")
        return results

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "VerifierClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
