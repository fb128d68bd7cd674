"""External verifiers over real HTTP on loopback: the local aiohttp service and the client's
timeouts, retries, failure breaker and deadline. Each test runs its own event loop."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web

from pipeline.devtools.verifier_service import check_address, check_payment, create_verifier_app
from pipeline.verifiers import VerifierClient, order_summary

ORDER = {
    "order_id": "SHOPEE-1", "platform": "SHOPEE", "currency": "THB",
    "amounts": {"total_minor": 129_900},
    "address": {"country": "TH", "province": "Bangkok", "city": "Bangkok", "detail": "99 Sukhumvit Rd",
                "postal_code": "10110"},
    "buyer": {"buyer_id": "b", "phone": "+66 1234", "ip": "10.0.0.9"},
}


@contextlib.asynccontextmanager
async def verifier_service(**kw):
    """The real service on 127.0.0.1 with an OS-chosen port; yields (base_url, app)."""
    app = create_verifier_app(**kw)
    runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


async def set_config(base: str, **changes) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/config", json=changes) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def get_stats(base: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/config") as resp:
            return (await resp.json())["stats"]


def with_address(**changes) -> dict:
    return {**ORDER, "address": {**ORDER["address"], **changes}}


# --------------------------------------------------------------------------- pure checks


def test_check_rules():
    assert check_payment(order_summary(ORDER)) == (True, "payment confirmed")
    assert not check_payment(order_summary({**ORDER, "amounts": {"total_minor": 0}}))[0]
    assert check_address(order_summary(ORDER))[0]
    assert not check_address(order_summary(with_address(detail="1 a")))[0]
    assert not check_address(order_summary(with_address(city="")))[0]
    assert not check_address(order_summary(with_address(country="CN", province="")))[0]
    assert check_address(order_summary(with_address(country="SG", province="")))[0]  # no provinces in SG


def test_summary_leaves_buyer_contact_data_out():
    summary = order_summary(ORDER)
    assert "buyer" not in summary and summary["amount_minor"] == 129_900 and summary["currency"] == "THB"


# --------------------------------------------------------------------------- over HTTP


def test_ok_path_and_invalid_address():
    async def scenario():
        async with verifier_service(latency_ms=5) as (base, app):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/health") as resp:
                    assert resp.status == 200
            client = VerifierClient(base)
            try:
                results = await client.verify_all(["payment", "address"], ORDER)
                assert {n: (r.ok, r.attempts, r.skipped) for n, r in results.items()} == {
                    "payment": (True, 1, False), "address": (True, 1, False)}
                bad = await client.verify("address", with_address(province="", detail="x"))
                assert bad.ok is False and "shorter than 4" in bad.reason
                unpaid = await client.verify("payment", {**ORDER, "amounts": {"total_minor": -1}})
                assert unpaid.ok is False
            finally:
                await client.close()
            assert (await get_stats(base))["requests"] == 4

    asyncio.run(scenario())


def test_unknown_verifier_is_unavailable_without_retries():
    async def scenario():
        async with verifier_service(latency_ms=0) as (base, _):
            async with VerifierClient(base) as client:
                r = await client.verify("horoscope", ORDER)
                assert r.ok is None and r.attempts == 1 and "404" in r.reason

    asyncio.run(scenario())


def test_timeout_gives_unavailable_within_bounded_time():
    async def scenario():
        async with verifier_service(latency_ms=0, timeout_rate=1.0, hang_s=30) as (base, _):
            async with VerifierClient(base, timeout_s=0.2, retries=2, backoff_s=0.05) as client:
                start = time.monotonic()
                r = await client.verify("payment", ORDER)
                elapsed = time.monotonic() - start
                assert r.ok is None and not r.skipped and r.attempts == 3 and "timeout" in r.reason
                # 3 attempts x 0.2 s + back-offs 0.05 + 0.1
                assert 0.6 <= elapsed < 1.5
                start = time.monotonic()
                results = await client.verify_all(["payment", "address"], ORDER)
                assert time.monotonic() - start < client.deadline_s + 0.5
                assert all(res.ok is None for res in results.values())

    asyncio.run(scenario())


def test_total_deadline_cuts_slow_verifiers():
    async def scenario():
        async with verifier_service(latency_ms=800) as (base, _):
            async with VerifierClient(base, timeout_s=2.0, retries=0, deadline_s=0.3) as client:
                start = time.monotonic()
                results = await client.verify_all(["payment", "address"], ORDER)
                assert time.monotonic() - start < 0.8
                assert {r.ok for r in results.values()} == {None}
                assert all("deadline" in r.reason for r in results.values())

    asyncio.run(scenario())


def test_retry_recovers_from_transient_errors():
    async def scenario():
        # seeded (deterministic): with error_rate 0.3 some first attempts fail and a retry succeeds
        async with verifier_service(latency_ms=0, error_rate=0.3, seed=7) as (base, _):
            async with VerifierClient(base, retries=5, backoff_s=0.01) as client:
                results = [await client.verify("payment", ORDER) for _ in range(20)]
        assert all(r.ok is True for r in results)
        assert max(r.attempts for r in results) > 1

    asyncio.run(scenario())


def test_errors_open_the_client_breaker_then_it_recovers():
    async def scenario():
        clock = [0.0]
        async with verifier_service(latency_ms=0, error_rate=1.0) as (base, _):
            async with VerifierClient(base, retries=1, backoff_s=0.01, failure_threshold=3, reset_s=10.0,
                                      clock=lambda: clock[0]) as client:
                failed = [await client.verify("payment", ORDER) for _ in range(3)]
                assert all(r.ok is None and not r.skipped and r.attempts == 2 and "503" in r.reason
                           for r in failed)
                assert client.breaker_open("payment")
                requests_before = (await get_stats(base))["requests"]
                assert requests_before == 6

                start = time.monotonic()
                skipped = [await client.verify("payment", ORDER) for _ in range(50)]
                assert time.monotonic() - start < 0.2
                assert all(r.skipped and r.ok is None and r.attempts == 0 for r in skipped)
                assert (await get_stats(base))["requests"] == requests_before  # nothing was sent
                # the address verifier has its own breaker
                assert not client.breaker_open("address")

                # after reset_s one trial call goes out; still failing -> open again
                clock[0] = 10.5
                trial = await client.verify("payment", ORDER)
                assert not trial.skipped and trial.ok is None
                assert (await client.verify("payment", ORDER)).skipped

                # the service heals; after the next pause the trial succeeds and the breaker closes
                await set_config(base, error_rate=0.0)
                clock[0] = 21.0
                healed = await client.verify("payment", ORDER)
                assert healed.ok is True and not healed.skipped
                assert not client.breaker_open("payment")
                assert (await client.verify("payment", ORDER)).ok is True

    asyncio.run(scenario())


def test_unreachable_service_is_unavailable_not_an_exception():
    async def scenario():
        async with verifier_service() as (base, _):
            pass  # started and stopped: nothing listens on that port any more
        async with VerifierClient(base, timeout_s=0.2, retries=1, backoff_s=0.01) as client:
            r = await client.verify("address", ORDER)
            assert r.ok is None and r.attempts == 2 and r.reason.startswith("unavailable")

    asyncio.run(scenario())


def test_config_endpoint_validates():
    async def scenario():
        async with verifier_service() as (base, _):
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{base}/config", json={"error_rate": 2}) as resp:
                    assert resp.status == 400
                async with s.post(f"{base}/config", json={"colour": 1}) as resp:
                    assert resp.status == 400
            assert (await set_config(base, latency_ms=1.5))["latency_ms"] == 1.5

    asyncio.run(scenario())


def test_concurrent_calls_share_one_session():
    async def scenario():
        async with verifier_service(latency_ms=50) as (base, _):
            async with VerifierClient(base) as client:
                start = time.monotonic()
                results = await asyncio.gather(*(client.verify_all(["payment", "address"], ORDER)
                                                 for _ in range(40)))
                elapsed = time.monotonic() - start
                session = client._session
                assert all(r["payment"].ok and r["address"].ok for r in results)
                assert elapsed < 1.5  # 80 calls of 50 ms ran concurrently, not one after another
                assert client._session is session

    asyncio.run(scenario())


def test_only_consecutive_failures_open_the_breaker():
    async def scenario():
        async with verifier_service(latency_ms=0) as (base, _):
            async with VerifierClient(base, retries=0, failure_threshold=3, reset_s=60) as client:
                for _ in range(3):
                    await set_config(base, error_rate=1.0)
                    assert (await client.verify("payment", ORDER)).ok is None
                    assert (await client.verify("payment", ORDER)).ok is None
                    await set_config(base, error_rate=0.0)
                    assert (await client.verify("payment", ORDER)).ok is True  # success resets the count
                assert not client.breaker_open("payment")
                await set_config(base, error_rate=1.0)
                for _ in range(3):
                    await client.verify("payment", ORDER)
                assert client.breaker_open("payment")
                assert (await client.verify("payment", ORDER)).skipped

    asyncio.run(scenario())
