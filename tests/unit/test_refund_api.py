"""Refund instructions over real HTTP on loopback: the simulated platform service (idempotent by
refund id, key rotation) and the client (credentials re-read from their file, retries, no retry
on a bad key). Each test runs its own event loop."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket

import aiohttp
from aiohttp import web

from pipeline.contracts import Refund, RefundLine
from pipeline.devtools.refund_service import INVALID_KEY, create_refund_app, initial_keys, write_credentials
from pipeline.refund_api import AUTH_FAILED, REJECTED, UNAVAILABLE, Credentials, RefundApiClient, failure_kind

REFUND = Refund("JD:RF1", "JD-1", "JD", "return_and_refund", "seven_day_no_reason", 19_900, "CNY", 29_900,
                (RefundLine("TEE-01", 1),), 1, "buyer:u1", "refunding", instruction="pending")


@contextlib.asynccontextmanager
async def refund_service(**kw):
    """The real service on 127.0.0.1 with an OS-chosen port; yields its base URL."""
    runner = web.AppRunner(create_refund_app(**kw), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def call(base: str, path: str, body: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as s:
        method = s.get if body is None else s.post
        async with method(f"{base}{path}", **({} if body is None else {"json": body})) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


def client(base: str, creds_path, **kw) -> RefundApiClient:
    return RefundApiClient(base, Credentials(creds_path), **{"timeout_s": 1.0, "backoff_s": 0.01, **kw})


def test_an_instruction_is_paid_once_however_often_it_is_sent(tmp_path):
    async def scenario():
        write_credentials(tmp_path / "keys.json", initial_keys())
        async with refund_service(latency_ms=1) as base:
            api = client(base, tmp_path / "keys.json")
            first = await api.instruct(REFUND)
            again = await api.instruct(REFUND)
            await api.close()
            return first, again, await call(base, "/refunds")

    first, again, seen = asyncio.run(scenario())
    assert first.outcome == "accepted" and first.done and first.platform_refund_no
    assert again.outcome == "duplicate" and again.done and again.platform_refund_no == first.platform_refund_no
    assert seen["received"] == {"JD:RF1": 2}                     # both reached the platform ...
    assert list(seen["applied"]) == ["JD:RF1"]                   # ... and it paid once
    assert seen["applied"]["JD:RF1"]["amount_minor"] == 19_900 and seen["stats"]["applied"] == 1


def test_a_rotated_key_fails_every_instruction_until_the_credentials_file_is_fixed(tmp_path):
    creds = tmp_path / "keys.json"

    async def scenario():
        write_credentials(creds, initial_keys())
        async with refund_service(latency_ms=1) as base:
            api = client(base, creds)
            rotated = await call(base, "/config", {"rotate_key": "JD"})
            failed = await api.instruct(REFUND)
            other = await api.instruct(Refund(**{**REFUND.as_dict(), "refund_id": "TM:RF2", "platform": "TMALL",
                                                 "lines": REFUND.lines}))
            new_key = (await call(base, "/keys"))["JD"]
            write_credentials(creds, {**initial_keys(), "JD": new_key})   # the fix, no restart
            fixed = await api.instruct(REFUND)
            await api.close()
            return rotated, failed, other, fixed, await call(base, "/refunds")

    rotated, failed, other, fixed, seen = asyncio.run(scenario())
    assert rotated["rotated"] == {"JD": "jd-key-2"}
    assert failed.outcome == "failed" and failed.error == INVALID_KEY and failed.http_status == 401
    assert failed.attempts == 1 and failure_kind(failed) == AUTH_FAILED   # a bad key is not retried
    assert other.outcome == "accepted"                                    # only JD rotated
    assert fixed.outcome == "accepted"
    assert seen["auth_failures"] == {"JD:RF1": 1} and seen["received"] == {"JD:RF1": 1, "TM:RF2": 1}


def test_no_key_for_the_platform_fails_without_calling(tmp_path):
    async def scenario():
        write_credentials(tmp_path / "keys.json", {"TMALL": "tmall-key-1"})
        async with refund_service(latency_ms=1) as base:
            api = client(base, tmp_path / "keys.json")
            result = await api.instruct(REFUND)
            await api.close()
            return result, await call(base, "/refunds")

    result, seen = asyncio.run(scenario())
    assert result.outcome == "failed" and "no API key configured for JD" in result.error and result.attempts == 0
    assert seen["stats"].get("requests", 0) == 0


def test_an_unreadable_credentials_file_keeps_the_keys_read_before(tmp_path):
    path = tmp_path / "keys.json"
    write_credentials(path, {"JD": "jd-key-1"})
    creds = Credentials(path)
    assert creds.key("JD") == "jd-key-1"
    path.write_text("{not json")
    os.utime(path, ns=(1, 1))
    assert creds.key("JD") == "jd-key-1"
    path.write_text(json.dumps({"JD": "jd-key-9"}))
    assert creds.key("JD") == "jd-key-9"
    assert Credentials(tmp_path / "missing.json").key("JD") is None


def test_a_platform_outage_is_retried_then_reported_unavailable(tmp_path):
    async def scenario():
        write_credentials(tmp_path / "keys.json", initial_keys())
        async with refund_service(latency_ms=1, error_rate=1.0) as base:
            api = client(base, tmp_path / "keys.json", retries=2)
            result = await api.instruct(REFUND)
            await api.close()
            return result, await call(base, "/refunds")

    result, seen = asyncio.run(scenario())
    assert result.outcome == "failed" and result.attempts == 3 and result.http_status == 503
    assert failure_kind(result) == UNAVAILABLE and "unavailable" in result.error
    assert seen["applied"] == {} and seen["stats"]["errors"] == 3


def test_an_unreachable_platform_is_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # nothing listens here once the socket is closed
    write_credentials(tmp_path / "keys.json", initial_keys())

    async def scenario():
        api = client(f"http://127.0.0.1:{port}", tmp_path / "keys.json", retries=1)
        result = await api.instruct(REFUND)
        await api.close()
        return result

    result = asyncio.run(scenario())
    assert result.outcome == "failed" and result.attempts == 2 and failure_kind(result) == UNAVAILABLE


def test_the_same_refund_id_with_another_amount_is_refused_not_paid_again(tmp_path):
    async def scenario():
        write_credentials(tmp_path / "keys.json", initial_keys())
        async with refund_service(latency_ms=1) as base:
            api = client(base, tmp_path / "keys.json")
            await api.instruct(REFUND)
            other = await api.instruct(Refund(**{**REFUND.as_dict(), "amount_minor": 29_900, "lines": REFUND.lines}))
            await api.close()
            return other, await call(base, "/refunds")

    other, seen = asyncio.run(scenario())
    assert other.outcome == "failed" and other.http_status == 409 and failure_kind(other) == REJECTED
    assert seen["applied"]["JD:RF1"]["amount_minor"] == 19_900


def test_the_service_refuses_bad_settings_and_unknown_platforms(tmp_path):
    async def scenario():
        async with refund_service(latency_ms=1) as base:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{base}/config", json={"rotate_key": "EBAY"}) as resp:
                    bad_rotate = resp.status, await resp.json()
                async with s.post(f"{base}/config", json={"error_rate": 2}) as resp:
                    bad_rate = resp.status
                async with s.post(f"{base}/platforms/EBAY/refunds", json={}) as resp:
                    unknown = resp.status
            return bad_rotate, bad_rate, unknown

    bad_rotate, bad_rate, unknown = asyncio.run(scenario())
    assert bad_rotate[0] == 400 and "unknown platform" in bad_rotate[1]["error"]
    assert bad_rate == 400 and unknown == 404
