"""Trusted state changes (seed 003): the rules as data, and the dedupe state that applies them."""
from __future__ import annotations

import pytest

from pipeline.domain.dedupe import Change, SeenVersion, judge
from pipeline.domain.platforms import STANDARD_STATES
from pipeline.domain.transitions import (DEFAULT_TRANSITIONS_FILE, SuspectHit, TransitionRules, TransitionRulesError,
                                         load_transition_file)

RULES = load_transition_file()
RANK = {s: i for i, s in enumerate(STANDARD_STATES)}
MIN = 60_000


def test_the_shipped_file_lists_every_state_and_the_seed_window():
    assert set(RULES.next) == set(STANDARD_STATES) and RULES.version >= 1
    window = RULES.windows[("PACKED", "SHIPPED")]
    assert window.min_ms == 180_000 and window.max_ms is None


@pytest.mark.parametrize("src,dst", [("PENDING_PAYMENT", "PAID"), ("PAID", "SHIPPED"), ("RISK_HOLD", "PAID"),
                                     ("SHIPPED", "DELIVERED"), ("SHIPPED", "COMPLETED"), ("DELIVERED", "COMPLETED"),
                                     ("PAID", "CANCELLED"), ("SHIPPED", "CANCELLED"), ("PACKED", "SHIPPED")])
def test_legal_moves_in_time_are_trusted(src, dst):
    assert RULES.check(src, 0, dst, 10 * MIN) is None


def test_a_repeated_status_is_not_a_move():
    assert RULES.check("PACKED", 0, "PACKED", 1) is None
    assert RULES.check("CANCELLED", 0, "CANCELLED", 1) is None


@pytest.mark.parametrize("src,dst", [("SHIPPED", "PAID"), ("COMPLETED", "SHIPPED"), ("DELIVERED", "PENDING_PAYMENT"),
                                     ("CANCELLED", "PAID"), ("CANCELLED", "COMPLETED")])
def test_backwards_moves_and_moves_out_of_a_final_state(src, dst):
    hit = RULES.check(src, 0, dst, 10 * MIN)
    assert hit is not None and hit.rule == "backwards" and (hit.from_status, hit.to_status) == (src, dst)
    assert "not a legal move" in hit.reason


@pytest.mark.parametrize("src,dst", [("PAID", "DELIVERED"), ("PENDING_PAYMENT", "SHIPPED"), ("PAID", "COMPLETED"),
                                     ("PACKED", "DELIVERED")])
def test_skipping_the_legal_order_is_flagged(src, dst):
    hit = RULES.check(src, 0, dst, 10 * MIN)
    assert hit is not None and hit.rule == "illegal_skip" and hit.limit_ms is None


def test_shipped_within_three_minutes_of_packing_is_too_fast():
    hit = RULES.check("PACKED", 1_000_000, "SHIPPED", 1_000_000 + 179_999)
    assert hit.rule == "too_fast" and hit.limit_ms == 180_000 and hit.elapsed_ms == 179_999
    assert hit.window == "packed_to_shipped_3min"
    assert RULES.check("PACKED", 1_000_000, "SHIPPED", 1_000_000 + 180_000) is None


def test_a_max_window_flags_a_move_that_came_too_late():
    rules = TransitionRules.parse(DEFAULT_TRANSITIONS_FILE.read_text().replace(
        "    min_s: 180\n", "    min_s: 180\n  - from: PAID\n    to: SHIPPED\n    max_s: 3600\n"))
    assert rules.check("PAID", 0, "SHIPPED", 3_600_000) is None
    hit = rules.check("PAID", 0, "SHIPPED", 3_600_001)
    assert hit.rule == "too_slow" and hit.limit_ms == 3_600_000


@pytest.mark.parametrize("text,why", [
    ("[1, 2]", "mapping"),
    ("version: 0\nnext: {}\n", "version"),
    ("version: 1\nnext: {PAID: [SHIPPED]}\n", "misses"),
    ("version: 1\nrules: []\n", "unknown top-level"),
    ("version: 1\nnext:\n  PAID: [TELEPORTED]\n", "TELEPORTED"),
    ("version: 1\nnext:\n  PAID: PAID\n", "list"),
])
def test_a_bad_rule_file_is_refused_with_the_reason(text, why):
    with pytest.raises(TransitionRulesError, match=why):
        TransitionRules.parse(text)


@pytest.mark.parametrize("window,why", [
    ("  - {from: PACKED, to: SHIPPED}\n", "min_s or max_s"),
    ("  - {from: PACKED, to: SHIPPED, min_s: -1}\n", "min_s"),
    ("  - {from: PACKED, to: SHIPPED, min_s: 10, max_s: 5}\n", "above max_s"),
    ("  - {from: PACKED, to: NOWHERE, min_s: 10}\n", "NOWHERE"),
    ("  - {from: PACKED, to: SHIPPED, min_s: 1, colour: red}\n", "unknown keys"),
])
def test_a_bad_window_is_refused(window, why):
    base = DEFAULT_TRANSITIONS_FILE.read_text().split("\nwindows:")[0] + "\n"
    with pytest.raises(TransitionRulesError, match=why):
        TransitionRules.parse(base + "windows:\n" + window)


def test_loading_names_the_file(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("version: one\n")
    with pytest.raises(TransitionRulesError, match=str(bad)):
        load_transition_file(bad)
    with pytest.raises(TransitionRulesError, match="cannot read"):
        load_transition_file(tmp_path / "missing.yaml")


def test_a_hit_survives_json():
    hit = RULES.check("PACKED", 0, "SHIPPED", 1000)
    assert SuspectHit.from_json(hit.to_json()) == hit


# -- the dedupe state judges updates against the last trusted state ------------------------------

def version(status: str, at_ms: int, fp: str | None = None) -> SeenVersion:
    return SeenVersion(fp or f"{status}@{at_ms}", at_ms, RANK[status])


def step(previous: SeenVersion | None, status: str, at_ms: int, source: str, fp: str | None = None):
    incoming = version(status, at_ms, fp)
    change, hit = judge(previous, incoming, source, RULES)
    stored = incoming.remembered_as(source, change, previous, hit) if change in (
        Change.NEW, Change.UPDATE, Change.SUSPECT) and not (previous and previous.emitted_by(source)) else previous
    return change, hit, stored


def test_a_backwards_update_is_suspect_and_the_trusted_state_stays():
    _, _, seen = step(None, "PAID", 1000, "0:1")
    change, _, seen = step(seen, "SHIPPED", 1000 + 10 * MIN, "0:2")
    assert change is Change.UPDATE and seen.trusted_status == "SHIPPED"
    change, hit, seen = step(seen, "PAID", 1000 + 20 * MIN, "0:3")
    assert change is Change.SUSPECT and hit.rule == "backwards" and hit.from_status == "SHIPPED"
    assert seen.trusted_status == "SHIPPED" and seen.trusted_at_ms == 1000 + 10 * MIN
    # the suspect version is still the newest: its redelivery is a duplicate, older ones stale
    assert step(seen, "PAID", 1000 + 20 * MIN, "0:9")[0] is Change.DUPLICATE
    assert step(seen, "SHIPPED", 1000 + 15 * MIN, "0:10")[0] is Change.STALE
    # and the next real step is judged from SHIPPED, not from the suspect PAID
    change, hit, seen = step(seen, "DELIVERED", 1000 + 30 * MIN, "0:4")
    assert change is Change.UPDATE and hit is None and seen.trusted_status == "DELIVERED"


def test_a_too_fast_shipment_and_its_retransmission_in_time():
    _, _, seen = step(None, "PAID", 0, "0:1")
    _, _, seen = step(seen, "PACKED", 10 * MIN, "0:2")
    change, hit, seen = step(seen, "SHIPPED", 10 * MIN + 90_000, "0:3")
    assert change is Change.SUSPECT and hit.rule == "too_fast" and hit.elapsed_ms == 90_000
    assert seen.trusted_status == "PACKED"
    # the platform sends the shipment again later (a newer update time): now it is believable
    change, hit, seen = step(seen, "SHIPPED", 10 * MIN + 200_000, "0:4")
    assert change is Change.UPDATE and hit is None and seen.trusted_status == "SHIPPED"


def test_the_window_counts_from_entering_the_state_not_from_the_last_edit():
    _, _, seen = step(None, "PACKED", 0, "0:1")
    _, _, seen = step(seen, "PACKED", 170_000, "0:2", fp="address changed")  # same state, other content
    assert seen.trusted_at_ms == 0
    assert step(seen, "SHIPPED", 185_000, "0:3")[0] is Change.UPDATE


def test_re_processing_a_suspect_message_re_emits_it_with_the_same_rule():
    _, _, seen = step(None, "PAID", 0, "0:1")
    _, _, seen = step(seen, "DELIVERED", 10 * MIN, "0:2")    # skip
    _, _, seen = step(seen, "COMPLETED", 20 * MIN, "0:3")    # judged from PAID: a skip again
    for source, rule in (("0:2", "illegal_skip"), ("0:3", "illegal_skip")):
        change, hit = judge(seen, version("DELIVERED" if source == "0:2" else "COMPLETED",
                                          10 * MIN if source == "0:2" else 20 * MIN), source, RULES)
        assert change is Change.SUSPECT and hit.rule == rule
    assert SeenVersion.from_json(seen.to_json()) == seen
    assert [s for s, _ in seen.suspects] == ["0:2", "0:3"]


def test_without_rules_nothing_is_judged_and_old_entries_read_as_trusted():
    old = SeenVersion.from_json({"fingerprint": "x", "updated_at_ms": 5, "status_rank": RANK["SHIPPED"]})
    assert old.trusted_status == "SHIPPED" and old.trusted_at_ms == 5
    assert judge(old, version("PAID", 10), "1:1", None) == (Change.UPDATE, None)
    assert judge(old, version("PAID", 10), "1:1", RULES)[0] is Change.SUSPECT
