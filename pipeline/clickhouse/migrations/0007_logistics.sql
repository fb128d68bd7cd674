-- Logistics tracking (issue 19): every change of what a buyer sees of a parcel (logistics.tracking),
-- and the waybills whose sources disagreed (logistics.review, the manual review queue). Courier
-- events the translator refused land in dead_letters (source_topic logistics.raw.<courier>).
-- The latest row per waybill (argMax by at) is its current state and badge.

CREATE TABLE IF NOT EXISTS tracking_updates
(
    order_id        String,
    waybill         String,
    carrier         LowCardinality(String),
    state           LowCardinality(String),
    agreed_state    LowCardinality(String),
    cause           LowCardinality(String),
    source          LowCardinality(String),
    code            String,
    event_at        DateTime64(3, 'UTC'),
    at              DateTime64(3, 'UTC'),
    badge           LowCardinality(String),
    last_update     DateTime64(3, 'UTC'),
    track_code      String,
    expected_at     Nullable(DateTime64(3, 'UTC')),
    on_backup       Bool,
    pulls           UInt32,
    failed_pulls    UInt32,
    failovers       UInt32,
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (waybill, at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS tracking_reviews
(
    order_id        String,
    waybill         String,
    carrier         LowCardinality(String),
    reason          String,
    sources         Array(String),
    states          Array(String),
    at              DateTime64(3, 'UTC'),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (waybill, at)
SETTINGS non_replicated_deduplication_window = 1000;
