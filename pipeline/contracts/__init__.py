"""The one home of the wire contracts: what every topic carries, as typed records.

- Orders and dead letters: Avro records read as dicts (`ORDER`, `DEAD_LETTER`, schemas/order.avsc
  and schemas/dead_letter.avsc); the order is the hot path's own shape.
- Every other event a process emits, and the risk-holds table's value: a frozen dataclass per
  Avro schema (events.py); the refunds' requests, actions, events, failed instructions and table
  value likewise (refunds.py).
- What arrives from outside in its own format: the platforms' raw orders (normalized in
  pipeline.domain) and the warehouse system's stock JSON (stock.py).

pipeline.topics maps every topic to its key and value codec from here.
"""
from pipeline.codecs import CodecError, codec

from .events import EVENT_TYPES as _CORE_TYPES
from .events import (BreakerTransition, ChannelEvent, DroppedDuplicate, Event, Hold, HoldVerdict, InventoryEvent,
                     InventoryLine, RiskDecision, RiskEvent, RuleHit, SettlementBillLine,
                     SuspectTransition)
from .refunds import (REFUND_TYPES, FailedRefundInstruction, Refund, RefundAction, RefundEvent, RefundLine,
                      RefundRequest, RefundStep)
from .logistics import LOGISTICS_TYPES, Notification, SourceReport, TrackingReview, TrackingUpdate, Waybill, WaybillCheck, WaybillRegistered
from .stock import StockEventError, StockUpdate, WarehouseStock, parse_stock_event

EVENT_TYPES = _CORE_TYPES + REFUND_TYPES

ORDER = codec("order")
DEAD_LETTER = codec("dead_letter")
EVENT_TYPES = EVENT_TYPES + LOGISTICS_TYPES

__all__ = ["CodecError", "ORDER", "DEAD_LETTER", "EVENT_TYPES", "Event", "RiskEvent", "InventoryEvent",
           "InventoryLine", "RiskDecision", "ChannelEvent", "BreakerTransition", "DroppedDuplicate", "Hold", "HoldVerdict",
           "RuleHit", "SettlementBillLine", "SuspectTransition", "StockEventError", "StockUpdate", "WarehouseStock", "parse_stock_event",
           "RefundRequest", "RefundAction", "RefundEvent", "RefundLine", "RefundStep", "Refund",
           "FailedRefundInstruction", "Notification", "SourceReport", "TrackingReview", "TrackingUpdate",
           "Waybill", "WaybillCheck", "WaybillRegistered"]
