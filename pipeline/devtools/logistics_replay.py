"""Logistics replay (issue 19): shipments and courier events with each parcel's expected fate.

Every story is one shipped order: a waybill registered on logistics.waybills, the events the
couriers push on logistics.raw.<courier> (late, duplicated, out of order, conflicting), what the
couriers' APIs will answer a re-pull (`api`, loaded into the simulated courier service) and how
each API behaves (`outages`: down, expired key). `Expect` is what the pipeline must end with.
Times are relative to the replay's start (hours back), so badges are deterministic: a parcel whose
newest event is 2.5 h old is yellow whenever the replay runs.

The failure stories of seed 000 are modes of their own (`STORY_MODES`): courier never scanned,
waybill replaced by another carrier, expired API key; "too few retries" is the client's retry
setting against a flaky API (tests/unit/test_couriers.py shows one try losing what retries save).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.contracts import WaybillRegistered
from pipeline.topics import TopicNames

H = 3_600_000


@dataclass(frozen=True)
class Expect:
    state: str                       # what the buyer sees: a state or "syncing"
    badge: str
    review: bool = False             # queued for manual review
    failover: bool = False           # switched to the backup aggregator at least once
    pulled: bool = False             # re-pulled at least once
    notified: bool = False           # one parcel_signed notification
    dead_letters: int = 0


@dataclass
class Story:
    name: str
    order_id: str
    carrier: str
    waybill: str
    registered_h: float                             # hours before the replay's start
    pushed: list[tuple[str, dict]] = field(default_factory=list)   # (source, raw event), in send order
    api: list[tuple[str, dict]] = field(default_factory=list)      # what a pull of (source) returns
    expect: Expect | None = None


def _sf(code, t, eid, wb):
    return {"mailno": wb, "opCode": code, "acceptTime": t, "routeId": eid, "remark": "快件在【杭州中转场】"}


def _zto(code, t, eid, wb):
    return {"billCode": wb, "scanType": code, "scanTime": t // 1000, "scanId": eid}


def _yto(code, t, eid, wb):
    return {"waybillNo": wb, "infoContent": code, "upload_Time": t, "traceId": eid}


def _jt(code, t, eid, wb):
    return {"billCode": wb, "scanTypeCode": code, "scanTimeMs": t, "id": eid}


def _ems(code, t, eid, wb):
    return {"waybillNo": wb, "opCode": code, "opTime": t // 1000, "traceNo": eid}


def _cainiao(action, t, eid, wb, cp):
    return {"mailNo": wb, "action": action, "time": t, "eventId": eid, "cpCode": cp}


def _kuaidi100(state, t, eid, wb, com):
    return {"nu": wb, "state": state, "ftime": t // 1000, "id": eid, "com": com}


def stories(start_ms: int, tag: str = "") -> list[Story]:
    """The replay's parcels; `tag` keeps waybill numbers apart between runs on one broker."""
    def at(hours_back: float) -> int:
        return int(start_ms - hours_back * H)

    def wb(prefix: str, n: int) -> str:
        return f"{prefix}{tag}{n:04d}"

    out = []
    w = wb("SF", 1)
    out.append(Story("on_time", "TM-L0001", "SF", w, 6, pushed=[
        ("SF", _sf("SF101", at(5), "a1", w)), ("SF", _sf("SF203", at(3), "a2", w)), ("SF", _sf("SF204", at(0.5), "a3", w))],
        expect=Expect("out_for_delivery", "green", pulled=True)))
    w = wb("ZT", 2)
    e = _zto("到件", at(0.2), "z2", w)
    out.append(Story("duplicated", "JD-L0002", "ZTO", w, 3, pushed=[
        ("ZTO", _zto("收件", at(2), "z1", w)), ("ZTO", e), ("ZTO", e), ("ZTO", _zto("收件", at(2), "z1", w))],
        expect=Expect("in_transit", "green")))
    w = wb("YT", 3)
    out.append(Story("out_of_order", "PDD-L0003", "YTO", w, 8, pushed=[
        ("YTO", _yto("SIGNED", at(0.3), "y4", w)), ("YTO", _yto("DEPARTURE", at(4), "y2", w)),
        ("YTO", _yto("GOT", at(6), "y1", w)), ("YTO", _yto("SENT_SCAN", at(1), "y3", w)),
        ("YTO", _yto("SIGNED", at(0.3), "y4", w))],
        expect=Expect("signed", "green", notified=True)))
    w = wb("JT", 4)
    out.append(Story("late", "DY-L0004", "JT", w, 3, pushed=[("JT", _jt("10", at(2.5), "j1", w))],
                     expect=Expect("collected", "yellow", pulled=True)))
    w = wb("EM", 5)
    out.append(Story("conflicting", "KS-L0005", "EMS", w, 10, pushed=[
        ("EMS", _ems("203", at(9), "e1", w)), ("EMS", _ems("702", at(0.6), "e2", w)),
        ("CAINIAO", _cainiao("TRANSPORT", at(0.2), "c1", w, "EMS"))],
        expect=Expect("syncing", "green", review=True)))
    w = wb("SF", 6)
    out.append(Story("aggregator_lagging", "SP-L0006", "SF", w, 30, pushed=[
        ("SF", _sf("SF101", at(26), "b1", w)), ("SF", _sf("SF80", at(0.1), "b2", w)),
        ("KUAIDI100", _kuaidi100("0", at(20), "k1", w, "shunfeng"))],
        expect=Expect("signed", "green", notified=True)))
    w = wb("ZT", 7)
    out.append(Story("courier_outage", "TM-L0007", "ZTO", w, 2, pushed=[("ZTO", _zto("收件", at(1.5), "o1", w))],
                     api=[("CAINIAO", _cainiao("TRANSPORT", at(0.1), "oc1", w, "ZTO"))],
                     expect=Expect("in_transit", "green", failover=True, pulled=True)))
    out += [s for mode in STORY_MODES.values() for s in mode(start_ms, tag)]
    return out


def never_scanned(start_ms: int, tag: str = "") -> list[Story]:
    """Seed 000: the courier never scanned the parcel. Pulls answer with nothing; the badge says so."""
    w = f"SF{tag}0008"
    return [Story("never_scanned", "TM-L0008", "SF", w, 4, expect=Expect("registered", "red", pulled=True))]


def replaced_carrier(start_ms: int, tag: str = "") -> list[Story]:
    """Seed 000: the waybill number was replaced by another carrier's. The aggregator reports the
    parcel under ZTO while the order's waybill is SF's: syncing, and a person looks at it."""
    w = f"SF{tag}0009"
    t = start_ms - H // 2
    return [Story("replaced_carrier", "JD-L0009", "SF", w, 3, pushed=[
        ("SF", _sf("SF101", start_ms - 2 * H, "r1", w)), ("CAINIAO", _cainiao("TRANSPORT", t, "rc1", w, "ZTO"))],
        expect=Expect("syncing", "green", review=True))]


def expired_key(start_ms: int, tag: str = "") -> list[Story]:
    """Seed 000: the courier API key expired. Pulls are refused (401, not retried); after 3 the
    backup aggregator answers instead."""
    w = f"YT{tag}0010"
    return [Story("expired_key", "DY-L0010", "YTO", w, 2, pushed=[("YTO", _yto("GOT", start_ms - int(1.5 * H), "x1", w))],
                  api=[("CAINIAO", _cainiao("TRANSPORT", start_ms - H // 10, "xc1", w, "YTO"))],
                  expect=Expect("in_transit", "green", failover=True, pulled=True))]


def unknown_code(start_ms: int, tag: str = "") -> list[Story]:
    """A code nobody put in the table: dead-lettered with its bytes, the parcel keeps its state."""
    w = f"SF{tag}0011"
    return [Story("unknown_code", "SP-L0011", "SF", w, 1, pushed=[
        ("SF", _sf("SF101", start_ms - H // 3, "u1", w)), ("SF", _sf("SF777", start_ms - H // 4, "u2", w))],
        expect=Expect("collected", "green", dead_letters=1))]


STORY_MODES = {"never_scanned": never_scanned, "replaced_carrier": replaced_carrier, "expired_key": expired_key,
               "unknown_code": unknown_code}
# how each courier API behaves in the replay (the simulated service's per-source settings)
OUTAGES = {"ZTO": {"down": True}, "YTO": {"expired_key": True}}


def records(all_stories: list[Story], names: TopicNames, start_ms: int) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) to produce: every registration first, then the pushed events in order."""
    out = [(names.WAYBILLS, s.waybill.encode(),
            WaybillRegistered(s.order_id, s.carrier, s.waybill, int(start_ms - s.registered_h * H)).encode())
           for s in all_stories]
    for s in all_stories:
        for source, event in s.pushed:
            out.append((names.courier_raw(source), s.waybill.encode(), json.dumps(event, ensure_ascii=False).encode()))
    return out


def load_api(world, all_stories: list[Story]) -> None:
    """What the couriers' APIs know (pipeline.devtools.courier_service.CourierWorld): every pushed
    event at its source, plus what only a pull finds. Events the translator refuses are left out:
    a pull returning them again would dead-letter them again."""
    from pipeline.domain.logistics import TrackingError, translate
    for s in all_stories:
        for source, event in [*s.pushed, *s.api]:
            raw = json.dumps(event, ensure_ascii=False).encode()
            try:
                translate(source, raw)
            except TrackingError:
                continue
            world.add(source, s.waybill, raw)
