"""The one topic map: every topic's name, key and value codec. Producers and consumers take
names and codecs from here (the events themselves are in pipeline.contracts).

`ORDERSTREAM_NAMESPACE` prefixes every name (and the Faust app id), so tests and benchmarks
run isolated pipelines side by side on one broker. Module constants use the process's
namespace; `TopicNames(ns)` gives another one's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .contracts import (DEAD_LETTER, ORDER, BreakerTransition, ChannelEvent, DroppedDuplicate,
                        FailedRefundInstruction, InventoryEvent, RefundAction, RefundEvent, RefundRequest, RiskDecision,
                        RiskEvent, SettlementBillLine, SuspectTransition, Notification, TrackingReview,
                        TrackingUpdate, WarehouseStock, WaybillCheck, WaybillRegistered)

PLATFORMS = ("TMALL", "JD", "PINDUODUO", "DOUYIN", "KUAISHOU", "SHOPEE", "SHOPIFY")
# carriers and aggregators with a logistics.raw.<courier> topic (their codes: pipeline/domain/courier_codes.yaml)
COURIERS = ("SF", "ZTO", "YTO", "JT", "EMS", "CAINIAO", "KUAIDI100")


@dataclass(frozen=True)
class TopicNames:
    ns: str = ""

    def raw(self, platform: str) -> str:
        """orders.raw.<platform>: the platform's own JSON, as pushed or polled."""
        return f"{self.ns}orders.raw.{platform.lower()}"

    def platform_of(self, raw_topic: str) -> str:
        return raw_topic[len(self.ns) + len("orders.raw."):].upper()

    @property
    def RAW_TOPICS(self) -> tuple[str, ...]:
        return tuple(self.raw(p) for p in PLATFORMS)

    @property
    def ORDER_FLOW_OUTPUTS(self) -> tuple[str, ...]:
        """What the hot path (agents/orders.py) writes: in exactly-once mode, in its transactions."""
        return tuple(self.ns + _BASE[n].base for n in (
            "UNIQUE", "ACCEPTED", "DUPLICATES", "DLQ", "SUSPECT", "RISK_EVENTS", "RISK_QUEUE", "RISK_RECHECK",
            "INVENTORY_EVENTS", "CHANNEL_CONTROL", "WAYBILLS"))

    def courier_raw(self, courier: str) -> str:
        """logistics.raw.<courier>: the courier's or aggregator's own JSON scan events."""
        return f"{self.ns}logistics.raw.{courier.lower()}"

    def courier_of(self, raw_topic: str) -> str:
        return raw_topic[len(self.ns) + len("logistics.raw."):].upper()

    @property
    def COURIER_RAW_TOPICS(self) -> tuple[str, ...]:
        return tuple(self.courier_raw(c) for c in COURIERS)

    def __getattr__(self, name: str) -> str:
        try:
            return self.ns + _BASE[name].base
        except KeyError:
            raise AttributeError(name) from None

    def topic(self, name: str) -> Topic:
        """The contract of a full topic name of this namespace (KeyError for a stranger)."""
        if name in self.RAW_TOPICS:
            return RAW
        if name in self.COURIER_RAW_TOPICS:
            return COURIER_RAW
        return _BY_BASE[name[len(self.ns):] if name.startswith(self.ns) else name]

    @property
    def COMPACTED(self) -> frozenset[str]:
        return frozenset({self.RISK_RULES, self.REFUND_RULES})

    @property
    def ALL_TOPICS(self) -> tuple[str, ...]:
        return (*self.RAW_TOPICS, *self.COURIER_RAW_TOPICS, *(self.ns + t.base for t in _BASE.values()))


@dataclass(frozen=True)
class Topic:
    """A topic's base name, what its key is and the codec of its values (encode / decode)."""
    base: str
    key: str
    value: Any
    doc: str


class RawPayload:
    """The platform's own bytes, untouched: pipeline.domain.normalize reads them."""
    @staticmethod
    def encode(payload: bytes) -> bytes:
        return payload

    @staticmethod
    def decode(data: bytes) -> bytes:
        return data


class RuleSetText:
    """A rule set as UTF-8 YAML (pipeline.domain.risk.RuleSet.parse and
    pipeline.domain.refund_rules.RefundRules.parse validate them)."""
    @staticmethod
    def encode(text: str) -> bytes:
        return text.encode("utf-8")

    @staticmethod
    def decode(data: bytes) -> str:
        return data.decode("utf-8", errors="replace")


RAW = Topic("orders.raw.<platform>", "the platform's order id", RawPayload,
            "the platform's own JSON, as pushed or polled")
COURIER_RAW = Topic("logistics.raw.<courier>", "the waybill number", RawPayload,
                    "the courier's or aggregator's own JSON scan event, as pushed or pulled")
_BASE = {
    "UNIQUE": Topic("orders.unique", "order id", ORDER,
                    "after dedupe and risk: new orders and real updates only (header change=new|update)"),
    "SUSPECT": Topic("orders.suspect", "order id", SuspectTransition,
                     "status updates not trusted (backwards, skipping, too fast): the rule that fired"),
    "DUPLICATES": Topic("orders.duplicates", "order id", DroppedDuplicate,
                        "redeliveries and stale versions dedupe dropped (audit, reconciliation)"),
    "ACCEPTED": Topic("orders.accepted", "order id", ORDER, "cleared for fulfilment by risk or released from hold"),
    "RISK_QUEUE": Topic("risk.queue", "order id", ORDER, "held for an operator (header verdict: HoldVerdict)"),
    "RISK_DECISIONS": Topic("risk.decisions", "order id", RiskDecision,
                            "operator decisions and default-policy time-outs"),
    "RISK_RULES": Topic("risk.rules", "rule set name", RuleSetText, "compacted: the active rule set (YAML, versioned)"),
    "RISK_EVENTS": Topic("risk.events", "order id", RiskEvent,
                         "audit trail: flagged, held, approved, rejected, auto-released, rechecked"),
    "RISK_RECHECK": Topic("risk.recheck", "order id", ORDER,
                          "let through lightly while the breaker was open; re-checked once it closes"),
    "INVENTORY_STOCK": Topic("inventory.stock", "warehouse:sku", WarehouseStock,
                             "stock snapshots and deltas from the warehouse system (its JSON)"),
    "INVENTORY_EVENTS": Topic("inventory.events", "order id", InventoryEvent,
                              "reserved / out_of_stock / released / cancelled / expired / rereserved / shipped / "
                              "shipped_unreserved / ship_skipped"),
    "CHANNEL_CONTROL": Topic("channel.control", "sku:platform", ChannelEvent, "pause / resume per platform and SKU"),
    "BREAKER_EVENTS": Topic("breaker.events", "worker", BreakerTransition, "breaker transitions"),
    "SETTLEMENT_BILLS": Topic("settlement.bills", "line key (file sha256 prefix:line number)", SettlementBillLine,
                              "validated settlement bill lines, one per money movement (orderstream settlement import)"),
    "DLQ": Topic("orders.dlq", "the raw message's key", DEAD_LETTER, "what normalize refused, with the original bytes"),
    "REFUND_REQUESTS": Topic("refunds.requests", "refund id", RefundRequest,
                             "after-sales requests from the platforms (or filed by an operator)"),
    "REFUND_ACTIONS": Topic("refunds.actions", "refund id", RefundAction,
                            "operator decisions, goods received back, cancellations, instruction re-drives"),
    "REFUND_EVENTS": Topic("refunds.events", "refund id", RefundEvent,
                           "every step of every refund: requested ... refunded, rejected, cancelled, failures"),
    "REFUND_FAILED": Topic("refunds.instructions.failed", "refund id", FailedRefundInstruction,
                           "refund instructions a platform's API did not take, with its error (re-driven by the CLI)"),
    "REFUND_RULES": Topic("refunds.rules", "rule set name", RuleSetText,
                          "compacted: the active refund auto-approval rules (YAML, versioned)"),
    "WAYBILLS": Topic("logistics.waybills", "waybill number", WaybillRegistered,
                      "a waybill created for a shipped order (carrier, number, order)"),
    "TRACKING": Topic("logistics.tracking", "waybill number", TrackingUpdate,
                      "what the buyer sees of a parcel after each change: translated state, badge, why"),
    "TRACKING_REVIEW": Topic("logistics.review", "waybill number", TrackingReview,
                             "waybills whose sources disagree: the manual review queue"),
    "LOGISTICS_DLQ": Topic("logistics.dlq", "the courier message's key", DEAD_LETTER,
                           "courier messages the translator refused (unknown code, ...), with the original bytes"),
    "TRACKING_CHECKS": Topic("logistics.checks", "waybill number", WaybillCheck,
                             "the freshness timer's pulls and badge changes, applied by the logistics agent"),
    "NOTIFICATIONS": Topic("notifications.out", "order id", Notification, "buyer notifications: parcel signed, once"),
}

_BY_BASE = {t.base: t for t in _BASE.values()}

NAMESPACE = os.environ.get("ORDERSTREAM_NAMESPACE", "")
names = TopicNames(NAMESPACE)


def raw_topic(platform: str) -> str:
    return names.raw(platform)


RAW_TOPICS = names.RAW_TOPICS
UNIQUE = names.UNIQUE
DUPLICATES = names.DUPLICATES
SUSPECT = names.SUSPECT
ACCEPTED = names.ACCEPTED
RISK_QUEUE = names.RISK_QUEUE
RISK_DECISIONS = names.RISK_DECISIONS
RISK_RULES = names.RISK_RULES
RISK_EVENTS = names.RISK_EVENTS
RISK_RECHECK = names.RISK_RECHECK
INVENTORY_STOCK = names.INVENTORY_STOCK
INVENTORY_EVENTS = names.INVENTORY_EVENTS
CHANNEL_CONTROL = names.CHANNEL_CONTROL
BREAKER_EVENTS = names.BREAKER_EVENTS
DLQ = names.DLQ
REFUND_REQUESTS = names.REFUND_REQUESTS
REFUND_ACTIONS = names.REFUND_ACTIONS
SETTLEMENT_BILLS = names.SETTLEMENT_BILLS
COURIER_RAW_TOPICS = names.COURIER_RAW_TOPICS
WAYBILLS = names.WAYBILLS
TRACKING = names.TRACKING
TRACKING_REVIEW = names.TRACKING_REVIEW
LOGISTICS_DLQ = names.LOGISTICS_DLQ
NOTIFICATIONS = names.NOTIFICATIONS
TRACKING_CHECKS = names.TRACKING_CHECKS
COMPACTED = names.COMPACTED
ALL_TOPICS = names.ALL_TOPICS
