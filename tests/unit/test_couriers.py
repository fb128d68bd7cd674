"""The courier API client (pipeline.couriers) against the simulated couriers over real HTTP."""
from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.couriers import CourierClient
from pipeline.devtools.courier_service import CourierServiceThread
from pipeline.domain import logistics as lg


@pytest.fixture()
def service():
    svc = CourierServiceThread().start()
    yield svc
    svc.stop()


def pull(svc, source, waybill, key="k", retries=2, timeout_s=1.0):
    async def run():
        client = CourierClient(svc.url, key, timeout_s=timeout_s, retries=retries, backoff_s=0.01)
        try:
            return await client.pull(source, waybill)
        finally:
            await client.close()
    return asyncio.run(run())


def test_a_pull_returns_the_sources_own_bytes_which_the_translator_reads(service):
    raw = '{"mailno": "SF1", "opCode": "SF203", "acceptTime": 1780000000000, "routeId": "r9", "note": "到达 杭州"}'
    service.world.add("SF", "SF1", raw.encode())
    result = pull(service, "SF", "SF1")
    assert result.ok and result.events == (raw.encode(),)
    assert lg.translate("SF", result.events[0]).state == "in_transit"
    assert pull(service, "SF", "NOPE").events == ()


def test_an_expired_key_fails_at_once_without_retries(service):
    service.configure("SF", expired_key=True)
    result = pull(service, "SF", "SF1", retries=5)
    assert (result.ok, result.reason, result.attempts) == (False, "expired_key", 1)
    assert service.world.stats["SF:expired_key"] == 1


def test_an_outage_fails_after_the_retries(service):
    service.configure("ZTO", down=True)
    result = pull(service, "ZTO", "ZT1", retries=2)
    assert (result.ok, result.reason, result.attempts) == (False, "http_503", 3)


def test_too_few_retries_lose_a_pull_that_enough_retries_save(service):
    # seed 000: an API that fails now and then; one try gives up, a few retries get through
    service.configure("YTO", error_rate=0.5)
    service.world.add("YTO", "YT1", json.dumps({"waybillNo": "YT1", "infoContent": "GOT", "upload_Time": 1,
                                                "traceId": "t"}).encode())
    once = [pull(service, "YTO", "YT1", retries=0).ok for _ in range(20)]
    patient = [pull(service, "YTO", "YT1", retries=6).ok for _ in range(20)]
    assert once.count(False) >= 4
    assert all(patient)


def test_a_hung_courier_times_out(service):
    service.configure("EMS", latency_ms=2000)
    result = pull(service, "EMS", "E1", retries=0, timeout_s=0.2)
    assert (result.ok, result.reason) == (False, "timeout")
