"""The console's refund queue (embedded chDB, the console's aiohttp app, a recording publisher): the
execution page lists the refunds waiting for review with approve / reject, and a decision needs the
operator token exactly like the risk queue's, names the token's operator, is published once as the
CLI publishes it, and is refused for a refund that is not in review."""
from __future__ import annotations

import time

import pytest

from pipeline.clickhouse.backends import ChdbBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.clickhouse.refund_views import refund_now
from pipeline.clickhouse.sink import ClickHouseSink
from pipeline.contracts import RefundEvent
from pipeline.domain.refunds import parse_action
from pipeline.kafka_io import Record
from tests.unit.test_console import ALICE, BOB, NAMES, Client, FakePublisher, get_text, post

T = int(time.time() * 1000) - 30 * 60_000   # half an hour ago: in the execution tier's live window


def ev(event: str, refund_id: str, status: str, minute: int, actor: str = "", **kw) -> RefundEvent:
    return RefundEvent(event=event, refund_id=refund_id, order_id=f"O-{refund_id}", platform="JD", status=status,
                       at_ms=T + minute * 60_000, actor=actor, kind="return_and_refund", reason_code="quality",
                       amount_minor=12_345, currency="CNY", cause=f"c:{refund_id}:{event}", **kw)


def story() -> list[RefundEvent]:
    return [
        ev("requested", "JD:R1", "requested", 0), ev("reviewing", "JD:R1", "reviewing", 0, reason="custom item"),
        ev("requested", "JD:R2", "requested", 1), ev("reviewing", "JD:R2", "reviewing", 1, reason="over 500 CNY"),
        ev("requested", "JD:R3", "requested", 2), ev("reviewing", "JD:R3", "reviewing", 2),
        ev("rejected", "JD:R3", "rejected", 3, actor="li.ops"),
        ev("requested", "JD:R4", "requested", 4), ev("approved", "JD:R4", "awaiting_return", 4, actor="refund_rules"),
    ]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = ChdbBackend(tmp_path_factory.mktemp("console-refunds") / "chdb")
    migrate(b)
    sink = ClickHouseSink(b, NAMES, max_rows=100, max_seconds=60)
    for offset, e in enumerate(story()):
        sink.add(Record(NAMES.REFUND_EVENTS, 0, offset, e.refund_id.encode(), e.encode(), {}, e.at_ms))
    sink.flush(force=True)
    yield b
    b.close()


def test_refund_now_is_the_latest_state_and_who_moved_it(backend):
    assert refund_now(backend, "JD:R1")["state"] == "reviewing"
    assert {k: refund_now(backend, "JD:R3")[k] for k in ("state", "actor")} == {"state": "rejected", "actor": "li.ops"}
    assert refund_now(backend, "JD:R4")["state"] == "awaiting_return"
    assert refund_now(backend, "JD:NOPE") is None


def test_the_execution_page_lists_the_refunds_in_review_with_their_buttons(backend):
    async def scenario(client):
        return (await get_text(client, "/console/execution/panel"))[1]
    panel = Client(backend, FakePublisher()).run(scenario)
    queue = panel[panel.index('id="refund-queue"'):]
    queue = queue[:queue.index("</table>")]
    for rid in ("JD:R1", "JD:R2"):
        assert f'<tr class="refund" data-refund-id="{rid}">' in queue
        assert f'class="approve" data-action="approve" data-refund-id="{rid}"' in queue
        assert f'class="reject" data-action="reject" data-refund-id="{rid}"' in queue
    assert "JD:R3" not in queue and "JD:R4" not in queue            # decided, or approved by the rules
    assert "custom item" in queue and "退款审核队列" in panel


def test_a_refund_decision_needs_the_token_and_is_published_once_as_the_tokens_operator(backend):
    pub = FakePublisher()
    url = "/console/api/refunds/decisions"

    async def scenario(client):
        await post(client, url, {"refund_id": "JD:R1", "action": "approve"}, status=401)
        await post(client, url, {"refund_id": "JD:R1", "action": "approve"}, token="wrong" * 5, status=401)
        assert pub.sent == []   # nothing published without a valid token
        # the request claims to be mallory; the token says bob
        first = await post(client, url, {"refund_id": "JD:R1", "action": "approve", "operator": "mallory",
                                         "reason": "photos checked"}, token=BOB)
        again = await post(client, url, {"refund_id": "JD:R1", "action": "approve"}, token=ALICE)
        other = await post(client, url, {"refund_id": "JD:R1", "action": "reject", "reason": "no"}, token=ALICE)
        return first, again, other
    first, again, other = Client(backend, pub).run(scenario)
    assert first[0] == 200 and first[1]["status"] == "sent" and first[1]["operator"] == "bob"
    assert again[0] == 200 and again[1]["status"] == "already_sent" and again[1]["operator"] == "bob"
    assert other[0] == 409 and "already sent by bob" in other[1]["message"]
    [(topic, key, value, _)] = pub.sent
    action = parse_action(value)   # exactly what `orderstream refunds approve` publishes, validated the same way
    assert (topic, key) == (NAMES.REFUND_ACTIONS, b"JD:R1")
    assert (action.refund_id, action.action, action.operator, action.reason) == ("JD:R1", "approve", "bob",
                                                                                "photos checked")
    recorded = backend.query("SELECT action, operator FROM console_actions WHERE target = 'JD:R1'")
    assert recorded == [{"action": "refund_approve", "operator": "bob"}]


def test_a_refund_not_in_review_or_a_bad_request_publishes_nothing(backend):
    pub = FakePublisher()
    url = "/console/api/refunds/decisions"

    async def scenario(client):
        out = {}
        out["no_reason"] = await post(client, url, {"refund_id": "JD:R2", "action": "reject"}, token=ALICE)
        out["cancel"] = await post(client, url, {"refund_id": "JD:R2", "action": "cancel", "reason": "x"}, token=ALICE)
        out["unknown"] = await post(client, url, {"refund_id": "JD:NOPE", "action": "approve"}, token=ALICE)
        out["rejected_approve"] = await post(client, url, {"refund_id": "JD:R3", "action": "approve"}, token=ALICE)
        out["rejected_reject"] = await post(client, url, {"refund_id": "JD:R3", "action": "reject", "reason": "dup"},
                                            token=ALICE)
        out["auto_approve"] = await post(client, url, {"refund_id": "JD:R4", "action": "approve"}, token=ALICE)
        return out
    out = Client(backend, pub).run(scenario)
    assert out["no_reason"][0] == 400 and "needs a 'reason'" in out["no_reason"][1]["error"]
    assert out["cancel"][0] == 400
    assert out["unknown"][0] == 404
    assert out["rejected_approve"][0] == 409 and "rejected (by li.ops" in out["rejected_approve"][1]["error"]
    assert out["rejected_reject"][0] == 200 and out["rejected_reject"][1]["status"] == "already_done"
    assert out["auto_approve"][0] == 200 and out["auto_approve"][1]["status"] == "already_done"
    assert pub.sent == []
