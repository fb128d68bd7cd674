"""The manual queue: differences above the write-off thresholds, waiting for a named person.

A difference is open while its (day, platform)'s latest run lists it as `manual` and no resolution
names its key. A resolution records who, why and when; it is refused without an operator or a
reason, for a key no latest run has, for one written off by rule, and for one already resolved.
"""
from __future__ import annotations

import time

from pipeline.clickhouse.backends import Backend
from pipeline.clickhouse.rows import ch_time

from .engine import LATEST_RUNS
from .exceptions import ResolveError

_LATEST_DIFFS = f"""
    SELECT d.diff_key AS diff_key, toString(d.day) AS day, d.platform AS platform, d.class AS class,
           d.order_id AS order_id, d.kind AS kind, d.currency AS currency, d.diff_minor AS diff_minor,
           d.disposition AS disposition, d.write_off_rule AS write_off_rule
    FROM settlement_differences AS d
    WHERE d.run_id IN (SELECT run_id FROM ({LATEST_RUNS}))"""


def open_queue(backend: Backend, day: str | None = None, platform: str | None = None) -> list[dict]:
    where, params = [], {}
    if day:
        where.append("day = {day:String}")
        params["day"] = day
    if platform:
        where.append("platform = {platform:String}")
        params["platform"] = platform.upper()
    cond = (" AND " + " AND ".join(where)) if where else ""
    return backend.query(f"""
        SELECT * FROM ({_LATEST_DIFFS})
        WHERE disposition = 'manual' AND diff_key NOT IN (SELECT diff_key FROM settlement_resolutions){cond}
        ORDER BY day, platform, abs(diff_minor) DESC, diff_key""", params)


def open_count(backend: Backend) -> int:
    rows = backend.query(f"""
        SELECT count() AS n FROM ({_LATEST_DIFFS})
        WHERE disposition = 'manual' AND diff_key NOT IN (SELECT diff_key FROM settlement_resolutions)""")
    return int(rows[0]["n"])


def resolve(backend: Backend, diff_key: str, operator: str, reason: str, now_ms: int | None = None) -> dict:
    operator, reason = (operator or "").strip(), (reason or "").strip()
    if not operator:
        raise ResolveError("a resolution names the person who made it (--operator)")
    if not reason:
        raise ResolveError("a resolution gives its reason (--reason)")
    found = backend.query(f"SELECT * FROM ({_LATEST_DIFFS}) WHERE diff_key = {{k:String}}", {"k": diff_key})
    if not found:
        raise ResolveError(f"no difference {diff_key!r} in the latest reconciliation runs")
    if found[0]["disposition"] != "manual":
        raise ResolveError(f"{diff_key} was written off by rule {found[0]['write_off_rule']}")
    done = backend.query("SELECT operator, toString(at) AS at FROM settlement_resolutions WHERE diff_key = {k:String} "
                         "ORDER BY at LIMIT 1", {"k": diff_key})
    if done:
        raise ResolveError(f"{diff_key} was already resolved by {done[0]['operator']} at {done[0]['at']}")
    at_ms = int(time.time() * 1000) if now_ms is None else now_ms
    backend.insert("settlement_resolutions", [{"diff_key": diff_key, "operator": operator, "reason": reason,
                                               "at": ch_time(at_ms)}], ["diff_key", "operator", "reason", "at"],
                   dedup_token=None)
    return {**found[0], "resolved_by": operator, "reason": reason}
