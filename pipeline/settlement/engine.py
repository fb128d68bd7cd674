"""The reconciliation engine: one bill day of one platform, matched exactly in ClickHouse.

Bill lines (one row per line_key, whatever was re-imported) and ledger entries are grouped per
(order, ledger kind) and full-joined; every group and every set-aside line gets one class:

- matched                  both sides, equal to the fen
- rounding                 both sides, |bill - ledger| <= the rules' tolerance
- amount_mismatch          both sides, a larger difference (or a kind the rules send here)
- delayed_refund           a refund on one side only (resolves on a later day)
- platform_fee_unrecorded  a fee the ledger does not have
- unrecorded_subsidy       a subsidy the ledger does not have
- order_missing_from_bill  a ledger payment of the day the bill does not have
- bill_line_without_order  a bill line whose order the pipeline never saw
- duplicate_bill_line      a second line with the platform's same flow number (the first one counts)

Balance, per currency, to the fen: settled = ledger + sum(diff); settled = matched + sum(bill side of
every difference). A run writes settlement_runs / settlement_totals / settlement_differences and
returns the JSON report; re-running the same data gives the same differences under the same keys.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date

from pipeline.clickhouse.backends import Backend
from pipeline.clickhouse.rows import ch_time

from .exceptions import SettlementError
from .rules import Rules

DIFF_COLUMNS = ["run_id", "diff_key", "day", "platform", "class", "order_id", "kind", "line_key", "bill_line_id",
                "currency", "bill_minor", "ledger_minor", "diff_minor", "disposition", "write_off_rule", "at"]
TOTAL_COLUMNS = ["run_id", "day", "platform", "currency", "settled_minor", "ledger_minor", "matched_minor",
                 "difference_minor", "bill_lines", "differences"]
RUN_COLUMNS = ["run_id", "day", "platform", "operator", "rules_version", "at", "report_json"]


def _arr(values) -> str:
    """A SQL array of validated plain names (chDB does not bind Array parameters)."""
    values = list(values)
    if not all(isinstance(v, str) and v.isidentifier() for v in values):
        raise SettlementError(f"not plain names: {values}")
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def match_sql(rules: Rules) -> str:
    bill_kinds = sorted(rules.ledger_kind)
    ledger_only_kinds = sorted(rules.ledger_only)
    lkind = f"transform(kind, {_arr(bill_kinds)}, {_arr([rules.ledger_kind[k] for k in bill_kinds])}, kind)"
    bonly = f"transform(kind, {_arr(bill_kinds)}, {_arr([rules.bill_only[k] for k in bill_kinds])}, 'amount_mismatch')"
    lonly = (f"transform(l.lkind, {_arr(ledger_only_kinds)}, "
             f"{_arr([rules.ledger_only[k] for k in ledger_only_kinds])}, 'amount_mismatch')")
    return f"""
    WITH
      bill AS (
        SELECT line_key, bill_line_id, order_id, kind, amount_minor, currency, file_sha256, line_no
        FROM settlement_bills
        WHERE settle_day = toDate({{day:String}}) AND platform = {{platform:String}}
        ORDER BY line_key, imported_at
        LIMIT 1 BY line_key),
      ranked AS (
        SELECT *, row_number() OVER (PARTITION BY bill_line_id ORDER BY file_sha256, line_no) AS rn FROM bill),
      known AS (SELECT DISTINCT order_id FROM order_events WHERE platform = {{platform:String}}),
      firsts AS (SELECT * FROM ranked WHERE rn = 1),
      single AS (
        SELECT 'duplicate_bill_line' AS class, order_id, kind, line_key, bill_line_id, currency, amount_minor
        FROM ranked WHERE rn > 1
        UNION ALL
        SELECT 'bill_line_without_order', order_id, kind, line_key, bill_line_id, currency, amount_minor
        FROM firsts WHERE order_id = '' OR order_id NOT IN (SELECT order_id FROM known)),
      bill_groups AS (
        SELECT order_id, {lkind} AS lkind, 1 AS has, any({bonly}) AS bill_only_class, any(currency) AS currency,
               sum(amount_minor) AS amount,
               arrayStringConcat(arraySort(groupArray(line_key)), ',') AS line_keys,
               arrayStringConcat(arraySort(groupArray(bill_line_id)), ',') AS bill_line_ids
        FROM firsts WHERE order_id != '' AND order_id IN (SELECT order_id FROM known)
        GROUP BY order_id, lkind),
      ledger AS (
        SELECT order_id, kind AS lkind, 1 AS has, any(currency) AS currency, sum(amount_minor) AS amount
        FROM settlement_ledger
        WHERE platform = {{platform:String}}
          AND ((kind IN {_arr(ledger_only_kinds).replace('[', '(').replace(']', ')')}
                AND toDate(at, {{tz:String}}) = toDate({{day:String}}))
               OR (order_id, kind) IN (SELECT order_id, lkind FROM bill_groups))
        GROUP BY order_id, lkind)
    SELECT class, order_id, lkind AS kind, line_key, bill_line_id, currency,
           bill_minor, ledger_minor, bill_minor - ledger_minor AS diff_minor
    FROM (
      SELECT if(b.has = 1, b.order_id, l.order_id) AS order_id, if(b.has = 1, b.lkind, l.lkind) AS lkind,
             if(b.has = 1, b.currency, l.currency) AS currency,
             b.line_keys AS line_key, b.bill_line_ids AS bill_line_id,
             if(b.has = 1, b.amount, 0) AS bill_minor, if(l.has = 1, l.amount, 0) AS ledger_minor,
             multiIf(b.has = 1 AND l.has = 1,
                       multiIf(b.amount = l.amount, 'matched',
                               abs(b.amount - l.amount) <= {{tol:Int64}}, 'rounding', 'amount_mismatch'),
                     b.has = 1, b.bill_only_class,
                     {lonly}) AS class
      FROM bill_groups AS b FULL OUTER JOIN ledger AS l ON b.order_id = l.order_id AND b.lkind = l.lkind
      UNION ALL
      SELECT order_id, kind AS lkind, currency, line_key, bill_line_id, amount_minor AS bill_minor,
             toInt64(0) AS ledger_minor, class
      FROM single)
    ORDER BY class, order_id, kind, line_key
    SETTINGS join_use_nulls = 0
    """


@dataclass(frozen=True)
class Difference:
    diff_key: str
    cls: str
    order_id: str
    kind: str
    line_key: str
    bill_line_id: str
    currency: str
    bill_minor: int
    ledger_minor: int
    diff_minor: int
    disposition: str
    write_off_rule: str

    def as_dict(self) -> dict:
        return {"diff_key": self.diff_key, "class": self.cls, "order_id": self.order_id, "kind": self.kind,
                "line_key": self.line_key, "bill_line_id": self.bill_line_id, "currency": self.currency,
                "bill_minor": self.bill_minor, "ledger_minor": self.ledger_minor, "diff_minor": self.diff_minor,
                "disposition": self.disposition, "write_off_rule": self.write_off_rule}


def diff_key(day: str, platform: str, cls: str, order_id: str, kind: str, line_key: str) -> str:
    # a duplicate or an orphan is its own line; a matched group is its (order, kind)
    tail = line_key if cls in ("duplicate_bill_line", "bill_line_without_order") else ""
    return "|".join((day, platform, cls, order_id, kind, tail))


def reconcile_platform_day(backend: Backend, rules: Rules, day: str, platform: str, operator: str,
                           now_ms: int | None = None) -> dict:
    """Match one bill day of one platform, record the run, return its report."""
    if not operator or not operator.strip():
        raise SettlementError("a reconciliation run names who ran it (operator)")
    day = date.fromisoformat(day).isoformat()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    rows = backend.query(match_sql(rules), {"day": day, "platform": platform, "tz": rules.timezone,
                                            "tol": rules.rounding_tolerance_minor})
    totals: dict[str, dict] = {}
    diffs: list[Difference] = []
    for r in rows:
        cur = r["currency"]
        t = totals.setdefault(cur, {"currency": cur, "settled_minor": 0, "ledger_minor": 0, "matched_minor": 0,
                                    "difference_minor": 0, "bill_lines": 0, "differences": 0})
        bill, ledger, diff = int(r["bill_minor"]), int(r["ledger_minor"]), int(r["diff_minor"])
        t["settled_minor"] += bill
        t["ledger_minor"] += ledger
        t["bill_lines"] += len([k for k in r["line_key"].split(",") if k])
        if r["class"] == "matched":
            t["matched_minor"] += bill
            continue
        disposition, rule = rules.disposition(r["class"], diff)
        t["difference_minor"] += diff
        t["differences"] += 1
        diffs.append(Difference(diff_key(day, platform, r["class"], r["order_id"], r["kind"], r["line_key"]),
                                r["class"], r["order_id"], r["kind"], r["line_key"], r["bill_line_id"], cur,
                                bill, ledger, diff, disposition, rule))
    by_class: dict[tuple[str, str], dict] = {}
    for d in diffs:
        c = by_class.setdefault((d.cls, d.currency), {"class": d.cls, "currency": d.currency, "count": 0,
                                                       "diff_minor": 0, "written_off": 0, "manual": 0})
        c["count"] += 1
        c["diff_minor"] += d.diff_minor
        c[d.disposition] += 1
    run_id = f"{day}:{platform}:{now_ms}"
    report = {
        "run_id": run_id, "day": day, "platform": platform, "operator": operator.strip(),
        "rules_version": rules.version, "tolerance_minor": rules.rounding_tolerance_minor,
        "totals": [totals[c] for c in sorted(totals)],
        "balanced": all(t["settled_minor"] == t["ledger_minor"] + t["difference_minor"] for t in totals.values()),
        "by_class": [by_class[k] for k in sorted(by_class)],
        "differences": [d.as_dict() for d in diffs],
    }
    at = ch_time(now_ms)
    backend.insert("settlement_differences",
                   [{"run_id": run_id, "day": day, "platform": platform, "at": at, "class": d.cls,
                     **{k: v for k, v in d.as_dict().items() if k != "class"}} for d in diffs],
                   DIFF_COLUMNS, dedup_token=None) if diffs else None
    backend.insert("settlement_totals", [{"run_id": run_id, "day": day, "platform": platform, **t}
                                         for t in report["totals"]], TOTAL_COLUMNS, dedup_token=None) \
        if report["totals"] else None
    backend.insert("settlement_runs", [{"run_id": run_id, "day": day, "platform": platform,
                                        "operator": operator.strip(), "rules_version": rules.version, "at": at,
                                        "report_json": json.dumps(report, ensure_ascii=False)}],
                   RUN_COLUMNS, dedup_token=None)
    return report


def bill_platforms(backend: Backend, day: str) -> list[str]:
    rows = backend.query("SELECT DISTINCT platform FROM settlement_bills WHERE settle_day = toDate({day:String}) "
                         "ORDER BY platform", {"day": date.fromisoformat(day).isoformat()})
    return [r["platform"] for r in rows]


def reconcile_day(backend: Backend, rules: Rules, day: str, operator: str, platform: str | None = None,
                  now_ms: int | None = None) -> dict:
    """Every platform with a bill on `day` (or the one asked for): one run each, one report."""
    platforms = [platform.upper()] if platform else bill_platforms(backend, day)
    runs = [reconcile_platform_day(backend, rules, day, p, operator, now_ms) for p in platforms]
    return {"day": date.fromisoformat(day).isoformat(), "operator": operator, "runs": runs,
            "balanced": all(r["balanced"] for r in runs)}


LATEST_RUNS = "SELECT day, platform, argMax(run_id, at) AS run_id FROM settlement_runs GROUP BY day, platform"
