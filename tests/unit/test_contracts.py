"""One home for the wire contracts: every topic has its codec, every event one typed record whose
bytes survive the schema evolving, and no runtime module builds an event by hand."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from pipeline.codecs import SCHEMA_DIR, AvroCodec, CodecError, SchemaStore
from pipeline.contracts import (EVENT_TYPES, BreakerTransition, ChannelEvent, DroppedDuplicate,
                                FailedRefundInstruction, Hold, HoldVerdict, InventoryEvent, InventoryLine, Refund,
                                RefundAction, RefundEvent, RefundLine, RefundRequest, RefundStep, RiskDecision, RiskEvent,
                                RuleHit, SettlementBillLine,
                                Notification, SourceReport, TrackingReview, TrackingUpdate, Waybill, WaybillCheck,
                                WaybillRegistered, StockEventError, StockUpdate, SuspectTransition, WarehouseStock)
from pipeline.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
T = 1_773_144_450_123

SAMPLES = [
    RiskEvent("held", "JD-1", "JD", T, rule_ids=("amount_over_5000",), severity="high", approvers=("ops",),
              reason="big", amount_minor=680_000, currency="CNY", ruleset_version=3, checked_at_ms=T + 5),
    RiskEvent("approved", "JD-1", "JD", T, operator="alice", waited_ms=60_000, source="operator"),
    InventoryEvent("reserved", "JD-1", "JD", T, warehouse=None,
                   lines=(InventoryLine("A", 2, "WH-SH"), InventoryLine("B", 1, None)), units=3, latency_ms=12.5),
    InventoryEvent("out_of_stock", "JD-2", "", T, reason="A short 2"),
    InventoryEvent("shipped", "JD-1", "JD", T, warehouse="WH-SH", lines=(InventoryLine("A", 2, "WH-SH"),), units=2,
                   reason="order SHIPPED", actor="order_flow"),
    SuspectTransition("SP-1", "SHOPEE", "too_fast", "PACKED", "SHIPPED", T - 60_000, T, 60_000, limit_ms=180_000,
                      window="packed_to_shipped_3min", reason="too soon", rules_version=1,
                      detected_by="order_flow/dedupe", detected_at_ms=T + 3),
    RiskDecision("JD-1", "reject", "bob", "stolen card", T),
    ChannelEvent("pause", "SKU-1", "JD", 3, 10, T),
    BreakerTransition("closed", "open", 612.5, T, "host:6066:42"),
    DroppedDuplicate("JD-1", "JD", "stale", T),
    HoldVerdict(hits=(RuleHit("remote_region", "region", "medium", "hold", "西藏"),), approvers=("production",),
                amount_minor=5, currency="USD", ruleset_version=2),
    Hold("JD-1", "JD", "approved", T, 1800.0, T + 1_800_000, 3, approvers=("ops",), rule_ids=("remote_region",),
         hits=(RuleHit("remote_region", "region", "medium", "hold", "西藏"),), amount_minor=5, currency="CNY",
         order=b"\xc3\x01order-bytes\x00\xff", headers={"src": b"t:1:2", "raw_ts": b"17"}, decided_by="1:9",
         resolution_event=RiskEvent("approved", "JD-1", "JD", T + 5, operator="alice").encode()),
    RefundRequest("JD:RF1", "JD-1", "JD", "return_and_refund", "seven_day_no_reason", 19_900, "CNY", 39_800,
                  (RefundLine("A", 1), RefundLine("B", 2, is_custom=True)), T, T - 86_400_000, "buyer:u1",
                  reason="尺码不合适"),
    RefundAction("JD:RF1", "receive", "clerk.wang", T, warehouse="WH-SH"),
    RefundEvent("instruction_failed", "JD:RF1", "JD-1", "JD", "refunding", "refunding", T, actor="JD",
                amount_minor=19_900, currency="CNY", error="Invalid API Key", cause="ns.refunds.actions:1:7"),
    FailedRefundInstruction("JD:RF1", "JD-1", "JD", 19_900, "CNY", "Invalid API Key", 401, 1, T,
                            cause="ns.refunds.actions:1:7"),
    Refund("JD:RF1", "JD-1", "JD", "return_and_refund", "seven_day_no_reason", 19_900, "CNY", 39_800,
           (RefundLine("A", 1),), T, "buyer:u1", "refunding",
           history=(RefundStep("requested", T, "buyer:u1"), RefundStep("awaiting_return", T, "refund_rules")),
           auto_rule="seven_day_no_reason_small", decided_by="refund_rules", money_committed=True,
           warehouse="WH-SH", instruction="failed", instruction_attempts=1, last_error="Invalid API Key",
           applied="ns.refunds.actions:1:7", published=(b"\xc3\x01event",), parked=b"\xc3\x01parked"),
    SettlementBillLine("0123456789abcdef:7", "0123456789abcdef" * 4, "天猫-账单.csv", 7, "TMALL", "F-1", "refund",
                       "交易退款", -1_250, "CNY", "2026-11-27", "alice", T, external_order_id="1001",
                       order_id="TM-abc"),
    WaybillRegistered("TM-1", "SF", "SF100", T, replaces="ZT9"),
    TrackingUpdate("TM-1", "SF100", "SF", "syncing", "in_transit", "conflict", T, T + 5, "yellow", T, "abcd",
                   source="CAINIAO", code="TRANSPORT", expected_at_ms=T + 86_400_000, on_backup=True, pulls=4,
                   failed_pulls=3, failovers=1),
    TrackingReview("TM-1", "SF100", "SF", "CAINIAO says in_transit", {"SF": "signed", "CAINIAO": "in_transit"}, T),
    Notification("TM-1", "parcel_signed", "SF100", "SF", "abcd", T),
    Waybill("SF100", "SF", "TM-1", "abcd", T, T, T + 1500, reports=(SourceReport("SF", "signed", "SF80", T),
            SourceReport("CAINIAO", "in_transit", "TRANSPORT", T - 5, "SF")), seen=("SF:r1",), agreed_state="signed",
            syncing=True, collected_at_ms=T - 9, failed_pulls=2, pulls=3, failovers=1, on_backup=True, notified=True,
            badge="red"),
    WaybillCheck("SF100", "pull", T, source="SF", ok=False, reason="expired_key"),
]


def test_every_event_type_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_bytes(event):
    data = event.encode()
    assert data[:2] == b"\xc3\x01"  # single-object Avro: the writer's schema travels with it
    assert type(event).decode(data) == event
    assert type(event).from_dict(event.as_dict()) == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_bytes_of_another_contract_or_garbage_are_refused(event):
    other = next(s for s in SAMPLES if type(s) is not type(event))
    for bad in (other.encode(), event.encode()[:-1] if len(event.encode()) > 11 else b"\xc3\x01", b'{"json": 1}', b""):
        with pytest.raises(CodecError):
            type(event).decode(bad)


def _next_version(schema: dict) -> dict:
    """What a compatible next version looks like: one more field, with a default."""
    newer = copy.deepcopy(schema)
    newer["fields"].append({"name": "added_later", "type": ["null", "string"], "default": None})
    return newer


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_events_survive_a_compatible_schema_change_both_ways(event):
    """Old readers read a newer writer's bytes (the new field is dropped); a newer reader reads
    today's bytes (the new field takes its default): consumers and producers upgrade in any order."""
    cls = type(event)
    store = SchemaStore()
    store.load_dir()
    current = json.loads((SCHEMA_DIR / f"{cls.SCHEMA}.avsc").read_text())
    store.register(_next_version(current), name="next")
    newer_datum = {**event.as_dict(), "added_later": "x"}
    newer_bytes = AvroCodec("next", store).encode(newer_datum)
    assert cls.from_dict(AvroCodec(cls.SCHEMA, store).decode(newer_bytes)) == event
    assert AvroCodec("next", store).decode(event.encode())["added_later"] is None


def test_inventory_events_written_before_the_actor_field_still_decode():
    """inventory_event.v1 (no actor) stays in schemas/: bytes already on the topic keep decoding."""
    old = AvroCodec("inventory_event.v1").encode({"event": "released", "order_id": "JD-1", "platform": "JD",
                                                  "at_ms": T, "warehouse": None, "lines": [], "units": 0,
                                                  "reason": "order cancelled", "latency_ms": None})
    assert InventoryEvent.decode(old) == InventoryEvent("released", "JD-1", "JD", T, reason="order cancelled")


def test_every_field_of_every_event_schema_matches_its_record():
    for cls in EVENT_TYPES:
        schema = json.loads((SCHEMA_DIR / f"{cls.SCHEMA}.avsc").read_text())
        assert [f["name"] for f in schema["fields"]] == list(cls.field_names()), cls.__name__


def test_every_schema_file_belongs_to_a_contract():
    used = {cls.SCHEMA for cls in EVENT_TYPES} | {"order", "dead_letter"}
    for path in SCHEMA_DIR.glob("*.avsc"):
        family = path.stem.split(".")[0]  # order.v1 is a version of order
        assert family in used, f"{path.name} is no topic's contract"


def test_every_topic_has_a_key_and_a_value_codec():
    names = TopicNames("ns.")
    for topic in names.ALL_TOPICS:
        contract = names.topic(topic)
        assert contract.key and contract.doc
        assert callable(contract.value.encode) and callable(contract.value.decode)
    assert names.topic(names.RISK_EVENTS).value is RiskEvent
    assert names.topic(names.REFUND_REQUESTS).value is RefundRequest
    assert names.REFUND_RULES in names.COMPACTED
    assert names.topic(names.raw("JD")).value.decode(b"{}") == b"{}"
    with pytest.raises(KeyError):
        names.topic("ns.not.a.topic")


def test_warehouse_stock_json_round_trip_and_clear_errors():
    update = StockUpdate("snapshot", "WH-SH", "SKU-1", total=50, locked=1, presale=2)
    assert WarehouseStock.decode(WarehouseStock.encode(update)) == update
    assert json.loads(WarehouseStock.encode(update))["type"] == "snapshot"  # the warehouse system's own field
    for bad, why in ((b"{not json", "not JSON"), (b'{"type": "snapshot", "warehouse": "WH", "sku": "S"}', "total"),
                     (b'{"type": "sale", "warehouse": "WH", "sku": "S"}', "type")):
        with pytest.raises(StockEventError, match=why):
            WarehouseStock.decode(bad)


# Events are built only as contracts: these modules may serialise JSON for other reasons.
JSON_ALLOWED = {
    "pipeline/logs.py": "structured log lines",
    "pipeline/cli.py": "printing results for a person",
    "pipeline/clickhouse/http.py": "HTTP responses",
    "pipeline/clickhouse/analyst/server.py": "the X-ClickHouse-Summary header",
    "pipeline/clickhouse/backends.py": "JSONEachRow inserts",
    "pipeline/domain/normalize.py": "the order fingerprint",
    "pipeline/inventory_store.py": "the Lua script's one JSON argument",
    "pipeline/contracts/stock.py": "the warehouse system's JSON",
    "pipeline/consistency.py": "the consistency check's report file",
    "pipeline/settlement/engine.py": "a reconciliation run's JSON report, stored with the run",
    "pipeline/access.py": "HTTP error responses of the guarded routes",
    "pipeline/redrive_ledger.py": "the re-drive claim record in Redis (encoded and decoded by its own class)",
}


def json_serialisations(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "dumps"
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("json", "orjson")):
            lines.append(node.lineno)
    return lines


def test_no_runtime_module_builds_an_event_as_json_by_hand():
    found = []
    for folder in ("pipeline", "agents"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in JSON_ALLOWED and not rel.startswith("pipeline/devtools/"):  # devtools is not runtime
                found += [f"{rel}:{line}" for line in json_serialisations(path)]
    assert not found, f"JSON built outside the contracts: {found}"


def test_the_json_check_sees_a_dumps(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import orjson\nout.send('t', b'k', orjson.dumps({'event': 'x'}))\n")
    assert json_serialisations(probe) == [2]
