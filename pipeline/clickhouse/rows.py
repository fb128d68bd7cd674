"""Kafka message -> fact-table row, one pure function per source topic.

Rows are JSON-ready dicts whose keys are the table's columns. Times go out as "seconds.millis"
strings, the one text form ClickHouse parses into DateTime64(3) exactly (an integer would be
read as seconds, a float loses the millisecond).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipeline.contracts import (DEAD_LETTER, ORDER, BreakerTransition, ChannelEvent, CodecError, InventoryEvent,
                                RefundEvent, RiskEvent, SettlementBillLine, SuspectTransition, TrackingReview,
                                TrackingUpdate)
from pipeline.topics import TopicNames


class RowError(ValueError):
    """A message the sink cannot map to a row (undecodable or missing fields); it is skipped."""


# Every function here maps one pipeline.kafka_io.Record (what the sink consumed) to a row.


def ch_time(value) -> str | None:
    """Epoch millis (int) or datetime -> "seconds.mmm" text for DateTime64(3)."""
    if value is None:
        return None
    if hasattr(value, "timestamp"):  # fastavro decodes timestamp-millis to aware datetimes
        ms = int(round(value.timestamp() * 1000))
    else:
        ms = int(value)
    sec, milli = divmod(ms, 1000)
    return f"{sec}.{milli:03d}"


def _source(msg) -> dict:
    return {"src_topic": msg.topic, "src_partition": int(msg.partition), "src_offset": int(msg.offset),
            "kafka_ts": ch_time(msg.timestamp_ms or 0)}


def _header(msg, name: str) -> bytes | None:
    headers = msg.headers or {}
    if not isinstance(headers, Mapping):
        headers = dict(headers)
    return headers.get(name)


def _event(msg, event_type):
    try:
        return event_type.decode(msg.value)
    except (CodecError, TypeError) as exc:  # TypeError: a value that is not bytes at all
        raise RowError(f"not a {event_type.__name__}: {exc}") from exc


def order_row(msg) -> dict:
    try:
        o = ORDER.decode(msg.value)
    except (CodecError, TypeError) as exc:
        raise RowError(f"not an Avro Order: {exc}") from exc
    change = (_header(msg, "change") or b"").decode(errors="replace") or "unknown"
    a, flags, lines = o["amounts"], o["flags"], o["lines"]
    return {
        "order_id": o["order_id"], "platform": o["platform"], "status": o["status"], "change": change,
        "currency": o["currency"], "total_minor": a["total_minor"], "goods_minor": a["goods_minor"],
        "discount_minor": a["discount_minor"], "coupon_minor": a["coupon_minor"],
        "shipping_minor": a["shipping_minor"], "country": o["address"]["country"],
        "province": o["address"]["province"], "created_at": ch_time(o["created_at"]),
        "paid_at": ch_time(o["paid_at"]), "ship_by": ch_time(o["ship_by"]),
        "updated_at": ch_time(o["updated_at"]), "ingest_time": ch_time(o["ingest_time"]),
        "buyer_id": o["buyer"]["buyer_id"], "line_count": len(lines),
        "units": sum(max(0, line["quantity"]) for line in lines),
        "flag_invoice": flags["invoice"], "flag_gift": flags["gift"], "flag_urgent": flags["urgent"],
        "flag_gift_card": flags["gift_card"], "id_fallback": o["id_fallback"],
        "risk_flags": list(o["risk_flags"]), "checked_lightly": o["checked_lightly"],
        **_source(msg),
    }


def risk_row(msg) -> dict:
    e: RiskEvent = _event(msg, RiskEvent)
    return {
        "event": e.event, "order_id": e.order_id, "platform": e.platform, "at": ch_time(e.at_ms),
        "rule_ids": list(e.rule_ids), "severity": e.severity, "approvers": list(e.approvers),
        "operator": e.operator, "reason": e.reason, "amount_minor": e.amount_minor or 0, "currency": e.currency,
        "ruleset_version": e.ruleset_version, "waited_ms": e.waited_ms,
        **_source(msg),
    }


def inventory_row(msg) -> dict:
    e: InventoryEvent = _event(msg, InventoryEvent)
    warehouse = e.warehouse or ""
    return {
        "event": e.event, "order_id": e.order_id, "platform": e.platform, "at": ch_time(e.at_ms),
        "warehouse": warehouse, "line_skus": [line.sku for line in e.lines],
        "line_quantities": [max(0, line.quantity) for line in e.lines],
        # a line without its own warehouse was served by the event's one
        "line_warehouses": [line.warehouse or warehouse for line in e.lines],
        "units": max(0, e.units), "reason": e.reason, "latency_ms": e.latency_ms,
        **_source(msg),
    }


def suspect_row(msg) -> dict:
    e: SuspectTransition = _event(msg, SuspectTransition)
    return {
        "order_id": e.order_id, "platform": e.platform, "rule": e.rule, "from_status": e.from_status,
        "to_status": e.to_status, "from_at": ch_time(e.from_at_ms), "to_at": ch_time(e.to_at_ms),
        "elapsed_ms": e.elapsed_ms, "limit_ms": e.limit_ms, "window_id": e.window, "reason": e.reason,
        # a writer that did not stamp its check time: the broker's time of the message stands in
        "rules_version": e.rules_version, "detected_by": e.detected_by,
        "detected_at": ch_time(e.detected_at_ms or msg.timestamp_ms or 0),
        **_source(msg),
    }


def dead_letter_row(msg) -> dict:
    try:
        d = DEAD_LETTER.decode(msg.value)
    except (CodecError, TypeError) as exc:
        raise RowError(f"not an Avro DeadLetter: {exc}") from exc
    # the payload failed normalisation once; it is stored as opaque base64, never interpreted
    return {
        "source_topic": d["source_topic"], "source_partition": d["partition"], "source_offset": d["offset"],
        "platform": d["platform"], "reason_code": d["reason_code"], "reason": d["reason"],
        "key_b64": None if d["key"] is None else base64.b64encode(d["key"]).decode(),
        "payload_b64": base64.b64encode(d["payload"]).decode(), "payload_bytes": len(d["payload"]),
        "failed_at": ch_time(d["failed_at"]),
        **_source(msg),
    }


def channel_row(msg) -> dict:
    e: ChannelEvent = _event(msg, ChannelEvent)
    return {
        "event": e.event, "sku": e.sku, "platform": e.platform, "available": e.available,
        "threshold": e.threshold, "at": ch_time(e.at_ms), **_source(msg),
    }


def breaker_row(msg) -> dict:
    e: BreakerTransition = _event(msg, BreakerTransition)
    return {
        "event": "transition", "from_state": e.from_state, "to_state": e.to_state,
        "rate_per_min": e.rate_per_min, "at": ch_time(e.at_ms), "worker": e.worker,
        **_source(msg),
    }


def refund_row(msg) -> dict:
    e: RefundEvent = _event(msg, RefundEvent)
    return {
        "event": e.event, "refund_id": e.refund_id, "order_id": e.order_id, "platform": e.platform,
        "status": e.status, "previous_status": e.previous_status, "at": ch_time(e.at_ms), "actor": e.actor,
        "reason": e.reason, "rule_id": e.rule_id, "kind": e.kind, "reason_code": e.reason_code,
        "amount_minor": e.amount_minor, "currency": e.currency, "warehouse": e.warehouse, "units": max(0, e.units),
        "error": e.error, "cause": e.cause, **_source(msg),
    }


def settlement_bill_row(msg) -> dict:
    e: SettlementBillLine = _event(msg, SettlementBillLine)
    return {
        "line_key": e.line_key, "file_sha256": e.file_sha256, "file_name": e.file_name, "line_no": e.line_no,
        "platform": e.platform, "bill_line_id": e.bill_line_id, "external_order_id": e.external_order_id,
        "order_id": e.order_id, "kind": e.kind, "platform_type": e.platform_type, "amount_minor": e.amount_minor,
        "currency": e.currency, "settle_day": e.settle_day, "imported_by": e.imported_by,
        "imported_at": ch_time(e.imported_at_ms), **_source(msg),
    }


def tracking_row(msg) -> dict:
    e: TrackingUpdate = _event(msg, TrackingUpdate)
    return {
        "order_id": e.order_id, "waybill": e.waybill, "carrier": e.carrier, "state": e.state,
        "agreed_state": e.agreed_state, "cause": e.cause, "source": e.source, "code": e.code,
        "event_at": ch_time(e.event_at_ms), "at": ch_time(e.at_ms), "badge": e.badge,
        "last_update": ch_time(e.last_update_ms), "track_code": e.track_code, "expected_at": ch_time(e.expected_at_ms),
        "on_backup": e.on_backup, "pulls": e.pulls, "failed_pulls": e.failed_pulls, "failovers": e.failovers,
        **_source(msg),
    }


def review_row(msg) -> dict:
    e: TrackingReview = _event(msg, TrackingReview)
    sources = sorted(e.states)
    return {
        "order_id": e.order_id, "waybill": e.waybill, "carrier": e.carrier, "reason": e.reason,
        "sources": sources, "states": [e.states[s] for s in sources], "at": ch_time(e.at_ms), **_source(msg),
    }


@dataclass(frozen=True)
class TableSpec:
    table: str
    columns: tuple[str, ...]
    to_row: Callable[[Any], dict]


_SRC = ("src_topic", "src_partition", "src_offset", "kafka_ts")

ORDER_COLUMNS = ("order_id", "platform", "status", "change", "currency", "total_minor", "goods_minor",
                 "discount_minor", "coupon_minor", "shipping_minor", "country", "province", "created_at",
                 "paid_at", "ship_by", "updated_at", "ingest_time", "buyer_id", "line_count", "units",
                 "flag_invoice", "flag_gift", "flag_urgent", "flag_gift_card", "id_fallback", "risk_flags",
                 "checked_lightly") + _SRC
RISK_COLUMNS = ("event", "order_id", "platform", "at", "rule_ids", "severity", "approvers", "operator", "reason",
                "amount_minor", "currency", "ruleset_version", "waited_ms") + _SRC
INVENTORY_COLUMNS = ("event", "order_id", "platform", "at", "warehouse", "line_skus", "line_quantities",
                     "line_warehouses", "units", "reason", "latency_ms") + _SRC
DEAD_LETTER_COLUMNS = ("source_topic", "source_partition", "source_offset", "platform", "reason_code", "reason",
                       "key_b64", "payload_b64", "payload_bytes", "failed_at") + _SRC
CHANNEL_COLUMNS = ("event", "sku", "platform", "available", "threshold", "at") + _SRC
BREAKER_COLUMNS = ("event", "from_state", "to_state", "rate_per_min", "at", "worker") + _SRC
SUSPECT_COLUMNS = ("order_id", "platform", "rule", "from_status", "to_status", "from_at", "to_at", "elapsed_ms",
                   "limit_ms", "window_id", "reason", "rules_version", "detected_by", "detected_at") + _SRC
REFUND_COLUMNS = ("event", "refund_id", "order_id", "platform", "status", "previous_status", "at", "actor", "reason",
                  "rule_id", "kind", "reason_code", "amount_minor", "currency", "warehouse", "units", "error",
                  "cause") + _SRC
SETTLEMENT_BILL_COLUMNS = ("line_key", "file_sha256", "file_name", "line_no", "platform", "bill_line_id",
                           "external_order_id", "order_id", "kind", "platform_type", "amount_minor", "currency",
                           "settle_day", "imported_by", "imported_at") + _SRC
TRACKING_COLUMNS = ("order_id", "waybill", "carrier", "state", "agreed_state", "cause", "source", "code", "event_at",
                    "at", "badge", "last_update", "track_code", "expected_at", "on_backup", "pulls", "failed_pulls",
                    "failovers") + _SRC
REVIEW_COLUMNS = ("order_id", "waybill", "carrier", "reason", "sources", "states", "at") + _SRC


def table_specs(names: TopicNames) -> dict[str, TableSpec]:
    """Source topic -> the fact table it lands in (one topic, one table)."""
    return {
        names.UNIQUE: TableSpec("order_events", ORDER_COLUMNS, order_row),
        names.RISK_EVENTS: TableSpec("risk_events", RISK_COLUMNS, risk_row),
        names.INVENTORY_EVENTS: TableSpec("inventory_events", INVENTORY_COLUMNS, inventory_row),
        names.DLQ: TableSpec("dead_letters", DEAD_LETTER_COLUMNS, dead_letter_row),
        names.CHANNEL_CONTROL: TableSpec("channel_events", CHANNEL_COLUMNS, channel_row),
        names.BREAKER_EVENTS: TableSpec("breaker_events", BREAKER_COLUMNS, breaker_row),
        names.SUSPECT: TableSpec("suspect_transitions", SUSPECT_COLUMNS, suspect_row),
        names.REFUND_EVENTS: TableSpec("refund_events", REFUND_COLUMNS, refund_row),
        names.SETTLEMENT_BILLS: TableSpec("settlement_bills", SETTLEMENT_BILL_COLUMNS, settlement_bill_row),
        names.TRACKING: TableSpec("tracking_updates", TRACKING_COLUMNS, tracking_row),
        names.TRACKING_REVIEW: TableSpec("tracking_reviews", REVIEW_COLUMNS, review_row),
        # refused courier events land beside the refused orders (the same DeadLetter contract)
        names.LOGISTICS_DLQ: TableSpec("dead_letters", DEAD_LETTER_COLUMNS, dead_letter_row),
    }
