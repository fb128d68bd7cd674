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


def test_too_few_retries_fail_a_flaky_courier_over_to_the_aggregator_enough_retries_do_not(service):
    """Seed 000's 'too few retries': the courier's API drops every other call. Pulled 60 times
    through the freshness logic, one try per pull strings 3 failures together and sends the waybill
    to the backup aggregator; a few retries per pull keep it on its courier (the service's random
    errors are seeded; over 60 pulls another seed would miss a fail-over 1 time in 120)."""
    from pipeline.contracts import WaybillRegistered
    service.configure("JT", error_rate=0.5)

    def waybill_after_pulls(retries):
        w = lg.register(WaybillRegistered("DY-1", "JT", "JT1", 0), 0, 1, b"k")
        for i in range(60):
            source = lg.pull_source(w)
            result = pull(service, source, "JT1", retries=retries)
            w = lg.after_pull(w, source, result.ok, i * 1000, 1).waybill
        return w

    assert waybill_after_pulls(retries=0).failovers >= 1
    patient = waybill_after_pulls(retries=6)
    assert patient.failovers == 0 and not patient.on_backup
