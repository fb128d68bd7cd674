"""Issue 19's missing piece: a shipped order carries its courier and waybill (each platform in its
own fields, the courier mapped to the logistics code table's carrier code), and a shipped-state
update registers that waybill once in effect. Pure functions, no Kafka."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.contracts import WaybillRegistered
from pipeline.devtools.fake_orders import (COURIERS_NAMED, RawOrderFactory, drop_shipment, generate_stream,
                                           ReplayMix, shipment_of, supported_states)
from pipeline.domain import logistics as lg
from pipeline.domain.normalize import content_fingerprint, normalize
from pipeline.domain.platforms import COURIER_NAMES, carrier_code, parse_courier_names
from pipeline.topics import PLATFORMS

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)

# Written by hand from each platform's shipped payload, not from the specs: (shipped status fields,
# courier and waybill fields as the platform nests them, the carrier code expected).
SHIPPED_BY_HAND = {
    "TMALL": ({"status": "WAIT_BUYER_CONFIRM_GOODS"},
              {"logistics_company": "顺丰速运", "out_sid": "SF1234567890123"}, "SF"),
    "JD": ({"order_state": "WAIT_GOODS_RECEIVE_CONFIRM"},
           {"carrier": "中通快递", "waybill_code": "75312345678901"}, "ZTO"),
    "PINDUODUO": ({"order_status": 2}, {"shipping_company": "极兔快递", "tracking_number": "JT0001234567890"}, "JT"),
    "DOUYIN": ({"order_status": 3},
               {"logistics_info": [{"company_name": "圆通速递", "tracking_no": "YT7000123456789"}]}, "YTO"),
    "KUAISHOU": ({"status": 40}, {"logisticsInfo": {"expressCompany": "邮政EMS", "expressNo": 1100012345678}},
                 "EMS"),
    "SHOPEE": ({"order_status": "SHIPPED"}, {"shipping_carrier": "J&T Express", "tracking_number": "JT5500012345"},
               "JT"),
    "SHOPIFY": ({"fulfillment_status": "fulfilled"},
                {"fulfillments": [{"tracking_company": "SF Express", "tracking_number": "SF9000000000001"}]}, "SF"),
}


def _shipped(platform: str, courier_fields: dict | None = None) -> dict:
    status, fields, _ = SHIPPED_BY_HAND[platform]
    raw = json.loads((CORPUS / platform.lower() / "paid.json").read_text())
    return {**raw, **status, **(fields if courier_fields is None else courier_fields)}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_ships_with_its_own_courier_and_waybill_fields(platform):
    _, fields, code = SHIPPED_BY_HAND[platform]
    order = normalize(platform, json.dumps(_shipped(platform)).encode(), NOW).order
    assert order["status"] == "SHIPPED"
    assert order["carrier"] == code
    waybill = json.dumps(fields)  # the number as the platform wrote it (Kuaishou: a JSON number)
    assert order["waybill"] and order["waybill"] in waybill


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_shipped_update_without_courier_fields_has_none(platform):
    order = normalize(platform, json.dumps(_shipped(platform, {})).encode(), NOW).order
    assert order["status"] == "SHIPPED" and order["carrier"] is None and order["waybill"] is None


def test_an_unknown_courier_name_is_kept_as_sent_never_guessed():
    order = normalize("TMALL", json.dumps(_shipped("TMALL", {"logistics_company": "中国邮政",
                                                              "out_sid": " 9890001 "})).encode(), NOW).order
    assert order["carrier"] == "中国邮政" and order["waybill"] == "9890001"
    assert carrier_code("  sf express ") == "SF" and carrier_code("SF Expresss") == "SF Expresss"


def test_every_courier_name_maps_to_a_carrier_of_the_code_table():
    assert set(COURIER_NAMES.values()) == set(lg.code_table().carriers())
    with pytest.raises(ValueError, match="listed under"):
        parse_courier_names("SF: [顺丰]\nZTO: [顺丰]\n")


def test_an_order_without_shipment_keeps_the_fingerprint_it_had_before_the_fields_existed():
    order = normalize("JD", json.dumps(_shipped("JD", {})).encode(), NOW).order
    before = {k: v for k, v in order.items() if k not in ("carrier", "waybill")}
    assert content_fingerprint(order) == content_fingerprint(before)
    shipped = normalize("JD", json.dumps(_shipped("JD")).encode(), NOW).order
    assert content_fingerprint(shipped) != content_fingerprint(order)  # a waybill is content


@pytest.mark.parametrize("platform", PLATFORMS)
def test_generated_ship_updates_carry_a_courier_and_waybill_normalize_reads_back(platform):
    factory = RawOrderFactory(11, start=NOW - timedelta(hours=2))
    paid = factory.order(platform)
    assert shipment_of(platform, paid) == (None, None)
    shipped = factory.update(paid, "SHIPPED")
    courier, waybill = shipment_of(platform, shipped)
    assert courier in COURIERS_NAMED[platform] and waybill
    order = normalize(platform, factory.to_bytes(shipped), NOW).order
    assert (order["carrier"], order["waybill"]) == (carrier_code(courier), waybill)
    for state in {"DELIVERED", "COMPLETED"} & supported_states(platform):  # Shopify says no more than shipped
        later = factory.update(shipped, state)
        assert shipment_of(platform, later) == (courier, waybill)  # the parcel it shipped with
    drop_shipment(platform, shipped)
    assert normalize(platform, factory.to_bytes(shipped), NOW).order["waybill"] is None


def test_shipments_leave_the_factorys_random_sequence_so_seeded_streams_stay_what_they_were():
    """The courier and waybill are derived from the order id, not drawn from the factory's rng."""
    shipping, cancelling = RawOrderFactory(5), RawOrderFactory(5)
    order = shipping.order("TMALL")
    assert cancelling.order("TMALL") == order
    shipping.update(order, "SHIPPED")
    cancelling.update(order, "CANCELLED")
    assert shipping.rng.getstate() == cancelling.rng.getstate()
    # the same order ships with the same parcel whichever factory renders it
    assert shipment_of("TMALL", RawOrderFactory(6).update(order, "SHIPPED")) == \
        shipment_of("TMALL", shipping.update(order, "SHIPPED"))
    shipped = [m for m in generate_stream(300, 5, ReplayMix(ship=0.1)) if m.kind == "ship"]
    assert shipped and all(normalize(m.platform, m.value, NOW).order["waybill"] for m in shipped)


# -- the emit decision --------------------------------------------------------------------------

def _order(carrier, waybill) -> dict:
    return {"order_id": "TM-1", "platform": "TMALL", "status": "SHIPPED", "carrier": carrier, "waybill": waybill}


def test_a_shipped_order_with_a_known_carrier_registers_its_waybill_at_the_versions_time():
    reg, outcome = lg.waybill_registration(_order("SF", "SF100"), 1_773_144_450_123)
    assert outcome == "registered"
    assert reg == WaybillRegistered("TM-1", "SF", "SF100", 1_773_144_450_123)
    assert WaybillRegistered.decode(reg.encode()) == reg


@pytest.mark.parametrize("carrier, waybill, outcome", [
    ("SF", None, "no_waybill"), (None, None, "no_waybill"), ("SF", "", "no_waybill"),
    ("德邦快递", "DPK1", "unknown_carrier"), (None, "SF100", "unknown_carrier"),
    ("CAINIAO", "M1", "unknown_carrier"),  # an aggregator reports parcels, it does not carry them
])
def test_nothing_is_registered_without_a_waybill_or_a_carrier_couriers_report_for(carrier, waybill, outcome):
    assert lg.waybill_registration(_order(carrier, waybill), 1) == (None, outcome)


def test_a_repeated_registration_is_the_same_record_and_the_first_one_stays():
    """What re-processing or a later shipped-state version sends: the agent keeps the first
    (agents/logistics.registered: an existing non-provisional waybill is 'redelivered')."""
    first, _ = lg.waybill_registration(_order("SF", "SF100"), 1000)
    again, _ = lg.waybill_registration(_order("SF", "SF100"), 1000)
    assert first.encode() == again.encode()
    w = lg.register(first, 2000, 1500, b"k")
    assert not lg.is_provisional(w) and w.order_id == "TM-1"
