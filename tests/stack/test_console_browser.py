"""Issue 15 in a real browser: Debian's Chromium, driven by Selenium through chromedriver, against the
console a real sink serves after a real replay through a real worker on the real broker.

- each tier page shows the figures /views/<tier> returns for the same moment (tests/console_figures.py)
  and loads nothing from another origin; a screenshot of each goes to var/screenshots/
  (ORDERSTREAM_SCREENSHOT_DIR=docs/screenshots refreshes the README's, so a test run leaves the tree clean);
- every page needs a sign-in (issue 26): without one the browser gets the sign-in form (401), a
  token signs it in (a session cookie), a wrong token does not;
- an operator signs in with a token and clicks approve on a held order: the decision reaches
  risk.decisions once, with the token's operator, the worker releases the order and it leaves the
  queue on the page's own refresh;
- a viewer's click is refused with 403, the API without a token with 401, and nothing is published;
- a double request publishes one decision; a re-drive click sends the dead letter back once;
- the execution page's tables fit a 1400 px screen and a 390 px phone, the re-drive button whole;
  screenshots of every page and a tracking page at both widths (pipeline.devtools.screenshots).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT
from pipeline.contracts import RiskDecision
from pipeline.devtools import stack
from pipeline.devtools.fake_orders import ReplayMix
from pipeline.devtools.replay import ReplayConfig, produce_replay, reconcile
from tests.console_figures import expected_figures
from tests.stack.helpers import Watch, distinct_facts, sink_sql, wait_sunk

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TOKEN = "tester-token-7f3a9c2e51d0b8"
OPERATOR = "tester"
VIEWER_TOKEN = "watcher-token-2b9e41c7d05a6f"
VIEWER = "watcher"
VIEWER_ACCESS = f"viewer:{VIEWER}:{VIEWER_TOKEN}"
TIERS = ("strategic", "tactical", "execution")
SCREENSHOTS = Path(os.environ.get("ORDERSTREAM_SCREENSHOT_DIR") or PROJECT_ROOT / "var" / "screenshots")
REFRESH_S = 2.0


def http(url: str, data: dict | None = None, token: str | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(), headers=headers,
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def browser_paths():
    try:
        return stack.ensure_browser_installed()  # as `orderstream stack up --browser` does
    except stack.StackError as exc:
        pytest.fail(f"the browser tests need Debian's chromium: {exc}")


@pytest.fixture(scope="module")
def console(pipeline_factory, browser_paths):
    """A replay through worker + sink, holds kept open (1 h) so operators have something to decide."""
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3600")
    p.start_verifiers()
    p.start_worker()
    p.start_sink(ORDERSTREAM_OPERATOR_TOKENS=f"{OPERATOR}:{TOKEN}", ORDERSTREAM_ACCESS_TOKENS=VIEWER_ACCESS,
                 ORDERSTREAM_CONSOLE_REFRESH_S=str(REFRESH_S))
    # shipped orders too: their waybills give the tracking page something to show in its screenshot
    cfg = ReplayConfig(count=400, seed=15, mix=ReplayMix(malformed=0.04, update=0.08, ship=0.05), scarce_skus=4)
    messages, produced = produce_replay(p.s, p.names, cfg)
    p.drain(timeout=180)
    report = reconcile(p.s, p.names, messages, produced["coordinates"])
    assert report["balanced"] and report["awaiting_decision"] >= 4 and report["dead_lettered"] > 0, report
    expected = distinct_facts(p)
    got = wait_sunk(p, expected, timeout=90)
    assert got == expected, f"sink rows {got} != distinct facts in the topics {expected}"
    base = f"http://127.0.0.1:{p.sink_port}"
    return p, base, report


@pytest.fixture(scope="module")
def driver(browser_paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_paths["chromium"]
    profile = tempfile.mkdtemp(prefix="orderstream-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000", "--lang=zh-CN"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(browser_paths["chromedriver"]), options=options)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def wait_for(d, condition, timeout: float, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"timed out waiting for {what}")


def figures_in(d) -> dict[tuple[str, str], str]:
    """Every data-figure on the page as the browser shows it (one script call: the panel may refresh)."""
    rows = d.execute_script("""return Array.from(document.querySelectorAll('#panel [data-figure]')).map(
        e => [e.getAttribute('data-figure'), e.getAttribute('data-key') || '', e.textContent.replace(/\\s+/g, ' ').trim()]);""")
    out: dict[tuple[str, str], str] = {}
    for figure, key, text in rows:
        assert (figure, key) not in out, f"{figure} {key} shown twice"
        out[(figure, key)] = text
    return out


def severe_browser_messages(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


def queue_ids(d) -> list[str]:
    return d.execute_script("return Array.from(document.querySelectorAll('#risk-queue tr.hold')).map("
                            "r => r.getAttribute('data-order-id'));")


def click(d, css: str) -> None:
    """Click what `css` finds now (the panel is replaced on each refresh, so find it right before)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{css} kept being replaced")


def sign_in(d, token: str, url: str | None = None) -> bool:
    """Sign the browser in afresh with `token` (its previous session dropped) through the sign-in form
    a page answers without one, coming back to `url` (default: the page it is on). True if the token
    was taken (the page is there), False if the form refused it."""
    from selenium.webdriver.common.by import By

    url = url or d.current_url
    d.delete_all_cookies()
    d.get(url)
    field = wait_for(d, lambda d: d.find_elements(By.ID, "signin-token"), 15, "the sign-in form")[0]
    field.send_keys(token)
    d.find_element(By.ID, "signin-submit").click()
    wait_for(d, lambda d: d.find_elements(By.ID, "console") or d.find_elements(By.ID, "signin-message"), 30,
             "the page or the refusal")
    d.get_log("browser")  # the form came with a 401 (logged by the browser as a failed request): expected
    return bool(d.find_elements(By.ID, "console"))


def action_message(d) -> tuple[str, str]:
    return (d.find_element("id", "action-message").text, d.execute_script(
        "return document.getElementById('console').getAttribute('data-last-status') || ''"))


def decisions_for(watch: Watch, p, order_id: str) -> list[RiskDecision]:
    return [RiskDecision.decode(m.value()) for m in watch.on(p.names.RISK_DECISIONS)
            if m.key() == order_id.encode()]


# -- the tiers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_page_shows_the_figures_of_its_view(console, driver, tier):
    p, base, report = console
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    query = {"now": now, "tz": "Asia/Shanghai"}
    code, view = http(f"{base}/views/{tier}?" + urllib.parse.urlencode(
        {"now": now, **({"tz": "Asia/Shanghai"} if tier == "strategic" else {})}), token=VIEWER_TOKEN)
    assert code == 200
    assert sign_in(driver, VIEWER_TOKEN, f"{base}/console/{tier}?" + urllib.parse.urlencode(query))
    wait_for(driver, lambda d: d.find_elements("css selector", "#panel [data-figure]"), 30, "figures")
    want = expected_figures(tier, view)
    assert figures_in(driver) == want
    # the figures are the replay's, not an empty page that trivially agrees
    if tier == "strategic":
        assert view["total_orders"] == report["unique_new_orders"] > 0
        assert want[("total_orders", "")] == f"{report['unique_new_orders']:,}"
    elif tier == "tactical":
        assert view["exception_totals"]["dead_letter"] == report["dead_lettered"] > 0
        assert view["warehouses"]
    else:
        assert view["held_orders"] > 0 and view["dead_letters"]["waiting"] > 0
        assert queue_ids(driver) == [h["order_id"] for h in view["risk_queue"]]
        sla_order = driver.execute_script("return Array.from(document.querySelectorAll('#sla-todo tr.sla')).map("
                                          "r => r.getAttribute('data-order-id'));")
        assert sla_order == [r["order_id"] for r in view["sla"]["orders"]]  # most urgent first
    # everything the page loaded came from the sink itself, and the browser reported no error
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert loaded and all(url.startswith(base + "/") for url in loaded), loaded
    assert severe_browser_messages(driver) == []


def test_a_page_refreshes_by_itself(console, driver):
    p, base, _ = console
    assert sign_in(driver, VIEWER_TOKEN, f"{base}/console/tactical")
    first = driver.find_element("id", "refreshed-at").text
    wait_for(driver, lambda d: int(d.find_element("id", "console").get_attribute("data-refreshes")) >= 2,
             6 * REFRESH_S, "two refreshes")
    assert driver.find_element("id", "refreshed-at").text != first
    assert driver.find_element("id", "console").get_attribute("data-refresh-error") is None


# -- operators' actions --------------------------------------------------------------------------------

def test_clicking_approve_releases_the_held_order_and_it_leaves_the_queue(console, driver):
    p, base, _ = console
    watch = Watch(p, p.names.RISK_DECISIONS, p.names.RISK_EVENTS, p.names.ACCEPTED)
    try:
        assert sign_in(driver, TOKEN, f"{base}/console/execution")
        wait_for(driver, lambda d: d.find_element("id", "operator-name").get_attribute("data-operator") == OPERATOR,
                 15, "the operator's name")
        order_id = queue_ids(driver)[0]
        click(driver, f'#risk-queue tr[data-order-id="{order_id}"] button.approve')
        wait_for(driver, lambda d: order_id in action_message(d)[0], 30, "the answer")
        text, status = action_message(driver)
        assert status == "200", text
        # the page refreshes by itself: the order leaves the queue once the sink has the worker's verdict
        wait_for(driver, lambda d: order_id not in queue_ids(d), 60, f"{order_id} to leave the queue")
        approved = watch.until(lambda w: w.events(p, order_id, "approved"), 30, "the approved event", p.check_alive)
        assert [e["operator"] for e in approved] == [OPERATOR]
        watch.until(lambda w: w.order_ids(p.names.ACCEPTED)[order_id], 30, "the order on orders.accepted")
        decisions = decisions_for(watch, p, order_id)
        assert [(x.action, x.operator, x.source) for x in decisions] == [("approve", OPERATOR, "operator")]
        code, view = http(f"{base}/views/execution", token=TOKEN)
        assert order_id not in {h["order_id"] for h in view["risk_queue"]}
        assert severe_browser_messages(driver) == []
    finally:
        watch.close()


def test_without_a_sign_in_nothing_shows_and_a_viewers_click_is_refused(console, driver):
    from selenium.webdriver.common.by import By

    p, base, _ = console
    watch = Watch(p, p.names.RISK_DECISIONS)
    try:
        # no session: the page is the sign-in form, and none of the console's figures
        driver.delete_all_cookies()
        driver.get(f"{base}/console/execution")
        assert driver.find_elements(By.ID, "signin-token") and not driver.find_elements(By.ID, "console")
        # a wrong token does not sign in
        assert not sign_in(driver, "not-the-token-of-anyone-1234", f"{base}/console/execution")
        assert not driver.find_elements(By.ID, "console")
        # a viewer reads the queue; the click is refused (403) and publishes nothing
        assert sign_in(driver, VIEWER_TOKEN, f"{base}/console/execution")
        wait_for(driver, lambda d: d.find_element("id", "operator-name").get_attribute("data-name") == VIEWER, 15,
                 "the viewer's name")
        assert driver.find_element("id", "operator-name").get_attribute("data-operator") == ""
        order_id = queue_ids(driver)[0]
        click(driver, f'#risk-queue tr[data-order-id="{order_id}"] button.approve')
        wait_for(driver, lambda d: action_message(d)[1] == "403", 15, "the refusal")
        assert action_message(driver)[0].startswith("403")
        click(driver, f'#risk-queue tr[data-order-id="{order_id}"] button.reject')
        wait_for(driver, lambda d: action_message(d)[1] == "403", 15, "the refusal")
        time.sleep(2 * REFRESH_S)
        assert order_id in queue_ids(driver)  # still held, still on the page after refreshes
        watch.settle(3)
        assert decisions_for(watch, p, order_id) == []
        # ... and the API says the same without a browser: no token 401, the viewer's 403
        assert http(f"{base}/console/api/decisions", {"order_id": order_id, "action": "approve"})[0] == 401
        assert http(f"{base}/console/api/decisions", {"order_id": order_id, "action": "approve"},
                    VIEWER_TOKEN)[0] == 403
        assert http(f"{base}/views/execution")[0] == 401
        driver.get_log("browser")  # the refusals are logged as failed requests: expected here
    finally:
        watch.close()


def test_a_double_request_publishes_one_decision(console):
    p, base, _ = console
    code, view = http(f"{base}/views/execution", token=TOKEN)
    order_id = view["risk_queue"][-1]["order_id"]
    watch = Watch(p, p.names.RISK_DECISIONS, p.names.RISK_EVENTS)
    try:
        payload = {"order_id": order_id, "action": "reject", "reason": "buyer confirmed fraud"}
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: http(f"{base}/console/api/decisions", payload, TOKEN), range(2)))
        # the second waits for the first; it is told the decision was sent, or applied already
        statuses = sorted(body.get("status", str(body)) for _, body in answers)
        assert statuses in (["already_sent", "sent"], ["already_done", "sent"]), answers
        assert all(code == 200 for code, _ in answers), answers
        rejected = watch.until(lambda w: w.events(p, order_id, "rejected"), 30, "the rejection", p.check_alive)
        assert [e["operator"] for e in rejected] == [OPERATOR]
        watch.settle(2)
        assert [(x.action, x.reason) for x in decisions_for(watch, p, order_id)] == [("reject", "buyer confirmed fraud")]
        # the hold is over now: a late click is told so, and publishes nothing
        deadline = time.monotonic() + 30
        while True:
            code, body = http(f"{base}/console/api/decisions", {"order_id": order_id, "action": "approve"}, TOKEN)
            if code == 409 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 409 and f"rejected by {OPERATOR}" in body["error"], body
        assert http(f"{base}/console/api/decisions", {"order_id": "TM-0000nosuchorder", "action": "approve"},
                    TOKEN)[0] == 404
        watch.settle(2)
        assert len(decisions_for(watch, p, order_id)) == 1
    finally:
        watch.close()


def test_clicking_redrive_sends_the_dead_letter_back_once(console, driver):
    p, base, _ = console
    code, view = http(f"{base}/views/execution", token=TOKEN)
    letter = view["dead_letters"]["letters"][0]
    raw_topic = letter["source"].rsplit(":", 2)[0]
    watch = Watch(p, raw_topic)
    try:
        assert sign_in(driver, TOKEN, f"{base}/console/execution")
        wait_for(driver, lambda d: d.find_element("id", "operator-name").get_attribute("data-operator") == OPERATOR,
                 15, "the operator's name")
        click(driver, f'#dead-letters tr[data-letter-id="{letter["id"]}"] button.redrive')
        wait_for(driver, lambda d: "re-driven" in action_message(d)[0], 30, "the answer")
        wait_for(driver, lambda d: not d.find_elements("css selector", f'#dead-letters tr[data-letter-id="{letter["id"]}"]'),
                 30, "the letter to leave the list")
        # a second try (another tab, a retry) publishes nothing
        code, body = http(f"{base}/console/api/redrive", {"letter_id": letter["id"]}, TOKEN)
        assert code == 200 and body["status"] == "already_sent"
        redriven = watch.until(lambda w: [m for m in w.on(raw_topic)
                                          if dict(m.headers() or []).get("redriven_from") == letter["id"].encode()],
                               30, "the re-driven message")
        watch.settle(2)
        redriven = [m for m in watch.on(raw_topic) if dict(m.headers() or []).get("redriven_from") == letter["id"].encode()]
        assert len(redriven) == 1 and dict(redriven[0].headers())["redriven_by"] == OPERATOR.encode()
        src, part, off = letter["source"].rsplit(":", 2)
        original = [m for m in watch.on(raw_topic) if m.partition() == int(part) and m.offset() == int(off)]
        assert [m.value() for m in original] == [redriven[0].value()]  # the letter's own bytes
        assert severe_browser_messages(driver) == []
    finally:
        watch.close()


# -- layout --------------------------------------------------------------------------------------------

LAYOUT = """
const px = (r) => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height});
const tables = Array.from(document.querySelectorAll('#panel table')).map(t => {
  const box = t.closest('.card') || t.parentElement;
  const cs = getComputedStyle(box);
  const inner = box.getBoundingClientRect();
  return {id: t.id, table: px(t.getBoundingClientRect()), scroll: t.scrollWidth,
          box: {left: inner.left + parseFloat(cs.paddingLeft) + parseFloat(cs.borderLeftWidth),
                right: inner.right - parseFloat(cs.paddingRight) - parseFloat(cs.borderRightWidth)},
          boxRect: px(inner)};
});
const buttons = Array.from(document.querySelectorAll('#dead-letters button.redrive')).map(b => {
  b.scrollIntoView({block: 'center'});
  const r = b.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  const cell = b.closest('td').getBoundingClientRect(), card = b.closest('.card').getBoundingClientRect();
  return {rect: px(r), cell: px(cell), card: px(card), hit: hit === b || b.contains(hit)};
});
const sources = Array.from(document.querySelectorAll('#dead-letters td.source .ident-text')).map(e => {
  return {height: e.getBoundingClientRect().height, line: parseFloat(getComputedStyle(e).lineHeight) ||
          1.45 * parseFloat(getComputedStyle(e).fontSize), title: e.title, text: e.textContent};
});
return {tables, buttons, sources, inner: window.innerWidth, page: document.documentElement.scrollWidth};
"""


SCREENS = [(1400, 900), (390, 844)]


def layout_at(driver, url: str, width: int, height: int, ready_css: str) -> dict:
    """The LAYOUT measures of the page at `url` on a `width` x `height` screen."""
    from pipeline.devtools.screenshots import reset_viewport, set_viewport

    try:
        set_viewport(driver, width, height)
        driver.get(url)
        wait_for(driver, lambda d: d.find_elements("css selector", ready_css), 30, ready_css)
        return driver.execute_script(LAYOUT)
    finally:
        reset_viewport(driver)


def assert_fits(got: dict, width: int) -> None:
    assert got["inner"] == width
    assert got["page"] <= width, f"the page scrolls sideways: {got['page']} px on a {width} px screen"
    for t in got["tables"]:  # inside its card's content box, and no wider than it shows
        assert t["table"]["left"] >= t["box"]["left"] - 1 and t["table"]["right"] <= t["box"]["right"] + 1, t
        assert t["scroll"] <= t["table"]["width"] + 1, t


@pytest.mark.parametrize("width,height", SCREENS)
def test_the_execution_pages_tables_fit_the_screen_and_the_redrive_button_is_whole(console, driver, width, height):
    p, base, _ = console
    assert sign_in(driver, TOKEN, f"{base}/console/execution")
    got = layout_at(driver, f"{base}/console/execution", width, height, "#dead-letters button.redrive")
    assert {t["id"] for t in got["tables"]} >= {"risk-queue", "refund-queue", "dead-letters", "sla-todo"}
    assert_fits(got, width)
    assert got["buttons"], "no re-drive button to look at"
    for b in got["buttons"]:  # whole: inside its cell, its card and the screen, and not covered
        r = b["rect"]
        assert r["width"] > 20 and r["height"] > 10, b
        assert b["cell"]["left"] - 1 <= r["left"] and r["right"] <= b["cell"]["right"] + 1, b
        assert b["card"]["left"] <= r["left"] and r["right"] <= b["card"]["right"], b
        assert 0 <= r["left"] and r["right"] <= width, b
        assert b["hit"], b
    for s in got["sources"]:  # a source id on one line, shortened, the whole one on hover
        assert s["height"] <= 1.5 * s["line"], s
        assert s["title"].startswith(p.ns) and "…" in s["text"] and len(s["text"]) < len(s["title"]), s


@pytest.mark.parametrize("tier", ("strategic", "tactical"))
def test_the_other_pages_fit_a_desktop_and_a_phone(console, driver, tier):
    p, base, _ = console
    assert sign_in(driver, VIEWER_TOKEN, f"{base}/console/{tier}")
    for width, height in SCREENS:
        got = layout_at(driver, f"{base}/console/{tier}", width, height, "#panel table")
        assert got["tables"], tier
        assert_fits(got, width)


def test_screenshots_of_every_page_and_a_tracking_page(console, driver):
    """For the README: ORDERSTREAM_SCREENSHOT_DIR=docs/screenshots refreshes the committed ones."""
    from pipeline.devtools.screenshots import SIZES, take_all

    p, base, _ = console
    codes = sink_sql(p, "SELECT track_code FROM tracking_updates WHERE track_code != '' ORDER BY at LIMIT 1")
    assert codes, "the replay shipped orders, so some waybill has a tracking code"
    tracking = f"http://127.0.0.1:{p.public_port}/t/{codes[0]['track_code']}"
    written = take_all(driver, base, VIEWER_TOKEN, tracking, SCREENSHOTS)
    names = {path.name for path in written}
    assert names == {f"{page}{suffix}.png" for suffix, _, _ in SIZES
                     for page in ("strategic", "tactical", "execution", "tracking")}
    assert all(path.stat().st_size > 15_000 for path in written), [(x.name, x.stat().st_size) for x in written]
    driver.get_log("browser")
