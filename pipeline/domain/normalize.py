"""Raw platform JSON -> canonical order dict (schemas/order.avsc), or a Rejection. Never raises.

`normalize` is the only entry point the agent calls: the payload is checked in order of cost
(size, encoding, JSON, depth), then every field is read through the platform's `PlatformSpec`
(pipeline/domain/platforms.py). Any doubt is a rejection with a stable reason code, never a
guess: the dead-letter topic keeps the original bytes so a fixed version can re-drive them.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

from .note_flags import is_custom_title, is_gift_card_title, note_flags
from .provinces import normalize_province
from .platforms import SPECS, MoneyFormat, PlatformSpec, TimeFormat, carrier_code, currency_exponent

UTC = timezone.utc
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991: a fixed offset is exact
SCHEMA_VERSION = 3
MAX_DEPTH = 32
MAX_FIELD_CHARS = 4096
MAX_MINOR = 10 ** 9            # above this an amount is absurd for one order, whatever the currency
MAX_QUANTITY = 100_000
MAX_LINES = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
_NO_DEADLINE = frozenset({"PENDING_PAYMENT", "CANCELLED"})

# what the rest of the system (ERP, WMS, Redis keys) accepts as an order id
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CN_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_DECIMAL = re.compile(r"(\d{1,15})(?:\.(\d{1,6}))?")
_DIGITS = re.compile(r"\d{1,16}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class Rejection:
    reason_code: str
    reason: str


@dataclass
class NormalizeResult:
    order: dict | None
    rejection: Rejection | None
    id_fallback: bool = False


class _Reject(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


# -- compiled specs -------------------------------------------------------------------------------

Path = tuple[tuple[str | int, ...], ...]


def compile_path(path: str) -> Path:
    """"a.b|c" -> (("a", "b"), ("c",)); "a.0.b" -> (("a", 0, "b"),) (an array's item); "" -> ()."""
    return tuple(tuple(int(k) if k.isdigit() else k for k in alt.split(".")) for alt in path.split("|") if alt) \
        if path else ()


class _Compiled:
    """A PlatformSpec with every path split once, so the hot loop only does dict lookups."""

    def __init__(self, spec: PlatformSpec) -> None:
        self.spec = spec
        for name in ("order_id", "alt_id", "created", "paid", "updated", "total", "goods", "discount",
                     "coupon", "shipping", "currency_field", "buyer_id", "buyer_name", "buyer_phone", "ip",
                     "country_field", "province", "city", "district", "detail", "postal_code", "note",
                     "courier", "waybill"):
            setattr(self, name, compile_path(getattr(spec, name)))
        self.status = tuple(compile_path(p) for p in spec.status)
        self.line_items = compile_path(spec.lines.items)
        self.line_sku = compile_path(spec.lines.sku)
        self.line_qty = compile_path(spec.lines.quantity)
        self.line_price = compile_path(spec.lines.unit_price)
        self.line_title = compile_path(spec.lines.title)
        self.line_gift_card = compile_path(spec.lines.gift_card)
        # labels under which external_ids records the references
        self.order_id_label = spec.order_id.split("|")[0]
        self.alt_id_label = spec.alt_id.split("|")[0]
        self.parse_time = _TIME_PARSERS[spec.time_format]
        self.money_format = spec.money_format
        self.sla = timedelta(hours=spec.sla_hours)


def _get(obj, path: Path):
    """First present, non-empty value among the alternatives of `path` (None if none)."""
    for alt in path:
        cur = obj
        for key in alt:
            if type(cur) is not dict:
                # an array's item (Shopify's fulfillments): only reached by paths that name one
                cur = cur[key] if type(cur) is list and type(key) is int and key < len(cur) else None
                if cur is None:
                    break
                continue
            cur = cur.get(key)
            if cur is None:
                break
        if cur is not None and cur != "":
            return cur
    return None


# -- field readers: each returns a clean value or raises _Reject -----------------------------------

def _text(value, name: str) -> str:
    t = type(value)
    if t is str:
        if len(value) > MAX_FIELD_CHARS:
            raise _Reject("field_too_long", f"{name} has {len(value)} characters (limit {MAX_FIELD_CHARS})")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogate from a "\ud800" escape
                raise _Reject("bad_encoding", f"{name} contains an unpaired surrogate") from None
        return value
    if t is int:
        return str(value)
    raise _Reject("bad_type", f"{name} must be a string, got {t.__name__}")


def _opt_text(obj, path: Path, name: str) -> str:
    value = _get(obj, path)
    return "" if value is None else _text(value, name)


def _money(value, fmt: MoneyFormat, exponent: int, name: str) -> int:
    t = type(value)
    if fmt is MoneyFormat.FEN_INT:
        if t is not int:
            raise _Reject("bad_type", f"{name} must be an integer amount in minor units, got {t.__name__}")
        minor = value
    elif fmt is MoneyFormat.FLOAT:
        if t is int:
            minor = value * 10 ** exponent
        elif t is float:
            if not math.isfinite(value):
                raise _Reject("bad_amount", f"{name} is not a finite number")
            if abs(value) > MAX_MINOR:
                raise _Reject("bad_amount", f"{name}={value!r} is absurdly large")
            scaled = value * 10 ** exponent
            minor = round(scaled)
            if abs(scaled - minor) > 1e-6 * max(1.0, abs(scaled)):
                raise _Reject("bad_amount", f"{name}={value!r} has more decimals than the currency")
        else:
            raise _Reject("bad_type", f"{name} must be a number, got {t.__name__}")
    else:  # YUAN_STR, DECIMAL_STR: "123.45"
        if t is not str:
            raise _Reject("bad_type", f"{name} must be a decimal string, got {t.__name__}")
        m = _DECIMAL.fullmatch(value)
        if m is None:
            if value.lstrip().startswith("-"):
                raise _Reject("bad_amount", f"{name}={value[:40]!r} is negative")
            raise _Reject("bad_amount", f"{name}={value[:40]!r} is not a decimal amount")
        whole, frac = m.groups()
        frac = frac or ""
        if len(frac) > exponent and frac[exponent:].strip("0"):
            raise _Reject("bad_amount", f"{name}={value!r} has more decimals than the currency")
        minor = int(whole) * 10 ** exponent + (int(frac[:exponent].ljust(exponent, "0")) if exponent else 0)
    if minor < 0:
        raise _Reject("bad_amount", f"{name}={value!r} is negative")
    if minor > MAX_MINOR:
        raise _Reject("bad_amount", f"{name}={value!r} exceeds {MAX_MINOR} minor units")
    return minor


def _epoch(value, name: str, scale: int) -> datetime:
    t = type(value)
    if t is str and _DIGITS.fullmatch(value):
        value = int(value)
    elif t is not int:
        raise _Reject("bad_type", f"{name} must be an epoch integer, got {t.__name__}")
    ms = value * 1000 // scale  # integer arithmetic so milliseconds stay exact
    if ms < 0 or ms > 10 ** 14:
        raise _Reject("bad_time", f"{name}={value} is out of range")
    return EPOCH + timedelta(milliseconds=ms)


def _parse_epoch_s(value, name):
    return _epoch(value, name, 1)


def _parse_epoch_ms(value, name):
    return _epoch(value, name, 1000)


def _parse_cn_local(value, name):
    if type(value) is not str:
        raise _Reject("bad_type", f"{name} must be 'YYYY-MM-DD HH:MM:SS', got {type(value).__name__}")
    if not _CN_LOCAL.fullmatch(value):
        raise _Reject("bad_time", f"{name}={value[:40]!r} is not 'YYYY-MM-DD HH:MM:SS'")
    try:
        return datetime.fromisoformat(value).replace(tzinfo=CHINA_TZ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Reject("bad_time", f"{name}={value!r} is not a valid date") from None


def _parse_iso(value, name):
    if type(value) is not str:
        raise _Reject("bad_type", f"{name} must be an ISO-8601 string, got {type(value).__name__}")
    if len(value) > 40:
        raise _Reject("bad_time", f"{name} is too long for a timestamp")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject("bad_time", f"{name}={value!r} is not ISO-8601") from None
    if dt.tzinfo is None:
        raise _Reject("bad_time", f"{name}={value!r} has no UTC offset")
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _Reject("bad_time", f"{name}={value!r} is out of range") from None


_TIME_PARSERS = {TimeFormat.EPOCH_S: _parse_epoch_s, TimeFormat.EPOCH_MS: _parse_epoch_ms,
                 TimeFormat.CN_LOCAL: _parse_cn_local, TimeFormat.ISO8601: _parse_iso}


def _time(c: _Compiled, value, name: str, latest: datetime) -> datetime:
    dt = c.parse_time(value, name)
    if dt < EARLIEST or dt > latest:
        raise _Reject("bad_time", f"{name}={value!r} is before 2000 or more than a day in the future")
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


def _ms(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


def _external_id(value, name: str) -> str:
    t = type(value)
    if t is int:
        return str(value)
    if t is str:
        return _text(value, name)
    raise _Reject("bad_type", f"{name} must be a string or integer id, got {t.__name__}")


def global_order_id(platform: str, external_id: str) -> str:
    """Stable internal id: same platform order, same id, on every worker and every run."""
    spec = SPECS.get(platform)
    prefix = spec.id_prefix if spec is not None else platform[:2].upper()
    digest = hashlib.blake2b(f"{platform}:{external_id}".encode("utf-8", "surrogatepass"),
                             digest_size=10).hexdigest()
    return f"{prefix}-{digest}"


# -- the parse -------------------------------------------------------------------------------------

def _depth_exceeds(obj, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        cur, depth = stack.pop()
        if depth > limit:
            return True
        if type(cur) is dict:
            stack.extend((v, depth + 1) for v in cur.values() if type(v) in (dict, list))
        elif type(cur) is list:
            stack.extend((v, depth + 1) for v in cur if type(v) in (dict, list))
    return False


def _parse(payload: bytes, max_bytes: int) -> dict:
    if len(payload) > max_bytes:
        raise _Reject("oversized", f"payload has {len(payload)} bytes (limit {max_bytes})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject("bad_encoding", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _Reject("too_deep", f"JSON nested deeper than {MAX_DEPTH}") from None
    except ValueError as exc:
        raise _Reject("malformed_json", f"invalid JSON: {exc}"[:300]) from None
    # cheap bound first: fewer than MAX_DEPTH brackets cannot nest deeper than that
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth_exceeds(obj, MAX_DEPTH):
        raise _Reject("too_deep", f"JSON nested deeper than {MAX_DEPTH}")
    if type(obj) is not dict:
        raise _Reject("not_an_object", f"top-level JSON is {type(obj).__name__}, not an object")
    return obj


def _status(c: _Compiled, obj: dict) -> tuple[str, str]:
    parts = []
    for i, path in enumerate(c.status):
        value = _get(obj, path)
        t = type(value)
        if value is None:
            if i == 0:
                raise _Reject("missing_field", f"status field {c.spec.status[0]} is missing")
            parts.append("null")  # e.g. Shopify sends fulfillment_status null while unfulfilled
        elif t is str:
            parts.append(_text(value, c.spec.status[i]))
        elif t is int:
            parts.append(str(value))
        else:
            raise _Reject("bad_type", f"{c.spec.status[i]} must be a string or integer, got {t.__name__}")
    raw = parts[0] if len(parts) == 1 else "/".join(parts)
    std = c.spec.status_map.get(raw)
    if std is None:
        raise _Reject("unknown_status", f"status code {raw[:80]!r} is not in the {c.spec.platform} dictionary")
    return std, raw


def _lines(c: _Compiled, obj: dict, exponent: int) -> list[dict]:
    items = _get(obj, c.line_items)
    if items is None:
        raise _Reject("missing_field", f"line items {c.spec.lines.items} are missing")
    if type(items) is not list:
        raise _Reject("bad_type", f"{c.spec.lines.items} must be an array, got {type(items).__name__}")
    if not items:
        raise _Reject("missing_field", "order has no line items")
    if len(items) > MAX_LINES:
        raise _Reject("bad_type", f"{len(items)} line items (limit {MAX_LINES})")
    lines = []
    fmt = c.money_format
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise _Reject("bad_type", f"line {i} is {type(item).__name__}, not an object")
        sku = _get(item, c.line_sku)
        if sku is None:
            raise _Reject("missing_field", f"line {i} has no {c.spec.lines.sku}")
        sku = _external_id(sku, f"line {i} sku")
        qty = _get(item, c.line_qty)
        if qty is None:
            raise _Reject("missing_field", f"line {i} has no {c.spec.lines.quantity}")
        if type(qty) is not int:
            raise _Reject("bad_type", f"line {i} quantity must be an integer, got {type(qty).__name__}")
        if qty <= 0 or qty > MAX_QUANTITY:
            raise _Reject("bad_amount", f"line {i} quantity {qty} is not between 1 and {MAX_QUANTITY}")
        price = _get(item, c.line_price)
        if price is None:
            raise _Reject("missing_field", f"line {i} has no {c.spec.lines.unit_price}")
        price = _money(price, fmt, exponent, f"line {i} price")
        title = _opt_text(item, c.line_title, f"line {i} title")
        gift_card = False
        if c.line_gift_card:
            marked = _get(item, c.line_gift_card)
            if marked is not None and type(marked) is not bool:
                raise _Reject("bad_type", f"line {i} gift_card must be a boolean")
            gift_card = marked is True
        lines.append({"sku": sku, "title": title, "quantity": qty, "unit_price_minor": price,
                      "is_gift_card": gift_card or is_gift_card_title(title),
                      "is_custom": is_custom_title(title)})
    return lines


def _order(c: _Compiled, obj: dict, now: datetime) -> tuple[dict, bool]:
    spec = c.spec
    # ids: an id the rest of the system would reject falls back to the other reference (ghost order)
    raw_id = _get(obj, c.order_id)
    if raw_id is None:
        raise _Reject("missing_field", f"order id {spec.order_id} is missing")
    ext_id = _external_id(raw_id, spec.order_id)
    external_ids = {c.order_id_label: ext_id}
    alt_raw = _get(obj, c.alt_id)
    alt_id = None
    if alt_raw is not None and type(alt_raw) in (str, int):
        alt_id = _external_id(alt_raw, spec.alt_id)
        external_ids[c.alt_id_label] = alt_id
    id_fallback = False
    if VALID_ID.fullmatch(ext_id) is None:
        if alt_id is None or VALID_ID.fullmatch(alt_id) is None:
            raise _Reject("bad_id", f"order id {ext_id[:80]!r} is unusable and there is no valid {spec.alt_id}")
        ext_id, id_fallback = alt_id, True

    status, status_raw = _status(c, obj)

    latest = now + FUTURE_SLACK
    created_raw = _get(obj, c.created)
    if created_raw is None:
        raise _Reject("missing_field", f"creation time {spec.created} is missing")
    created_at = _time(c, created_raw, spec.created, latest)
    paid_raw = _get(obj, c.paid)
    paid_at = None
    if paid_raw is not None and paid_raw != 0 and status != "PENDING_PAYMENT":  # unpaid orders send 0 or a placeholder
        paid_at = _time(c, paid_raw, spec.paid, latest)
    updated_raw = _get(obj, c.updated)
    updated_at = _time(c, updated_raw, spec.updated, latest) if updated_raw is not None else (paid_at or created_at)
    # no shipping deadline for an order nobody has paid for or that is already cancelled
    ship_by = None if status in _NO_DEADLINE else (paid_at or created_at) + c.sla

    currency = spec.currency
    if c.currency_field:
        value = _get(obj, c.currency_field)
        if value is not None:
            if type(value) is not str or _CURRENCY.fullmatch(value) is None:
                raise _Reject("bad_type", f"{spec.currency_field} must be an ISO 4217 code")
            currency = value
    exponent = currency_exponent(currency)

    lines = _lines(c, obj, exponent)
    fmt = c.money_format
    total_raw = _get(obj, c.total)
    if total_raw is None:
        raise _Reject("missing_field", f"amount {spec.total} is missing")
    total = _money(total_raw, fmt, exponent, spec.total)
    goods_raw = _get(obj, c.goods) if c.goods else None
    if goods_raw is not None:
        goods = _money(goods_raw, fmt, exponent, spec.goods)
    else:
        goods = sum(line["quantity"] * line["unit_price_minor"] for line in lines)
        if goods > MAX_MINOR:
            raise _Reject("bad_amount", f"line total {goods} exceeds {MAX_MINOR} minor units")
    amounts = {
        "goods_minor": goods,
        "discount_minor": _opt_money(obj, c.discount, fmt, exponent, spec.discount),
        "coupon_minor": _opt_money(obj, c.coupon, fmt, exponent, spec.coupon),
        "shipping_minor": _opt_money(obj, c.shipping, fmt, exponent, spec.shipping),
        "total_minor": total,
    }

    country = spec.default_country
    if c.country_field:
        value = _get(obj, c.country_field)
        if value is not None:
            if type(value) is not str or _COUNTRY.fullmatch(value) is None:
                raise _Reject("bad_type", f"{spec.country_field} must be an ISO 3166 alpha-2 code")
            country = value.upper()
    province = _opt_text(obj, c.province, spec.province)
    if country == "CN" and province:
        province = normalize_province(province)

    note = _opt_text(obj, c.note, spec.note) or None
    invoice, gift, urgent = note_flags(note)
    ip = _opt_text(obj, c.ip, spec.ip) or None
    courier = _opt_text(obj, c.courier, spec.courier).strip()
    waybill = _opt_text(obj, c.waybill, spec.waybill).strip() or None

    order = {
        "schema_version": SCHEMA_VERSION,
        "order_id": global_order_id(spec.platform, ext_id),
        "platform": spec.platform,
        "external_order_id": ext_id,
        "external_ids": external_ids,
        "id_fallback": id_fallback,
        "status": status,
        "status_raw": status_raw,
        "currency": currency,
        "amounts": amounts,
        "lines": lines,
        "buyer": {
            "buyer_id": _opt_text(obj, c.buyer_id, spec.buyer_id),
            "name": _opt_text(obj, c.buyer_name, spec.buyer_name),
            "phone": _opt_text(obj, c.buyer_phone, spec.buyer_phone),
            "ip": ip,
        },
        "address": {
            "country": country,
            "province": province,
            "city": _opt_text(obj, c.city, spec.city),
            "district": _opt_text(obj, c.district, spec.district),
            "detail": _opt_text(obj, c.detail, spec.detail),
            "postal_code": _opt_text(obj, c.postal_code, spec.postal_code),
        },
        "note": note,
        "flags": {"invoice": invoice, "gift": gift, "urgent": urgent,
                  "gift_card": any(line["is_gift_card"] for line in lines)},
        "created_at": created_at,
        "paid_at": paid_at,
        "updated_at": updated_at,
        "ship_by": ship_by,
        "risk_flags": [],
        "checked_lightly": False,
        "carrier": carrier_code(courier) if courier else None,
        "waybill": waybill,
        "ingest_time": _ms(now),
    }
    return order, id_fallback


def _opt_money(obj, path: Path, fmt: MoneyFormat, exponent: int, name: str) -> int:
    value = _get(obj, path) if path else None
    return 0 if value is None else _money(value, fmt, exponent, name)


_COMPILED = {name: _Compiled(spec) for name, spec in SPECS.items()}


def normalize(platform: str, payload: bytes, now: datetime, max_bytes: int = 262144) -> NormalizeResult:
    """Canonical order, or the reason it cannot be one. Never raises, whatever the bytes."""
    try:
        c = _COMPILED.get(platform)
        if c is None:
            raise _Reject("unknown_platform", f"no field mapping for platform {str(platform)[:40]!r}")
        if not isinstance(payload, bytes):
            payload = bytes(payload or b"")
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        obj = _parse(payload, max_bytes)
        order, fallback = _order(c, obj, now)
        return NormalizeResult(order, None, fallback)
    except _Reject as r:
        return NormalizeResult(None, Rejection(r.code, r.reason), False)
    except Exception as exc:  # a bug must dead-letter the message, not stop the stream
        return NormalizeResult(None, Rejection("internal_error", f"{type(exc).__name__}: {exc}"[:500]), False)


# -- dead letters and fingerprints -----------------------------------------------------------------

def dead_letter_record(platform: str, topic: str, partition: int, offset: int, key: bytes | None,
                       payload: bytes, rejection: Rejection, now: datetime) -> dict:
    """A record for schemas/dead_letter.avsc: the original bytes plus where and why."""
    return {
        "source_topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "platform": platform,
        "reason_code": rejection.reason_code,
        "reason": rejection.reason[:1000],
        "key": bytes(key) if key is not None else None,
        "payload": bytes(payload),
        "failed_at": _ms(now),
    }


# Not business content: they change on every delivery or are set by later stages.
_NOT_CONTENT = frozenset({"ingest_time", "schema_version", "risk_flags", "checked_lightly"})
# order v3's fields are left out while empty, so what dedupe stored before the upgrade still matches
_V3_FIELDS = ("carrier", "waybill")


_ONE_MS = timedelta(milliseconds=1)


def _json_default(value):
    if isinstance(value, datetime):
        return (_ms(value) - EPOCH) // _ONE_MS
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


# order times are UTC at millisecond precision (_ms), so their RFC 3339 text is canonical
_FINGERPRINT_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def content_fingerprint(order: dict) -> str:
    """Hash of what the platform said about the order; redeliveries (any key order/whitespace) match."""
    content = {k: v for k, v in order.items() if k not in _NOT_CONTENT}
    for k in _V3_FIELDS:
        if content.get(k) is None:
            content.pop(k, None)
    try:
        blob = orjson.dumps(content, option=_FINGERPRINT_JSON, default=_json_default)
    except orjson.JSONEncodeError:  # a lone surrogate (from a \ud800 escape): only json writes it
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=_json_default).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()
