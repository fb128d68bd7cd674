"""Logistics tracking's pure logic (pipeline.domain.logistics): translator, dedupe and ordering,
consensus, freshness with fail-over, badge, short link."""
from __future__ import annotations

import itertools
import json

import pytest

from pipeline.contracts import WaybillRegistered
from pipeline.domain import logistics as lg

T = 1_780_000_000_000
STALE_S = 25 * 60
SECRET = b"test-secret"


def sf(code, at_ms, event_id, waybill="SF100", order="TM-1"):
    return json.dumps({"mailno": waybill, "opCode": code, "acceptTime": at_ms, "routeId": event_id,
                       "orderId": order}).encode()


def cainiao(action, at_ms, event_id, cp="SF", waybill="SF100"):
    return json.dumps({"mailNo": waybill, "action": action, "time": at_ms, "eventId": event_id, "cpCode": cp}).encode()


def registered(carrier="SF", waybill="SF100", order="TM-1", now=T):
    return lg.register(WaybillRegistered(order, carrier, waybill, now), now, STALE_S, SECRET)


def fold(w, source, payload, now):
    return lg.apply_scan(w, lg.translate(source, payload), now, STALE_S)


def test_the_code_table_covers_every_courier_and_aggregator_and_all_five_states():
    table = lg.code_table()
    assert set(table.carriers()) == {"SF", "ZTO", "YTO", "JT", "EMS"}
    assert set(table.aggregators()) == {"CAINIAO", "KUAIDI100"}
    for courier in table.couriers.values():
        assert set(courier.codes.values()) == set(lg.STATES), courier.name
    assert set(table.backup) == set(table.carriers())


def test_seed_codes_translate_and_each_courier_reads_its_own_fields():
    scan = lg.translate("SF", sf("SF101", T, "r1"))
    assert (scan.state, scan.waybill, scan.carrier, scan.order_ref) == ("collected", "SF100", "SF", "TM-1")
    assert lg.translate("SF", sf("SF203", T, "r2")).state == "in_transit"
    zto = json.dumps({"billCode": "ZT9", "scanType": "派件", "scanTime": T // 1000, "scanId": 7}).encode()
    z = lg.translate("ZTO", zto)
    assert (z.state, z.event_at_ms, z.waybill) == ("out_for_delivery", T // 1000 * 1000, "ZT9")
    k = lg.translate("KUAIDI100", json.dumps({"nu": "YT1", "state": 3, "ftime": 5, "id": "a", "com": "yuantong"}).encode())
    assert (k.state, k.carrier, k.kind) == ("signed", "YTO", "aggregator")


@pytest.mark.parametrize("source, payload, reason", [
    ("SF", sf("SF999", T, "r1"), "unknown_status"),
    ("SF", b"{not json", "malformed_json"),
    ("SF", json.dumps({"mailno": "SF1", "acceptTime": T, "routeId": "x"}).encode(), "missing_field"),
    ("SF", sf("SF101", "yesterday", "r1"), "bad_time"),
    ("CAINIAO", cainiao("SIGN", T, "e", cp="DHL"), "unknown_carrier"),
    ("UPS", sf("SF101", T, "r1"), "unknown_courier"),
])
def test_what_cannot_be_translated_is_refused_never_guessed(source, payload, reason):
    with pytest.raises(lg.TrackingError) as err:
        lg.translate(source, payload)
    assert err.value.reason_code == reason


def test_a_code_table_with_a_sixth_state_or_missing_fields_is_refused():
    with pytest.raises(ValueError, match="unknown states"):
        lg.CodeTable.parse("couriers:\n  X: {kind: courier, fields: {waybill: a, code: b, time: c, event_id: d},"
                           " time_unit: ms, codes: {A: lost}}\n")
    with pytest.raises(ValueError, match="carrier"):
        lg.CodeTable.parse("couriers:\n  X: {kind: aggregator, fields: {waybill: a, code: b, time: c, event_id: d},"
                           " time_unit: ms, codes: {}}\n")


def test_scans_move_the_parcel_forward_duplicates_and_late_scans_do_not():
    w = registered()
    o = fold(w, "SF", sf("SF101", T + 1000, "r1"), T + 2000)
    assert (o.result, o.waybill.agreed_state, o.update.state, o.update.cause) == ("new", "collected", "collected", "scan")
    again = fold(o.waybill, "SF", sf("SF101", T + 1000, "r1"), T + 3000)
    assert again.result == "duplicate" and again.update is None
    o2 = fold(o.waybill, "SF", sf("SF204", T + 9000, "r3"), T + 10_000)
    assert o2.waybill.agreed_state == "out_for_delivery"
    late = fold(o2.waybill, "SF", sf("SF203", T + 5000, "r2"), T + 11_000)  # in transit, arriving after
    assert late.result == "stale" and late.update is None
    assert late.waybill.agreed_state == "out_for_delivery"
    assert late.waybill.collected_at_ms == T + 1000  # a later scan never moves the collection
    assert "SF:r2" in late.waybill.seen


def test_events_ahead_of_the_registration_wait_for_it_and_count_once_it_comes():
    early = lg.apply_scan(None, lg.translate("SF", sf("SF204", T + 5000, "r2")), T, STALE_S)
    assert early.result == "early" and early.update is None and lg.is_provisional(early.waybill)
    assert not lg.due_for_pull(early.waybill, T + 10**9)
    w = fold(early.waybill, "SF", sf("SF101", T + 1000, "r1"), T)
    assert w.result == "stale"  # older than what is already known, early or not
    again = fold(w.waybill, "SF", sf("SF204", T + 5000, "r2"), T)
    assert again.result == "duplicate"
    o = lg.register_over(WaybillRegistered("TM-1", "SF", "SF100", T - 1000), again.waybill, T + 10, STALE_S, SECRET)
    assert (o.update.state, o.update.cause, o.waybill.order_id) == ("out_for_delivery", "registered", "TM-1")
    # collected when the late collection scan says, not when the first report to arrive was made
    assert o.waybill.collected_at_ms == T + 1000 and {"SF:r1", "SF:r2"} <= set(o.waybill.seen)
    assert o.update.expected_at_ms == T + 1000 + 24 * 3_600_000
    assert fold(o.waybill, "SF", sf("SF204", T + 5000, "r2"), T + 20).result == "duplicate"


@pytest.mark.parametrize("order", list(itertools.permutations(["reg", "r1", "r2", "r3"])))
def test_the_collection_time_does_not_depend_on_the_order_events_arrive_in(order):
    """Registration and scans come on different topics: any interleaving, one collection time."""
    scans = {"r1": sf("SF101", T + 1000, "r1"), "r2": sf("SF203", T + 5000, "r2"), "r3": sf("SF204", T + 9000, "r3")}
    w = None
    for step in order:
        if step == "reg":
            w = lg.register_over(WaybillRegistered("TM-1", "SF", "SF100", T), w, T + 10, STALE_S, SECRET).waybill
        else:
            w = lg.apply_scan(w, lg.translate("SF", scans[step]), T + 20_000, STALE_S).waybill
    assert (w.agreed_state, w.collected_at_ms) == ("out_for_delivery", T + 1000)
    assert lg.expected_at_ms(w) == T + 1000 + 24 * 3_600_000


def test_an_early_conflict_and_an_early_signature_surface_at_registration():
    e = lg.apply_scan(None, lg.translate("SF", sf("SF80", T + 100, "r1")), T, STALE_S).waybill
    o = lg.register_over(WaybillRegistered("TM-1", "SF", "SF100", T), e, T + 10, STALE_S, SECRET)
    assert o.notify and o.waybill.notified
    e = lg.apply_scan(None, lg.translate("CAINIAO", cainiao("TRANSPORT", T + 100, "c1", cp="ZTO")), T, STALE_S).waybill
    o = lg.register_over(WaybillRegistered("TM-2", "SF", "SF100", T), e, T + 10, STALE_S, SECRET)
    assert o.waybill.syncing and o.review is not None and o.update.state == "syncing"


def test_signed_notifies_once():
    w = fold(registered(), "SF", sf("SF101", T, "r1"), T).waybill
    signed = fold(w, "SF", sf("SF80", T + 100, "r2"), T + 200)
    assert signed.notify and signed.waybill.notified
    completed = fold(signed.waybill, "SF", sf("SF8000", T + 300, "r3"), T + 400)
    assert completed.waybill.agreed_state == "completed" and not completed.notify


def test_a_lagging_aggregator_agrees_a_contradicting_one_means_syncing_and_review():
    w = fold(registered(), "SF", sf("SF204", T + 5000, "r1"), T + 6000).waybill   # out for delivery
    lag = fold(w, "CAINIAO", cainiao("TRANSPORT", T + 1000, "e1"), T + 7000)   # older report: lagging
    assert lag.result == "new" and not lag.waybill.syncing and lag.review is None
    assert lag.waybill.agreed_state == "out_for_delivery"
    clash = fold(lag.waybill, "CAINIAO", cainiao("TRANSPORT", T + 9000, "e2"), T + 9500)  # later, still in transit
    assert clash.result == "conflict" and clash.waybill.syncing
    assert clash.update.state == "syncing" and clash.update.agreed_state == "out_for_delivery"
    assert clash.review is not None and clash.review.states == {"SF": "out_for_delivery", "CAINIAO": "in_transit"}
    still = fold(clash.waybill, "CAINIAO", cainiao("TRANSPORT", T + 9100, "e3"), T + 9600)
    assert still.review is None  # queued once while the conflict lasts
    agreed = fold(still.waybill, "SF", sf("SF80", T + 20_000, "r2"), T + 21_000)
    assert agreed.result == "agreed" and not agreed.waybill.syncing and agreed.update.state == "signed"
    assert agreed.notify


def test_an_aggregator_naming_another_carrier_is_a_conflict():
    w = fold(registered(), "SF", sf("SF101", T, "r1"), T).waybill
    o = fold(w, "CAINIAO", cainiao("TRANSPORT", T + 100, "e1", cp="ZTO"), T + 200)
    assert o.waybill.syncing and "ZTO" in o.review.reason


def test_no_signed_notification_while_sources_disagree():
    w = fold(registered(), "CAINIAO", cainiao("TRANSPORT", T + 10_000, "e1"), T).waybill
    o = fold(w, "SF", sf("SF80", T + 10_000, "r1"), T + 100)
    assert o.waybill.syncing and not o.notify


def test_freshness_pull_due_after_the_setting_and_not_for_delivered_parcels():
    w = registered(now=T)
    assert not lg.due_for_pull(w, T + STALE_S * 1000 - 1)
    assert lg.due_for_pull(w, T + STALE_S * 1000)
    signed = fold(w, "SF", sf("SF80", T, "r1"), T).waybill
    assert not lg.due_for_pull(signed, T + 10 * STALE_S * 1000)


def test_three_failed_pulls_in_a_row_switch_to_the_backup_and_recovery_switches_back():
    w = registered()
    now = T
    events = []
    for i in range(3):
        assert lg.pull_source(w) == "SF"
        now += 1000
        o = lg.after_pull(w, "SF", ok=False, now_ms=now, stale_after_s=STALE_S, retry_after_s=60)
        w = o.waybill
        events.append(o.event)
    assert events == ["failed", "failed", "failover"]
    assert w.on_backup and w.failovers == 1 and w.pulls == 3
    assert lg.pull_source(w) == "KUAIDI100"
    backup_ok = lg.after_pull(w, "KUAIDI100", ok=True, now_ms=now + 10, stale_after_s=STALE_S)
    assert backup_ok.event == "ok" and backup_ok.waybill.on_backup  # still on backup: the carrier is not back
    back = lg.after_pull(backup_ok.waybill, "SF", ok=True, now_ms=now + 20, stale_after_s=STALE_S)
    assert back.event == "recovered" and not back.waybill.on_backup and back.waybill.failed_pulls == 0
    assert back.update.cause == "recovered"


def test_an_answered_pull_without_new_events_leaves_the_badge_ageing():
    w = registered(now=T)
    for hour in (1, 2, 3, 4):
        now = T + hour * 3600 * 1000
        w = lg.after_pull(w, "SF", ok=True, now_ms=now, stale_after_s=STALE_S).waybill
        assert w.next_pull_ms == now + STALE_S * 1000
    assert lg.badge(w, T + 4 * 3600 * 1000) == "red"
    assert w.last_update_ms == T


def test_a_late_scan_does_not_make_the_parcel_fresher():
    w = fold(registered(now=T), "SF", sf("SF204", T + 9000, "r2"), T).waybill
    late = fold(w, "SF", sf("SF203", T + 1000, "r1"), T + 2 * 3600 * 1000)
    assert late.result == "stale" and late.waybill.last_update_ms == T


def test_a_success_between_failures_resets_the_count():
    w = registered()
    for ok in (False, False, True, False, False):
        w = lg.after_pull(w, "SF", ok=ok, now_ms=T, stale_after_s=STALE_S).waybill
    assert not w.on_backup and w.failed_pulls == 2


@pytest.mark.parametrize("age_s, expected", [(0, "green"), (3599, "green"), (3600, "yellow"), (3 * 3600, "yellow"),
                                             (3 * 3600 + 1, "red")])
def test_badge_by_age_without_update(age_s, expected):
    w = registered(now=T)
    assert lg.badge(w, T + age_s * 1000) == expected


def test_rebadge_says_so_once_and_a_scan_turns_it_green_again():
    w = registered(now=T)
    o = lg.rebadge(w, T + 4 * 3600 * 1000)
    assert o.update.badge == "red" and o.waybill.badge == "red"
    assert lg.rebadge(o.waybill, T + 5 * 3600 * 1000).update is None
    late = fold(o.waybill, "SF", sf("SF101", T + 60_000, "r0"), T + 5 * 3600 * 1000)
    assert late.waybill.badge == "red"  # a scan delivered 5 h late is 5 h old news
    back = fold(late.waybill, "SF", sf("SF203", T + 5 * 3600 * 1000, "r1"), T + 5 * 3600 * 1000)
    assert back.waybill.badge == "green" and back.update.badge == "green"


def test_a_registration_replayed_late_is_as_old_as_the_waybill():
    w = lg.register(WaybillRegistered("TM-9", "SF", "SF9", T - 4 * 3600 * 1000), T, STALE_S, SECRET)
    assert lg.badge(w, T) == "red" and lg.due_for_pull(w, T)


def test_delivered_parcels_stay_green():
    w = fold(registered(now=T), "SF", sf("SF80", T, "r1"), T).waybill
    assert lg.badge(w, T + 10 * 3600 * 1000) == "green"


def test_track_code_is_stable_unguessable_and_carries_no_order_data():
    a, b = lg.track_code(SECRET, "TM-1"), lg.track_code(SECRET, "TM-2")
    assert a == lg.track_code(SECRET, "TM-1") and a != b
    assert len(a) == 16 and "tm" not in a and a.isalnum()
    assert lg.track_code(b"other", "TM-1") != a


def test_expected_arrival_is_collection_plus_the_carriers_transit_time():
    w = fold(registered(), "SF", sf("SF101", T, "r1"), T).waybill
    assert lg.expected_at_ms(w) == T + 24 * 3600 * 1000
    assert lg.expected_at_ms(registered()) is None


def test_waybill_record_round_trips_through_its_avro_schema():
    w = fold(registered(), "CAINIAO", cainiao("TRANSPORT", T, "e1"), T).waybill
    from pipeline.contracts import Waybill
    assert Waybill.decode(w.encode()) == w


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (2, 0, 1), (2, 1, 0)])
def test_a_conflict_is_found_whatever_order_the_reports_arrive_in(order):
    """Courier and aggregator come on two topics: no order between them. The buyer sees syncing
    and the waybill is reviewed once in every order; the last agreed state may differ."""
    reports = [("SF", sf("SF101", T - 9 * 3600_000, "s1")), ("SF", sf("SF204", T - 3600_000, "s2")),
               ("CAINIAO", cainiao("TRANSPORT", T - 600_000, "c1"))]
    w, reviews = registered(now=T - 10 * 3600_000), 0
    for i in order:
        o = fold(w, *reports[i], T)
        w, reviews = o.waybill, reviews + (o.review is not None)
    assert w.syncing and lg.shown_state(w) == "syncing" and reviews == 1
    assert w.agreed_state in ("in_transit", "out_for_delivery")
