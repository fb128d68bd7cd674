"""Logistics tracking (issue 19): courier events in, the buyer's view of each parcel out.

A low-volume path beside the order flow, the holds agent its model. One agent reads, keyed by
waybill number (so co-partitioned): logistics.waybills (registrations), logistics.raw.<courier>
(each courier's and aggregator's own JSON, pushed or re-pulled) and logistics.checks (the
freshness timer's findings). It keeps one `Waybill` record per parcel in the changelogged table
logistics-waybills and writes, through pipeline.domain.logistics:
  logistics.tracking (TrackingUpdate, when what the buyer sees changes), logistics.review (sources
  disagree), logistics.dlq (what cannot be translated, original bytes), notifications.out (signed, once).
The timer re-pulls waybills with no update for `tracking_stale_after_s` from the courier's API (or
the backup aggregator after 3 failed pulls), re-publishes what the API returned on the source's
raw topic and the pull's outcome on logistics.checks, and notices badges that age. Deadlines
are absolute and live in the table, so they survive restarts and rebalances.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from pipeline import metrics
from pipeline.app import app, changelogged_table, raw_topic, settings
from pipeline.contracts import DEAD_LETTER, CodecError, Notification, Waybill, WaybillCheck, WaybillRegistered
from pipeline.couriers import CourierClient
from pipeline.domain import logistics as lg
from pipeline.outputs import Outputs, outputs
from pipeline.topics import names

from .common import finish_before_ack, forget_older_than, now_ms, stage

log = logging.getLogger(__name__)

logistics_in = raw_topic(names.WAYBILLS, names.TRACKING_CHECKS, *names.COURIER_RAW_TOPICS)
waybills = changelogged_table("logistics-waybills", values="raw")  # Waybill records (Avro)


def waybill_of(number: str) -> Waybill | None:
    value = waybills.get(number)
    return None if value is None else Waybill.decode(value)


def keep(w: Waybill) -> None:
    waybills[w.waybill] = w.encode()


def thresholds() -> tuple[float, float]:
    return settings.tracking_yellow_after_s, settings.tracking_red_after_s


@app.agent(logistics_in)
async def logistics_agent(stream):
    out = outputs(settings)
    async for event in stream.events():
        await finish_before_ack(handle(event.message, out))


async def handle(msg, out: Outputs) -> None:
    with stage("logistics", 1) as counts:
        if msg.topic == names.WAYBILLS:
            source, result = registered(msg, out)
        elif msg.topic == names.TRACKING_CHECKS:
            source, result = checked(msg, out)
        else:
            source, result = scanned(msg, out)
        counts.came_in(source)
        counts.went_out(source, result)
    await out.flush()


def registered(msg, out: Outputs) -> tuple[str, str]:
    try:
        reg = WaybillRegistered.decode(msg.value)
    except CodecError as exc:
        log.error("ignored unreadable waybill registration at %s:%s: %s", msg.partition, msg.offset, exc)
        return "", "malformed"
    existing = waybill_of(reg.waybill)
    if existing is not None and not lg.is_provisional(existing):
        return reg.carrier, "redelivered"
    outcome = lg.register_over(reg, existing, now_ms(), settings.tracking_stale_after_s, settings.tracking_key,
                               thresholds())
    keep(outcome.waybill)
    emit(outcome, out)
    return reg.carrier, "registered"


def scanned(msg, out: Outputs) -> tuple[str, str]:
    source = names.courier_of(msg.topic)
    now = now_ms()
    try:
        scan = lg.translate(source, bytes(msg.value))
    except lg.TrackingError as exc:
        letter = lg.dead_letter(source, msg.topic, msg.partition, msg.offset, msg.key, bytes(msg.value), exc, now)
        out.send(names.LOGISTICS_DLQ, msg.key, DEAD_LETTER.encode(letter))
        metrics.LOGISTICS_SCANS.labels(source=source, result="dead_letter").inc()
        log.warning("dead-lettered %s event at %s:%s: %s", source, msg.partition, msg.offset, exc)
        return source, "dead_letter"
    outcome = lg.apply_scan(waybill_of(scan.waybill), scan, now, settings.tracking_stale_after_s,
                            thresholds=thresholds())
    metrics.LOGISTICS_SCANS.labels(source=source, result=outcome.result).inc()
    if outcome.waybill is not None:
        keep(outcome.waybill)
    emit(outcome, out)
    return source, outcome.result


def checked(msg, out: Outputs) -> tuple[str, str]:
    try:
        check = WaybillCheck.decode(msg.value)
    except CodecError as exc:
        log.error("ignored unreadable waybill check at %s:%s: %s", msg.partition, msg.offset, exc)
        return "", "malformed"
    w = waybill_of(check.waybill)
    if w is None:
        return check.source, "unregistered"
    if check.kind == "badge":
        outcome = lg.rebadge(w, check.at_ms, thresholds())
        keep(outcome.waybill)
        if outcome.update is not None:
            publish(outcome.update, out)
        return "", outcome.result
    pulled = lg.after_pull(w, check.source, check.ok, check.at_ms, settings.tracking_stale_after_s,
                           settings.tracking_retry_after_s, thresholds())
    keep(pulled.waybill)
    metrics.LOGISTICS_PULLS.labels(source=check.source, outcome=pulled.event).inc()
    if pulled.event == "failover":
        metrics.LOGISTICS_FAILOVERS.labels(carrier=w.carrier).inc()
        log.warning("waybill %s: %d failed pulls from %s, switching to %s", w.waybill, pulled.waybill.failed_pulls,
                    w.carrier, lg.pull_source(pulled.waybill))
    if pulled.update is not None:
        publish(pulled.update, out)
    return check.source, f"pull_{pulled.event}"


def emit(outcome: lg.Outcome, out: Outputs) -> None:
    w = outcome.waybill
    if outcome.update is not None:
        publish(outcome.update, out)
    if outcome.review is not None:
        out.send(names.TRACKING_REVIEW, w.waybill.encode(), outcome.review.encode())
    if outcome.notify:
        note = Notification(w.order_id, "parcel_signed", w.waybill, w.carrier, w.track_code, now_ms())
        out.send(names.NOTIFICATIONS, w.order_id.encode(), note.encode())


def publish(update, out: Outputs) -> None:
    out.send(names.TRACKING, update.waybill.encode(), update.encode())


# -- the freshness timer ------------------------------------------------------------------------

# waybill -> (its next_pull_ms when this worker pulled it, when): not pulled again until the agent
# has applied that pull (next_pull_ms moved) or 30 s passed (the check was lost)
_pulled: dict[str, tuple[int, int]] = {}
_badged: dict[str, int] = {}
_client: CourierClient | None = None


def client() -> CourierClient:
    global _client
    if _client is None:
        _client = CourierClient(settings.courier_api, settings.courier_api_key, settings.courier_api_timeout_s,
                                settings.courier_api_retries)
    return _client


def pull_pending(w: Waybill, now: int) -> bool:
    seen = _pulled.get(w.waybill)
    return seen is not None and seen[0] == w.next_pull_ms and now - seen[1] < 30_000


@app.timer(interval=1.0)
async def keep_waybills_fresh():
    """Re-pull stale waybills (this worker's partitions), age their badges, count them by badge."""
    out = outputs(settings)
    now = now_ms()
    forget_older_than(_badged, now, 10_000)
    for number in [k for k, (_, at) in _pulled.items() if now - at > 60_000]:
        del _pulled[number]
    due: list[Waybill] = []
    by_badge: Counter = Counter({b: 0 for b in lg.BADGES})
    for _, value in list(waybills.items()):
        w = Waybill.decode(value)
        if lg.is_provisional(w):
            continue  # events ahead of their registration: nobody to show them to yet
        current = lg.badge(w, now, thresholds())
        by_badge[current] += 1
        if current != w.badge and w.waybill not in _badged:
            _badged[w.waybill] = now
            out.send(names.TRACKING_CHECKS, w.waybill.encode(), WaybillCheck(w.waybill, "badge", now).encode())
        if lg.due_for_pull(w, now) and not pull_pending(w, now):
            due.append(w)
    for badge_name, n in by_badge.items():
        metrics.WAYBILLS_BY_BADGE.labels(badge=badge_name).set(n)
    if due:
        await asyncio.gather(*(pull(w, now, out) for w in due[:200]))
    await out.flush()


async def pull(w: Waybill, now: int, out: Outputs) -> None:
    _pulled[w.waybill] = (w.next_pull_ms, now)
    source = lg.pull_source(w)
    sources = [w.carrier, source] if w.on_backup and source != w.carrier else [source]
    for name in sources:  # on backup the carrier is probed first: its recovery switches back
        result = await client().pull(name, w.waybill)
        for event in result.events:  # through the translator like any pushed event (dedupe drops repeats)
            out.send(names.courier_raw(name), w.waybill.encode(), event, [("pulled", b"1")])
        check = WaybillCheck(w.waybill, "pull", now_ms(), source=name, ok=result.ok, reason=result.reason)
        out.send(names.TRACKING_CHECKS, w.waybill.encode(), check.encode())
        if result.ok:
            break
