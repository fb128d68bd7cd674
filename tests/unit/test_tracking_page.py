"""Tracking updates land in ClickHouse; the execution tier counts waybills by badge; the buyer's
page /t/<code> shows the key steps and the expected arrival and nothing personal."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import test_utils

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.clickhouse.tiers import logistics
from pipeline.contracts import WaybillRegistered
from pipeline.domain import logistics as lg
from pipeline.public_site import make_public_app
from pipeline.topics import TopicNames
from tests.unit.test_clickhouse_chdb import Feed

NAMES = TopicNames("trk.")
T = 1_780_000_000_000
H = 3600 * 1000
SECRET = b"page-test"


def sf(code, at_ms, event_id, waybill):
    return json.dumps({"mailno": waybill, "opCode": code, "acceptTime": at_ms, "routeId": event_id}).encode()


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Three parcels folded by the domain logic, their updates landed through the real sink."""
    b = ChdbBackend(tmp_path_factory.mktemp("tracking") / "chdb")
    migrate(b)
    feed = Feed(NAMES)
    updates = []

    def register(order, waybill, now):
        w = lg.register(WaybillRegistered(order, "SF", waybill, now), now, 1500, SECRET)
        updates.append(lg.tracking_update(w, "registered", now))
        return w

    def scan(w, code, at, event_id, now):
        o = lg.apply_scan(w, lg.translate("SF", sf(code, at, event_id, w.waybill)), now, 1500)
        if o.update:
            updates.append(o.update)
        return o.waybill

    moving = register("TM-1001", "SF1001", T)
    moving = scan(moving, "SF101", T + 1000, "a", T + 2000)
    moving = scan(moving, "SF203", T + 2 * H, "b", T + 2 * H)
    moving = scan(moving, "SF204", T + 20 * H, "c", T + 20 * H)
    quiet = register("TM-1002", "SF1002", T)   # never scanned: red after 3 h
    o = lg.rebadge(quiet, T + 4 * H)
    updates.append(o.update)
    stale = register("TM-1003", "SF1003", T + 18 * H)  # yellow
    updates.append(lg.rebadge(stale, T + 20 * H).update)
    for u in updates:
        feed.send(NAMES.TRACKING, u.encode(), u.at_ms, u.waybill)
    sink = ClickHouseSink(b, NAMES, max_rows=100, max_seconds=60)
    for m in feed.messages:
        sink.add(m)
    sink.flush(force=True)
    yield b, {"moving": moving, "quiet": quiet, "stale": stale}
    b.close()


def get(backend, path):
    app = make_public_app(backend)  # the page's own listener: the public surface

    async def main():
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            resp = await client.get(path)
            return resp.status, resp.headers, await resp.text()
    return asyncio.run(main())


def test_the_execution_tier_counts_waybills_by_badge_and_lists_the_stale_ones(landed):
    backend, w = landed
    from datetime import datetime, timezone
    view = logistics(backend, datetime.fromtimestamp((T + 21 * H) / 1000, timezone.utc))
    assert view["waybills"] == 3
    assert view["by_badge"] == {"green": 1, "yellow": 1, "red": 1}
    assert [(r["waybill"], r["badge"]) for r in view["attention"]] == [("SF1002", "red"), ("SF1003", "yellow")]


def test_the_buyers_page_shows_key_steps_and_expected_arrival(landed):
    backend, w = landed
    status, headers, page = get(backend, f"/t/{w['moving'].track_code}")
    assert status == 200
    assert 'id="state" data-state="out_for_delivery"' in page and "派件中" in page
    reached = re.findall(r'<li class="reached" data-step="(\w+)"', page)
    assert reached == ["collected", "in_transit", "out_for_delivery"]
    assert '<li class="todo" data-step="signed"' in page
    # expected arrival: collected (T + 1 s) + SF's 24 h, shown in Beijing time
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo
    eta = datetime.fromtimestamp((T + 1000 + 24 * H) / 1000, timezone.utc).astimezone(ZoneInfo("Asia/Shanghai"))
    assert f'<b id="expected">{eta:%m-%d %H:%M}</b>' in page
    assert 'name="viewport"' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for personal in ("TM-1001", "SF1001"):
        assert personal not in page


def test_a_stale_parcel_says_so_on_its_page(landed):
    backend, w = landed
    _, _, page = get(backend, f"/t/{w['quiet'].track_code}")
    assert 'data-badge="red"' in page and "超过 3 小时未更新" in page and "待揽收后估算" in page


@pytest.mark.parametrize("code", ["aaaaaaaaaaaaaaaa", "TM-1001", "'; drop table x", "a" * 17])
def test_an_unknown_or_malformed_code_finds_nothing(landed, code):
    backend, _ = landed
    status, _, page = get(backend, f"/t/{code}")
    assert status == 404 and "未找到" in page
