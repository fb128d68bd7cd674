"""The console's refund queue in a real browser (Debian's Chromium through chromedriver), against a real
sink, worker and broker: refunds no rule approves are listed on the execution page; an operator signed
in with a token approves one and rejects another with a reason, each decision reaches refunds.actions
once with the token's operator, the worker moves the refund on and it leaves the queue; a viewer's click
is refused with 403, the API without a token with 401, and nothing is published (the risk queue's rules,
its token, its script)."""
from __future__ import annotations

import time

import pytest

from pipeline.contracts import RefundAction
from tests.stack.helpers import Watch
from tests.stack.test_console_browser import (OPERATOR, REFRESH_S, TOKEN, VIEWER_ACCESS, VIEWER_TOKEN,  # noqa: F401
                                              action_message, browser_paths, click, driver, http,
                                              severe_browser_messages, sign_in, wait_for)
from tests.stack.test_refunds_e2e import Refunds, request, rid, seed_stock, send_requests

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def refund_console(pipeline_factory, browser_paths):  # noqa: F811
    """Three refunds waiting for an operator (custom items: the seven-day rule does not apply)."""
    p = pipeline_factory()
    p.start_refund_service("--latency-ms", "2")
    seed_stock(p)
    p.start_worker()
    p.start_sink(ORDERSTREAM_OPERATOR_TOKENS=f"{OPERATOR}:{TOKEN}", ORDERSTREAM_ACCESS_TOKENS=VIEWER_ACCESS,
                 ORDERSTREAM_CONSOLE_REFRESH_S=str(REFRESH_S))
    p.drain()
    ids = [rid() for _ in range(3)]
    refunds = Refunds(p)
    try:
        send_requests(p, *(request(r, custom=True, amount=9_900 + i, order_total=9_900 + i) for i, r in enumerate(ids)))
        refunds.reach({r: "reviewing" for r in ids}, timeout=90)
    finally:
        refunds.close()
    return p, f"http://127.0.0.1:{p.sink_port}", ids


def refund_queue(d) -> list[str]:
    return d.execute_script("return Array.from(document.querySelectorAll('#refund-queue tr.refund')).map("
                            "r => r.getAttribute('data-refund-id'));")


def actions_for(watch: Watch, p, refund_id: str) -> list[RefundAction]:
    return [RefundAction.decode(m.value()) for m in watch.on(p.names.REFUND_ACTIONS) if m.key() == refund_id.encode()]


def open_queue(d, base: str, ids: list[str], token: str) -> None:
    assert sign_in(d, token, f"{base}/console/execution")  # a fresh session: nothing left from another test
    wait_for(d, lambda d: set(ids) <= set(refund_queue(d)), 60, "the refunds on the page (the sink has them)")


def test_a_viewers_refund_click_is_refused_and_nothing_is_published(refund_console, driver):  # noqa: F811
    p, base, ids = refund_console
    target = ids[2]
    watch = Watch(p, p.names.REFUND_ACTIONS)
    try:
        open_queue(driver, base, ids, VIEWER_TOKEN)
        wait_for(driver, lambda d: d.find_element("id", "operator-name").get_attribute("data-name"), 15, "the name")
        assert driver.find_element("id", "operator-name").get_attribute("data-operator") == ""
        click(driver, f'#refund-queue tr[data-refund-id="{target}"] button.approve')
        wait_for(driver, lambda d: action_message(d)[1] == "403", 15, "the refusal")
        time.sleep(2 * REFRESH_S)
        assert target in refund_queue(driver)              # still waiting, still on the page after refreshes
        watch.settle(2)
        assert actions_for(watch, p, target) == []
        assert http(f"{base}/console/api/refunds/decisions", {"refund_id": target, "action": "approve"})[0] == 401
        driver.get_log("browser")   # the refusal is logged as a failed request: expected here
    finally:
        watch.close()


def test_an_operator_approves_and_rejects_refunds_from_the_page_once_each(refund_console, driver):  # noqa: F811
    from selenium.webdriver.common.by import By

    p, base, ids = refund_console
    approve, reject = ids[0], ids[1]
    watch = Watch(p, p.names.REFUND_ACTIONS, p.names.REFUND_EVENTS)
    try:
        open_queue(driver, base, ids, TOKEN)
        wait_for(driver, lambda d: d.find_element("id", "operator-name").get_attribute("data-operator") == OPERATOR,
                 15, "the operator's name")
        click(driver, f'#refund-queue tr[data-refund-id="{approve}"] button.approve')
        wait_for(driver, lambda d: approve in action_message(d)[0], 30, "the approval's answer")
        assert action_message(driver)[1] == "200", action_message(driver)
        wait_for(driver, lambda d: approve not in refund_queue(d), 60, f"{approve} to leave the queue")

        driver.find_element(By.CSS_SELECTOR, f'#refund-queue tr[data-refund-id="{reject}"] input.reason') \
            .send_keys("custom engraving, not returnable")
        click(driver, f'#refund-queue tr[data-refund-id="{reject}"] button.reject')
        wait_for(driver, lambda d: reject in action_message(d)[0], 30, "the rejection's answer")
        assert action_message(driver)[1] == "200", action_message(driver)
        wait_for(driver, lambda d: reject not in refund_queue(d), 60, f"{reject} to leave the queue")
        assert ids[2] in refund_queue(driver)

        # each click reached refunds.actions once, named by the token, and the worker applied it
        def steps(w):
            events = w.decoded(p.names.REFUND_EVENTS)
            return ([e for e in events if e["refund_id"] == approve and e["event"] == "approved"],
                    [e for e in events if e["refund_id"] == reject and e["event"] == "rejected"])
        approved, rejected = watch.until(lambda w: all(steps(w)) and steps(w), 30, "the worker's steps",
                                         p.check_alive)
        assert [(e["actor"], e["status"]) for e in approved] == [(OPERATOR, "awaiting_return")]
        assert [(e["actor"], e["reason"]) for e in rejected] == [(OPERATOR, "custom engraving, not returnable")]
        # a second click elsewhere (another tab, a retry) publishes nothing
        code, body = http(f"{base}/console/api/refunds/decisions", {"refund_id": approve, "action": "approve"}, TOKEN)
        assert code == 200 and body["status"] in ("already_sent", "already_done"), body
        watch.settle(2)
        assert [(a.action, a.operator) for a in actions_for(watch, p, approve)] == [("approve", OPERATOR)]
        assert [(a.action, a.operator, a.reason) for a in actions_for(watch, p, reject)] == [
            ("reject", OPERATOR, "custom engraving, not returnable")]
        assert severe_browser_messages(driver) == []
    finally:
        watch.close()
