"""Stage 3: risk check. Rules are data (YAML file, then the compacted risk.rules topic).

Clean orders go to orders.accepted, held ones to risk.queue, rejected ones stop here; every
non-trivial verdict is an audit event on risk.events. Under degradation (breaker open) the
expensive rules and external verifiers are skipped, the order is marked `checked_lightly`
and queued on risk.recheck, which re-runs the full rule set once the breaker has closed.
"""
from __future__ import annotations

import base64
import json
import logging
from itertools import islice
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import metrics
from pipeline.app import accepted, app, json_table, risk_decisions, risk_events, risk_queue, risk_recheck, settings, unique
from pipeline.codecs import encode_json, order_codec
from pipeline.domain.risk import RiskContext, RuleSet, RuleSetError, evaluate, load_rule_file, verifiers_needed
from pipeline.topics import names
from pipeline.verifiers import VerifierClient

from .breaker import breaker
from .common import forget_older_than, headers_of, now_ms, with_header
from .inventory import release_order

log = logging.getLogger(__name__)
ORDER_CODEC = order_codec()
IP_WINDOW = timedelta(seconds=settings.ip_window_s)


class ActiveRules:
    """The rule set this worker applies; replaced only by a newer, valid version."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        metrics.RULESET_VERSION.set(rules.version)

    def offer(self, text: str) -> bool:
        try:
            candidate = RuleSet.parse(text)
        except RuleSetError as exc:
            metrics.RULESET_REJECTED.inc()
            log.error("rejected rule set from %s, keeping version %s: %s", names.RISK_RULES, self.rules.version, exc)
            return False
        if candidate.version <= self.rules.version and candidate.source_text != self.rules.source_text:
            log.warning("ignored rule set version %s (active is %s)", candidate.version, self.rules.version)
            return False
        self.rules = candidate
        metrics.RULESET_VERSION.set(candidate.version)
        log.info("risk rule set version %s active (%d rules)", candidate.version, len(candidate.rules))
        return True


active = ActiveRules(load_rule_file(settings.risk_rules_file))
_verifier: VerifierClient | None = None

# key = buyer IP; orders.unique is keyed by IP, so this table is co-partitioned with its stream
ip_orders = json_table("risk-ip-orders", default=int).tumbling(IP_WINDOW, expires=IP_WINDOW * 2)


def verifier() -> VerifierClient:
    global _verifier
    if _verifier is None:
        base = settings.verifier_url or f"http://127.0.0.1:{settings.verifier_port}"
        _verifier = VerifierClient(base, timeout_s=settings.verifier_timeout_s)
    return _verifier


@app.task
async def follow_rule_topic():
    """Every worker reads the whole compacted rules topic (no consumer group): same version everywhere."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(names.RISK_RULES, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.value:
                        active.offer(record.value.decode("utf-8", errors="replace"))
    finally:
        await consumer.stop()


async def full_check(order: dict, ip_count: int) -> tuple:
    """Verdict with verifiers; an unavailable verifier makes the check light instead of stalling."""
    names_needed = verifiers_needed(active.rules)
    results = await verifier().verify_all(names_needed, order) if names_needed else {}
    outcomes = {name: r.ok for name, r in results.items()}
    for name, r in results.items():
        metrics.VERIFIER_CALLS.labels(verifier=name, outcome="skipped" if r.skipped else
                                      {True: "ok", False: "failed", None: "unavailable"}[r.ok]).inc()
    unavailable = any(ok is None for ok in outcomes.values())
    # all rules run; an unavailable verifier (None) is not a hit, but the check counts as light
    verdict = evaluate(active.rules, order, RiskContext(ip_order_count=ip_count, degraded=False,
                                                        verifier_results=outcomes))
    return verdict, unavailable


def verdict_summary(order: dict, verdict) -> dict:
    """What the holds agent needs to know about why an order is held (travels as a header)."""
    return {"hits": [h.to_json() for h in verdict.hits], "approvers": list(verdict.approvers),
            "amount_minor": order["amounts"]["total_minor"], "currency": order["currency"],
            "ruleset_version": active.rules.version}


def risk_event(kind: str, order: dict, verdict) -> bytes:
    return encode_json({
        # at = the order's ingest time: identical when a crash makes this event go out twice,
        # so the sink recognises the copy; checked_at_ms is the wall clock of this check
        "event": kind, "order_id": order["order_id"], "platform": order["platform"],
        "at_ms": int(order["ingest_time"].timestamp() * 1000), "checked_at_ms": now_ms(),
        "rule_ids": [h.rule_id for h in verdict.hits], "severity": verdict.severity or "",
        "approvers": list(verdict.approvers), "operator": None,
        "reason": "; ".join(h.reason for h in verdict.hits), "amount_minor": order["amounts"]["total_minor"],
        "currency": order["currency"], "ruleset_version": active.rules.version,
        "checked_lightly": order.get("checked_lightly", False),
    })


@app.agent(unique)
async def risk_agent(stream):
    async for event in stream.events():
        msg = event.message
        headers = headers_of(msg)
        order = ORDER_CODEC.decode(msg.value)
        key = order["order_id"].encode()
        metrics.STAGE_IN.labels(stage="risk", platform=order["platform"]).inc()
        if headers.get("change") == b"update":
            # a status change of a known order: fulfilment needs it (cancellations release stock)
            await accepted.send(key=key, value=msg.value, headers=list(headers.items()))
            metrics.STAGE_OUT.labels(stage="risk", platform=order["platform"], outcome="update").inc()
            continue
        ip = order["buyer"].get("ip")
        ip_count = 0
        if ip:
            ip_orders[ip] += 1
            ip_count = ip_orders[ip].current()
        if breaker.degraded:
            verdict = evaluate(active.rules, order, RiskContext(ip_order_count=ip_count, degraded=True,
                                                                verifier_results={}))
            light = True
        else:
            verdict, light = await full_check(order, ip_count)
        order["risk_flags"] = [h.rule_id for h in verdict.hits]
        order["checked_lightly"] = light
        for hit in verdict.hits:
            metrics.RISK_FLAGS.labels(rule=hit.rule_id).inc()
        metrics.RISK_VERDICTS.labels(outcome=verdict.action).inc()
        value = ORDER_CODEC.encode(order)
        out_headers = with_header(headers, risk=verdict.action, verdict=json.dumps(verdict_summary(order, verdict)))
        if verdict.action == "accept":
            await accepted.send(key=key, value=value, headers=out_headers)
            if verdict.hits:
                await risk_events.send(key=key, value=risk_event("flagged", order, verdict))
        elif verdict.action == "hold":
            await risk_queue.send(key=key, value=value, headers=out_headers)
            await risk_events.send(key=key, value=risk_event("held", order, verdict))
        else:
            await risk_events.send(key=key, value=risk_event("rejected", order, verdict))
        if light and verdict.action != "reject":
            metrics.LIGHT_CHECKS.inc()
            await risk_recheck.send(key=key, value=value, headers=out_headers)
        metrics.STAGE_OUT.labels(stage="risk", platform=order["platform"], outcome=verdict.action).inc()


# lightly-checked orders waiting for the breaker to close (key = order id, co-partitioned with
# risk.recheck). An agent must never sit on a message: Faust only commits once every in-flight
# event is acknowledged, so waiting inside the stream would stall the whole worker's commits.
recheck_pending = json_table("risk-recheck-pending")


@app.agent(risk_recheck)
async def recheck_agent(stream):
    """Full rule set for orders let through lightly, once the breaker has closed again."""
    async for event in stream.events():
        msg = event.message
        order_id = msg.key.decode()
        headers = headers_of(msg)
        if headers.get("retry") == b"1":
            parked = recheck_pending.get(order_id)
            if parked is None:
                continue  # already re-checked (a duplicate retry)
            value, headers = base64.b64decode(parked["order_b64"]), {k: v.encode() for k, v in parked["headers"].items()}
        else:
            value = msg.value
        # park while degraded, or while a verifier is still unavailable (the check would be light again)
        if breaker.degraded or not await recheck(ORDER_CODEC.decode(value), headers):
            recheck_pending[order_id] = {"order_b64": base64.b64encode(value).decode(),
                                         "headers": {k: v.decode(errors="replace") for k, v in headers.items()}}
            continue
        if recheck_pending.get(order_id) is not None:
            recheck_pending.pop(order_id, None)


@app.timer(interval=2.0)
async def resume_rechecks():
    """Breaker closed: send every parked order of this worker's partitions back through the agent."""
    if breaker.degraded:
        return
    if any(verifier().breaker_open(name) for name in verifiers_needed(active.rules)):
        return  # a verifier is still being skipped: the re-check would only be light again
    now = now_ms()
    forget_older_than(_retry_requested, now, 30_000)
    # at most 2000 ids, never the whole table: after a long burst it holds every light-path order
    # (the likely cause of a jump from 545 to 936 MB at the end of the 300k-message profile run)
    for order_id in list(islice(recheck_pending.keys(), 2000)):
        if now - _retry_requested.get(order_id, 0) < 30_000:
            continue  # its retry is still on the way
        _retry_requested[order_id] = now
        await risk_recheck.send(key=order_id.encode(), value=b"", headers=[("retry", b"1")])


_retry_requested: dict[str, int] = {}


async def recheck(order: dict, headers: dict[str, bytes]) -> bool:
    """The full check of a light-path order; False (nothing emitted) when it would be light again."""
    key = order["order_id"].encode()
    verdict, still_light = await full_check(order, ip_count=0)
    if still_light and verdict.action != "reject":
        return False
    await risk_events.send(key=key, value=risk_event("rechecked", order, verdict))
    if verdict.action == "hold" and headers.get("risk") == b"accept":
        order["checked_lightly"] = still_light
        await risk_queue.send(key=key, value=ORDER_CODEC.encode(order), headers=with_header(
            headers, risk="hold", verdict=json.dumps(verdict_summary(order, verdict))))
        await risk_events.send(key=key, value=risk_event("held", order, verdict))
    elif verdict.action == "reject":
        await release_order(order, reason="risk_recheck_rejected")
        await risk_events.send(key=key, value=risk_event("rejected", order, verdict))
        if headers.get("risk") == b"hold":
            # it is waiting in the risk queue: close that hold too
            await risk_decisions.send(key=key, value=encode_json({
                "order_id": order["order_id"], "action": "reject", "operator": "recheck",
                "reason": "full re-check rejected the order", "decided_at_ms": now_ms(), "source": "operator"}))
    return True


@app.on_before_shutdown.connect
async def close_verifier_client(app, **kwargs) -> None:
    if _verifier is not None:
        await _verifier.close()
