"""Stage 3: risk check. Rules are data (YAML file, then the compacted risk.rules topic).

Clean orders go on to the reservation, held ones to risk.queue, rejected ones stop here; every
non-trivial verdict is an audit event on risk.events. Under degradation (breaker open) the
expensive rules and external verifiers are skipped, the order is marked `checked_lightly`
and queued on risk.recheck, which re-runs the full rule set once the breaker has closed.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline import metrics
from pipeline.app import app, settings
from pipeline.contracts import ORDER, HoldVerdict, RiskDecision, RiskEvent
from pipeline.outputs import Outputs, outputs
from pipeline.velocity import IpVelocity
from pipeline.domain.risk import RiskContext, RuleSet, RuleSetError, evaluate, load_rule_file, verifiers_needed
from pipeline.topics import names
from pipeline.verifiers import VerifierClient

from .breaker import breaker
from .common import ActiveRules, InFlight, follow_rule_texts, now_ms, stage, with_header
from .inventory import publish_channel_states, release_order, store, with_redis_retry

log = logging.getLogger(__name__)
ORDER_CODEC = ORDER


active = ActiveRules(load_rule_file(settings.risk_rules_file), RuleSet.parse, RuleSetError, names.RISK_RULES,
                     metrics.RULESET_VERSION, metrics.RULESET_REJECTED)
_verifier: VerifierClient | None = None



def verifier() -> VerifierClient:
    global _verifier
    if _verifier is None:
        base = settings.verifier_url or f"http://127.0.0.1:{settings.verifier_port}"
        _verifier = VerifierClient(base, timeout_s=settings.verifier_timeout_s)
    return _verifier


@app.task
async def follow_rule_topic():
    """Every worker reads the whole compacted rules topic: the same version everywhere."""
    await follow_rule_texts(settings.bootstrap, names.RISK_RULES, active.offer)


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


def hold_verdict(order: dict, verdict) -> HoldVerdict:
    """What the holds agent needs to know about why an order is held (travels as a header)."""
    return HoldVerdict(hits=verdict.hits, approvers=tuple(verdict.approvers),
                       amount_minor=order["amounts"]["total_minor"], currency=order["currency"],
                       ruleset_version=active.rules.version)


def risk_event(kind: str, order: dict, verdict, checked_at_ms: int | None = None) -> bytes:
    return RiskEvent(
        # at = the order's ingest time: identical when a crash makes this event go out twice,
        # so the sink recognises the copy; checked_at_ms is the wall clock of this check (its start)
        event=kind, order_id=order["order_id"], platform=order["platform"],
        at_ms=int(order["ingest_time"].timestamp() * 1000),
        checked_at_ms=now_ms() if checked_at_ms is None else checked_at_ms,
        rule_ids=tuple(h.rule_id for h in verdict.hits), severity=verdict.severity or "",
        approvers=tuple(verdict.approvers), reason="; ".join(h.reason for h in verdict.hits),
        amount_minor=order["amounts"]["total_minor"], currency=order["currency"],
        ruleset_version=active.rules.version, checked_lightly=order.get("checked_lightly", False),
    ).encode()


def velocity() -> IpVelocity:
    global _velocity
    if _velocity is None:
        _velocity = IpVelocity(store().redis, f"{names.ns}risk", settings.ip_window_s)
    return _velocity


_velocity: IpVelocity | None = None


async def judge_batch(batch: list[InFlight], out: Outputs) -> None:
    """A verdict for every new order of the batch (updates pass untouched): held orders go to
    risk.queue, light ones also to risk.recheck, every non-trivial verdict to risk.events."""
    fresh = [item for item in batch if item.change == "new"]
    with stage("risk", len(batch)) as counts:
        counts_by_ip = await ip_counts(fresh)
        degraded = breaker.degraded
        if degraded:
            results = [(evaluate(active.rules, item.order, RiskContext(ip_order_count=n, degraded=True)), True)
                       for item, n in zip(fresh, counts_by_ip)]
        else:  # verifier calls of the whole batch run concurrently
            results = await asyncio.gather(*(full_check(item.order, n) for item, n in zip(fresh, counts_by_ip)))
        for item, (verdict, light) in zip(fresh, results):
            item.verdict, item.light = verdict, light
            item.order["risk_flags"] = [h.rule_id for h in verdict.hits]
            item.order["checked_lightly"] = light
        for item in batch:
            counts.came_in(item.platform)
            item.encoded = ORDER_CODEC.encode(item.order)
            if item.verdict is None:
                counts.went_out(item.platform, "update")
                continue
            publish_verdict(item, out)
            counts.went_out(item.platform, item.verdict.action)


async def ip_counts(fresh: list[InFlight]) -> list[int]:
    """Orders from each order's buyer IP within the window (0 where the platform sent no IP)."""
    visits = [(item.order["buyer"]["ip"], item.order_id, int(item.order["ingest_time"].timestamp() * 1000))
              for item in fresh if item.order["buyer"].get("ip")]
    counted = iter(await with_redis_retry(velocity().count, visits))
    return [next(counted) if item.order["buyer"].get("ip") else 0 for item in fresh]


def publish_verdict(item: InFlight, out: Outputs) -> None:
    order, verdict = item.order, item.verdict
    for hit in verdict.hits:
        metrics.RISK_FLAGS.labels(rule=hit.rule_id).inc()
    metrics.RISK_VERDICTS.labels(outcome=verdict.action).inc()
    event = {"accept": "flagged" if verdict.hits else None, "hold": "held", "reject": "rejected"}[verdict.action]
    if verdict.action == "hold":
        out.send(names.RISK_QUEUE, item.key, item.encoded, verdict_headers(item.headers, order, verdict))
    if event:
        out.send(names.RISK_EVENTS, item.key, risk_event(event, order, verdict))
    if item.light and verdict.action != "reject":
        metrics.LIGHT_CHECKS.inc()
        out.send(names.RISK_RECHECK, item.key, item.encoded, verdict_headers(item.headers, order, verdict))


def verdict_headers(headers, order: dict, verdict) -> list[tuple[str, bytes]]:
    return with_header(headers, risk=verdict.action, **{HoldVerdict.HEADER: hold_verdict(order, verdict).encode()})


# Light-path orders wait in risk.recheck itself: a consumer group of its own reads that topic only
# while the breaker is closed and every verifier answers, and commits only what it re-checked.
# (Parking inside a Faust agent would cost a consumption and a table write per order at the very
# moment the worker is overloaded, and an agent must never sit on a message.)
RECHECK_BATCH = 200


@app.task
async def recheck_parked_orders():
    consumer = AIOKafkaConsumer(names.RISK_RECHECK, bootstrap_servers=settings.bootstrap,
                                group_id=f"{app.conf.id}-recheck", enable_auto_commit=False,
                                auto_offset_reset="earliest", session_timeout_ms=int(settings.session_timeout_s * 1000),
                                # the order flow parks orders here inside its transactions
                                isolation_level="read_committed" if settings.exactly_once else "read_uncommitted")
    await consumer.start()
    try:
        while True:
            try:
                await recheck_some(consumer)
            except (IllegalStateError, CommitFailedError) as exc:
                # partitions moved to another worker meanwhile: what was not committed is read again there
                log.info("re-check batch abandoned after a rebalance: %s", exc)
    finally:
        await consumer.stop()


async def recheck_some(consumer: AIOKafkaConsumer) -> None:
    """One poll: nothing while re-checks must wait, else up to RECHECK_BATCH parked orders."""
    waiting = recheck_must_wait()
    partitions = consumer.assignment()
    (consumer.pause if waiting else consumer.resume)(*partitions)
    batch = await consumer.getmany(timeout_ms=1000, max_records=RECHECK_BATCH)
    for tp, records in batch.items():
        done = await recheck_records(records)
        if done:
            await consumer.commit({tp: records[done - 1].offset + 1})
        if done < len(records):  # a verifier went away meanwhile: read the rest again later
            consumer.seek(tp, records[done].offset)
            await asyncio.sleep(1.0)


def recheck_must_wait() -> bool:
    """Degraded, or a verifier is being skipped: a re-check now would only be light again."""
    return breaker.degraded or any(verifier().breaker_open(name) for name in verifiers_needed(active.rules))


async def recheck_records(records) -> int:
    """Re-check records in order; how many were done (outputs flushed) before one had to wait."""
    out = outputs(settings)
    done = 0
    for record in records:
        if recheck_must_wait():  # the breaker opened (or a verifier went away) during this batch
            break
        if record.value and not await recheck(ORDER_CODEC.decode(record.value), dict(record.headers or ()), out):
            break
        done += 1
    await out.flush()
    return done


async def recheck(order: dict, headers: dict[str, bytes], out: Outputs) -> bool:
    """The full check of a light-path order; False (nothing emitted) when it would be light again."""
    key = order["order_id"].encode()
    started_ms = now_ms()  # when it was decided to check fully (the breaker was closed then)
    verdict, still_light = await full_check(order, ip_count=0)
    if still_light and verdict.action != "reject":
        return False
    out.send(names.RISK_EVENTS, key, risk_event("rechecked", order, verdict, checked_at_ms=started_ms))
    if verdict.action == "hold" and headers.get("risk") == b"accept":
        order["checked_lightly"] = still_light
        out.send(names.RISK_QUEUE, key, ORDER_CODEC.encode(order), verdict_headers(headers, order, verdict))
        out.send(names.RISK_EVENTS, key, risk_event("held", order, verdict))
    elif verdict.action == "reject":
        await publish_channel_states(await release_order(order, "risk_recheck_rejected", out, actor="recheck") or set(), out)
        out.send(names.RISK_EVENTS, key, risk_event("rejected", order, verdict))
        if headers.get("risk") == b"hold":
            # it is waiting in the risk queue: close that hold too
            out.send(names.RISK_DECISIONS, key, RiskDecision(
                order_id=order["order_id"], action="reject", operator="recheck",
                reason="full re-check rejected the order", decided_at_ms=now_ms()).encode())
    return True


@app.on_before_shutdown.connect
async def close_verifier_client(app, **kwargs) -> None:
    if _verifier is not None:
        await _verifier.close()
