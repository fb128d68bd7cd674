"""Warehouse choice: a weighted score per warehouse, best first (seed 002's table).

Distance to the buyer 40 %, stock depth 30 %, on-time history 20 %, handling cost 10 %.
Each factor is brought to 0..1 relative to the candidates being compared, so the weights
mean what they say whatever the units (km, units of stock, yuan):

- distance: 1 - d / d_max  (the farthest candidate gets 0; all equally near -> 1)
- depth:    depth / depth_max  (no stock anywhere -> 0 for all)
- on-time:  the historic on-time rate itself, clamped to 0..1
- cost:     cost_min / cost  (the cheapest gets 1; a zero cost counts as cheapest)

The score is the weighted mean (weights need not sum to 1). Ties are broken by warehouse
id so that every worker picks the same warehouse for the same inputs. Pure: no Redis here.
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping

from .provinces import normalize_province

# Capital-city coordinates stand in for a province: precise enough to rank warehouses.
PROVINCE_COORDS: dict[str, tuple[float, float]] = {
    "北京": (39.90, 116.41), "天津": (39.13, 117.20), "河北": (38.04, 114.51), "山西": (37.87, 112.55),
    "内蒙古": (40.84, 111.75), "辽宁": (41.80, 123.43), "吉林": (43.82, 125.32), "黑龙江": (45.80, 126.53),
    "上海": (31.23, 121.47), "江苏": (32.06, 118.80), "浙江": (30.27, 120.16), "安徽": (31.82, 117.23),
    "福建": (26.07, 119.30), "江西": (28.68, 115.86), "山东": (36.65, 117.12), "河南": (34.75, 113.63),
    "湖北": (30.59, 114.31), "湖南": (28.23, 112.94), "广东": (23.13, 113.26), "广西": (22.82, 108.37),
    "海南": (20.04, 110.35), "重庆": (29.56, 106.55), "四川": (30.57, 104.07), "贵州": (26.65, 106.63),
    "云南": (25.04, 102.71), "西藏": (29.65, 91.14), "陕西": (34.34, 108.94), "甘肃": (36.06, 103.83),
    "青海": (36.62, 101.78), "宁夏": (38.49, 106.23), "新疆": (43.83, 87.62), "香港": (22.32, 114.17),
    "澳门": (22.20, 113.54), "台湾": (25.03, 121.57),
}

# Buyer province unknown (foreign, empty, misspelt): every warehouse is equally "medium" far,
# so distance stops deciding and depth / on-time / cost pick the warehouse.
MEDIUM_DISTANCE_KM = 1200.0


@lru_cache(maxsize=4096)
def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


@dataclass(frozen=True)
class Warehouse:
    id: str
    province: str
    region_distance: Mapping[str, float] | None = None  # km per buyer province; overrides coordinates
    on_time_rate: float = 0.95                            # historic share of orders shipped on time
    handling_cost: float = 1.0                            # per-order packing/labour cost, any currency
    lat: float | None = None                              # default: the province's capital
    lon: float | None = None

    def coords(self) -> tuple[float, float] | None:
        if self.lat is not None and self.lon is not None:
            return (self.lat, self.lon)
        return PROVINCE_COORDS.get(normalize_province(self.province))

    def distance_km(self, buyer_province: str) -> float:
        buyer = normalize_province(buyer_province)
        if self.region_distance:
            for key, km in self.region_distance.items():
                if normalize_province(key) == buyer:
                    return float(km)
        here, there = self.coords(), PROVINCE_COORDS.get(buyer)
        if here is None or there is None:
            return MEDIUM_DISTANCE_KM
        return haversine_km(here, there)


DEFAULT_WAREHOUSES: tuple[Warehouse, ...] = (
    Warehouse("WH-SH", "上海", on_time_rate=0.97, handling_cost=1.2),
    Warehouse("WH-GZ", "广东", on_time_rate=0.95, handling_cost=1.0),
    Warehouse("WH-BJ", "北京", on_time_rate=0.96, handling_cost=1.15),
    Warehouse("WH-CD", "四川", on_time_rate=0.92, handling_cost=0.85),
)


@dataclass(frozen=True)
class Weights:
    distance: float = 0.4
    depth: float = 0.3
    on_time: float = 0.2
    cost: float = 0.1

    def __post_init__(self):
        values = (self.distance, self.depth, self.on_time, self.cost)
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {values}")

    @property
    def total(self) -> float:
        return self.distance + self.depth + self.on_time + self.cost


class FallbackPolicy(str, Enum):
    """What to do when no single candidate warehouse can ship the whole order.

    Every policy first tries the candidates in score order for the whole order ("next").
    SPLIT then allows each line to come from several warehouses (still all or nothing);
    BACKORDER instead records a backorder (nothing reserved) rather than out-of-stock.
    """
    NEXT = "next"
    SPLIT = "split"
    BACKORDER = "backorder"


@dataclass(frozen=True)
class WarehouseFactors:
    """The 0..1 factors behind a score, kept for logs and the tests."""
    distance: float
    depth: float
    on_time: float
    cost: float


def warehouse_factors(warehouses: Iterable[Warehouse], province: str,
                      depth: Mapping[str, int]) -> dict[str, WarehouseFactors]:
    whs = list(warehouses)
    if not whs:
        return {}
    dist = {w.id: max(0.0, w.distance_km(province)) for w in whs}
    stock = {w.id: max(0, int(depth.get(w.id, 0))) for w in whs}
    d_max, s_max = max(dist.values()), max(stock.values())
    costs = [max(0.0, w.handling_cost) for w in whs]
    c_min = min(costs)
    out = {}
    for w, cost in zip(whs, costs):
        out[w.id] = WarehouseFactors(
            distance=1.0 - dist[w.id] / d_max if d_max > 0 else 1.0,
            depth=stock[w.id] / s_max if s_max > 0 else 0.0,
            on_time=min(1.0, max(0.0, w.on_time_rate)),
            cost=c_min / cost if cost > 0 else 1.0,
        )
    return out


def score_warehouses(warehouses: Iterable[Warehouse], province: str, depth: Mapping[str, int],
                     weights: Weights = Weights()) -> list[tuple[str, float]]:
    """[(warehouse_id, score 0..1)] best first; equal scores ordered by id."""
    factors = warehouse_factors(warehouses, province, depth)
    scored = []
    for wid, f in factors.items():
        raw = (weights.distance * f.distance + weights.depth * f.depth
               + weights.on_time * f.on_time + weights.cost * f.cost) / weights.total
        # rounding makes float noise unable to break a real tie differently on two workers
        scored.append((wid, round(raw, 9)))
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored


def candidate_order(warehouses: Iterable[Warehouse], province: str, depth: Mapping[str, int],
                    weights: Weights = Weights()) -> list[str]:
    """Only the ids, in the order `InventoryStore.reserve(candidates=...)` expects."""
    return [wid for wid, _ in score_warehouses(warehouses, province, depth, weights)]


class Ranker:
    """`candidate_order` for many orders: distance, on-time and cost depend only on the buyer's
    province and the warehouse set, so they are computed once per (warehouses, province); only
    the depth factor is per order. Same arithmetic in the same order, so the same ranking."""

    def __init__(self, weights: Weights = Weights()) -> None:
        self.weights = weights
        self._fixed: dict = {}

    def order(self, warehouses: tuple[Warehouse, ...], province: str, depth: Mapping[str, int]) -> list[str]:
        try:
            fixed = self._fixed.get((warehouses, province))
        except TypeError:  # a warehouse with a region_distance dict is not hashable: no memo
            return candidate_order(warehouses, province, depth, self.weights)
        if fixed is None:
            fixed = self._fixed[(warehouses, province)] = self._fixed_parts(warehouses, province)
        w = self.weights
        stock = {wid: max(0, int(depth.get(wid, 0))) for wid, *_ in fixed}
        s_max = max(stock.values(), default=0)
        scored = [(wid, round((dist + w.depth * (stock[wid] / s_max if s_max > 0 else 0.0) + on_time + cost)
                              / w.total, 9)) for wid, dist, on_time, cost in fixed]
        scored.sort(key=lambda item: (-item[1], item[0]))
        return [wid for wid, _ in scored]

    def _fixed_parts(self, warehouses, province) -> list[tuple[str, float, float, float]]:
        w = self.weights
        factors = warehouse_factors(warehouses, province, {})
        return [(wid, w.distance * f.distance, w.on_time * f.on_time, w.cost * f.cost)
                for wid, f in factors.items()]
