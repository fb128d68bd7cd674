"""Property tests: normalize never raises, and every order it produces round-trips through Avro."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codecs import order_codec
from pipeline.domain.normalize import NormalizeResult, content_fingerprint, normalize
from pipeline.domain.platforms import SPECS
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.topics import PLATFORMS

NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)
CODEC = order_codec()

platforms = st.sampled_from(PLATFORMS)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


def _check(result: NormalizeResult) -> None:
    assert isinstance(result, NormalizeResult)
    assert (result.order is None) != (result.rejection is None)
    if result.order is not None:
        assert CODEC.decode(CODEC.encode(result.order)) == result.order
    else:
        assert result.rejection.reason_code and isinstance(result.rejection.reason, str)


@settings(max_examples=400, deadline=None)
@given(platforms, st.binary(max_size=512))
def test_never_raises_on_arbitrary_bytes(platform, payload):
    _check(normalize(platform, payload, NOW))


@settings(max_examples=300, deadline=None)
@given(platforms, st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_never_raises_on_arbitrary_json_objects(platform, obj):
    _check(normalize(platform, json.dumps(obj).encode(), NOW))


def _field_values():
    """Values that are plausible-but-wrong for some field of some platform."""
    return (st.none() | st.booleans() | st.integers(min_value=-10 ** 20, max_value=10 ** 20)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
            | st.sampled_from(["2026-11-11 00:00:00", "0000-00-00 00:00:00", "9999-12-31T23:59:59-23:59",
                               "1.234", "-0.00", "1e9", "1", "", "@", "null", "WAIT_SELLER_SEND_GOODS"])
            | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(platforms, st.integers(min_value=0, max_value=10 ** 6), st.data())
def test_mutated_real_orders_never_raise_and_roundtrip(platform, seed, data):
    """Take a valid generated order and replace a few of its fields with hostile values."""
    factory = RawOrderFactory(seed, start=NOW - timedelta(hours=3))
    payload = factory.order(platform, gift_card=data.draw(st.booleans()), note=data.draw(st.none() | st.text()))
    keys = sorted(payload)
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        payload[data.draw(st.sampled_from(keys))] = data.draw(_field_values())
    _check(normalize(platform, factory.to_bytes(payload), NOW))


@settings(max_examples=200, deadline=None)
@given(platforms, st.integers(min_value=0, max_value=10 ** 9),
       st.sampled_from(["PENDING_PAYMENT", "PAID", "SHIPPED", "CANCELLED"]),
       st.integers(min_value=1, max_value=10 ** 7), st.booleans(), st.booleans(),
       st.none() | st.text(max_size=200))
def test_valid_generated_orders_roundtrip_unchanged(platform, seed, status, amount, gift_card, custom, note):
    if status not in set(SPECS[platform].status_map.values()):
        status = "PAID"
    factory = RawOrderFactory(seed, start=NOW - timedelta(hours=3))
    payload = factory.order(platform, status=status, amount_minor=amount, gift_card=gift_card, custom=custom,
                            note=note)
    result = normalize(platform, factory.to_bytes(payload), NOW)
    assert result.rejection is None, result.rejection
    order = result.order
    assert order["status"] == status and order["amounts"]["total_minor"] == amount
    assert order["schema_version"] == 3 and order["risk_flags"] == [] and order["checked_lightly"] is False
    assert order["ingest_time"] == NOW
    for key in ("created_at", "updated_at", "ingest_time"):
        assert order[key].tzinfo is not None and order[key].microsecond % 1000 == 0
    decoded = CODEC.decode(CODEC.encode(order))
    assert decoded == order
    assert content_fingerprint(decoded) == content_fingerprint(order)
    again = normalize(platform, factory.redelivery_bytes(payload), NOW + timedelta(seconds=1)).order
    assert content_fingerprint(again) == content_fingerprint(order)
