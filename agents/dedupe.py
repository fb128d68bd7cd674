"""Stage 2: drop redeliveries and late older versions; pass new orders and real updates, and
flag the updates whose state change cannot be trusted (seed 003).

The windowed table `dedupe-seen` is co-partitioned with the raw topics: the global order id is a
function of the platform and its order id, and every raw topic is keyed by the platform's order
id, so all versions of one order arrive on one partition and its state lives beside them.

That state already holds the order's previous version, so this is where a status update is
judged (pipeline.domain.transitions): backwards, skipping the legal order or sooner than its
window after the previous step, it passes as `suspect` (announced on orders.unique with
change=suspect, never on orders.accepted, no stock effect), with a SuspectTransition on
orders.suspect naming the rule. No I/O per order beyond the table read this stage already does.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from pipeline import metrics
from pipeline.app import app, changelogged_table, settings
from pipeline.contracts import DroppedDuplicate, SuspectTransition
from pipeline.domain.dedupe import PASSED, Change, SeenVersion, judge, version_of
from pipeline.domain.transitions import RULES as SUSPECT_RULES, SuspectHit, load_transition_file
from pipeline.faust_internals import DirectWindowedTable, handling, active_dbs, window_end, without_key_index
from pipeline.outputs import Outputs
from pipeline.topics import PLATFORMS, names

from .common import InFlight, now_ms, stage

log = logging.getLogger(__name__)
# every series exists from the start, so the alerts' increase() sees 0 rather than nothing
for _platform in PLATFORMS:
    for _rule in SUSPECT_RULES:
        metrics.SUSPECT_TRANSITIONS.labels(platform=_platform, rule=_rule)
WINDOW = timedelta(seconds=settings.dedupe_window_s)
EXPIRES = WINDOW * 2

# key = global order id; RocksDB keeps the state on disk; `sweep_expired_windows` drops old windows
seen_versions = changelogged_table("dedupe-seen", default=dict, fenced=True).tumbling(WINDOW, expires=EXPIRES)
without_key_index(seen_versions.table)
# the legal moves and windows (YAML): a file that does not parse stops the worker at start, loudly
TRANSITIONS = load_transition_file(settings.transitions_file)
DETECTED_BY = "order_flow/dedupe"


def remembered(msg, order_id: str, direct: DirectWindowedTable | None) -> SeenVersion | None:
    """The newest version in the current window or the one before it (a full retention span)."""
    if direct is not None:
        values = (direct.get_windowed(order_id, msg.timestamp, msg.partition, back)
                  for back in (0.0, WINDOW.total_seconds()))
    else:
        entry = seen_versions[order_id]
        values = (entry.current(), entry.delta(WINDOW))
    for value in values:
        if value:
            return SeenVersion.from_json(value)
    return None


_direct: DirectWindowedTable | None = None


def direct_table(out: Outputs) -> DirectWindowedTable | None:
    """Direct reads and writes of the table (RocksDB store, changelog through our producer);
    None: Faust's own path (memory store)."""
    global _direct
    if _direct is None and settings.table_store == "rocksdb":
        _direct = DirectWindowedTable(seen_versions.table, out)
    return _direct


def persist_changelog_offsets(out: Outputs) -> None:
    """Once the batch's changelog records are on the broker, recovery may start after them."""
    direct = direct_table(out)
    if direct is not None:
        direct.persist_offsets()


def dedupe_batch(batch: list[InFlight], out: Outputs, changelog: Outputs | None = None) -> list[InFlight]:
    """The batch's new orders and real updates; drops are announced on orders.duplicates. The
    table's changelog records go through `changelog` (default: `out`)."""
    passed: list[InFlight] = []
    direct = direct_table(changelog or out)
    with stage("dedupe", len(batch)) as counts:
        for item in batch:
            with handling(item.event):  # table reads and writes use this message's partition
                change, hit = classify(item.event.message, item.order, direct)
            counts.count(metrics.DEDUPE, platform=item.platform, outcome=change.value)
            counts.came_in(item.platform)
            counts.went_out(item.platform, change.value)
            if change in PASSED:
                item.change = change.value
                passed.append(item)
                if change is Change.SUSPECT:
                    item.suspect = hit
                    counts.count(metrics.SUSPECT_TRANSITIONS, platform=item.platform, rule=hit.rule if hit else "")
                    out.send(names.SUSPECT, item.key, suspect_event(item.order, hit), item.headers)
            else:
                out.send(names.DUPLICATES, item.key, DroppedDuplicate(
                    order_id=item.order_id, platform=item.platform, outcome=change.value,
                    at_ms=now_ms()).encode(), item.headers)
    return passed


def classify(msg, order: dict, direct: DirectWindowedTable | None) -> tuple[Change, SuspectHit | None]:
    order_id = order["order_id"]
    source = f"{msg.partition}:{msg.offset}"
    incoming = version_of(order)
    previous = remembered(msg, order_id, direct)
    change, hit = judge(previous, incoming, source, TRANSITIONS)
    if change in PASSED and not (previous is not None and previous.emitted_by(source)):
        # a crash may land this write without the batch's outputs: the source offset stored with
        # it makes re-processing re-emit (see decide); effects downstream are idempotent
        value = incoming.remembered_as(source, change, previous, hit).to_json()
        if direct is not None:
            direct.set_windowed(order_id, value, msg.timestamp, msg.partition)
        else:
            seen_versions[order_id] = value
    return change, hit


def suspect_event(order: dict, hit: SuspectHit | None) -> bytes:
    """orders.suspect: what was not trusted and why. `hit` is None only if a re-processed suspect
    message fell out of the remembered history (never within HISTORY versions): still flagged."""
    updated = order["updated_at"]
    to_ms = int(updated.timestamp() * 1000) if hasattr(updated, "timestamp") else int(updated)
    if hit is None:
        hit = SuspectHit("", "", order["status"], to_ms, to_ms, None, "", "re-processed; the rule is not remembered")
    return SuspectTransition(
        order_id=order["order_id"], platform=order["platform"], rule=hit.rule, from_status=hit.from_status,
        to_status=hit.to_status, from_at_ms=hit.from_at_ms, to_at_ms=hit.to_at_ms, elapsed_ms=hit.elapsed_ms,
        limit_ms=hit.limit_ms, window=hit.window, reason=hit.reason, rules_version=TRANSITIONS.version,
        detected_by=DETECTED_BY, detected_at_ms=now_ms()).encode()


SWEEP_EVERY_S = min(600.0, WINDOW.total_seconds() / 2)
SWEEP_CHUNK = 2000


@app.timer(interval=SWEEP_EVERY_S)
async def sweep_expired_windows():
    """Delete windows that ended more than `expires` ago from this worker's store partitions.
    (The changelog topic drops them by its retention; the table indexes no keys in memory.)"""
    if settings.table_store != "rocksdb":
        return  # the memory store is for development: it keeps everything
    cutoff = time.time() - EXPIRES.total_seconds()
    removed = 0
    for db in active_dbs(seen_versions.table):
        doomed: list[bytes] = []
        for key in db.keys():
            if window_end(key) < cutoff:
                doomed.append(key)
            if len(doomed) >= SWEEP_CHUNK:
                removed += delete_keys(db, doomed)
                await asyncio.sleep(0)  # let the stream run between chunks
        removed += delete_keys(db, doomed)
    if removed:
        metrics.DEDUPE_EXPIRED.inc(removed)
        log.info("dedupe: %d expired window entries deleted", removed)


def delete_keys(db, keys: list[bytes]) -> int:
    for key in keys:
        del db[key]
    count = len(keys)
    keys.clear()
    return count
