-- The settlement ledger's refund source is the refund flow itself: every refund paid out
-- (refunds.events `refunded`) becomes one ledger_refunds row. ReplacingMergeTree on
-- (order_id, refund_id) keeps a re-published event once.
CREATE MATERIALIZED VIEW IF NOT EXISTS ledger_refunds_from_events TO ledger_refunds AS
SELECT refund_id, order_id, platform, currency, amount_minor, at AS refunded_at,
       'refunds.events' AS source
FROM refund_events
WHERE event = 'refunded';
