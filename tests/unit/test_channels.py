"""Channel pause / resume events around the safety threshold."""
from __future__ import annotations

import pytest

from pipeline.domain.channels import channel_events, should_pause
from pipeline.topics import PLATFORMS

NOW = 1_700_000_000_000


def test_falling_below_threshold_pauses_every_platform_but_the_primary():
    events = channel_events("SKU1", 9, 10, False, PLATFORMS, "SHOPIFY", NOW)
    assert [e.platform for e in events] == [p for p in PLATFORMS if p != "SHOPIFY"]
    assert all(e.as_dict() == {"event": "pause", "sku": "SKU1", "platform": e.platform, "available": 9,
                     "threshold": 10, "at_ms": NOW} for e in events)


def test_already_paused_sku_emits_nothing_while_still_low():
    assert channel_events("SKU1", 3, 10, True, PLATFORMS, "SHOPIFY", NOW) == []


def test_recovering_stock_resumes_the_paused_platforms():
    events = channel_events("SKU1", 10, 10, True, ["TMALL", "JD", "SHOPIFY"], "SHOPIFY", NOW)
    assert [(e.event, e.platform) for e in events] == [("resume", "TMALL"), ("resume", "JD")]


@pytest.mark.parametrize("available", [10, 11, 500])
def test_stock_at_or_above_threshold_never_pauses(available):
    assert channel_events("SKU1", available, 10, False, PLATFORMS, "SHOPIFY", NOW) == []


def test_zero_and_negative_stock_pause_too():
    assert len(channel_events("S", 0, 10, False, ["JD", "TMALL"], "SHOPIFY", NOW)) == 2
    assert channel_events("S", -3, 10, False, ["JD"], "SHOPIFY", NOW)[0].available == -3


def test_primary_match_ignores_case_and_duplicates_are_emitted_once():
    events = channel_events("S", 1, 10, False, ["jd", "JD", "Shopify", "TMALL"], "SHOPIFY", NOW)
    assert [e.platform for e in events] == ["jd", "TMALL"]


def test_hysteresis_margin_delays_the_resume():
    assert channel_events("S", 12, 10, True, ["JD"], "SHOPIFY", NOW, resume_margin=5) == []
    assert channel_events("S", 15, 10, True, ["JD"], "SHOPIFY", NOW, resume_margin=5)[0].event == "resume"
    # inside the band a running channel stays running
    assert channel_events("S", 12, 10, False, ["JD"], "SHOPIFY", NOW, resume_margin=5) == []


def test_should_pause_truth_table():
    assert should_pause(9, 10, False) is True
    assert should_pause(10, 10, True) is False
    assert should_pause(11, 10, True, resume_margin=3) is True
    assert should_pause(13, 10, True, resume_margin=3) is False


def test_only_primary_platform_gives_no_events():
    assert channel_events("S", 1, 10, False, ["SHOPIFY"], "SHOPIFY", NOW) == []
