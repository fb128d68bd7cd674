"""Kafka message -> fact-table row, one pure function per source topic.

Rows are JSON-ready dicts whose keys are the table's columns. Times go out as "seconds.millis"
strings, the one text form ClickHouse parses into DateTime64(3) exactly (an integer would be
read as seconds, a float loses the millisecond).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipeline.codecs import dead_letter_codec, decode_json, order_codec
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


def _json(msg) -> dict:
    try:
        obj = decode_json(msg.value)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise RowError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RowError("JSON value is not an object")
    return obj


def order_row(msg) -> dict:
    try:
        o = order_codec().decode(msg.value)
    except Exception as exc:  # CodecError, or bytes of the wrong type
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


def _str(v, default: str = "") -> str:
    return default if v is None else str(v)


def _int(v, default: int = 0) -> int:
    if v is None or v == "":
        return default
    try:
        return int(v)
    except (TypeError, ValueError) as exc:
        raise RowError(f"not an integer: {v!r}") from exc


def _required(obj: dict, *keys: str) -> None:
    missing = [k for k in keys if obj.get(k) is None]
    if missing:
        raise RowError(f"missing {', '.join(missing)}")


def risk_row(msg) -> dict:
    e = _json(msg)
    _required(e, "event", "order_id", "at_ms")
    return {
        "event": _str(e["event"]), "order_id": _str(e["order_id"]), "platform": _str(e.get("platform")),
        "at": ch_time(_int(e["at_ms"])), "rule_ids": [str(r) for r in e.get("rule_ids") or []],
        "severity": _str(e.get("severity")), "approvers": [str(a) for a in e.get("approvers") or []],
        "operator": None if e.get("operator") is None else str(e["operator"]), "reason": _str(e.get("reason")),
        "amount_minor": _int(e.get("amount_minor")), "currency": _str(e.get("currency")),
        "ruleset_version": _int(e.get("ruleset_version")),
        "waited_ms": None if e.get("waited_ms") is None else _int(e["waited_ms"]),
        **_source(msg),
    }


def inventory_row(msg) -> dict:
    e = _json(msg)
    _required(e, "event", "order_id", "at_ms")
    warehouse = _str(e.get("warehouse"))
    lines = e.get("lines") or []
    if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
        raise RowError("lines is not a list of objects")
    latency = e.get("latency_ms")
    return {
        "event": _str(e["event"]), "order_id": _str(e["order_id"]), "platform": _str(e.get("platform")),
        "at": ch_time(_int(e["at_ms"])), "warehouse": warehouse,
        "line_skus": [_str(line.get("sku")) for line in lines],
        "line_quantities": [max(0, _int(line.get("quantity"))) for line in lines],
        # a line without its own warehouse was served by the event's one
        "line_warehouses": [_str(line.get("warehouse")) or warehouse for line in lines],
        "units": max(0, _int(e.get("units"))), "reason": _str(e.get("reason")),
        "latency_ms": None if latency is None else float(latency),
        **_source(msg),
    }


def dead_letter_row(msg) -> dict:
    try:
        d = dead_letter_codec().decode(msg.value)
    except Exception as exc:
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
    e = _json(msg)
    _required(e, "event", "at_ms")
    return {
        "event": _str(e["event"]), "sku": _str(e.get("sku")), "platform": _str(e.get("platform")),
        "available": _int(e.get("available")), "threshold": _int(e.get("threshold")),
        "at": ch_time(_int(e["at_ms"])), **_source(msg),
    }


def breaker_row(msg) -> dict:
    e = _json(msg)
    _required(e, "event", "at_ms")
    try:
        rate = float(e.get("rate_per_min") or 0.0)
    except (TypeError, ValueError) as exc:
        raise RowError(f"rate_per_min is not a number: {e.get('rate_per_min')!r}") from exc
    return {
        "event": _str(e["event"]), "from_state": _str(e.get("from")), "to_state": _str(e.get("to")),
        "rate_per_min": rate, "at": ch_time(_int(e["at_ms"])), "worker": _str(e.get("worker")),
        **_source(msg),
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


def table_specs(names: TopicNames) -> dict[str, TableSpec]:
    """Source topic -> the fact table it lands in (one topic, one table)."""
    return {
        names.UNIQUE: TableSpec("order_events", ORDER_COLUMNS, order_row),
        names.RISK_EVENTS: TableSpec("risk_events", RISK_COLUMNS, risk_row),
        names.INVENTORY_EVENTS: TableSpec("inventory_events", INVENTORY_COLUMNS, inventory_row),
        names.DLQ: TableSpec("dead_letters", DEAD_LETTER_COLUMNS, dead_letter_row),
        names.CHANNEL_CONTROL: TableSpec("channel_events", CHANNEL_COLUMNS, channel_row),
        names.BREAKER_EVENTS: TableSpec("breaker_events", BREAKER_COLUMNS, breaker_row),
    }
