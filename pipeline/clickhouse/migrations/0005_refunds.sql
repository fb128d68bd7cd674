-- Refund facts (issue 17): every step of every refund from refunds.events. The refunds in flight
-- (latest state per refund) are computed at query time in the tiers: refunds are a few per cent
-- of orders, and a state is the last of a handful of rows per refund.

CREATE TABLE IF NOT EXISTS refund_events
(
    event           LowCardinality(String),
    refund_id       String,
    order_id        String,
    platform        LowCardinality(String),
    status          LowCardinality(String),
    previous_status LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    actor           String,
    reason          String,
    rule_id         LowCardinality(String),
    kind            LowCardinality(String),
    reason_code     LowCardinality(String),
    amount_minor    Int64,
    currency        LowCardinality(String),
    warehouse       LowCardinality(String),
    units           UInt32,
    error           String,
    cause           String,
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (refund_id, at)
SETTINGS non_replicated_deduplication_window = 1000;

-- Tactical exceptions: refund instructions a platform did not take, per 15 minutes.
CREATE MATERIALIZED VIEW IF NOT EXISTS exceptions_refund_instruction_failed_mv TO exceptions_15m AS
SELECT toStartOfFifteenMinutes(at) AS bucket, 'refund_instruction_failed' AS kind, count() AS events
FROM refund_events WHERE event = 'instruction_failed' GROUP BY bucket;
