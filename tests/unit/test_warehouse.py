"""Warehouse score: distance 40 %, depth 30 %, on-time 20 %, cost 10 %, best first."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pipeline.domain.warehouse import (DEFAULT_WAREHOUSES, FallbackPolicy, MEDIUM_DISTANCE_KM, Ranker, Warehouse, Weights, candidate_order, normalize_province, score_warehouses, warehouse_factors)

EQUAL_DEPTH = {w.id: 100 for w in DEFAULT_WAREHOUSES}


@pytest.mark.parametrize("raw, short", [
    ("上海", "上海"), ("上海市", "上海"), ("广东省", "广东"), ("新疆维吾尔自治区", "新疆"),
    ("广西壮族自治区", "广西"), ("内蒙古自治区", "内蒙古"), ("Guangdong", "广东"), (" sichuan ", "四川"),
    ("香港特别行政区", "香港"), ("", ""),
])
def test_normalize_province(raw, short):
    assert normalize_province(raw) == short


@pytest.mark.parametrize("province, nearest", [
    ("上海", "WH-SH"), ("浙江省", "WH-SH"), ("江苏", "WH-SH"), ("广东", "WH-GZ"), ("北京市", "WH-BJ"),
    ("天津", "WH-BJ"), ("四川", "WH-CD"), ("重庆市", "WH-CD"), ("西藏自治区", "WH-CD"), ("新疆", "WH-CD"),
])
def test_with_equal_stock_the_nearest_warehouse_wins(province, nearest):
    assert candidate_order(DEFAULT_WAREHOUSES, province, EQUAL_DEPTH)[0] == nearest


def test_score_is_the_weighted_mean_of_the_normalised_factors():
    near = Warehouse("A", "x", region_distance={"上海": 100}, on_time_rate=0.9, handling_cost=2.0)
    far = Warehouse("B", "x", region_distance={"上海": 1000}, on_time_rate=0.5, handling_cost=1.0)
    scores = dict(score_warehouses([near, far], "上海市", {"A": 10, "B": 100}))
    # A: distance 1-100/1000=0.9, depth 10/100=0.1, on-time 0.9, cost 1/2=0.5
    assert scores["A"] == pytest.approx(0.4 * 0.9 + 0.3 * 0.1 + 0.2 * 0.9 + 0.1 * 0.5)
    # B: distance 0, depth 1, on-time 0.5, cost 1
    assert scores["B"] == pytest.approx(0.3 * 1 + 0.2 * 0.5 + 0.1 * 1)


def test_weights_are_configurable_and_change_the_choice():
    near = Warehouse("A", "x", region_distance={"上海": 100})
    far = Warehouse("B", "x", region_distance={"上海": 1000})
    depth = {"A": 5, "B": 100}
    assert candidate_order([near, far], "上海", depth) == ["A", "B"]
    assert candidate_order([near, far], "上海", depth, Weights(distance=0.1, depth=0.9, on_time=0, cost=0)) == ["B", "A"]


def test_deeper_stock_can_beat_distance_between_neighbours():
    # SH and the buyer's neighbour province are both near; depth decides when SH is nearly empty
    order_full = candidate_order(DEFAULT_WAREHOUSES, "浙江", EQUAL_DEPTH)
    order_empty_sh = candidate_order(DEFAULT_WAREHOUSES, "浙江", {**EQUAL_DEPTH, "WH-SH": 0})
    assert order_full[0] == "WH-SH"
    assert order_empty_sh.index("WH-SH") > order_full.index("WH-SH")


def test_missing_depth_counts_as_empty():
    scores = dict(score_warehouses(DEFAULT_WAREHOUSES, "上海", {"WH-GZ": 50}))
    factors = warehouse_factors(DEFAULT_WAREHOUSES, "上海", {"WH-GZ": 50})
    assert factors["WH-SH"].depth == 0.0 and factors["WH-GZ"].depth == 1.0
    assert set(scores) == {w.id for w in DEFAULT_WAREHOUSES}


def test_unknown_province_makes_distance_neutral():
    factors = warehouse_factors(DEFAULT_WAREHOUSES, "Atlantis", EQUAL_DEPTH)
    assert {f.distance for f in factors.values()} == {0.0}
    assert all(w.distance_km("Atlantis") == MEDIUM_DISTANCE_KM for w in DEFAULT_WAREHOUSES)
    # with distance and depth neutral, on-time and cost decide
    ranked = candidate_order(DEFAULT_WAREHOUSES, "", EQUAL_DEPTH)
    expected = sorted(DEFAULT_WAREHOUSES, key=lambda w: -(0.2 * w.on_time_rate
                                                           + 0.1 * min(x.handling_cost for x in DEFAULT_WAREHOUSES) / w.handling_cost))
    assert ranked == [w.id for w in expected]


def test_ties_are_broken_by_id_whatever_the_input_order():
    twins = [Warehouse(i, "上海") for i in ("WH-C", "WH-A", "WH-B")]
    assert candidate_order(twins, "北京", {}) == ["WH-A", "WH-B", "WH-C"]
    assert candidate_order(list(reversed(twins)), "北京", {}) == ["WH-A", "WH-B", "WH-C"]


def test_explicit_coordinates_override_the_province():
    moved = Warehouse("WH-X", "上海", lat=43.83, lon=87.62)  # actually in Urumqi
    assert moved.distance_km("新疆") < 50
    assert Warehouse("WH-Y", "上海").distance_km("新疆") > 2500


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError):
        Weights(distance=-0.1)
    with pytest.raises(ValueError):
        Weights(0, 0, 0, 0)


def test_fallback_policies():
    assert [p.value for p in FallbackPolicy] == ["next", "split", "backorder"]
    assert FallbackPolicy("split") is FallbackPolicy.SPLIT
    with pytest.raises(ValueError):
        FallbackPolicy("magic")


def test_no_warehouses_no_scores():
    assert score_warehouses([], "上海", {}) == []


@given(depths=st.lists(st.integers(0, 10_000), min_size=4, max_size=4),
       province=st.sampled_from(["上海", "广东", "北京", "四川", "新疆", "西藏", "浙江", "江苏", "??"]),
       boost=st.integers(1, 10_000))
def test_scores_stay_in_range_and_more_stock_never_lowers_a_rank(depths, province, boost):
    depth = {w.id: d for w, d in zip(DEFAULT_WAREHOUSES, depths)}
    ranked = score_warehouses(DEFAULT_WAREHOUSES, province, depth)
    assert all(0.0 <= s <= 1.0 for _, s in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    target = ranked[-1][0]
    boosted = candidate_order(DEFAULT_WAREHOUSES, province, {**depth, target: depth[target] + boost})
    before = [w for w, _ in ranked].index(target)
    assert boosted.index(target) <= before


PROVINCES = ("上海", "广东", "北京", "四川", "新疆", "西藏", "浙江", "火星", "")


@given(province=st.sampled_from(PROVINCES),
       depth=st.dictionaries(st.sampled_from([w.id for w in DEFAULT_WAREHOUSES] + ["WH-X"]),
                             st.integers(-5, 500), max_size=6),
       subset=st.sets(st.integers(0, len(DEFAULT_WAREHOUSES) - 1), min_size=1))
def test_ranker_orders_exactly_as_candidate_order(province, depth, subset):
    warehouses = tuple(w for i, w in enumerate(DEFAULT_WAREHOUSES) if i in subset)
    ranker = Ranker()
    for _ in range(2):  # the second call uses the memo
        assert ranker.order(warehouses, province, depth) == candidate_order(warehouses, province, depth)


def test_ranker_handles_warehouses_it_cannot_memoize():
    custom = (Warehouse("WH-A", "上海", region_distance={"广东": 100.0}), Warehouse("WH-B", "北京"))
    assert Ranker().order(custom, "广东", {"WH-B": 5}) == candidate_order(custom, "广东", {"WH-B": 5})
