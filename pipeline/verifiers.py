"""External verifiers (seed 000: payment authenticity, address validity) behind one interface.

`VerifierClient` is what the risk agent calls. External services are slow and fail, and the
stream must never stall on them, so every call has a timeout, a few retries with exponential
back-off, a per-verifier failure breaker (after N failed calls, skip the verifier for a while)
and `verify_all` a total deadline. The client never raises: an unavailable verifier is ok=None
and the rule set decides what that means.

`create_verifier_app` is a local stand-in service over real HTTP for the demo and the tests;
its latency, error rate and timeout rate can be changed while it runs (POST /config).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict, dataclass

import aiohttp
from aiohttp import web

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


def check_payment(summary: dict) -> tuple[bool, str]:
    amount = summary.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return False, f"amount {amount!r} is not a positive payment"
    if not summary.get("currency"):
        return False, "payment has no currency"
    return True, "payment confirmed"


def check_address(summary: dict) -> tuple[bool, str]:
    address = summary.get("address") or {}
    country = (address.get("country") or "").strip()
    if not country:
        return False, "no country"
    # Chinese addresses need a province; many countries (SG, HK) have none
    if country == "CN" and not (address.get("province") or "").strip():
        return False, "province is empty"
    if not (address.get("city") or "").strip():
        return False, "city is empty"
    if len((address.get("detail") or "").strip()) < 4:
        return False, "street address shorter than 4 characters"
    return True, "address deliverable"


_CHECKS = {"payment": check_payment, "address": check_address}


# --------------------------------------------------------------------------- local service


@dataclass
class ServiceConfig:
    latency_ms: float = 20.0
    error_rate: float = 0.0     # share of requests answered 503
    timeout_rate: float = 0.0   # share of requests that hang for hang_s (client times out)
    hang_s: float = 5.0

    def update(self, changes: dict) -> None:
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key.endswith("_rate") and value > 1:
                raise ValueError(f"{key} must be between 0 and 1")
        for key, value in changes.items():
            setattr(self, key, float(value))


CONFIG_KEY = web.AppKey("config", ServiceConfig)
STATS_KEY = web.AppKey("stats", dict)
RNG_KEY = web.AppKey("rng", random.Random)


async def _verify(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    check = _CHECKS.get(name)
    if check is None:
        return web.json_response({"error": f"unknown verifier {name!r}"}, status=404)
    app = request.app
    config, stats, rng = app[CONFIG_KEY], app[STATS_KEY], app[RNG_KEY]
    stats["requests"] += 1
    stats.setdefault(name, 0)
    stats[name] += 1
    try:
        summary = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(summary, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    roll = rng.random()
    if roll < config.timeout_rate:
        stats["hung"] += 1
        await asyncio.sleep(config.hang_s)
    elif roll < config.timeout_rate + config.error_rate:
        stats["errors"] += 1
        await asyncio.sleep(config.latency_ms / 1000)
        return web.json_response({"error": "verifier temporarily unavailable"}, status=503)
    await asyncio.sleep(config.latency_ms / 1000)
    ok, reason = check(summary)
    return web.json_response({"ok": ok, "reason": reason})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response({**asdict(request.app[CONFIG_KEY]), "stats": request.app[STATS_KEY]})


async def _set_config(request: web.Request) -> web.Response:
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        request.app[CONFIG_KEY].update(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(asdict(request.app[CONFIG_KEY]))


def create_verifier_app(latency_ms: float = 20, error_rate: float = 0.0, timeout_rate: float = 0.0,
                        seed: int = 0, hang_s: float = 5.0) -> web.Application:
    config = ServiceConfig()
    config.update({"latency_ms": latency_ms, "error_rate": error_rate, "timeout_rate": timeout_rate,
                   "hang_s": hang_s})
    app = web.Application()
    app[CONFIG_KEY] = config
    app[STATS_KEY] = {"requests": 0, "errors": 0, "hung": 0}
    app[RNG_KEY] = random.Random(seed)
    app.router.add_post("/verify/{name}", _verify)
    app.router.add_get("/health", _health)
    app.router.add_get("/config", _get_config)
    app.router.add_post("/config", _set_config)
    return app


def run_verifier_service(host: str = "127.0.0.1", port: int = 18089, **kw) -> None:
    """Serve the local verifiers until interrupted (CLI: `orderstream verifiers`)."""
    # handler_cancellation: a request the client gave up on stops hanging here too
    web.run_app(create_verifier_app(**kw), host=host, port=port, print=None, shutdown_timeout=1.0,
                handler_cancellation=True)


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
