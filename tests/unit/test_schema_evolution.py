"""Backward-compatible evolution: bytes written with order v1 are read by the v2 (current) reader."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.codecs import SCHEMA_DIR, AvroCodec, CodecError, order_codec
from pipeline.domain.normalize import normalize
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.topics import PLATFORMS

NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)


def _v1_view(order: dict) -> dict:
    """What a v1 writer (before the risk stage existed) would have had."""
    old = {k: v for k, v in order.items() if k not in ("risk_flags", "checked_lightly")}
    old["schema_version"] = 1
    return old


@pytest.mark.parametrize("platform", PLATFORMS)
def test_v1_bytes_decode_with_v2_reader_and_defaults(platform):
    factory = RawOrderFactory(5, start=NOW - timedelta(hours=1))
    order = normalize(platform, factory.to_bytes(factory.order(platform, gift_card=True)), NOW).order
    v1_bytes = AvroCodec("order.v1").encode(_v1_view(order))
    v2_bytes = order_codec().encode(order)
    assert v1_bytes[2:10] != v2_bytes[2:10]               # the header names a different writer schema
    decoded = order_codec().decode(v1_bytes)
    assert decoded["risk_flags"] == [] and decoded["checked_lightly"] is False
    assert decoded["schema_version"] == 1                  # what the writer said, not the reader default
    assert {k: v for k, v in decoded.items() if k != "schema_version"} == \
           {k: v for k, v in order.items() if k != "schema_version"}


def test_v2_fields_survive_and_v1_reader_drops_them():
    factory = RawOrderFactory(6, start=NOW - timedelta(hours=1))
    order = normalize("JD", factory.to_bytes(factory.order("JD")), NOW).order
    order = dict(order, risk_flags=["high_value", "remote"], checked_lightly=True)
    assert order_codec().decode(order_codec().encode(order))["risk_flags"] == ["high_value", "remote"]
    old_reader = AvroCodec("order.v1").decode(order_codec().encode(order))   # forward compatibility
    assert "risk_flags" not in old_reader and old_reader["order_id"] == order["order_id"]


def test_v1_and_v2_enums_are_identical_and_new_fields_have_defaults():
    v1 = json.loads((SCHEMA_DIR / "order.v1.avsc").read_text())
    v2 = json.loads((SCHEMA_DIR / "order.avsc").read_text())
    f1 = {f["name"]: f for f in v1["fields"]}
    f2 = {f["name"]: f for f in v2["fields"]}
    for name in ("platform", "status"):
        assert f1[name]["type"]["symbols"] == f2[name]["type"]["symbols"]
    for name in set(f2) - set(f1):
        assert "default" in f2[name], name


def test_corrupt_or_unknown_bytes_raise_codec_error():
    with pytest.raises(CodecError):
        order_codec().decode(b"\xc3\x01" + b"\x00" * 8 + b"junk")
    with pytest.raises(CodecError):
        order_codec().decode(b'{"json": true}')
