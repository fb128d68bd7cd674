"""Compatible evolution of the order: bytes written with order v1 or v2 are read by the v3 (current)
reader, and v3 bytes by a v2 reader (consumers and producers upgrade in any order)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.codecs import SCHEMA_DIR, AvroCodec, CodecError, order_codec
from pipeline.domain.normalize import normalize
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.topics import PLATFORMS

NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)
V2_FINGERPRINT = "3a84d5bd2ba33c1a"  # order.avsc's fingerprint before v3 (git show b528d8c:schemas/order.avsc)


def _v1_view(order: dict) -> dict:
    """What a v1 writer (before the risk stage existed) would have had."""
    old = {k: v for k, v in order.items() if k not in ("risk_flags", "checked_lightly", "carrier", "waybill")}
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


@pytest.mark.parametrize("older", ["order.v1", "order.v2"])
def test_older_enums_are_identical_and_new_fields_have_defaults(older):
    old = json.loads((SCHEMA_DIR / f"{older}.avsc").read_text())
    new = json.loads((SCHEMA_DIR / "order.avsc").read_text())
    f_old = {f["name"]: f for f in old["fields"]}
    f_new = {f["name"]: f for f in new["fields"]}
    for name in ("platform", "status"):
        assert f_old[name]["type"]["symbols"] == f_new[name]["type"]["symbols"]
    for name in set(f_new) - set(f_old):
        assert "default" in f_new[name], name


def _shipped_order(platform: str) -> dict:
    factory = RawOrderFactory(7, start=NOW - timedelta(hours=3))
    shipped = factory.update(factory.order(platform), "SHIPPED")
    return normalize(platform, factory.to_bytes(shipped), NOW).order


def test_v2_bytes_decode_with_the_v3_reader_without_a_shipment():
    """Orders written before the courier fields existed read as shipped-without-waybill."""
    order = _shipped_order("TMALL")
    v2_view = {k: v for k, v in order.items() if k not in ("carrier", "waybill")}
    v2_bytes = AvroCodec("order.v2").encode({**v2_view, "schema_version": 2})
    assert v2_bytes[2:10] != order_codec().encode(order)[2:10]
    decoded = order_codec().decode(v2_bytes)
    assert decoded["carrier"] is None and decoded["waybill"] is None and decoded["schema_version"] == 2
    assert {k: v for k, v in decoded.items() if k not in ("carrier", "waybill", "schema_version")} == \
           {k: v for k, v in v2_view.items() if k != "schema_version"}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_v3_shipment_fields_survive_and_a_v2_reader_drops_them(platform):
    order = _shipped_order(platform)
    assert order["schema_version"] == 3 and order["waybill"]
    v3_bytes = order_codec().encode(order)
    assert {k: order_codec().decode(v3_bytes)[k] for k in ("carrier", "waybill")} == \
           {"carrier": order["carrier"], "waybill": order["waybill"]}
    old_reader = AvroCodec("order.v2").decode(v3_bytes)            # forward compatibility
    assert "waybill" not in old_reader and "carrier" not in old_reader
    assert old_reader == {k: v for k, v in order.items() if k not in ("carrier", "waybill")}


def test_v2_schema_is_the_one_written_before_the_upgrade():
    """order.v2 must keep the fingerprint bytes already on the topics carry."""
    v2 = json.loads((SCHEMA_DIR / "order.v2.avsc").read_text())
    assert [f["name"] for f in v2["fields"]][-3:] == ["risk_flags", "checked_lightly", "ingest_time"]
    assert AvroCodec("order.v2").fingerprint.hex() == V2_FINGERPRINT


def test_corrupt_or_unknown_bytes_raise_codec_error():
    with pytest.raises(CodecError):
        order_codec().decode(b"\xc3\x01" + b"\x00" * 8 + b"junk")
    with pytest.raises(CodecError):
        order_codec().decode(b'{"json": true}')
