"""The stock audit's arithmetic: put in + returned = available + locked + presale + reserved + shipped,
Redis's counters against the events, returns placed in their cells (pure, no Kafka or Redis)."""
from __future__ import annotations

from collections import Counter

import pytest

from pipeline.contracts import InventoryEvent, InventoryLine, RefundEvent, RefundLine
from pipeline.domain.stock_balance import Return, audit_cells, returned_cells, returned_facts
from pipeline.domain.stock_ledger import expected_cells, fold
from pipeline.inventory_store import StockLevel

T = 1_780_000_000_000
SH_A = ("WH-SH", "A")


def inv(kind: str, order: str, *lines, at_ms: int = T) -> dict:
    return InventoryEvent(kind, order, "JD", at_ms, lines=tuple(InventoryLine(sku, q, wh) for wh, sku, q in lines),
                          units=sum(q for _, _, q in lines)).as_dict()


def back(refund_id: str, order: str, warehouse: str, units: int, at_ms: int = T + 10, cause: str = "c1") -> dict:
    return RefundEvent("returned_to_stock", refund_id, order_id=order, platform="JD", status="returned_to_stock",
                       at_ms=at_ms, warehouse=warehouse, units=units, cause=cause).as_dict()


def audit(level: StockLevel, put_in: int, *, reserved=0, shipped=0, returned=0, shipped_since=None,
          returned_since=None) -> dict:
    one = lambda n: Counter({SH_A: n}) if n else Counter()   # noqa: E731
    return audit_cells({SH_A: level}, one(reserved), one(shipped), one(returned), {SH_A: put_in},
                       one(shipped if shipped_since is None else shipped_since),
                       one(returned if returned_since is None else returned_since))


# ------------------------------------------------------------------ the balance


def test_shipped_and_returned_units_balance_what_was_put_in():
    # 10 put in, 3 shipped (total 7), 2 returned (total 9), 4 reserved, 1 locked: available 4
    level = StockLevel(total=9, locked=1, presale=0, reserved=4, shipped=3, returned=2)
    assert level.available == 4
    assert audit(level, 10, reserved=4, shipped=3, returned=2) == {"differing": {}, "negative": [], "unbalanced": []}


def test_ignoring_the_returned_units_leaves_the_cell_unbalanced():
    # the same cell, audited as if nothing came back: 2 units more than were put in
    level = StockLevel(total=9, locked=1, presale=0, reserved=4, shipped=3, returned=2)
    [wrong] = audit(level, 10, reserved=4, shipped=3, returned=2, returned_since=0)["unbalanced"]
    assert wrong == {"cell": "WH-SH:A", "put_in": 10, "returned_since_put_in": 0, "accounted": 12, "total": 9,
                     "shipped_since_put_in": 3}


def test_a_return_redis_never_made_is_caught_even_when_total_was_fixed_by_hand():
    # the events say 2 came back, Redis counted 1 (and someone added the other to total)
    level = StockLevel(total=9, locked=1, presale=0, reserved=4, shipped=3, returned=1)
    result = audit(level, 10, reserved=4, shipped=3, returned=2)
    assert result["differing"] == {"WH-SH:A": {"redis_reserved_shipped_returned": (4, 3, 1), "events_say": (4, 3, 2)}}
    assert result["unbalanced"] == []


def test_units_made_out_of_nothing_are_unbalanced():
    level = StockLevel(total=11, locked=0, presale=0, reserved=0, shipped=0, returned=0)
    assert audit(level, 10)["unbalanced"][0]["accounted"] == 11


@pytest.mark.parametrize("field", ["total", "locked", "presale", "reserved", "shipped", "returned"])
def test_a_negative_figure_is_reported(field):
    figures = dict(total=5, locked=0, presale=0, reserved=0, shipped=0, returned=0)
    figures[field] = -1
    assert audit(StockLevel(**figures), 5)["negative"] == ["WH-SH:A"]


def test_returns_before_the_snapshot_count_in_redis_but_not_in_the_balance():
    # an earlier replay returned 3 units, then the snapshot re-based total to 10; 2 came back since
    level = StockLevel(total=12, locked=0, presale=0, reserved=0, shipped=0, returned=5)
    ok = audit(level, 10, returned=5, returned_since=2)
    assert ok == {"differing": {}, "negative": [], "unbalanced": []}
    assert audit(level, 10, returned=5)["unbalanced"]   # counting the old returns again does not balance


def test_a_cell_missing_from_redis_is_unbalanced_and_differing():
    result = audit_cells({}, Counter(), Counter(), Counter({SH_A: 1}), {SH_A: 4}, Counter(), Counter())
    assert list(result["differing"]) == ["WH-SH:A"] and result["unbalanced"][0]["accounted"] == 0


# ------------------------------------------------------------------ returns from the refund events


def test_one_return_per_refund_whatever_the_copies_and_requests_explain_the_units():
    requests = {"R1": (RefundLine("A", 2),), "R2": (RefundLine("A", 1), RefundLine("B", 1)),
                "R3": (RefundLine("A", 5),)}
    events = [back("R1", "o1", "WH-SH", 2), back("R1", "o1", "WH-SH", 2),   # a re-published copy
              back("R2", "o2", "WH-GZ", 2), back("R3", "o3", "WH-SH", 4),   # R3: the request says 5
              back("R4", "o4", "WH-SH", 1),                                 # R4: no request
              RefundEvent("refunded", "R1", order_id="o1", at_ms=T + 20).as_dict()]
    returns, unexplained = returned_facts(events, requests)
    assert [r.refund_id for r in returns] == ["R1", "R2"]
    assert unexplained == ["R3", "R4"]
    cells, unknown = returned_cells(returns, {})
    assert cells == Counter({SH_A: 2, ("WH-GZ", "A"): 1, ("WH-GZ", "B"): 1}) and unknown == []


def test_a_split_order_returns_where_its_units_came_from():
    ledgers = fold([inv("reserved", "o1", ("WH-SH", "A", 1), ("WH-GZ", "A", 2)),
                    inv("shipped", "o1", ("WH-SH", "A", 1), ("WH-GZ", "A", 2))])
    ret = Return("R1", "o1", "WH-GZ,WH-SH", 3, T + 10, (RefundLine("A", 3),))
    cells, unknown = returned_cells([ret], ledgers)
    assert cells == Counter({("WH-GZ", "A"): 2, SH_A: 1}) and unknown == []
    # without its allocations the cells cannot be told: reported, not guessed
    assert returned_cells([ret], {}) == (Counter(), ["R1"])


def test_only_returns_since_the_snapshot_count_toward_its_balance():
    old = Return("R0", "o0", "WH-SH", 3, T - 1, (RefundLine("A", 3),))
    new = Return("R1", "o1", "WH-SH", 2, T + 1, (RefundLine("A", 2),))
    assert returned_cells([old, new], {})[0] == Counter({SH_A: 5})
    assert returned_cells([old, new], {}, since_ms=T)[0] == Counter({SH_A: 2})


def test_a_shipped_order_returned_balances_end_to_end():
    """Put in 10, an order reserves 3 and ships them, 2 come back: Redis as the scripts leave it."""
    ledgers = fold([inv("reserved", "o1", ("WH-SH", "A", 3)), inv("shipped", "o1", ("WH-SH", "A", 3))])
    reserved, shipped = expected_cells(ledgers.values())
    returns, _ = returned_facts([back("R1", "o1", "WH-SH", 2)], {"R1": (RefundLine("A", 2),)})
    returned, _ = returned_cells(returns, ledgers)
    level = StockLevel(total=10 - 3 + 2, reserved=0, shipped=3, returned=2)
    result = audit_cells({SH_A: level}, reserved, shipped, returned, {SH_A: 10}, shipped, returned)
    assert result == {"differing": {}, "negative": [], "unbalanced": []}
