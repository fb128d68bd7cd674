"""Helpers several stack-test modules share: a topic watcher, settling a replay, the sink's SQL."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from pipeline import kafka_io
from pipeline.codecs import order_codec
from pipeline.contracts import InventoryEvent, RiskEvent, SuspectTransition
from pipeline.devtools.replay import reconcile

CODEC = order_codec()
SINK_TABLES = ("order_events", "risk_events", "inventory_events", "dead_letters", "channel_events", "breaker_events",
               "suspect_transitions")


class Watch:
    """Follows topics from their beginning and keeps every record, so a test can wait for an
    outcome instead of sleeping a guessed amount of time."""

    def __init__(self, p, *topics: str):
        self.names = p.names
        self.c = kafka_io.consumer(p.s, group=f"watch-{uuid.uuid4().hex}")
        deadline = time.monotonic() + 15  # a just-created topic may take a moment to show up
        while True:
            md = self.c.list_topics(timeout=10)
            missing = [t for t in topics if t not in md.topics]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert not missing, f"topics do not exist: {missing}"
        self.c.assign([TopicPartition(t, part, OFFSET_BEGINNING) for t in topics for part in md.topics[t].partitions])
        self.records: list = []

    def poll(self, seconds: float = 0.3) -> None:
        self.records += [m for m in self.c.consume(2000, timeout=seconds) if m.error() is None]

    def until(self, condition, timeout: float, what: str, check_alive=None):
        """Poll until condition(self) is truthy; its value is returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            result = condition(self)
            if result:
                return result
            if check_alive:
                check_alive()
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()

    def on(self, topic: str) -> list:
        return [m for m in self.records if m.topic() == topic]

    def decoded(self, topic: str) -> list[dict]:
        """The topic's events through its contract (pipeline.topics), as dicts."""
        codec = self.names.topic(topic).value
        return [codec.decode(m.value()).as_dict() for m in self.on(topic)]

    def orders(self, topic: str) -> list[dict]:
        # risk.recheck also carries empty "retry" markers for parked orders: skip those
        return [CODEC.decode(m.value()) for m in self.on(topic) if m.value()]

    def order_ids(self, topic: str) -> Counter:
        return Counter(order["order_id"] for order in self.orders(topic))

    def events(self, p, order_id: str | None = None, kind: str | None = None) -> list[dict]:
        """risk.events, optionally of one order and one kind."""
        return [e for e in self.decoded(p.names.RISK_EVENTS) if (order_id is None or e["order_id"] == order_id)
                and (kind is None or e["event"] == kind)]

    def close(self) -> None:
        self.c.close()


def settle(p, messages, produced, drain_s: float = 240.0, holds_s: float = 30.0) -> dict:
    """Drain, wait for the default policy to release every hold, reconcile."""
    p.drain(timeout=drain_s)
    report = reconcile(p.s, p.names, messages, produced["coordinates"])
    deadline = time.monotonic() + holds_s
    while report["awaiting_decision"] and time.monotonic() < deadline:
        time.sleep(2)
        p.drain(timeout=60)
        report = reconcile(p.s, p.names, messages, produced["coordinates"])
    return report


# -- the sink's ClickHouse tables ----------------------------------------------------------------

def sink_open(p, path: str, timeout: float = 30.0):
    """GET a path of the sink's operator surface with the stack tests' token (a context manager)."""
    return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{p.sink_port}{path}",
                                                         headers=p.sink_auth), timeout=timeout)


def sink_json(p, path: str, timeout: float = 30.0):
    with sink_open(p, path, timeout) as resp:
        return json.loads(resp.read())


def sink_sql(p, query: str) -> list[dict]:
    """Rows of a read-only query through the sink's /sql endpoint."""
    try:
        with sink_open(p, f"/sql?q={urllib.parse.quote(query)}") as resp:
            return json.loads(resp.read())["rows"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{query!r} -> {exc.code} {exc.read()[:500]!r}") from None


def sink_counts(p) -> dict[str, int]:
    rows = sink_sql(p, " UNION ALL ".join(f"SELECT '{t}' AS t, count() AS n FROM {t}" for t in SINK_TABLES))
    return {r["t"]: int(r["n"]) for r in rows}


def distinct_facts(p) -> dict[str, int]:
    """Per table, the facts the topics hold, each once (natural keys: upstream may re-emit)."""
    orders = {(o["order_id"], o["status"], o["updated_at"], r.headers.get("change"))
              for r in p.read(p.names.UNIQUE) for o in [CODEC.decode(r.value)]}
    risk = {(e["order_id"], e["event"], e["at_ms"])
            for e in (RiskEvent.decode(r.value).as_dict() for r in p.read(p.names.RISK_EVENTS))}
    inventory = {(e["order_id"], e["event"])
                 for e in (InventoryEvent.decode(r.value).as_dict() for r in p.read(p.names.INVENTORY_EVENTS))}
    suspects = {(e.order_id, e.to_status, e.to_at_ms)
                for e in (SuspectTransition.decode(r.value) for r in p.read(p.names.SUSPECT))}
    return {"order_events": len(orders), "risk_events": len(risk), "inventory_events": len(inventory),
            "dead_letters": len(p.read(p.names.DLQ)), "channel_events": len(p.read(p.names.CHANNEL_CONTROL)),
            "breaker_events": len(p.read(p.names.BREAKER_EVENTS)), "suspect_transitions": len(suspects)}


def wait_sunk(p, expected: dict[str, int], timeout: float = 90.0) -> dict[str, int]:
    """Row counts per sink table once they equal `expected`, or as they are at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        p.check_alive()
        got = sink_counts(p)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)
