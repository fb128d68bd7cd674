"""Every Prometheus metric the pipeline exports, in one place so names and labels stay consistent.

Naming: `orderstream_<thing>_<unit>`; labels are drawn from a small fixed set (platform, stage,
outcome, reason, rule, topic, partition, state) so dashboards can aggregate across stages.
Each worker process serves its own registry on its own port (/metrics), so several workers on
one host never share counters.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- per stage --------------------------------------------------------------------------------
STAGE_IN = Counter("orderstream_stage_in_total", "Messages a stage consumed.", ["stage", "platform"])
STAGE_OUT = Counter("orderstream_stage_out_total", "Messages a stage emitted, by outcome.",
                    ["stage", "platform", "outcome"])
STAGE_LATENCY = Histogram("orderstream_stage_latency_seconds", "Time a stage spent on one message.",
                          ["stage"], buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("orderstream_batch_messages", "Raw messages per hot-path batch.",
                       buckets=(1, 5, 10, 25, 50, 100, 200, 300, 400, 500))
END_TO_END_LATENCY = Histogram("orderstream_end_to_end_latency_seconds",
                               "From the raw message's broker timestamp to the reservation decision.",
                               ["platform"], buckets=_LATENCY_BUCKETS)

# -- normalize --------------------------------------------------------------------------------
DEAD_LETTERS = Counter("orderstream_dead_letters_total", "Raw messages sent to the dead-letter topic.",
                       ["platform", "reason"])
GHOST_FALLBACKS = Counter("orderstream_ghost_order_fallbacks_total",
                          "Orders whose platform id was unusable and fell back to another reference.",
                          ["platform"])

# -- dedupe -----------------------------------------------------------------------------------
DEDUPE = Counter("orderstream_dedupe_total", "Dedupe decisions (new, update, duplicate, stale).",
                 ["platform", "outcome"])
SUSPECT_TRANSITIONS = Counter("orderstream_suspect_transitions_total",
                              "Status updates not trusted (kept and flagged, not applied), by the rule that fired.",
                              ["platform", "rule"])
DEDUPE_EXPIRED = Counter("orderstream_dedupe_windows_expired_total",
                         "Dedupe table entries deleted from this worker's store once their window expired.")

# -- risk -------------------------------------------------------------------------------------
RISK_FLAGS = Counter("orderstream_risk_flags_total", "Rule hits.", ["rule"])
RISK_VERDICTS = Counter("orderstream_risk_verdicts_total", "Risk outcomes (accept, hold, reject).", ["outcome"])
RISK_DECISIONS = Counter("orderstream_risk_decisions_total",
                         "Hold resolutions (approved, rejected, auto_released) and decisions that resolved "
                         "nothing (ignored, malformed).", ["outcome"])
# every outcome agents/holds.py counts (pipeline.domain.holds.apply_decision's, and malformed)
RISK_DECISION_OUTCOMES = ("approved", "rejected", "auto_released", "ignored", "malformed")
LOGISTICS_SCANS = Counter("orderstream_logistics_scans_total",
                          "Courier and aggregator events by result (new, duplicate, stale, conflict, agreed, "
                          "unregistered, dead_letter).", ["source", "result"])
LOGISTICS_PULLS = Counter("orderstream_logistics_pulls_total", "Re-pulls of stale waybills (ok, failed, failover, "
                          "recovered).", ["source", "outcome"])
LOGISTICS_FAILOVERS = Counter("orderstream_logistics_failovers_total",
                              "Waybills switched to the backup aggregator after 3 failed pulls.", ["carrier"])
WAYBILLS_BY_BADGE = Gauge("orderstream_waybills_by_badge", "Waybills this worker tracks, by health badge.", ["badge"])
RISK_HELD = Gauge("orderstream_risk_held_orders", "Orders waiting for a decision on this worker.")
RULESET_VERSION = Gauge("orderstream_risk_ruleset_version", "Version of the active rule set.")
RULESET_REJECTED = Counter("orderstream_risk_ruleset_rejected_total", "Rule sets that failed to parse.")
VERIFIER_CALLS = Counter("orderstream_verifier_calls_total", "External verifier calls.", ["verifier", "outcome"])

# -- inventory --------------------------------------------------------------------------------
RESERVATIONS = Counter("orderstream_reservations_total",
                       "Reservation outcomes (reserved, out_of_stock, backorder, duplicate, cancelled, released, "
                       "expired, rereserved).", ["outcome"])
SHIPMENTS = Counter("orderstream_shipments_total",
                    "Shipped-state updates: stock deducted (shipped), already deducted (duplicate) or skipped "
                    "(no reservation, or the warehouse reports less than the order takes).", ["outcome"])
WAYBILL_REGISTRATIONS = Counter("orderstream_waybill_registrations_total",
                                "Shipped-state updates by what they registered on logistics.waybills: registered, "
                                "no_waybill (the platform sent none), unknown_carrier (a courier the code table "
                                "does not know).", ["platform", "outcome"])
LATE_PAYMENTS = Counter("orderstream_late_payments_total",
                        "Orders paid after their unpaid reservation expired: reserved again or out of stock.",
                        ["outcome"])
CHANNEL_CONTROL = Counter("orderstream_channel_control_total", "Channel pause/resume events.", ["action"])
REDIS_RETRIES = Counter("orderstream_redis_retries_total", "Redis calls retried after a connection error.")

# -- refunds --------------------------------------------------------------------------------
REFUND_STEPS = Counter("orderstream_refund_steps_total",
                       "Refund requests and actions by outcome (auto_approved, reviewing, approved, rejected, "
                       "cancelled, returned_to_stock, retried, refunded, instruction_failed, ignored, invalid, "
                       "republished).",
                       ["outcome"])
REFUND_INSTRUCTIONS = Counter("orderstream_refund_instructions_total",
                              "Refund instructions sent to a platform's API, by outcome (accepted, duplicate, "
                              "auth_failed, rejected, unavailable).", ["platform", "outcome"])
REFUND_INSTRUCTIONS_PARKED = Gauge("orderstream_refund_instructions_parked",
                                   "Refunds on this worker whose instruction failed and waits for "
                                   "`orderstream refunds redrive`.", ["platform"])
REFUNDS_OPEN = Gauge("orderstream_refunds_open", "Refunds in flight on this worker, by state.", ["state"])
REFUND_RULES_VERSION = Gauge("orderstream_refund_rules_version", "Version of the active refund rules.")
REFUND_RULES_REJECTED = Counter("orderstream_refund_rules_rejected_total", "Refund rule sets that failed to parse.")

# -- breaker ----------------------------------------------------------------------------------
BREAKER_STATE = Gauge("orderstream_breaker_state", "Degradation breaker: 0 closed, 1 half-open, 2 open.")
BREAKER_TRANSITIONS = Counter("orderstream_breaker_transitions_total", "Breaker transitions.",
                              ["from_state", "to_state"])
INTAKE_RATE = Gauge("orderstream_intake_rate_per_minute", "Raw orders per minute over the sliding window.")
LIGHT_CHECKS = Counter("orderstream_checked_lightly_total", "Orders let through on the degraded path.")

# -- consumers --------------------------------------------------------------------------------
COMMIT_STALLS_HEALED = Counter("orderstream_commit_stalls_healed_total",
                               "Offset commits that had stopped advancing, by remedy (adopted, reread).",
                               ["topic", "remedy"])
CLEARED_REREADS = Counter("orderstream_cleared_rereads_total",
                          "Partitions read again from a message that Faust's flow control cleared unread "
                          "(after a rebalance or a restart's recovery); nothing is skipped, nothing re-done.",
                          ["topic"])
TRANSACTION_SECONDS = Histogram("orderstream_transaction_commit_seconds",
                                "Exactly-once: time to commit one transaction (flush, offsets, commit), by flow.",
                                ["flow"], buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
TRANSACTIONS_ABORTED = Counter("orderstream_transactions_aborted_total",
                               "Exactly-once: batch transactions aborted (fenced, timed out, refused); their "
                               "messages are read again.", ["flow"])
EOS_SKIPPED = Counter("orderstream_eos_out_of_order_total",
                      "Exactly-once: raw messages not processed because their partition's committed offset "
                      "was past them (done already) or short of them (read again from it).", ["flow"])
TABLE_WRITES_FENCED = Counter("orderstream_table_writes_fenced_total",
                              "Changelog records skipped when a table was rebuilt: written by a worker the "
                              "group had already moved on from (a zombie), after its successor's.", ["table"])
CONSUMER_LAG = Gauge("orderstream_consumer_lag_messages", "End offset minus committed offset.",
                     ["topic", "partition"])

# -- sink -------------------------------------------------------------------------------------
SINK_ROWS = Counter("orderstream_sink_rows_total", "Rows inserted into ClickHouse.", ["table"])
SINK_BATCH_ROWS = Histogram("orderstream_sink_batch_rows", "Rows per ClickHouse insert.",
                            buckets=(1, 10, 100, 1000, 5000, 10000, 50000))
SINK_BATCH_LATENCY = Histogram("orderstream_sink_batch_latency_seconds", "Time of one ClickHouse insert.",
                               buckets=_LATENCY_BUCKETS)
SINK_FAILURES = Counter("orderstream_sink_failures_total", "ClickHouse inserts that failed (and were retried).",
                        ["table"])

SHIPPING_SLA_ORDERS = Gauge("orderstream_shipping_sla_orders",
                            "Open orders with a shipping deadline, by platform and SLA level (green, orange "
                            "under 8 h left, red under 2 h, breached): the execution tier's countdown, "
                            "refreshed by the sink from ClickHouse.", ["platform", "level"])

# -- memory ---------------------------------------------------------------------------------
TABLE_STORE_MEMORY = Gauge("orderstream_table_store_memory_bytes",
                           "RocksDB memory of this worker's tables: the shared cache (block cache with "
                           "the memtables charged to it) and, within it, the memtables and table readers.",
                           ["kind"])

# -- health -----------------------------------------------------------------------------------
DEPENDENCY_UP = Gauge("orderstream_dependency_up", "1 when a dependency answered its last probe.", ["dependency"])


def start_worker_series() -> None:
    """Series a worker exports from its start, at 0 until something happens: a counter with labels
    has no sample before its first inc, so a dashboard panel (Hold resolutions) or an alert on it
    would read "no data" on a quiet worker. Called when the worker starts, not at import."""
    for outcome in RISK_DECISION_OUTCOMES:
        RISK_DECISIONS.labels(outcome=outcome)


def start_sink_series(platforms: tuple[str, ...], levels: tuple[str, ...]) -> None:
    """The sink's shipping-SLA gauge at 0 for every platform and level until its first refresh."""
    for platform in platforms:
        for level in levels:
            SHIPPING_SLA_ORDERS.labels(platform=platform, level=level).set(0)


def exported_metric_names() -> set[str]:
    """Every sample name this process can export (counter `_total`, histogram `_bucket`, ...)."""
    out: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - registry has no public listing
        out.update(REGISTRY._collector_to_names[collector])  # noqa: SLF001
    return {n for n in out if n.startswith("orderstream_")}
