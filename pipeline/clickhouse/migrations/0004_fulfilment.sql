-- Issue 17: shipments and trusted state changes.
--  * suspect_transitions: status updates the worker did not trust (orders.suspect), one row each
--  * shipment_lines: what left which warehouse, one row per shipped (order, warehouse, sku),
--    kept by a materialized view over the inventory events
--  * suspect transitions counted with the other exceptions per 15 minutes
--  * order_state no longer follows untrusted updates (change = 'suspect' on orders.unique): the
--    view is replaced, the rows it already aggregated stay

CREATE TABLE IF NOT EXISTS suspect_transitions
(
    order_id        String,
    platform        LowCardinality(String),
    rule            LowCardinality(String),
    from_status     LowCardinality(String),
    to_status       LowCardinality(String),
    from_at         DateTime64(3, 'UTC'),
    to_at           DateTime64(3, 'UTC'),
    elapsed_ms      Int64,
    limit_ms        Nullable(Int64),
    window_id       String,
    reason          String,
    rules_version   Int32,
    detected_by     LowCardinality(String),
    detected_at     DateTime64(3, 'UTC'),
    src_topic       LowCardinality(String),
    src_partition   UInt32,
    src_offset      UInt64,
    kafka_ts        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(detected_at)
ORDER BY (detected_at, order_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS shipment_lines
(
    order_id        String,
    platform        LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    warehouse       LowCardinality(String),
    sku             String,
    quantity        UInt32
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (warehouse, sku, at, order_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS shipment_lines_mv TO shipment_lines AS
SELECT order_id, platform, at, wh AS warehouse, sku, qty AS quantity
FROM inventory_events
ARRAY JOIN line_warehouses AS wh, line_skus AS sku, line_quantities AS qty
WHERE event = 'shipped';

CREATE MATERIALIZED VIEW IF NOT EXISTS exceptions_suspect_transition_mv TO exceptions_15m AS
SELECT toStartOfFifteenMinutes(detected_at) AS bucket, 'suspect_transition' AS kind, count() AS events
FROM suspect_transitions GROUP BY bucket;

-- a late payment reserved again counts as a reservation of its warehouse too
CREATE MATERIALIZED VIEW IF NOT EXISTS warehouse_15m_rereserved_mv TO warehouse_15m AS
SELECT toStartOfFifteenMinutes(at) AS bucket, wh AS warehouse,
       count() AS reserved_orders,
       sum(toUInt64(if(empty(line_quantities), units,
                       arraySum(arrayMap((q, w) -> if(w = wh, q, 0), line_quantities, line_warehouses))))) AS reserved_units
FROM inventory_events
ARRAY JOIN arrayDistinct(if(empty(line_warehouses), [warehouse], line_warehouses)) AS wh
WHERE event = 'rereserved'
GROUP BY bucket, warehouse;

DROP TABLE IF EXISTS order_state_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS order_state_mv TO order_state AS
SELECT order_id,
       any(platform) AS platform,
       min(created_at) AS created_at,
       max(ship_by) AS ship_by,
       min(if(status IN ('SHIPPED', 'IN_TRANSIT', 'DELIVERED', 'COMPLETED'), updated_at, NULL)) AS first_shipped_at,
       argMaxState(toString(status), updated_at) AS last_status,
       max(updated_at) AS last_updated_at
FROM order_events
WHERE change != 'suspect'
GROUP BY order_id;
