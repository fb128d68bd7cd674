"""Issue 19 end to end: a logistics replay through a real worker on the real broker, the simulated
courier APIs (an outage, an expired key), the real sink, and the buyer's page in Debian's chromium.

Done when: every shipped order ends with the translated state and the badge the replay expects,
re-pulls and fail-overs counted, no waybill stale without a badge saying so, signed notified once,
conflicts queued for review, the unknown code dead-lettered with its bytes, and the tracking page
showing it in the browser (at a phone's width). Then the outage ends and the waybill goes back to
its courier.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict

import pytest

from pipeline.codecs import dead_letter_codec
from pipeline.contracts import Notification, TrackingReview, TrackingUpdate, WaybillCheck
from pipeline.devtools import logistics_replay as lr
from pipeline.devtools import stack
from pipeline.devtools.courier_service import CourierServiceThread
from tests.stack.helpers import Watch, sink_json, sink_sql

pytestmark = [pytest.mark.stack, pytest.mark.slow]

STALE_S = 2


@pytest.fixture(scope="module")
def run(pipeline_factory):
    service = CourierServiceThread().start()
    p = pipeline_factory(ORDERSTREAM_TRACKING_STALE_AFTER_S=str(STALE_S), ORDERSTREAM_TRACKING_RETRY_AFTER_S="1",
                         ORDERSTREAM_COURIER_API_URL=service.url, ORDERSTREAM_COURIER_API_RETRIES="1",
                         ORDERSTREAM_COURIER_API_TIMEOUT_S="0.5")
    start = int(time.time() * 1000)
    stories = lr.stories(start, tag=p.ns.strip(".")[-4:].upper())
    lr.load_api(service.world, stories)
    for source, config in lr.OUTAGES.items():
        service.configure(source, **config)
    p.start_worker()
    p.start_sink()
    n = p.names
    watch = Watch(p, n.TRACKING, n.TRACKING_REVIEW, n.LOGISTICS_DLQ, n.NOTIFICATIONS, n.TRACKING_CHECKS)
    p.produce(lr.records(stories, n, start))
    yield p, service, watch, stories
    watch.close()
    service.stop()


def latest(watch: Watch, topic: str) -> dict[str, TrackingUpdate]:
    out = {}
    for r in sorted(watch.on(topic), key=lambda r: (r.partition(), r.offset())):
        u = TrackingUpdate.decode(r.value())
        out[u.waybill] = u
    return out


def fates(watch: Watch, p) -> dict[str, dict]:
    n = p.names
    last = latest(watch, n.TRACKING)
    causes = defaultdict(set)
    for r in watch.on(n.TRACKING):
        u = TrackingUpdate.decode(r.value())
        causes[u.waybill].add(u.cause)
    pulls = Counter(WaybillCheck.decode(r.value()).waybill for r in watch.on(n.TRACKING_CHECKS)
                    if WaybillCheck.decode(r.value()).kind == "pull")
    reviews = Counter(TrackingReview.decode(r.value()).waybill for r in watch.on(n.TRACKING_REVIEW))
    notes = Counter(Notification.decode(r.value()).order_id for r in watch.on(n.NOTIFICATIONS))
    letters = Counter(r.key().decode() for r in watch.on(n.LOGISTICS_DLQ))
    return {w: {"state": u.state, "badge": u.badge, "review": reviews[w] > 0, "failover": "failover" in causes[w],
                "pulled": pulls[w] > 0, "notified": notes[u.order_id], "dead_letters": letters[w], "update": u}
            for w, u in last.items()}


def matches(fate: dict | None, e: lr.Expect) -> bool:
    return (fate is not None and fate["state"] == e.state and fate["badge"] == e.badge
            and fate["review"] == e.review and (fate["failover"] or not e.failover)
            and (fate["pulled"] or not e.pulled) and fate["notified"] == (1 if e.notified else 0)
            and fate["dead_letters"] == e.dead_letters)


@pytest.fixture(scope="module")
def settled(run):
    p, service, watch, stories = run

    def all_as_expected(w):
        f = fates(w, p)
        return all(matches(f.get(s.waybill), s.expect) for s in stories) and f

    try:
        got = watch.until(all_as_expected, timeout=120, what="every parcel's expected fate", check_alive=p.check_alive)
    except AssertionError:
        f = fates(watch, p)
        wrong = {s.name: ({k: v for k, v in f[s.waybill].items() if k != "update"} if s.waybill in f else None,
                          s.expect) for s in stories if not matches(f.get(s.waybill), s.expect)}
        pytest.fail(f"parcels not as expected: {wrong}")
    return p, service, watch, stories, got


def test_every_shipped_order_ends_with_the_expected_state_and_badge(settled):
    p, service, watch, stories, got = settled
    assert set(got) == {s.waybill for s in stories}
    for s in stories:
        assert got[s.waybill]["state"] == s.expect.state, s.name
        assert got[s.waybill]["badge"] == s.expect.badge, s.name
    # no waybill stale without a badge saying so: older than 1 h means yellow or red
    now = time.time() * 1000
    for s in stories:
        u = got[s.waybill]["update"]
        if u.state not in ("signed", "completed") and now - u.last_update_ms > 3600_000:
            assert u.badge in ("yellow", "red"), s.name
    # the outage and the expired key were pulled around: 3 failures, then the aggregator
    assert service.world.stats["ZTO:error"] >= 3 and service.world.stats["YTO:expired_key"] >= 3
    assert service.world.stats["CAINIAO:ok"] >= 2


def test_the_unknown_code_is_a_dead_letter_with_its_original_bytes(settled):
    p, _, watch, stories, _ = settled
    story = next(s for s in stories if s.name == "unknown_code")
    letters = [dead_letter_codec().decode(r.value()) for r in watch.on(p.names.LOGISTICS_DLQ)]
    assert [(d["platform"], d["reason_code"]) for d in letters] == [("SF", "unknown_status")]
    assert b'"SF777"' in letters[0]["payload"] and story.waybill.encode() in letters[0]["payload"]


def test_the_sink_lands_states_badges_reviews_and_the_execution_tier_counts_them(settled):
    p, _, watch, stories, got = settled
    expected_badges = Counter(s.expect.badge for s in stories)

    def landed():
        rows = sink_sql(p, "SELECT waybill, argMax(state, (at, src_offset)) AS state, "
                           "argMax(badge, (at, src_offset)) AS badge FROM tracking_updates GROUP BY waybill")
        return {r["waybill"]: (r["state"], r["badge"]) for r in rows}

    deadline = time.monotonic() + 60
    while landed() != {s.waybill: (s.expect.state, s.expect.badge) for s in stories} and time.monotonic() < deadline:
        time.sleep(1)
    assert landed() == {s.waybill: (s.expect.state, s.expect.badge) for s in stories}
    view = sink_json(p, "/views/execution")["logistics"]
    assert view["by_badge"] == {b: expected_badges.get(b, 0) for b in ("green", "yellow", "red")}
    assert view["syncing"] == sum(1 for s in stories if s.expect.state == "syncing")
    assert view["failovers"] >= 2 and view["pulls"] > 0
    reviews = sink_sql(p, "SELECT DISTINCT waybill FROM tracking_reviews")
    assert {r["waybill"] for r in reviews} == {s.waybill for s in stories if s.expect.review}
    dead = sink_sql(p, f"SELECT reason_code FROM dead_letters WHERE source_topic = '{p.names.courier_raw('SF')}'")
    assert [r["reason_code"] for r in dead] == ["unknown_status"]


def test_the_worker_counts_pulls_failovers_and_waybills_by_badge(settled):
    p, *_ = settled
    import urllib.request
    with urllib.request.urlopen(f"{p.worker_url()}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    failovers = sum(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("orderstream_logistics_failovers_total{"))
    pulls = sum(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("orderstream_logistics_pulls_total{"))
    red = [line for line in text.splitlines() if line.startswith('orderstream_waybills_by_badge{badge="red"}')]
    assert failovers >= 2 and pulls > 0
    assert red and float(red[0].split()[-1]) == 1.0


def test_the_courier_coming_back_takes_the_waybill_off_the_backup(settled):
    p, service, watch, stories, _ = settled
    story = next(s for s in stories if s.name == "courier_outage")
    service.configure("ZTO", down=False)
    watch.until(lambda w: any(TrackingUpdate.decode(r.value()).cause == "recovered"
                              and TrackingUpdate.decode(r.value()).waybill == story.waybill
                              for r in w.on(p.names.TRACKING)),
                timeout=60, what="the ZTO waybill back on its courier", check_alive=p.check_alive)
    assert not latest(watch, p.names.TRACKING)[story.waybill].on_backup


@pytest.fixture(scope="module")
def phone():
    try:
        paths = stack.ensure_browser_installed()
    except stack.StackError as exc:
        pytest.fail(f"the browser tests need Debian's chromium: {exc}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths["chromium"]
    profile = tempfile.mkdtemp(prefix="orderstream-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--lang=zh-CN"):
        options.add_argument(arg)
    # a phone's screen (headless chromium will not make a window narrower than 500 px)
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3}})
    d = webdriver.Chrome(service=Service(paths["chromedriver"]), options=options)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def test_the_buyers_page_shows_the_parcel_in_the_browser_on_a_phone(settled, phone):
    from selenium.webdriver.common.by import By

    p, _, watch, stories, got = settled
    for name, state, reached in (("on_time", "out_for_delivery", ["collected", "in_transit", "out_for_delivery"]),
                                 ("never_scanned", "registered", []),
                                 # the steps of a conflict are its last agreed state, which depends on
                                 # whether the courier's or the aggregator's report came first (two topics)
                                 ("conflicting", "syncing", None)):
        story = next(s for s in stories if s.name == name)
        code = got[story.waybill]["update"].track_code
        deadline = time.monotonic() + 60
        while True:
            phone.get(f"http://127.0.0.1:{p.public_port}/t/{code}")  # the public surface
            found = phone.find_elements(By.ID, "state")
            if found and found[0].get_attribute("data-state") == state or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert phone.find_element(By.ID, "state").get_attribute("data-state") == state, name
        assert phone.find_element(By.ID, "badge").get_attribute("data-badge") == story.expect.badge, name
        steps = [e.get_attribute("data-step") for e in phone.find_elements(By.CSS_SELECTOR, "#steps li.reached")]
        if reached is None:
            assert steps in (["collected", "in_transit"], ["collected", "in_transit", "out_for_delivery"]), steps
        else:
            assert steps == reached, name
        body = phone.find_element(By.TAG_NAME, "body").text
        assert story.order_id not in body and story.waybill not in body
        # readable on a phone: nothing wider than the screen, text not shrunk
        assert phone.execute_script("return window.innerWidth") == 390
        assert phone.execute_script("return document.documentElement.scrollWidth") <= 390
        size = phone.execute_script("return parseFloat(getComputedStyle(document.getElementById('state')).fontSize)")
        assert size >= 18
        if name == "on_time":
            assert phone.find_element(By.ID, "expected").text.strip() not in ("", "待揽收后估算")
        if name == "conflicting":
            assert "信息同步中" in phone.find_element(By.ID, "state").text
        if name == "never_scanned":
            assert "超过 3 小时未更新" in phone.find_element(By.ID, "badge").text


def test_waybills_and_their_timers_survive_a_worker_killed_and_restarted(settled):
    p, _, watch, stories, _ = settled
    n = p.names
    quiet = next(s for s in stories if s.name == "never_scanned")
    moving = next(s for s in stories if s.name == "on_time")

    def pulls_of(w, waybill):
        return sum(1 for r in w.on(n.TRACKING_CHECKS)
                   if (c := WaybillCheck.decode(r.value())).kind == "pull" and c.waybill == waybill)

    p.procs["worker-0"].kill()            # no shutdown hooks, no final commit
    watch.settle(1.0)
    before = pulls_of(watch, quiet.waybill)
    updates_before = len(watch.on(n.TRACKING))
    p.start_worker()
    # the pull deadline lives in the table: the new worker's timer keeps pulling the silent waybill
    watch.until(lambda w: pulls_of(w, quiet.waybill) >= before + 2, timeout=90,
                what="re-pulls after the restart", check_alive=p.check_alive)
    # what the parcel had seen survived too: a repeated scan is a duplicate, the next one moves it
    start_ms = moving.pushed[0][1]["acceptTime"] + 5 * lr.H
    p.produce([(n.courier_raw("SF"), moving.waybill.encode(),
                json.dumps(moving.pushed[-1][1]).encode()),
               (n.courier_raw("SF"), moving.waybill.encode(),
                json.dumps(lr._sf("SF80", start_ms, "a4", moving.waybill)).encode())])
    last = watch.until(lambda w: (u := latest(w, n.TRACKING).get(moving.waybill)) and u.state == "signed" and u,
                       timeout=60, what="the parcel signed after the restart", check_alive=p.check_alive)
    assert last.expected_at_ms == moving.pushed[0][1]["acceptTime"] + 24 * lr.H  # collected time kept
    scans_after = [TrackingUpdate.decode(r.value()) for r in watch.on(n.TRACKING)[updates_before:]]
    assert [u.state for u in scans_after if u.waybill == moving.waybill and u.cause == "scan"] == ["signed"]
    notes = [Notification.decode(r.value()) for r in watch.on(n.NOTIFICATIONS)]
    assert sum(1 for x in notes if x.order_id == moving.order_id) == 1
