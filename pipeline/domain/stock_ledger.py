"""What the inventory events say every order holds, and whether Redis and an order's state agree.

inventory.events is the stock ledger's journal: each order gets each kind of event at most once
as a fact (a re-published copy after a crash carries the same allocation; the sink keys them by
(order id, event)), so folding them needs no ordering:

    reserved(cell)  = reserved - expired + rereserved - released - shipped     (allocations)
    shipped(cell)   = shipped
    total(cell)     = total put in - shipped          (until a warehouse snapshot re-bases it)

and every order's record in Redis must be in the state its events say (`expected_record`). Pure:
the replay's reconciliation (pipeline.devtools.replay) and the daily consistency check
(pipeline.consistency) both fold with these functions.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

Cell = tuple[str, str]  # (warehouse, sku)
# how each event kind moves the order's reserved units (+1 takes, -1 gives back)
RESERVED_SIGN = {"reserved": 1, "rereserved": 1, "expired": -1, "released": -1, "shipped": -1}
STOCK_EVENTS = frozenset(RESERVED_SIGN) | {"out_of_stock", "backorder", "cancelled", "duplicate", "ship_skipped",
                                           "shipped_unreserved"}
SHIPPED_STATES = frozenset({"SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED"})


@dataclass
class OrderLedger:
    """One order's stock facts: each event kind once, with its allocation per cell."""
    order_id: str
    allocations: dict[str, Counter] = field(default_factory=dict)   # event kind -> cell -> units
    inconsistent: set[str] = field(default_factory=set)             # kinds whose copies disagree
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def kinds(self) -> set[str]:
        return set(self.allocations)

    def add(self, event: str, cells: Counter, reason: str = "") -> None:
        known = self.allocations.get(event)
        if known is None:
            self.allocations[event] = cells
            self.reasons[event] = reason
        elif known != cells and event in RESERVED_SIGN:
            self.inconsistent.add(event)

    def held(self) -> Counter:
        """Units this order holds reserved, per cell (never below zero in a sane ledger)."""
        out: Counter = Counter()
        for kind, sign in RESERVED_SIGN.items():
            for c, q in self.allocations.get(kind, Counter()).items():
                out[c] += sign * q
        return out

    def shipped(self) -> Counter:
        return Counter(self.allocations.get("shipped", Counter()))

    @property
    def late_out_of_stock(self) -> bool:
        """Paid after it expired, and the stock was gone: the late payment's outcome."""
        return "expired" in self.kinds and "out_of_stock" in self.kinds

    def expected_record(self) -> str | None:
        """The state the order's Redis record must be in (None: no record, or only a tombstone
        the events cannot tell about, e.g. a rejected hold or an out-of-stock new order)."""
        kinds = self.kinds
        if "shipped" in kinds or ("shipped_unreserved" in kinds and not kinds & {"reserved", "rereserved"}):
            return "shipped"   # (a shipment with no reservation leaves a marker record holding nothing)
        if "released" in kinds or "cancelled" in kinds:
            return "released"
        if "rereserved" in kinds:
            return "reserved"
        if "expired" in kinds:
            return "out_of_stock" if "out_of_stock" in kinds else "expired"
        if "reserved" in kinds:
            return "reserved"
        if "backorder" in kinds:
            return "backorder"
        return None

    def stock_state(self) -> str:
        """What the order's stock is: reserved, shipped, released, expired, out_of_stock or none."""
        return self.expected_record() or ("out_of_stock" if "out_of_stock" in self.kinds else "none")


def event_cells(event: Mapping) -> Counter:
    """An inventory event's allocation per (warehouse, sku); a line without its own warehouse was
    served by the event's one."""
    cells: Counter = Counter()
    for line in event.get("lines") or ():
        cells[(line.get("warehouse") or event.get("warehouse") or "", line["sku"])] += int(line["quantity"])
    return cells


def fold(events: Iterable[Mapping]) -> dict[str, OrderLedger]:
    """InventoryEvent dicts (as_dict()) -> the ledger of every order they mention."""
    ledgers: dict[str, OrderLedger] = {}
    for ev in events:
        if ev["event"] not in STOCK_EVENTS:
            continue
        ledger = ledgers.setdefault(ev["order_id"], OrderLedger(ev["order_id"]))
        ledger.add(ev["event"], event_cells(ev), ev.get("reason") or "")
    return ledgers


def expected_cells(ledgers: Iterable[OrderLedger]) -> tuple[Counter, Counter]:
    """(reserved, shipped) units per cell that the events say Redis holds."""
    reserved: Counter = Counter()
    shipped: Counter = Counter()
    for ledger in ledgers:
        reserved.update(ledger.held())
        shipped.update(ledger.shipped())
    return reserved, shipped


def record_agrees(ledger: OrderLedger | None, record: Mapping | None) -> bool:
    """Whether a Redis record is what the order's events say (allocations included)."""
    want = ledger.expected_record() if ledger is not None else None
    got = record.get("state") if record else None
    if want is None:
        # no record, a tombstone that gave nothing back (rejected before any reservation), or the
        # marker of a payment that came before any reservation
        return got in (None, "paid") or (got == "released" and not int(record.get("released_units") or 0))
    if got != want:
        return False
    if want in ("reserved", "shipped"):
        held = ledger.held() if want == "reserved" else ledger.shipped()
        stored = Counter({(w, s): int(q) for w, s, q in record.get("allocations") or []}
                         if isinstance(record.get("allocations"), list) else {})
        return +held == +stored
    return True


def stock_agrees_with_status(status: str, stock_state: str) -> bool:
    """Does the order's stock fit the order's state? A shipped order holds nothing reserved (its
    units left, or it never had a reservation); a cancelled one holds nothing; a paid one is not
    left expired (the late payment was not applied); an unpaid one may hold or have expired."""
    if status == "CANCELLED":
        return stock_state in ("released", "none", "out_of_stock", "shipped")
    if status in SHIPPED_STATES:
        return stock_state in ("shipped", "none", "out_of_stock")
    if status == "PENDING_PAYMENT":
        return stock_state in ("reserved", "expired", "none", "out_of_stock")
    return stock_state in ("reserved", "none", "out_of_stock", "backorder")
