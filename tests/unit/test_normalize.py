"""Normalization: the hand-written corpus per platform, bad input, ghost orders, flags, ids, fingerprints."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.domain.normalize import (Rejection, content_fingerprint, dead_letter_record, global_order_id,
                                       normalize)
from pipeline.domain.platforms import SPECS, STANDARD_STATES
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.topics import PLATFORMS

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)
UTC = timezone.utc


def _cases():
    return sorted(p for p in CORPUS.glob("*/*.json") if not p.name.endswith(".expected.json"))


def _decode_times(value):
    """Expected files store times as ISO strings ending in Z."""
    if isinstance(value, dict):
        return {k: _decode_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_times(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T" and value.endswith("Z"):
        return datetime.fromisoformat(value[:-1] + "+00:00")
    return value


def test_corpus_covers_every_platform_and_case():
    for platform in PLATFORMS:
        names = {p.stem for p in (CORPUS / platform.lower()).glob("*.json") if not p.name.endswith(".expected.json")}
        assert {"paid", "note_flags", "ghost"} <= names, platform
        assert any(n.startswith("bad_") for n in names), platform


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_case_normalizes_to_expected(case: Path):
    expected = json.loads(case.with_name(case.stem + ".expected.json").read_text())
    result = normalize(case.parent.name.upper(), case.read_bytes(), NOW)
    if "rejection" in expected:
        assert result.order is None
        assert result.rejection.reason_code == expected["rejection"]
        return
    assert result.rejection is None, result.rejection
    assert result.id_fallback is expected["id_fallback"]
    want = _decode_times(expected["order"])
    assert set(result.order) == set(want)
    for field in want:  # field by field so a failure names the field
        assert result.order[field] == want[field], field
    assert order_codec().decode(order_codec().encode(result.order)) == result.order


def test_corpus_facts_checked_by_hand():
    """A few facts read off the raw files, independent of the stored expectations."""
    tm = normalize("TMALL", (CORPUS / "tmall/paid.json").read_bytes(), NOW).order
    assert tm["amounts"]["total_minor"] == 36800 and tm["amounts"]["goods_minor"] == 39800
    assert tm["created_at"] == datetime(2026, 11, 10, 16, 0, 5, tzinfo=UTC)   # 00:00:05 Asia/Shanghai
    assert tm["ship_by"] == tm["paid_at"] + timedelta(hours=72)
    sf = normalize("SHOPIFY", (CORPUS / "shopify/paid.json").read_bytes(), NOW).order
    assert sf["updated_at"] == datetime(2026, 11, 11, 1, 6, 0, 250000, tzinfo=UTC)
    assert sf["currency"] == "USD" and sf["amounts"]["shipping_minor"] == 1500
    dy = normalize("DOUYIN", (CORPUS / "douyin/paid.json").read_bytes(), NOW).order
    assert dy["ship_by"] - dy["paid_at"] == timedelta(hours=48)
    assert dy["address"]["province"] == "湖北"
    ks = normalize("KUAISHOU", (CORPUS / "kuaishou/paid.json").read_bytes(), NOW).order
    assert ks["paid_at"].microsecond == 456000
    pdd = normalize("PINDUODUO", (CORPUS / "pinduoduo/ghost.json").read_bytes(), NOW).order
    assert pdd["status"] == "CANCELLED" and pdd["status_raw"] == "3/4"  # refund succeeded


# -- bad input ------------------------------------------------------------------------------------

@pytest.fixture()
def factory():
    return RawOrderFactory(seed=11, start=NOW - timedelta(hours=2))


def _tmall(factory, **changes) -> bytes:
    payload = factory.order("TMALL")
    payload.update(changes)
    return factory.to_bytes(payload)


@pytest.mark.parametrize("payload,code", [
    (b"", "malformed_json"),
    (b"{\"tid\": 1,", "malformed_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b"\"just a string\"", "not_an_object"),
    (b"null", "not_an_object"),
    (b"{\"tid\": \"\xff\xfe\"}", "bad_encoding"),
    (b"\xef\xbb\xbf{}", "malformed_json"),
    (b"[" * 150_000 + b"]" * 150_000, "oversized"),
    (b"[" * 5_000 + b"]" * 5_000, "too_deep"),
    (b"{\"a\":" * 40 + b"1" + b"}" * 40, "too_deep"),
    (b"{}", "missing_field"),
])
def test_bad_bytes_are_rejected_with_reason(payload, code):
    result = normalize("TMALL", payload, NOW)
    assert result.order is None
    assert result.rejection.reason_code == code, result.rejection


def test_oversized_is_checked_before_parsing():
    # valid JSON, but one byte over the limit
    body = b'{"tid": 1, "pad": "' + b"x" * 200 + b'"}'
    assert normalize("TMALL", body, NOW, max_bytes=len(body) - 1).rejection.reason_code == "oversized"
    assert normalize("TMALL", body, NOW, max_bytes=len(body)).rejection.reason_code != "oversized"


@pytest.mark.parametrize("changes,code", [
    ({"payment": "-1.00"}, "bad_amount"),
    ({"payment": "12.345"}, "bad_amount"),
    ({"payment": "abc"}, "bad_amount"),
    ({"payment": "10000000.01"}, "bad_amount"),          # > 10^9 fen
    ({"payment": 12.5}, "bad_type"),                      # Tmall money is a string
    ({"payment": None}, "missing_field"),
    ({"status": "WAIT_FOR_GODOT"}, "unknown_status"),
    ({"status": ["WAIT_SELLER_SEND_GOODS"]}, "bad_type"),
    ({"created": "1999-12-31 23:59:59"}, "bad_time"),
    ({"created": "2026-13-01 00:00:00"}, "bad_time"),
    ({"created": "11/11/2026"}, "bad_time"),
    ({"created": 1794326400}, "bad_type"),
    ({"orders": {"order": []}}, "missing_field"),
    ({"orders": {"order": "SKU-0001"}}, "bad_type"),
    ({"orders": {"order": [{"outer_sku_id": "SKU-0001", "num": -1, "price": "1.00"}]}}, "bad_amount"),
    ({"orders": {"order": [{"outer_sku_id": "SKU-0001", "num": "2", "price": "1.00"}]}}, "bad_type"),
    ({"orders": {"order": [{"outer_sku_id": "SKU-0001", "num": 1, "price": "-1.00"}]}}, "bad_amount"),
    ({"orders": {"order": [{"num": 1, "price": "1.00"}]}}, "missing_field"),
    ({"receiver_name": "名" * 5000}, "field_too_long"),
    ({"receiver_name": {"first": "王"}}, "bad_type"),
    ({"tid": "bad@id"}, None),                            # falls back to alipay_no: accepted
    ({"tid": True}, "bad_type"),
])
def test_bad_fields_are_rejected(factory, changes, code):
    result = normalize("TMALL", _tmall(factory, **changes), NOW)
    if code is None:
        assert result.order is not None and result.id_fallback
    else:
        assert result.order is None and result.rejection.reason_code == code, result.rejection


def test_time_more_than_a_day_in_the_future_is_rejected(factory):
    future = (NOW + timedelta(days=1, hours=9)).strftime("%Y-%m-%d %H:%M:%S")  # +8h wall clock, +1h margin
    assert normalize("TMALL", _tmall(factory, created=future), NOW).rejection.reason_code == "bad_time"
    soon = (NOW + timedelta(hours=20)).strftime("%Y-%m-%d %H:%M:%S")
    assert normalize("TMALL", _tmall(factory, created=soon), NOW).order is not None


def test_lone_surrogate_is_bad_encoding(factory):
    body = _tmall(factory).replace(b'"receiver_name":"', b'"receiver_name":"\\ud800', 1)
    assert normalize("TMALL", body, NOW).rejection.reason_code == "bad_encoding"


def test_sql_and_markup_in_text_are_just_text(factory):
    evil = "'; DROP TABLE orders; --"
    result = normalize("TMALL", _tmall(factory, receiver_name=evil, buyer_message="<script>x</script>"), NOW)
    assert result.order["buyer"]["name"] == evil
    assert result.order["note"] == "<script>x</script>"


def test_unknown_platform_is_a_rejection_not_an_exception():
    assert normalize("EBAY", b"{}", NOW).rejection.reason_code == "unknown_platform"


def test_inconsistent_line_totals_are_allowed(factory):
    result = normalize("TMALL", _tmall(factory, payment="1.00", total_fee="9999.00"), NOW)
    assert result.order["amounts"]["total_minor"] == 100


# -- ghost orders, ids -----------------------------------------------------------------------------

@pytest.mark.parametrize("platform", PLATFORMS)
def test_ghost_order_falls_back_to_alternative_reference(factory, platform):
    payload = factory.order(platform)
    spec = SPECS[platform]
    alt = str(payload[spec.alt_id])
    payload[spec.order_id] = f"{payload[spec.order_id]}@installment"
    result = normalize(platform, factory.to_bytes(payload), NOW)
    assert result.id_fallback and result.order["id_fallback"]
    assert result.order["external_order_id"] == alt
    assert result.order["order_id"] == global_order_id(platform, alt)
    assert set(result.order["external_ids"].values()) == {alt, f"{str(payload[spec.order_id])}"}
    del payload[spec.alt_id]
    rejected = normalize(platform, factory.to_bytes(payload), NOW)
    assert rejected.rejection.reason_code == "bad_id"


def test_global_order_id_is_stable_and_distinct():
    a = global_order_id("TMALL", "4102938475610293847")
    assert a == global_order_id("TMALL", "4102938475610293847")
    assert a.startswith("TM-") and len(a) == 3 + 20
    assert a != global_order_id("TMALL", "4102938475610293848")
    assert global_order_id("JD", "1") != global_order_id("SHOPEE", "1")
    prefixes = {global_order_id(p, "1").split("-")[0] for p in PLATFORMS}
    assert len(prefixes) == len(PLATFORMS)


# -- status dictionaries, flags --------------------------------------------------------------------

@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_code_maps_to_a_standard_state(factory, platform):
    spec = SPECS[platform]
    assert set(spec.status_map.values()) <= set(STANDARD_STATES)
    for state in sorted(set(spec.status_map.values())):
        payload = factory.order(platform, status=state)
        order = normalize(platform, factory.to_bytes(payload), NOW).order
        assert order["status"] == state
        assert spec.status_map[order["status_raw"]] == state
        assert (order["paid_at"] is None) == (state == "PENDING_PAYMENT")


@pytest.mark.parametrize("note,flags", [
    ("请开发票", (True, False, False)),
    ("赠品多送点", (False, True, False)),
    ("送女朋友的礼物", (False, True, False)),
    ("加急", (False, False, True)),
    ("急用", (False, False, True)),
    ("不急，慢慢发", (False, False, False)),
    ("不着急", (False, False, False)),
    ("Invoice please, urgent", (True, False, True)),
    ("普通订单", (False, False, False)),
])
def test_note_flags(factory, note, flags):
    order = normalize("JD", factory.to_bytes(factory.order("JD", note=note)), NOW).order
    assert (order["flags"]["invoice"], order["flags"]["gift"], order["flags"]["urgent"]) == flags
    assert order["note"] == note


@pytest.mark.parametrize("platform", PLATFORMS)
def test_gift_card_and_custom_lines(factory, platform):
    order = normalize(platform, factory.to_bytes(factory.order(platform, gift_card=True, custom=True)), NOW).order
    assert order["flags"]["gift_card"]
    assert any(line["is_gift_card"] for line in order["lines"])
    assert order["lines"][0]["is_custom"]
    plain = normalize(platform, factory.to_bytes(factory.order(platform)), NOW).order
    assert not plain["flags"]["gift_card"] and not any(line["is_custom"] for line in plain["lines"])


def test_remote_province_spelled_long_is_canonicalised(factory):
    payload = factory.order("TMALL", province="新疆")
    payload["receiver_state"] = "新疆维吾尔自治区"
    assert normalize("TMALL", factory.to_bytes(payload), NOW).order["address"]["province"] == "新疆"


# -- fingerprints, dead letters --------------------------------------------------------------------

@pytest.mark.parametrize("platform", PLATFORMS)
def test_fingerprint_ignores_redelivery_formatting_but_sees_changes(factory, platform):
    payload = factory.order(platform)
    first = normalize(platform, factory.to_bytes(payload), NOW).order
    again = normalize(platform, factory.redelivery_bytes(payload), NOW + timedelta(minutes=5)).order
    assert again["ingest_time"] != first["ingest_time"]
    assert content_fingerprint(again) == content_fingerprint(first)
    decoded = order_codec().decode(order_codec().encode(first))
    assert content_fingerprint(decoded) == content_fingerprint(first)
    updated = normalize(platform, factory.to_bytes(factory.update(payload, "CANCELLED")), NOW).order
    assert content_fingerprint(updated) != content_fingerprint(first)
    for path in (("address", "detail"), ("buyer", "name")):
        changed = dict(first, **{path[0]: dict(first[path[0]], **{path[1]: "变了"})})
        assert content_fingerprint(changed) != content_fingerprint(first)
    changed_line = dict(first, lines=[dict(first["lines"][0], quantity=first["lines"][0]["quantity"] + 1)]
                        + first["lines"][1:])
    assert content_fingerprint(changed_line) != content_fingerprint(first)


def test_dead_letter_record_is_valid_avro_with_original_bytes():
    payload = b"{\"tid\": \xff"
    result = normalize("TMALL", payload, NOW)
    record = dead_letter_record("TMALL", "orders.raw.tmall", 3, 12345, b"k1", payload, result.rejection, NOW)
    decoded = dead_letter_codec().decode(dead_letter_codec().encode(record))
    assert decoded["payload"] == payload and decoded["key"] == b"k1"
    assert decoded["reason_code"] == "bad_encoding" and decoded["offset"] == 12345 and decoded["partition"] == 3
    assert decoded["failed_at"] == NOW
    none_key = dead_letter_record("JD", "t", 0, 0, None, b"", Rejection("malformed_json", "x"), NOW)
    assert dead_letter_codec().decode(dead_letter_codec().encode(none_key))["key"] is None
