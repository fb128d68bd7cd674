"""The couriers' tracking APIs (re-pulls of stale waybills, issue 19) behind one client.

`CourierClient.pull(source, waybill)` asks one courier or aggregator for a waybill's events and
never raises: a `Pull` says whether the source answered and, if it did, the events it returned
in its own format (the logistics agent translates them like pushed ones, so an unknown code is
a dead letter there too). Timeouts, 5xx and 429 are retried (`retries` more attempts, back-off
from pipeline.retrying); an expired or refused API key (401/403) is not: retrying cannot help.

The wire contract: `GET {base}/track/{source}/{waybill}` with header `X-Api-Key`, answering
newline-delimited JSON, one event of the source's own format per line (the bytes are passed on
untouched, so a dead letter keeps exactly what the courier sent). The local stand-in for the demo and the tests
is pipeline.devtools.courier_service.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from pipeline.retrying import Backoff, retry_async


@dataclass(frozen=True)
class Pull:
    source: str
    waybill: str
    ok: bool
    reason: str                          # "" when ok; expired_key, http_503, timeout, ...
    events: tuple[bytes, ...] = ()       # each event as the source's own JSON bytes
    attempts: int = 0


class _Retryable(Exception):
    pass


_RETRYABLE = (asyncio.TimeoutError, _Retryable, aiohttp.ClientError, OSError)


class CourierClient:
    def __init__(self, base_url: str, api_key: str, timeout_s: float = 1.0, retries: int = 2,
                 backoff_s: float = 0.05) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self._retry = retry_async(_RETRYABLE, Backoff(backoff_s), attempts=retries + 1)
        self._session: aiohttp.ClientSession | None = None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def pull(self, source: str, waybill: str) -> Pull:
        url = f"{self.base_url}/track/{source}/{waybill}"
        attempts = 0

        async def attempt() -> Pull:
            nonlocal attempts
            attempts += 1
            session = await self._get_session()
            async with session.get(url, headers={"X-Api-Key": self.api_key}) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise _Retryable(f"http_{resp.status}")
                if resp.status in (401, 403):
                    return Pull(source, waybill, False, "expired_key", (), attempts)
                if resp.status != 200:
                    return Pull(source, waybill, False, f"http_{resp.status}", (), attempts)
                body = await resp.read()
            events = tuple(line.strip() for line in body.split(b"\n") if line.strip())
            return Pull(source, waybill, True, "", events, attempts)

        try:
            return await self._retry(attempt)
        except asyncio.TimeoutError:
            reason = "timeout"
        except _Retryable as exc:
            reason = str(exc)
        except _RETRYABLE as exc:
            reason = f"unreachable: {type(exc).__name__}"
        return Pull(source, waybill, False, reason, (), attempts)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
