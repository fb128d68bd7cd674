"""Issues 2 and 3 end to end: a mixed multi-platform batch through a real worker on the real broker.

Every produced message must come out exactly once: as a new order or update, a dropped copy or a dead letter."""
from __future__ import annotations

import pytest

from pipeline.codecs import dead_letter_codec, order_codec
from pipeline.devtools.fake_orders import ReplayMix, generate_stream
from pipeline.devtools.replay import ReplayConfig, run_replay

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_mixed_batch_is_accounted_for_exactly(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3")
    p.start_worker()
    cfg = ReplayConfig(count=800, seed=3, mix=ReplayMix(malformed=0.05), drain_timeout_s=180)
    report = run_replay(p.s, p.names, p.group, cfg, settle_holds_s=30, check_alive=p.check_alive)

    assert report["produced"] == 800
    assert report["canonical"] + report["dead_lettered"] == report["produced"]
    assert report["dead_lettered"] == report["expected_dead_letters"] > 0
    assert report["raw_lost"] == 0 and report["raw_doubled"] == 0
    assert report["missing_new_orders"] == 0 and report["new_orders_emitted_twice"] == 0
    assert report["unique_new_orders"] == report["expected_new_orders"]
    assert report["awaiting_decision"] == 0
    assert report["unaccounted_new_orders"] == 0 and report["accepted_without_outcome"] == 0
    assert report["balanced"], report


def test_orders_and_dead_letters_decode_and_keep_the_original_bytes(pipeline_factory):
    p = pipeline_factory()
    p.start_worker()
    messages = list(generate_stream(120, seed=5, mix=ReplayMix(malformed=0.2)))
    p.produce((p.names.raw(m.platform), m.key, m.value) for m in messages)
    p.drain()
    orders = [order_codec().decode(r.value) for r in p.read(p.names.UNIQUE)]
    letters = [dead_letter_codec().decode(r.value) for r in p.read(p.names.DLQ)]
    bad = {m.value for m in messages if m.expect == "dlq"}
    assert {letter["payload"] for letter in letters} == bad
    assert all(letter["reason_code"] and letter["source_topic"].startswith(p.ns) for letter in letters)
    expected_ids = {m.order_id for m in messages if m.expect == "canonical"}
    assert {o["order_id"] for o in orders} == expected_ids
    # orders leave the hot path keyed by the global order id
    assert all(r.key.decode() == order_codec().decode(r.value)["order_id"] for r in p.read(p.names.UNIQUE))
