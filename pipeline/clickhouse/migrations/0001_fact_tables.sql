-- Fact tables: one per source topic. Every row keeps its Kafka coordinates (src_*), so the sink
-- resumes from max(src_offset) + 1 per partition and never depends on consumer-group commits.
-- non_replicated_deduplication_window lets a retried insert (same insert_deduplication_token) land once.

CREATE TABLE IF NOT EXISTS order_events
(
    order_id        String,
    platform        LowCardinality(String),
    status          LowCardinality(String),
    change          LowCardinality(String),
    currency        LowCardinality(String),
    total_minor     Int64,
    goods_minor     Int64,
    discount_minor  Int64,
    coupon_minor    Int64,
    shipping_minor  Int64,
    country         LowCardinality(String),
    province        String,
    created_at      DateTime64(3, 'UTC'),
    paid_at         Nullable(DateTime64(3, 'UTC')),
    ship_by         Nullable(DateTime64(3, 'UTC')),
    updated_at      DateTime64(3, 'UTC'),
    ingest_time     DateTime64(3, 'UTC'),
    buyer_id        String,
    line_count      UInt16,
    units           UInt32,
    flag_invoice    Bool,
    flag_gift       Bool,
    flag_urgent     Bool,
    flag_gift_card  Bool,
    id_fallback     Bool,
    risk_flags      Array(String),
    checked_lightly Bool,
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (platform, created_at, order_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS risk_events
(
    event           LowCardinality(String),
    order_id        String,
    platform        LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    rule_ids        Array(String),
    severity        LowCardinality(String),
    approvers       Array(String),
    operator        Nullable(String),
    reason          String,
    amount_minor    Int64,
    currency        LowCardinality(String),
    ruleset_version Int64,
    waited_ms       Nullable(Int64),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (order_id, at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS inventory_events
(
    event           LowCardinality(String),
    order_id        String,
    platform        LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    warehouse       LowCardinality(String),
    line_skus       Array(String),
    line_quantities Array(UInt32),
    line_warehouses Array(LowCardinality(String)),
    units           UInt32,
    reason          String,
    latency_ms      Nullable(Float64),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (event, at, order_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic    String,
    source_partition Int32,
    source_offset   Int64,
    platform        LowCardinality(String),
    reason_code     LowCardinality(String),
    reason          String,
    key_b64         Nullable(String),
    payload_b64     String,
    payload_bytes   UInt32,
    failed_at       DateTime64(3, 'UTC'),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (reason_code, failed_at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS channel_events
(
    event           LowCardinality(String),
    sku             String,
    platform        LowCardinality(String),
    available       Int64,
    threshold       Int64,
    at              DateTime64(3, 'UTC'),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (sku, platform, at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS breaker_events
(
    event           LowCardinality(String),
    from_state      LowCardinality(String),
    to_state        LowCardinality(String),
    rate_per_min    Float64,
    at              DateTime64(3, 'UTC'),
    worker          String,
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, worker)
SETTINGS non_replicated_deduplication_window = 1000;
