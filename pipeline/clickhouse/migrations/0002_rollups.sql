-- Rollups kept current by materialized views at insert time, so the tier views read a few
-- thousand pre-aggregated rows instead of scanning the facts. Targets carry the same dedup
-- window as the facts: a retried insert (same token) is deduplicated in the views too.

-- Strategic: orders and revenue per hour, platform and currency (new orders only).
CREATE TABLE IF NOT EXISTS orders_hourly
(
    hour          DateTime('UTC'),
    platform      LowCardinality(String),
    currency      LowCardinality(String),
    orders        UInt64,
    revenue_minor Int64,
    units         UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, platform, currency)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS orders_hourly_mv TO orders_hourly AS
SELECT toStartOfHour(created_at) AS hour, platform, currency,
       count() AS orders, sum(total_minor) AS revenue_minor, sum(toUInt64(units)) AS units
FROM order_events
WHERE change = 'new'
GROUP BY hour, platform, currency;

-- Tactical: exception counts per 15 minutes and kind (SLA breaches are computed at query time
-- from order_state, because a breach is the absence of an event).
CREATE TABLE IF NOT EXISTS exceptions_15m
(
    bucket DateTime('UTC'),
    kind   LowCardinality(String),
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, kind)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS exceptions_risk_hold_mv TO exceptions_15m AS
SELECT toStartOfFifteenMinutes(at) AS bucket, 'risk_hold' AS kind, count() AS events
FROM risk_events WHERE event = 'held' GROUP BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS exceptions_out_of_stock_mv TO exceptions_15m AS
SELECT toStartOfFifteenMinutes(at) AS bucket, 'out_of_stock' AS kind, count() AS events
FROM inventory_events WHERE event = 'out_of_stock' GROUP BY bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS exceptions_dead_letter_mv TO exceptions_15m AS
SELECT toStartOfFifteenMinutes(failed_at) AS bucket, 'dead_letter' AS kind, count() AS events
FROM dead_letters GROUP BY bucket;

-- Tactical: reservations per warehouse and 15 minutes. A reservation split over warehouses
-- counts once per warehouse it touches, with that warehouse's units.
CREATE TABLE IF NOT EXISTS warehouse_15m
(
    bucket          DateTime('UTC'),
    warehouse       LowCardinality(String),
    reserved_orders UInt64,
    reserved_units  UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, warehouse)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS warehouse_15m_mv TO warehouse_15m AS
SELECT toStartOfFifteenMinutes(at) AS bucket, wh AS warehouse,
       count() AS reserved_orders,
       sum(toUInt64(if(empty(line_quantities), units,
                       arraySum(arrayMap((q, w) -> if(w = wh, q, 0), line_quantities, line_warehouses))))) AS reserved_units
FROM inventory_events
ARRAY JOIN arrayDistinct(if(empty(line_warehouses), [warehouse], line_warehouses)) AS wh
WHERE event = 'reserved'
GROUP BY bucket, warehouse;

-- Execution and SLA: one row per order with its latest status, deadline and first shipment.
CREATE TABLE IF NOT EXISTS order_state
(
    order_id         String,
    platform         SimpleAggregateFunction(any, LowCardinality(String)),
    created_at       SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    ship_by          SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    first_shipped_at SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    last_status      AggregateFunction(argMax, String, DateTime64(3, 'UTC')),
    last_updated_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY order_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS order_state_mv TO order_state AS
SELECT order_id,
       any(platform) AS platform,
       min(created_at) AS created_at,
       max(ship_by) AS ship_by,
       min(if(status IN ('SHIPPED', 'IN_TRANSIT', 'DELIVERED', 'COMPLETED'), updated_at, NULL)) AS first_shipped_at,
       argMaxState(toString(status), updated_at) AS last_status,
       max(updated_at) AS last_updated_at
FROM order_events
GROUP BY order_id;
