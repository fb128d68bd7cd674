-- Settlement reconciliation (issue 18, pipeline.settlement).
--
-- settlement_bills: the lines of the platforms' bills, landed by the sink from settlement.bills.
-- line_key (file sha256 prefix : line number) is a line's identity: a re-import of the same file
-- repeats the keys, ReplacingMergeTree folds them, and every reader takes one row per key
-- (LIMIT 1 BY line_key) so nothing counts twice before a merge.

CREATE TABLE IF NOT EXISTS settlement_bills
(
    line_key          String,
    file_sha256       String,
    file_name         String,
    line_no           UInt32,
    platform          LowCardinality(String),
    bill_line_id      String,
    external_order_id String,
    order_id          String,
    kind              LowCardinality(String),
    platform_type     String,
    amount_minor      Int64,
    currency          LowCardinality(String),
    settle_day        Date,
    imported_by       String,
    imported_at       DateTime64(3, 'UTC'),
    src_topic         LowCardinality(String),
    src_partition     UInt32,
    src_offset        UInt64,
    kafka_ts          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (line_key)
SETTINGS non_replicated_deduplication_window = 1000;

-- The ledger's refund source: one row per refund paid out (0008 fills it from refunds.events),
-- and the ledger below picks them up.
CREATE TABLE IF NOT EXISTS ledger_refunds
(
    refund_id    String,
    order_id     String,
    platform     LowCardinality(String),
    currency     LowCardinality(String),
    amount_minor Int64,
    refunded_at  DateTime64(3, 'UTC'),
    source       LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (order_id, refund_id);

-- The internal ledger: one entry per money fact the pipeline knows, signed integer minor units
-- (money to the merchant positive). A payment is the latest version of a paid order (what the
-- buyer paid: goods - discount - coupon + shipping, the breakdown kept beside it); a refund is
-- a negative entry from ledger_refunds. Another source is one more UNION ALL branch.
CREATE VIEW IF NOT EXISTS settlement_ledger AS
SELECT platform, order_id, 'payment' AS kind, order_id AS entry_ref, currency, total_minor AS amount_minor,
       goods_minor, discount_minor, coupon_minor, shipping_minor,
       fromUnixTimestamp64Milli(paid_ms, 'UTC') AS at, 'orders.unique' AS source
FROM
(
    SELECT order_id,
           argMax(platform, (updated_at, src_offset)) AS platform,
           argMax(currency, (updated_at, src_offset)) AS currency,
           argMax(total_minor, (updated_at, src_offset)) AS total_minor,
           argMax(goods_minor, (updated_at, src_offset)) AS goods_minor,
           argMax(discount_minor, (updated_at, src_offset)) AS discount_minor,
           argMax(coupon_minor, (updated_at, src_offset)) AS coupon_minor,
           argMax(shipping_minor, (updated_at, src_offset)) AS shipping_minor,
           argMax(ifNull(toUnixTimestamp64Milli(paid_at), 0), (updated_at, src_offset)) AS paid_ms
    FROM order_events
    GROUP BY order_id
)
WHERE paid_ms > 0
UNION ALL
SELECT platform, order_id, 'refund' AS kind, refund_id AS entry_ref, currency, -amount_minor AS amount_minor,
       toInt64(0) AS goods_minor, toInt64(0) AS discount_minor, toInt64(0) AS coupon_minor,
       toInt64(0) AS shipping_minor, refunded_at AS at, source
FROM ledger_refunds FINAL;

-- A reconciliation run of one bill day and platform. Re-running writes a new run; readers take
-- each (day, platform)'s latest run, whose differences keep the same keys as before.
CREATE TABLE IF NOT EXISTS settlement_runs
(
    run_id        String,
    day           Date,
    platform      LowCardinality(String),
    operator      String,
    rules_version UInt32,
    at            DateTime64(3, 'UTC'),
    report_json   String
)
ENGINE = MergeTree
ORDER BY (day, platform, at);

CREATE TABLE IF NOT EXISTS settlement_totals
(
    run_id          String,
    day             Date,
    platform        LowCardinality(String),
    currency        LowCardinality(String),
    settled_minor   Int64,
    ledger_minor    Int64,
    matched_minor   Int64,
    difference_minor Int64,
    bill_lines      UInt32,
    differences     UInt32
)
ENGINE = MergeTree
ORDER BY (day, platform, run_id, currency);

-- Every classified difference of a run. diff_key is stable across re-runs of the same data
-- (day | platform | class | order | kind | bill line), so a resolution stays with its difference.
CREATE TABLE IF NOT EXISTS settlement_differences
(
    run_id        String,
    diff_key      String,
    day           Date,
    platform      LowCardinality(String),
    class         LowCardinality(String),
    order_id      String,
    kind          LowCardinality(String),
    line_key      String,
    bill_line_id  String,
    currency      LowCardinality(String),
    bill_minor    Int64,
    ledger_minor  Int64,
    diff_minor    Int64,
    disposition   LowCardinality(String),
    write_off_rule String,
    at            DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (day, platform, run_id, diff_key);

-- The manual queue's decisions: who resolved which difference, why, when.
CREATE TABLE IF NOT EXISTS settlement_resolutions
(
    diff_key  String,
    operator  String,
    reason    String,
    at        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (diff_key, at);
