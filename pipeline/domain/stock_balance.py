"""Every unit of every (warehouse, SKU) accounted for, after shipments and returns (issue 17): the
stock audit's arithmetic, pure (the replay's reconciliation reads Redis and the topics, then asks
these functions).

Per cell, counting only what shipped and came back since the warehouse's snapshot put its units in
(a snapshot re-bases `total`; `shipped` and `returned` keep counting):

    put in + returned = available + locked + presale + reserved + shipped
    total             = put in - shipped + returned

and Redis's own counters must equal what the events say: `reserved` and `shipped` what
inventory.events say (pipeline.domain.stock_ledger), `returned` the goods of the refunds that
reached `returned_to_stock` on refunds.events (the event names the warehouse and the units, the
refund's request its lines). No figure may be negative.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

from .refunds import RefundError, return_lines
from .stock_ledger import Cell, OrderLedger

LEVEL_NAMES = ("total", "locked", "presale", "reserved", "shipped", "returned")


class Level(Protocol):
    """A cell's figures as Redis holds them (pipeline.inventory_store.StockLevel)."""
    total: int
    locked: int
    presale: int
    reserved: int
    shipped: int
    returned: int

    @property
    def available(self) -> int: ...


@dataclass(frozen=True)
class Return:
    """A refund's goods back on the shelf, as its `returned_to_stock` event says (once per refund)."""
    refund_id: str
    order_id: str
    warehouse: str          # the event's warehouse; comma-separated when the order was split
    units: int
    at_ms: int
    lines: tuple            # the request's RefundLines (sku, quantity)

    def cells(self, allocations: Iterable[tuple[str, str, int]] = ()) -> Counter:
        """Units per cell: all in the event's one warehouse, or, split, where the order's allocations
        took each SKU (the very rule the refund agent applied, pipeline.domain.refunds.return_lines)."""
        warehouses = [w for w in self.warehouse.split(",") if w]
        out: Counter = Counter()
        for w, sku, qty in return_lines(self, warehouses[0] if len(warehouses) == 1 else None, list(allocations)):
            out[(w, sku)] += qty
        return out


def returned_facts(events: Iterable[Mapping], requests: Mapping[str, tuple]) -> tuple[list[Return], list[str]]:
    """RefundEvent dicts and each refund's request lines -> one Return per refund that reached
    returned_to_stock (a re-published copy of the fact is the same return), and the refund ids whose
    fact cannot be explained (no request, or the request's units differ from the event's)."""
    returns: dict[str, Return] = {}
    unexplained: list[str] = []
    for ev in events:
        if ev["event"] != "returned_to_stock" or ev["refund_id"] in returns:
            continue
        lines = requests.get(ev["refund_id"])
        if lines is None or sum(line.quantity for line in lines) != int(ev.get("units") or 0):
            unexplained.append(ev["refund_id"])
            continue
        returns[ev["refund_id"]] = Return(ev["refund_id"], ev.get("order_id") or "", ev.get("warehouse") or "",
                                          int(ev["units"]), int(ev.get("at_ms") or 0), tuple(lines))
    return list(returns.values()), sorted(set(unexplained) - set(returns))


def order_allocations(ledger: OrderLedger | None) -> list[tuple[str, str, int]]:
    """Where the order's units came from (what a receipt without a warehouse returns them to, as the
    order's Redis record keeps them): its shipment, else what it holds reserved, else its last
    reservation (expired since)."""
    if ledger is None:
        return []
    cells = (ledger.shipped() or +ledger.held() or ledger.allocations.get("rereserved")
             or ledger.allocations.get("reserved") or Counter())
    return [(w, sku, q) for (w, sku), q in sorted(cells.items())]


def returned_cells(returns: Iterable[Return], ledgers: Mapping[str, OrderLedger],
                   since_ms: int | None = None) -> tuple[Counter, list[str]]:
    """Units returned per cell (only returns at or after `since_ms`, when given), and the refund ids
    whose cells cannot be told (split order, no allocation of a SKU)."""
    out: Counter = Counter()
    unknown: list[str] = []
    for ret in returns:
        if since_ms is not None and ret.at_ms < since_ms:
            continue
        try:
            out.update(ret.cells(order_allocations(ledgers.get(ret.order_id))))
        except RefundError:
            unknown.append(ret.refund_id)
    return out, unknown


def audit_cells(levels: Mapping[Cell, Level], reserved: Mapping[Cell, int], shipped: Mapping[Cell, int],
                returned: Mapping[Cell, int], put_in: Mapping[Cell, int], shipped_since: Mapping[Cell, int],
                returned_since: Mapping[Cell, int]) -> dict:
    """Redis's cells against the events' (`reserved`, `shipped`, `returned`: every fact ever), and,
    for each cell the snapshot put units in (`put_in`), the balance with what shipped and came
    back since. Returns the differing cells, the negative ones and the unbalanced ones."""
    differing, negative, unbalanced = {}, [], []
    for cell in sorted(set(levels) | set(reserved) | set(shipped) | set(returned) | set(put_in)):
        level = levels.get(cell)
        name = f"{cell[0]}:{cell[1]}"
        got = (level.reserved, level.shipped, level.returned) if level else (0, 0, 0)
        want = (reserved.get(cell, 0), shipped.get(cell, 0), returned.get(cell, 0))
        if got != want:
            differing[name] = {"redis_reserved_shipped_returned": got, "events_say": want}
        if level and min(getattr(level, f) for f in LEVEL_NAMES) < 0:
            negative.append(name)
        if cell in put_in:
            units, out, back = put_in[cell], shipped_since.get(cell, 0), returned_since.get(cell, 0)
            accounted = (level.available + level.locked + level.presale + level.reserved + out) if level else 0
            if accounted != units + back or (level and level.total != units - out + back):
                unbalanced.append({"cell": name, "put_in": units, "returned_since_put_in": back,
                                   "accounted": accounted, "total": level.total if level else None,
                                   "shipped_since_put_in": out})
    return {"differing": differing, "negative": negative, "unbalanced": unbalanced}


__all__ = ["Return", "returned_facts", "returned_cells", "order_allocations", "audit_cells", "LEVEL_NAMES"]
