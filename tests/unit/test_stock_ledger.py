"""The stock ledger: what inventory.events say Redis holds, order by order and cell by cell."""
from __future__ import annotations

from collections import Counter

import pytest

from pipeline.contracts import InventoryEvent, InventoryLine
from pipeline.domain.stock_ledger import (expected_cells, fold, record_agrees, stock_agrees_with_status)

T = 1_780_000_000_000


def ev(kind: str, order: str, *lines, warehouse=None, reason="") -> dict:
    return InventoryEvent(kind, order, "JD", T, warehouse=warehouse,
                          lines=tuple(InventoryLine(sku, q, wh) for wh, sku, q in lines),
                          units=sum(q for _, _, q in lines), reason=reason).as_dict()


def test_reserved_minus_expired_plus_rereserved_minus_shipped():
    ledgers = fold([
        ev("reserved", "late", ("SH", "A", 3)),
        ev("expired", "late", ("SH", "A", 3)),
        ev("rereserved", "late", ("GZ", "A", 3)),
        ev("shipped", "late", ("GZ", "A", 3)),
        ev("reserved", "held", ("SH", "A", 2), ("SH", "B", 1)),
        ev("reserved", "gone", (None, "A", 1), warehouse="SH"),   # the event's own warehouse serves the line
        ev("released", "gone", (None, "A", 1), warehouse="SH"),
    ])
    reserved, shipped = expected_cells(ledgers.values())
    assert +reserved == Counter({("SH", "A"): 2, ("SH", "B"): 1})
    assert shipped == Counter({("GZ", "A"): 3})
    assert {oid: l.expected_record() for oid, l in ledgers.items()} == {"late": "shipped", "held": "reserved",
                                                                      "gone": "released"}


def test_a_re_published_copy_counts_once_and_a_disagreeing_one_is_caught():
    ledgers = fold([ev("reserved", "o1", ("SH", "A", 2)), ev("reserved", "o1", ("SH", "A", 2)),
                    ev("reserved", "o2", ("SH", "A", 2)), ev("reserved", "o2", ("GZ", "A", 2))])
    reserved, _ = expected_cells(ledgers.values())
    assert reserved[("SH", "A")] == 4
    assert not ledgers["o1"].inconsistent and ledgers["o2"].inconsistent == {"reserved"}


@pytest.mark.parametrize("events,state", [
    ([("reserved",)], "reserved"),
    ([("reserved",), ("expired",)], "expired"),
    ([("reserved",), ("expired",), ("out_of_stock",)], "out_of_stock"),
    ([("reserved",), ("expired",), ("rereserved",)], "reserved"),
    ([("reserved",), ("shipped",)], "shipped"),
    ([("cancelled",)], "released"),
    ([("out_of_stock",)], None),
    ([("reserved",), ("ship_skipped",)], "reserved"),
    ([("shipped_unreserved",)], "shipped"),
    ([("out_of_stock",), ("shipped_unreserved",)], "shipped"),
])
def test_the_record_state_the_events_say(events, state):
    ledger = fold([ev(kind, "o", ("SH", "A", 1)) for (kind,) in events])["o"]
    assert ledger.expected_record() == state


def test_record_agrees_checks_state_and_allocation():
    ledger = fold([ev("reserved", "o", ("SH", "A", 2))])["o"]
    assert record_agrees(ledger, {"state": "reserved", "allocations": [["SH", "A", 2]]})
    assert not record_agrees(ledger, {"state": "reserved", "allocations": [["GZ", "A", 2]]})
    assert not record_agrees(ledger, {"state": "expired", "allocations": [["SH", "A", 2]]})
    assert not record_agrees(ledger, None)
    # no stock event: no record, or a tombstone that gave nothing back (a rejected hold)
    assert record_agrees(None, None)
    assert record_agrees(None, {"state": "released", "released_units": 0})
    assert record_agrees(None, {"state": "paid"})        # paid before any reservation: holds nothing
    assert not record_agrees(None, {"state": "reserved", "allocations": [["SH", "A", 1]]})
    marker = fold([InventoryEvent("shipped_unreserved", "m", "JD", T).as_dict()])["m"]
    assert record_agrees(marker, {"state": "shipped", "allocations": {}, "unreserved": True})
    shipped = fold([ev("reserved", "s", ("SH", "A", 2)), ev("shipped", "s", ("SH", "A", 2))])["s"]
    assert record_agrees(shipped, {"state": "shipped", "allocations": [["SH", "A", 2]]})


@pytest.mark.parametrize("status,stock,ok", [
    ("SHIPPED", "shipped", True), ("SHIPPED", "reserved", False), ("COMPLETED", "expired", False),
    ("PAID", "expired", False), ("PAID", "reserved", True), ("PENDING_PAYMENT", "expired", True),
    ("CANCELLED", "reserved", False), ("CANCELLED", "released", True), ("PAID", "none", True),
])
def test_stock_fits_the_order_state(status, stock, ok):
    assert stock_agrees_with_status(status, stock) is ok
