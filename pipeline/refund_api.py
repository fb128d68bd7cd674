"""Refund instructions to each platform's refund API (seed 002: 原路退回指令).

`RefundApiClient.instruct(refund)` POSTs the instruction (`instruction_body`, the wire contract
with the platforms; the local stand-in is pipeline.devtools.refund_service) to
`<base>/platforms/<platform>/refunds` with the platform's API key. The API is idempotent by
refund id, so an instruction may be sent again safely (after a crash, a time-out, a re-drive):
a repeat answers `duplicate` and moves no money.

- 200 accepted / duplicate: done.
- 401 / 403 (e.g. "Invalid API Key" after the platform rotated its key): failed at once, not
  retried, counted as `auth_failed`: only new credentials help.
- other 4xx: the platform refused this instruction (`rejected`), not retried.
- 5xx, 429, time-outs, refused connections: retried with back-off (pipeline.retrying), then
  failed as `unavailable`.

The client never raises: a failure is an `InstructionResult` with the platform's error, which the
refund agent parks on refunds.instructions.failed for `orderstream refunds redrive`.

Credentials: a JSON file {platform: key} (`ORDERSTREAM_REFUND_CREDENTIALS_FILE`), read again
whenever it changes, so fixing a rotated key needs no restart.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp

from pipeline.contracts import Refund
from pipeline.domain.refunds import InstructionResult
from pipeline.retrying import Backoff, retry_async

log = logging.getLogger(__name__)

AUTH_FAILED, REJECTED, UNAVAILABLE = "auth_failed", "rejected", "unavailable"


def instruction_body(refund: Refund) -> dict:
    """What a platform needs to pay the money back the way it came."""
    return {"refund_id": refund.refund_id, "order_id": refund.order_id, "amount_minor": refund.amount_minor,
            "currency": refund.currency, "reason_code": refund.reason_code}


def failure_kind(result: InstructionResult) -> str:
    """auth_failed | rejected | unavailable: the metric's outcome label for a failed instruction."""
    status = result.http_status
    if status in (401, 403):
        return AUTH_FAILED
    if status is not None and 400 <= status < 500 and status != 429:
        return REJECTED
    return UNAVAILABLE


class Credentials:
    """{platform: API key} from a JSON file, read again when its modification time or size changes.
    A file that cannot be read or parsed keeps the keys read before (and says so in the log)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, str] = {}

    def key(self, platform: str) -> str | None:
        self._refresh()
        return self._keys.get(platform)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            if self._stamp is not None:
                log.error("refund API credentials %s are gone; keeping the keys read before", self.path)
                self._stamp = None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # an atomic replace changes the inode
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                     for k, v in data.items()):
                raise ValueError("expected a JSON object of platform -> non-empty key")
        except (OSError, ValueError) as exc:
            log.error("refund API credentials %s unreadable (%s); keeping the keys read before", self.path, exc)
            return
        self._stamp = stamp
        if self._keys and data != self._keys:
            log.info("refund API credentials changed for %s", sorted(p for p in data if data[p] != self._keys.get(p)))
        self._keys = dict(data)


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


_RETRYABLE = (asyncio.TimeoutError, _Retryable, aiohttp.ClientError, OSError)


class RefundApiClient:
    def __init__(self, base_url: str, credentials: Credentials, timeout_s: float = 2.0, retries: int = 2,
                 backoff_s: float = 0.2) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout_s = timeout_s
        self._retry = retry_async(_RETRYABLE, Backoff(backoff_s, cap_s=2.0), attempts=retries + 1)
        self._session: aiohttp.ClientSession | None = None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def instruct(self, refund: Refund) -> InstructionResult:
        key = self.credentials.key(refund.platform)
        if not key:
            return InstructionResult("failed", f"no API key configured for {refund.platform} in "
                                     f"{self.credentials.path}", None, 0)
        url = f"{self.base_url}/platforms/{refund.platform}/refunds"
        body = instruction_body(refund)
        attempts = 0

        async def attempt() -> InstructionResult:
            nonlocal attempts
            attempts += 1
            session = await self._get_session()
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                said = data.get("error") if isinstance(data, dict) else None
                error = str(said) if said else f"HTTP {resp.status}"
                if resp.status >= 500 or resp.status == 429:
                    raise _Retryable(error, resp.status)
                if resp.status != 200:
                    return InstructionResult("failed", error, resp.status, attempts)
            status = data.get("status") if isinstance(data, dict) else None
            if status not in ("accepted", "duplicate"):
                raise _Retryable(f"malformed answer {str(data)[:100]}", resp.status)
            return InstructionResult(status, "", 200, attempts, str(data.get("platform_refund_no", "")))

        try:
            return await self._retry(attempt)
        except _Retryable as exc:
            return InstructionResult("failed", f"unavailable: {exc}", exc.status, attempts)
        except asyncio.TimeoutError:
            return InstructionResult("failed", f"unavailable: timeout after {self.timeout_s}s", None, attempts)
        except _RETRYABLE as exc:
            return InstructionResult("failed", f"unavailable: {type(exc).__name__}: {exc}", None, attempts)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
