"""The console's write actions: decide on a held order, re-drive a dead letter, decide on a refund.

Each action is checked against ClickHouse before anything is published:
- a decision needs an open hold for the order (tiers.open_holds, the execution tier's own risk
  queue); an unknown order id is 404, an order no longer held 409 with who resolved it;
- a re-drive needs a dead letter that exists and has not been re-driven, from here or by
  `orderstream dlq replay`: both claim the letter in one ledger (pipeline.redrive_ledger);
- a refund decision needs a refund waiting for review (refund_views.refund_now), one per refund.
Each action has a key: one decision per hold (`decide:<order>:<held at ms>`, approve and reject
alike), one re-drive per dead letter. The key is looked up in `console_actions` and written there
after the broker acknowledged the message, under a per-key lock, so a double click, a retried
request or two operators at once publish once; the second request is told who already did it
(200 `already_sent` while the worker has not applied it yet, 200 `already_done` once the order was
resolved the way it asks, 409 when it was resolved otherwise).
(The holds agent also ignores a second decision on a hold; this keeps it off the topic.)

A decision is published exactly as `orderstream decide` publishes it: a RiskDecision validated by
pipeline.domain.holds.parse_decision, keyed by order id, on risk.decisions. A re-drive sends the
dead letter's original key and bytes to its source raw topic, as `orderstream dlq replay` does
(pipeline.redrive.redrive_record), with the operator in a `redriven_by` header. A letter the CLI
re-drove first is answered `already_sent` naming who and when, and recorded in console_actions
(detail `via cli`) so it leaves the list.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from pipeline import kafka_io
from pipeline.clickhouse.backends import Backend
from pipeline.clickhouse.refund_views import refund_now
from pipeline.clickhouse.rows import ch_time
from pipeline.clickhouse.tiers import last_resolution, open_dead_letters, open_holds
from pipeline.contracts import RefundAction, RiskDecision
from pipeline.domain.holds import DECISION_ACTIONS, DecisionError, parse_decision
from pipeline.domain.refunds import CANCELLED, REJECTED, REVIEWING, RefundError, parse_action
from pipeline.redrive import redrive_record
from pipeline.redrive_ledger import SENT, RedriveLedger
from pipeline.topics import TopicNames

log = logging.getLogger(__name__)

ACTIONS_COLUMNS = ["key", "action", "target", "operator", "reason", "detail", "at"]
MAX_ORDER_ID = 128
RESOLVED_AS = {"approve": "approved", "reject": "rejected"}
REFUND_DECISIONS = ("approve", "reject")   # what an operator may do to a refund in review
MAX_REASON = 500
_LETTER_ID = re.compile(r"^(?P<topic>[A-Za-z0-9._-]{1,249}):(?P<partition>\d{1,9}):(?P<offset>\d{1,19})$")


class PublishError(RuntimeError):
    """The broker did not acknowledge the message: nothing is recorded, the operator may retry."""


class Publisher(Protocol):
    def publish(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None: ...
    def close(self) -> None: ...


class KafkaPublisher:
    """The sink's producer for console actions, made on first use: a sink nobody acts through
    never opens one. `publish` returns once the broker acknowledged the message (flushed); a
    message not delivered within `timeout_s` fails for good (message.timeout.ms), so an error
    answer means it was not published and a retry cannot double it."""

    def __init__(self, settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer = None
        self._lock = threading.Lock()

    def publish(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        with self._lock:  # one action at a time on the one producer: each answer waits for its own ack
            if self._producer is None:
                self._producer = kafka_io.producer(self.settings, **{"message.timeout.ms": int(self.timeout_s * 1000),
                                                                     "linger.ms": 0})
            tracker = kafka_io.DeliveryTracker()
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=tracker)
            except Exception as exc:  # BufferError, KafkaException: not queued at all
                raise PublishError(f"could not queue the message: {exc}") from exc
            left = self._producer.flush(self.timeout_s + 5)
            if tracker.failed or left or tracker.delivered != 1:
                raise PublishError("the broker did not acknowledge the message: "
                                   + (tracker.failed[0] if tracker.failed else f"{left} still queued"))

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._producer = None


@dataclass
class Answer:
    status: int
    body: dict = field(default_factory=dict)


class ActionLog:
    """console_actions: who did what. `find` by key, `record` after a publish."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def find(self, key: str) -> dict | None:
        rows = self.backend.query(
            "SELECT action, target, operator, reason, formatDateTime(at, '%FT%TZ') AS at_iso FROM console_actions "
            "WHERE key = {key:String} ORDER BY at LIMIT 1", {"key": key})
        return rows[0] if rows else None

    def record(self, key: str, action: str, target: str, operator: str, reason: str, detail: str,
               at_ms: int) -> None:
        self.backend.insert("console_actions", [{"key": key, "action": action, "target": target,
                                                 "operator": operator, "reason": reason, "detail": detail,
                                                 "at": ch_time(at_ms)}], ACTIONS_COLUMNS, None)


def _text(payload: dict, name: str, limit: int) -> str:
    value = payload.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be text")
    value = value.strip()
    if len(value) > limit:
        raise ValueError(f"'{name}' is longer than {limit} characters")
    return value


class ConsoleActions:
    def __init__(self, backend: Backend, names: TopicNames, publisher: Publisher, redrives: RedriveLedger, *,
                 outcome_wait_s: float = 6.0, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.redrives = redrives
        self.names = names
        self.publisher = publisher
        self.log = ActionLog(backend)
        self.outcome_wait_s = outcome_wait_s
        self.clock = clock
        self._locks: dict[str, list] = {}  # key -> [lock, requests holding or waiting for it]

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: str):
        """One request per key at a time (handlers share the server's one event loop); the lock
        is forgotten when no request holds or awaits it."""
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    async def _run(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    # -- settlement ---------------------------------------------------------------------------

    async def settlement_resolve(self, operator: str, payload: dict) -> Answer:
        """Resolve one difference of the settlement queue (pipeline.settlement.queue), named by the
        token's operator, never a name the request carries; one resolution per difference."""
        from pipeline.settlement.exceptions import ResolveError
        from pipeline.settlement.queue import resolve
        try:
            diff_key = _text(payload, "diff_key", 300)
            reason = _text(payload, "reason", 500)
        except ValueError as exc:
            return Answer(400, {"error": str(exc)})
        async with self._exclusive(f"settlement:{diff_key}"):
            try:
                done = await self._run(resolve, self.backend, diff_key, operator, reason)
            except ResolveError as exc:
                status = 409 if "already resolved" in str(exc) or "written off" in str(exc) else \
                    404 if "no difference" in str(exc) else 400
                return Answer(status, {"error": str(exc)})
            await self._run(self.log.record, f"settlement:{diff_key}", "settlement_resolve", diff_key, operator,
                            reason, done["class"], int(self.clock() * 1000))
        return Answer(200, {"status": "resolved", **done})

    # -- refund decisions -----------------------------------------------------------------------

    async def refund_decide(self, operator: str, payload: dict) -> Answer:
        """Approve or reject a refund waiting for review (the execution tier's refund queue), as
        `orderstream refunds approve|reject` does: a RefundAction on refunds.actions, named by the
        token's operator; one decision per refund (a refund is reviewed once)."""
        try:
            refund_id = _text(payload, "refund_id", MAX_ORDER_ID)
            action = _text(payload, "action", 16)
            reason = _text(payload, "reason", MAX_REASON)
        except ValueError as exc:
            return Answer(400, {"error": str(exc)})
        if action not in REFUND_DECISIONS:
            return Answer(400, {"error": f"action must be one of {list(REFUND_DECISIONS)}, not {action!r}"})
        try:  # the checks the CLI makes (a rejection needs a reason), so the agent never sees an invalid one
            decision = parse_action(RefundAction(refund_id, action, operator, int(self.clock() * 1000), reason=reason))
        except RefundError as exc:
            return Answer(400, {"error": str(exc)})
        key = f"refund:{refund_id}"
        async with self._exclusive(key):
            prior = await self._run(self.log.find, key)
            if prior is not None:
                sent = prior["action"].removeprefix("refund_")   # console_actions says refund_approve | refund_reject
                return Answer(200 if sent == action else 409, {
                    "status": "already_sent", "refund_id": refund_id, "action": sent,
                    "operator": prior["operator"], "at": prior["at_iso"],
                    "message": f"{sent} of {refund_id} was already sent by {prior['operator']} at "
                               f"{prior['at_iso']}; nothing was sent again"})
            now = await self._run(refund_now, self.backend, refund_id)
            if now is None:
                return Answer(404, {"error": f"unknown refund {refund_id!r}", "refund_id": refund_id})
            if now["state"] != REVIEWING:
                # what was asked has happened (e.g. decided from the CLI) or the refund went the other way
                done = now["state"] == REJECTED if action == "reject" else now["state"] not in (REJECTED, CANCELLED)
                why = f"{refund_id} is {now['state']} (by {now['actor']} at {now['at']}): it is not waiting for review"
                if done:
                    return Answer(200, {"status": "already_done", "refund_id": refund_id, **now,
                                        "message": why + "; nothing was sent"})
                return Answer(409, {"error": why, "refund_id": refund_id, **now})
            try:
                await self._run(self.publisher.publish, self.names.REFUND_ACTIONS, refund_id.encode(), decision.encode())
            except PublishError as exc:
                log.warning("console: %s of refund %s by %s not published: %s", action, refund_id, operator, exc)
                return Answer(503, {"error": f"not published, try again: {exc}"})
            await self._run(self.log.record, key, f"refund_{action}", refund_id, operator, reason, "", decision.at_ms)
        log.info("console: refund %s %s by %s published", refund_id, action, operator)
        outcome = await self._refund_outcome(refund_id)
        body = {"status": "sent", "refund_id": refund_id, "action": action, "operator": operator, "outcome": outcome}
        body["message"] = (f"{action} of {refund_id} sent by {operator}; the worker has not applied it yet"
                           if outcome is None else f"{refund_id} {outcome['state']} by {outcome['actor']}")
        return Answer(200, body)

    async def _refund_outcome(self, refund_id: str) -> dict | None:
        """The refund's state once the sink has the worker's step past review (at most outcome_wait_s)."""
        deadline = time.monotonic() + self.outcome_wait_s
        while True:
            now = await self._run(refund_now, self.backend, refund_id)
            if now is not None and now["state"] != REVIEWING:
                return now
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.25)

    # -- decisions ----------------------------------------------------------------------------

    async def decide(self, operator: str, payload: dict) -> Answer:
        try:
            order_id = _text(payload, "order_id", MAX_ORDER_ID)
            action = _text(payload, "action", 16)
            reason = _text(payload, "reason", MAX_REASON)
        except ValueError as exc:
            return Answer(400, {"error": str(exc)})
        if not order_id:
            return Answer(400, {"error": "give the held order's id (order_id)"})
        if action not in DECISION_ACTIONS:
            return Answer(400, {"error": f"action must be one of {list(DECISION_ACTIONS)}, not {action!r}"})
        now_ms = int(self.clock() * 1000)
        try:  # the checks `orderstream decide` makes, so the holds agent never sees an invalid decision
            decision = parse_decision(RiskDecision(order_id=order_id, action=action, operator=operator,
                                                   reason=reason, decided_at_ms=now_ms))
        except DecisionError as exc:
            return Answer(400, {"error": str(exc)})
        async with self._exclusive(f"decide:{order_id}"):
            return await self._decide_locked(decision, order_id, action, operator, reason)

    async def _decide_locked(self, decision: RiskDecision, order_id: str, action: str, operator: str,
                             reason: str) -> Answer:
        holds = await self._run(open_holds, self.backend, None, order_id)
        if not holds:
            return await self._not_held(order_id, action)
        hold = holds[0]
        key = f"decide:{order_id}:{hold['held_at_ms']}"
        prior = await self._run(self.log.find, key)
        if prior is not None:
            same = prior["action"] == action
            return Answer(200 if same else 409, {
                "status": "already_sent", "order_id": order_id, "action": prior["action"],
                "operator": prior["operator"], "at": prior["at_iso"],
                "message": f"{prior['action']} of {order_id} was already sent by {prior['operator']} at "
                           f"{prior['at_iso']}; nothing was sent again"})
        try:
            await self._run(self.publisher.publish, self.names.RISK_DECISIONS, order_id.encode(), decision.encode())
        except PublishError as exc:
            log.warning("console: %s of %s by %s not published: %s", action, order_id, operator, exc)
            return Answer(503, {"error": f"not published, try again: {exc}"})
        await self._run(self.log.record, key, action, order_id, operator, reason, "", decision.decided_at_ms)
        log.info("console: %s by %s published", action, operator, extra={"order_id": order_id})
        outcome = await self._outcome(order_id, hold["held_at"])
        body = {"status": "sent", "order_id": order_id, "action": action, "operator": operator,
                "outcome": outcome}
        if outcome is None:
            body["message"] = f"{action} of {order_id} sent by {operator}; the worker has not applied it yet"
        elif outcome["operator"] == operator and outcome["event"] == ("approved" if action == "approve" else "rejected"):
            body["message"] = f"{order_id} {outcome['event']} by {operator}"
        else:
            body["message"] = (f"{order_id} was {outcome['event']} by {outcome['operator']} first; "
                               f"this {action} changed nothing")
        return Answer(200, body)

    async def _not_held(self, order_id: str, action: str) -> Answer:
        resolution = await self._run(last_resolution, self.backend, order_id)
        if resolution is not None and resolution["event"] == RESOLVED_AS[action]:
            # what was asked has happened (a repeated click after the worker applied the first)
            return Answer(200, {"status": "already_done", "order_id": order_id, "resolution": resolution,
                                "message": f"{order_id} was already {resolution['event']} by {resolution['operator']} "
                                           f"at {resolution['at']}; nothing was sent again"})
        if resolution is not None:
            return Answer(409, {"error": f"{order_id} is no longer held: {resolution['event']} by "
                                         f"{resolution['operator']} at {resolution['at']}",
                                "order_id": order_id, "resolution": resolution})
        known = await self._run(self.backend.query,
                                "SELECT (SELECT count() FROM order_events WHERE order_id = {o:String}) + "
                                "(SELECT count() FROM risk_events WHERE order_id = {o:String}) AS n", {"o": order_id})
        if int(known[0]["n"]) == 0:
            return Answer(404, {"error": f"unknown order id {order_id!r}", "order_id": order_id})
        return Answer(409, {"error": f"{order_id} is not held: there is nothing to decide", "order_id": order_id})

    async def _outcome(self, order_id: str, held_at: str) -> dict | None:
        """The resolution the worker made, once the sink has it (at most outcome_wait_s)."""
        deadline = time.monotonic() + self.outcome_wait_s
        while True:
            resolution = await self._run(last_resolution, self.backend, order_id)
            if resolution is not None and resolution["at"] >= held_at:
                return resolution
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.25)

    # -- re-drive -----------------------------------------------------------------------------

    async def redrive(self, operator: str, payload: dict) -> Answer:
        try:
            letter_id = _text(payload, "letter_id", 300)
        except ValueError as exc:
            return Answer(400, {"error": str(exc)})
        m = _LETTER_ID.match(letter_id)
        if not m:
            return Answer(400, {"error": "letter_id is the dead letter's topic:partition:offset"})
        if m["topic"] != self.names.DLQ:
            return Answer(404, {"error": f"unknown dead letter {letter_id!r} (not on {self.names.DLQ})"})
        key = f"redrive:{letter_id}"
        async with self._exclusive(key):
            prior = await self._run(self.log.find, key)
            try:
                first = await self._run(self.redrives.find, letter_id)
            except Exception:  # noqa: BLE001 - Redis away: the claim below answers 503
                first = None
            if first is not None and first.state == SENT:  # the shared ledger names who, how and when
                if prior is None:  # the CLI's: into console_actions, so the letter leaves the list
                    await self._run(self.log.record, key, "redrive", letter_id, first.operator, "",
                                    f"via {first.via}", first.at_ms)
                return Answer(200, {"status": "already_sent", "letter_id": letter_id, "operator": first.operator,
                                    "via": first.via, "at": first.at_iso,
                                    "message": f"{first.describe()}; nothing was sent again"})
            if prior is not None:  # re-driven here before the ledger existed
                return Answer(200, {"status": "already_sent", "letter_id": letter_id, "operator": prior["operator"],
                                    "at": prior["at_iso"],
                                    "message": f"{letter_id} was already re-driven by {prior['operator']} at "
                                               f"{prior['at_iso']}; nothing was sent again"})
            rows = await self._run(self.backend.query, """
                SELECT source_topic, reason_code, key_b64, payload_b64 FROM dead_letters
                WHERE src_topic = {t:String} AND src_partition = {p:UInt32} AND src_offset = {o:UInt64} LIMIT 1""",
                                   {"t": m["topic"], "p": int(m["partition"]), "o": int(m["offset"])})
            if not rows:
                return Answer(404, {"error": f"unknown dead letter {letter_id!r}"})
            row = rows[0]
            letter = {"reason_code": row["reason_code"], "source_topic": row["source_topic"],
                      "key": None if row["key_b64"] is None else base64.b64decode(row["key_b64"]),
                      "payload": base64.b64decode(row["payload_b64"])}
            topic, msg_key, value, headers = redrive_record(letter, "", letter_id)
            if topic not in self.names.RAW_TOPICS:
                return Answer(409, {"error": f"{letter_id} came from {topic}, not a raw topic of this pipeline"})
            try:  # the ledger shared with `orderstream dlq replay`: whoever claims first re-drives
                claim = await self._run(self.redrives.claim, letter_id, operator, "console", int(self.clock() * 1000))
            except Exception as exc:  # noqa: BLE001 - without the ledger "once" cannot be promised: send nothing
                log.warning("console: re-drive of %s by %s refused, the re-drive ledger is unavailable: %s",
                            letter_id, operator, exc)
                return Answer(503, {"error": f"the re-drive ledger (Redis) is unavailable, nothing was sent: {exc}"})
            if not claim.won:
                first = claim.record
                body = {"letter_id": letter_id, "operator": first.operator, "via": first.via, "at": first.at_iso,
                        "message": f"{first.describe()}; nothing was sent again"}
                if first.state != SENT:  # claimed by a run not (yet) confirmed: it stays listed, refused
                    return Answer(409, {"status": "claimed", "error": body["message"], **body})
                # the CLI's re-drive enters console_actions too, so the letter leaves the console's list
                await self._run(self.log.record, key, "redrive", letter_id, first.operator, "", f"via {first.via}",
                                first.at_ms)
                return Answer(200, {"status": "already_sent", **body})
            headers = [*headers, ("redriven_by", operator.encode())]
            try:
                await self._run(self.publisher.publish, topic, msg_key, value, headers)
            except PublishError as exc:
                await self._run(self.redrives.release, claim.record)
                log.warning("console: re-drive of %s by %s not published: %s", letter_id, operator, exc)
                return Answer(503, {"error": f"not published, try again: {exc}"})
            await self._run(self.redrives.confirm, claim.record)
            await self._run(self.log.record, key, "redrive", letter_id, operator, "", topic, claim.record.at_ms)
            log.info("console: %s re-driven to %s by %s", letter_id, topic, operator)
            return Answer(200, {"status": "sent", "letter_id": letter_id, "topic": topic, "operator": operator,
                                "message": f"{letter_id} re-driven to {topic} by {operator}"})
