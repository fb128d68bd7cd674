"""The one topic map. Every producer and consumer takes names from here.

`ORDERSTREAM_NAMESPACE` prefixes every name (and the Faust app id), so tests and benchmarks
run isolated pipelines side by side on one broker. Module constants use the process's
namespace; `TopicNames(ns)` gives another one's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PLATFORMS = ("TMALL", "JD", "PINDUODUO", "DOUYIN", "KUAISHOU", "SHOPEE", "SHOPIFY")


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

    def __getattr__(self, name: str) -> str:
        try:
            return self.ns + _BASE[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def COMPACTED(self) -> frozenset[str]:
        return frozenset({self.ns + _BASE["RISK_RULES"]})

    @property
    def ALL_TOPICS(self) -> tuple[str, ...]:
        return (*self.RAW_TOPICS, *(self.ns + name for name in _BASE.values()))


_BASE = {
    "UNIQUE": "orders.unique",              # Avro Order after dedupe and risk: new orders and real updates only
    "DUPLICATES": "orders.duplicates",      # JSON: redeliveries and stale versions dedupe dropped (audit, reconciliation)
    "ACCEPTED": "orders.accepted",          # Avro Order cleared for fulfilment by risk or released from hold
    "RISK_QUEUE": "risk.queue",             # Avro Order held for an operator
    "RISK_DECISIONS": "risk.decisions",     # JSON operator decisions (and default-policy timeouts), keyed by order id
    "RISK_RULES": "risk.rules",             # compacted: the active rule set (YAML text + version)
    "RISK_EVENTS": "risk.events",           # JSON audit trail: flagged, held, approved, rejected, auto-released, rechecked
    "RISK_RECHECK": "risk.recheck",         # Avro Order let through lightly while the breaker was open
    "INVENTORY_STOCK": "inventory.stock",   # JSON stock snapshots and deltas from the warehouse system
    "INVENTORY_EVENTS": "inventory.events", # JSON reserved / out_of_stock / released / duplicate
    "CHANNEL_CONTROL": "channel.control",   # JSON pause / resume per platform and SKU
    "BREAKER_EVENTS": "breaker.events",     # JSON breaker transitions
    "DLQ": "orders.dlq",                    # Avro DeadLetter with the original bytes
}

NAMESPACE = os.environ.get("ORDERSTREAM_NAMESPACE", "")
names = TopicNames(NAMESPACE)


def raw_topic(platform: str) -> str:
    return names.raw(platform)


RAW_TOPICS = names.RAW_TOPICS
UNIQUE = names.UNIQUE
DUPLICATES = names.DUPLICATES
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
COMPACTED = names.COMPACTED
ALL_TOPICS = names.ALL_TOPICS
