"""The raw-order generator: realistic payloads, deterministic streams, and honest expectations."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.domain.normalize import normalize
from pipeline.devtools.fake_orders import (GIFT_CARD_SKUS, MALFORMED_KINDS, REMOTE_PROVINCES, SKUS, RawOrderFactory,
                                           ReplayMix, generate_stream, standard_status)
from pipeline.topics import PLATFORMS

NOW = datetime(2026, 11, 12, tzinfo=timezone.utc)


def test_catalog_and_provinces():
    assert len(SKUS) == 40 and len(set(SKUS)) == 40 and all(s.startswith("SKU-") for s in SKUS)
    assert set(GIFT_CARD_SKUS) <= set(SKUS)
    assert {"新疆", "西藏", "青海", "内蒙古"} <= set(REMOTE_PROVINCES)


def test_stream_messages_normalize_as_promised():
    counts = Counter()
    for msg in generate_stream(4000, seed=42):
        result = normalize(msg.platform, msg.value, NOW)
        counts[msg.kind] += 1
        if msg.expect == "canonical":
            assert result.rejection is None, (msg.kind, result.rejection)
            assert result.order["order_id"] == msg.order_id
        else:
            assert msg.expect == "dlq" and msg.order_id is None
            assert result.order is None and result.rejection.reason_code == msg.reason_code
    assert set(counts) == {"new", "redelivery", "update", "malformed"}
    assert sum(counts.values()) == 4000


def test_stream_is_deterministic_and_seed_dependent():
    a = [(m.key, m.value) for m in generate_stream(300, seed=1)]
    b = [(m.key, m.value) for m in generate_stream(300, seed=1)]
    c = [(m.key, m.value) for m in generate_stream(300, seed=2)]
    assert a == b and a != c


def test_redeliveries_and_updates_refer_to_earlier_orders():
    seen: dict[str, str] = {}
    for msg in generate_stream(3000, seed=9, mix=ReplayMix(redelivery=0.2, update=0.2)):
        if msg.kind == "new":
            assert msg.order_id not in seen      # new means new
            seen[msg.order_id] = msg.platform
        elif msg.kind in ("redelivery", "update"):
            assert seen.get(msg.order_id) == msg.platform


def test_mix_rates_are_roughly_respected():
    mix = ReplayMix(malformed=0.05, high_value=0.1, remote=0.1, gift_card=0.05, note_flags=0.1, ip_burst=0.02)
    orders, kinds, platforms = [], Counter(), Counter()
    for msg in generate_stream(5000, seed=3, mix=mix):
        kinds[msg.kind] += 1
        if msg.kind == "new":
            orders.append(normalize(msg.platform, msg.value, NOW).order)
            platforms[msg.platform] += 1
    n = len(orders)
    assert 0.03 < kinds["malformed"] / 5000 < 0.07
    assert 0.07 < sum(o["amounts"]["total_minor"] > 500_000 and o["currency"] == "CNY" for o in orders) / n < 0.2
    assert 0.07 < sum(o["address"]["province"] in REMOTE_PROVINCES for o in orders) / n < 0.14
    assert 0.03 < sum(o["flags"]["gift_card"] for o in orders) / n < 0.08
    assert sum(o["address"]["country"] not in ("CN", "SG", "MY", "TH", "PH") for o in orders) > 0
    ips = Counter(o["buyer"]["ip"] for o in orders)
    assert sum(1 for c in ips.values() if c >= 6) >= 10          # bursts of 6 orders from one IP
    assert platforms.most_common(1)[0][0] == "TMALL" and set(platforms) == set(PLATFORMS)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_update_changes_status_and_moves_time_forward(platform):
    f = RawOrderFactory(4, start=NOW - timedelta(days=1))
    status = "PENDING_PAYMENT" if platform != "PINDUODUO" else "PAID"
    payload = f.order(platform, status=status)
    updated = f.update(payload, "CANCELLED")
    assert standard_status(platform, updated) == "CANCELLED"
    before = normalize(platform, f.to_bytes(payload), NOW).order
    after = normalize(platform, f.to_bytes(updated), NOW).order
    assert after["order_id"] == before["order_id"] and after["updated_at"] > before["updated_at"]
    assert after["status"] == "CANCELLED"


def test_factory_options_are_honoured():
    f = RawOrderFactory(8, start=NOW - timedelta(hours=5))
    created = NOW - timedelta(hours=2)
    payload = f.order("JD", external_id="JD-777", amount_minor=650_000, province="西藏", ip="10.1.2.3",
                      skus=[("SKU-0003", 2)], created_at=created)
    order = normalize("JD", f.to_bytes(payload), NOW).order
    assert order["external_order_id"] == "JD-777" and order["amounts"]["total_minor"] == 650_000
    assert order["address"]["province"] == "西藏" and order["buyer"]["ip"] == "10.1.2.3"
    assert [(l["sku"], l["quantity"]) for l in order["lines"]] == [("SKU-0003", 2)]
    assert order["created_at"] == created
    with pytest.raises(ValueError):
        f.order("PINDUODUO", status="PENDING_PAYMENT")     # PDD has no code for it: never invent one
    with pytest.raises(ValueError):
        f.order("JD", country="US")                        # JD orders carry no country


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_malformed_kind_is_rejected_with_its_code(kind, platform):
    data = RawOrderFactory(12, start=NOW - timedelta(hours=1)).malformed(kind, platform)
    result = normalize(platform, data, NOW)
    assert result.order is None and result.rejection.reason_code == MALFORMED_KINDS[kind]


def test_redelivery_bytes_differ_but_parse_the_same():
    import json
    f = RawOrderFactory(2)
    payload = f.order("DOUYIN", note="加急")
    raw = f.redelivery_bytes(payload)
    assert raw != f.to_bytes(payload) and json.loads(raw) == payload


# -- issue 17: shipments, late payments, suspect and out-of-order updates ----------------------------

FULFILMENT = ReplayMix(ship=0.08, late_payment=0.04, suspect=0.04, out_of_order=0.03)


def judged(messages):
    """Run the messages through normalize and the dedupe state as the worker would (one order's
    versions in stream order): (message, change, hit) for every canonical message."""
    from pipeline.domain.dedupe import PASSED, judge, version_of
    from pipeline.domain.transitions import load_transition_file

    rules, seen, out = load_transition_file(), {}, []
    for n, msg in enumerate(messages):
        if msg.expect != "canonical":
            continue
        order = normalize(msg.platform, msg.value, NOW + timedelta(days=3)).order
        incoming = version_of(order)
        previous = seen.get(order["order_id"])
        change, hit = judge(previous, incoming, f"0:{n}", rules)
        if change in PASSED:
            seen[order["order_id"]] = incoming.remembered_as(f"0:{n}", change, previous, hit)
        out.append((msg, change, hit))
    return out


def test_fulfilment_kinds_come_at_their_rates_and_say_what_they_are():
    messages = list(generate_stream(4000, seed=17, mix=FULFILMENT))
    kinds = Counter(m.kind for m in messages)
    assert len(messages) == 4000
    assert {"ship", "late_payment", "suspect", "out_of_order"} <= set(kinds)
    assert 0.04 < kinds["ship"] / 4000 < 0.15 and 0.02 < kinds["suspect"] / 4000 < 0.06
    late = [m for m in messages if m.phase == "late"]
    assert late and all(m.kind in ("late_payment", "ship") for m in late)
    assert messages[-len(late):] == late                      # the late phase comes last
    assert all(m.status == "SHIPPED" for m in messages if m.kind == "ship")
    assert all(m.status == "PAID" for m in messages if m.kind == "late_payment")
    late_ids = {m.order_id for m in messages if m.kind == "late_payment"}
    pending_new = {m.order_id for m in messages if m.kind == "new" and m.status == "PENDING_PAYMENT"}
    assert late_ids <= pending_new
    # nothing else happens to a late order in the main phase but redeliveries of its new version
    assert not [m for m in messages if m.order_id in late_ids and m.phase == "main"
                and m.kind not in ("new", "redelivery", "out_of_order")]


def test_the_rules_flag_exactly_the_messages_meant_to_be_suspect():
    results = judged(list(generate_stream(4000, seed=17, mix=FULFILMENT)))
    from pipeline.domain.dedupe import Change

    meant = [(m, change, hit) for m, change, hit in results if m.expect_rule]
    assert len(meant) > 50 and {m.expect_rule for m, _, _ in meant} == {"backwards", "illegal_skip", "too_fast"}
    for m, change, hit in meant:
        assert change is Change.SUSPECT and hit.rule == m.expect_rule, (m.kind, m.status, change, hit)
    unmeant = [(m.kind, m.status, hit) for m, change, hit in results if not m.expect_rule and change is Change.SUSPECT]
    assert unmeant == []
    assert all(change is Change.STALE for m, change, _ in results if m.kind == "out_of_order")
    assert all(change is Change.DUPLICATE for m, change, _ in results if m.kind == "redelivery")
    assert all(change is Change.UPDATE for m, change, _ in results if m.kind in ("ship", "late_payment", "update"))


def test_new_kinds_off_by_default():
    assert not {m.kind for m in generate_stream(3000, seed=5)} - {"new", "redelivery", "update", "malformed"}


def test_a_kind_at_rate_zero_never_fires_when_another_finds_nothing_to_update():
    # ship at a high rate often finds no paid order to ship and falls through: nothing else may
    # take its place but a new order (a replay with --ship only made suspects before)
    for seed in (1707, 1708, 3):
        kinds = {m.kind for m in generate_stream(1500, seed, ReplayMix(ship=0.4))}
        assert kinds <= {"new", "redelivery", "update", "malformed", "ship"}, kinds
        assert all(m.phase == "main" for m in generate_stream(1500, seed, ReplayMix(ship=0.4, suspect=0.3)))
