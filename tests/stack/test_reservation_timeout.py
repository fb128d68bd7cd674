"""Issue 6: an unpaid order's reservation times out and gives its stock back (the order becomes
`expired`: issue 17's late payment may reserve it again); a paid one keeps it."""
from __future__ import annotations

import time

import pytest

from pipeline.contracts import InventoryEvent, StockUpdate, WarehouseStock
from pipeline.domain.normalize import global_order_id
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.inventory_store import InventoryStore

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_unpaid_reservation_times_out_paid_one_stays(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RESERVATION_TIMEOUT_S="3", ORDERSTREAM_BREAKER_OPEN_PER_MIN="100000")
    p.start_worker()
    sku = "SKU-0011"
    p.produce([(p.names.INVENTORY_STOCK, f"WH-SH:{sku}".encode(), WarehouseStock.encode(
        StockUpdate("snapshot", "WH-SH", sku, total=50, locked=0, presale=0)))])
    time.sleep(2)
    f = RawOrderFactory(seed=8)
    unpaid = f.order("TMALL", external_id="U100", status="PENDING_PAYMENT", skus=[(sku, 3)], province="上海")
    paid = f.order("TMALL", external_id="P100", status="PAID", skus=[(sku, 2)], province="上海")
    p.produce([(p.names.raw("TMALL"), b"U100", f.to_bytes(unpaid)), (p.names.raw("TMALL"), b"P100", f.to_bytes(paid))])
    p.drain()
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and store.stock("WH-SH", sku).reserved != 2:
            time.sleep(0.5)
        assert store.stock("WH-SH", sku).reserved == 2  # only the paid order still holds stock
    events = [InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS)]
    by_order = {(e["order_id"], e["event"]): e for e in events}
    u, pd = global_order_id("TMALL", "U100"), global_order_id("TMALL", "P100")
    assert (u, "reserved") in by_order and (pd, "reserved") in by_order
    assert by_order[(u, "expired")]["reason"].startswith("timeout")
    assert by_order[(u, "expired")]["units"] == 3 and by_order[(u, "expired")]["actor"] == "reservation_timer"
    assert (u, "released") not in by_order and (pd, "expired") not in by_order and (pd, "released") not in by_order
    with InventoryStore(p.s.redis, prefix=f"{p.ns}inv") as store:
        assert store.reservation(u)["state"] == "expired" and store.reservation(pd)["state"] == "reserved"
