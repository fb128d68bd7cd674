"""Refunds in flight for the tiers (seed 002's refund stages), from the refund_events facts.

A refund's state is its latest event's status. Events of one message share their time, and the
states only move forward (requested ... refunded, then rejected / cancelled), so ties are broken
by the state's rank in pipeline.domain.refunds.STATES; the instruction's state is its latest
refunding / instruction_failed / refunded event, ranked in that order.

- tactical: refunds in flight per state and platform, parked instructions per platform with the
  platform's last error, and what was refunded in the window (per currency).
- execution: the operators' queue (refunds waiting for review, oldest first, with why no rule
  approved them) and the parked instructions waiting for `orderstream refunds redrive`.
- one refund's state now (`refund_now`), which the console checks before an operator's decision.
"""
from __future__ import annotations

from pipeline.domain.refunds import FINAL, REVIEWING, STATES

from .backends import Backend

_NOW = "fromUnixTimestamp64Milli({now_ms:Int64}, 'UTC')"
_ISO = "'%FT%TZ'"
INSTRUCTION_EVENTS = ("refunding", "instruction_failed", "refunded")


def _array(values) -> str:
    """A SQL array literal of this module's own constants (chDB does not bind Array parameters)."""
    assert all(v.isidentifier() for v in values)
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


# one row per refund: its latest state and instruction, as of {now_ms}
_REFUNDS = f"""
    SELECT refund_id, any(order_id) AS order_id, any(platform) AS platform, any(kind) AS kind,
           any(reason_code) AS reason_code, max(amount_minor) AS amount_minor, any(currency) AS currency,
           argMax(status, (at, indexOf({_array(STATES)}, status))) AS state,
           argMaxIf(event, (at, indexOf({_array(INSTRUCTION_EVENTS)}, event)),
                    event IN {tuple(INSTRUCTION_EVENTS)}) AS instruction_event,
           argMaxIf(error, at, event = 'instruction_failed') AS last_error,
           minIf(at, event = 'requested') AS requested_at,
           maxIf(at, event = 'reviewing') AS reviewing_at,
           argMaxIf(reason, at, event = 'reviewing') AS why_review,
           max(at) AS last_at
    FROM refund_events
    WHERE event NOT IN ('ignored', 'invalid') AND at <= {_NOW}
    GROUP BY refund_id"""

_IN_FLIGHT = f"SELECT * FROM ({_REFUNDS}) WHERE state NOT IN {tuple(sorted(FINAL))}"


def tactical_refunds(backend: Backend, params: dict, start: str) -> dict:
    """Refunds in flight now, and what was refunded since `start` (a SQL expression)."""
    by_state = backend.query(f"""
        SELECT state, platform, count() AS n, sum(amount_minor) AS amount, any(currency) AS cur,
               countIf(instruction_event = 'instruction_failed') AS parked
        FROM ({_IN_FLIGHT}) GROUP BY state, platform ORDER BY state, platform""", params)
    parked = backend.query(f"""
        SELECT platform, count() AS n, argMax(last_error, last_at) AS last_error
        FROM ({_IN_FLIGHT}) WHERE instruction_event = 'instruction_failed'
        GROUP BY platform ORDER BY platform""", params)
    refunded = backend.query(f"""
        SELECT currency, count() AS n, sum(amount_minor) AS amount
        FROM refund_events WHERE event = 'refunded' AND at >= {start} AND at <= {_NOW}
        GROUP BY currency ORDER BY currency""", params)
    states = {s: 0 for s in STATES if s not in FINAL}
    for r in by_state:
        states[r["state"]] = states.get(r["state"], 0) + int(r["n"])
    return {
        "in_flight": sum(states.values()),
        "by_state": states,
        "by_state_and_platform": [{"state": r["state"], "platform": r["platform"], "refunds": int(r["n"]),
                                   "parked_instructions": int(r["parked"])} for r in by_state],
        "parked_instructions": [{"platform": r["platform"], "refunds": int(r["n"]), "last_error": r["last_error"]}
                                for r in parked],
        "refunded_in_window": [{"currency": r["currency"], "refunds": int(r["n"]), "amount_minor": int(r["amount"])}
                               for r in refunded],
    }


def refund_now(backend: Backend, refund_id: str) -> dict | None:
    """One refund's state now, who moved it there and when (None: the sink has no such refund): what
    the console checks before it sends an operator's decision."""
    rank = f"(at, indexOf({_array(STATES)}, status))"
    rows = backend.query(f"""
        SELECT count() AS n, argMax(status, {rank}) AS state, argMax(actor, {rank}) AS actor,
               formatDateTime(max(at), {_ISO}) AS last_at
        FROM refund_events WHERE refund_id = {{refund_id:String}} AND event NOT IN ('ignored', 'invalid')""",
                         {"refund_id": refund_id})
    return None if not rows or not int(rows[0]["n"]) else {
        "state": rows[0]["state"], "actor": rows[0]["actor"], "at": rows[0]["last_at"]}


def execution_refunds(backend: Backend, params: dict, limit: int = 200) -> dict:
    """The operators' queue and the parked instructions, oldest first."""
    review = backend.query(f"""
        SELECT refund_id, order_id, platform, kind, reason_code, amount_minor, currency, why_review,
               formatDateTime(reviewing_at, {_ISO}) AS since,
               dateDiff('millisecond', reviewing_at, {_NOW}) / 1000 AS age_s
        FROM ({_IN_FLIGHT}) WHERE state = '{REVIEWING}'
        ORDER BY reviewing_at, refund_id LIMIT {int(limit)}""", params)
    parked = backend.query(f"""
        SELECT refund_id, order_id, platform, amount_minor, currency, last_error,
               formatDateTime(last_at, {_ISO}) AS since
        FROM ({_IN_FLIGHT}) WHERE instruction_event = 'instruction_failed'
        ORDER BY last_at, refund_id LIMIT {int(limit)}""", params)
    return {
        "awaiting_review": [{"refund_id": r["refund_id"], "order_id": r["order_id"], "platform": r["platform"],
                             "kind": r["kind"], "reason_code": r["reason_code"], "amount_minor": int(r["amount_minor"]),
                             "currency": r["currency"], "since": r["since"], "age_s": float(r["age_s"]),
                             "why": r["why_review"]} for r in review],
        "parked_instructions": [{"refund_id": r["refund_id"], "order_id": r["order_id"], "platform": r["platform"],
                                 "amount_minor": int(r["amount_minor"]), "currency": r["currency"],
                                 "error": r["last_error"], "since": r["since"]} for r in parked],
    }
