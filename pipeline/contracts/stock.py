"""inventory.stock: stock snapshots and deltas as the warehouse system sends them (its JSON).

The warehouse system is outside our processes, like the platforms, so its messages keep the
JSON it speaks; this is their one decoder (and the encoder our replay tooling and tests use).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import orjson


class StockEventError(ValueError):
    """A stock-topic message that cannot be applied (wrong type, missing or bad fields)."""


@dataclass(frozen=True, slots=True)
class StockUpdate:
    kind: str          # "snapshot" | "delta"
    warehouse: str
    sku: str
    total: int
    locked: int
    presale: int


def _stock_int(event: Mapping, name: str, required: bool, non_negative: bool) -> int:
    if name not in event or event[name] is None:
        if required:
            raise StockEventError(f"stock event misses {name!r}: {event!r}")
        return 0
    value = event[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StockEventError(f"{name!r} must be an integer, got {value!r}")
    if non_negative and value < 0:
        raise StockEventError(f"{name!r} of a snapshot must be >= 0, got {value}")
    return value


def parse_stock_event(event: Any) -> StockUpdate:
    """Validate one stock-topic message: {"type","warehouse","sku","total","locked","presale"}."""
    if isinstance(event, StockUpdate):
        return event
    if isinstance(event, (bytes, str)):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise StockEventError(f"stock event is not JSON: {exc}") from None
    if not isinstance(event, Mapping):
        raise StockEventError(f"stock event must be an object, got {type(event).__name__}")
    kind = event.get("type")
    if kind not in ("snapshot", "delta"):
        raise StockEventError(f"stock event type must be 'snapshot' or 'delta', got {kind!r}")
    warehouse, sku = event.get("warehouse"), event.get("sku")
    if not isinstance(warehouse, str) or not warehouse or ":" in warehouse:
        raise StockEventError(f"bad warehouse {warehouse!r}")
    if not isinstance(sku, str) or not sku:
        raise StockEventError(f"bad sku {sku!r}")
    snapshot = kind == "snapshot"
    return StockUpdate(kind, warehouse, sku,
                       _stock_int(event, "total", required=snapshot, non_negative=snapshot),
                       _stock_int(event, "locked", required=False, non_negative=snapshot),
                       _stock_int(event, "presale", required=False, non_negative=snapshot))


class WarehouseStock:
    """The topic's value codec: JSON bytes <-> StockUpdate."""
    @staticmethod
    def encode(update: StockUpdate) -> bytes:
        data = asdict(update)
        data["type"] = data.pop("kind")
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def decode(data: bytes) -> StockUpdate:
        return parse_stock_event(data)
