"""Sliding-window intake rate and the degradation breaker, driven by a synthetic clock."""
from __future__ import annotations

import pytest

from pipeline.domain.breaker import BreakerState, DegradationBreaker, RateMeter

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


# --------------------------------------------------------------------------- rate meter


def test_rate_over_full_window():
    meter = RateMeter(60)
    for second in range(60):
        meter.record(10, now=1000 + second + 0.5)
    assert meter.count(now=1059.9) == 600
    assert meter.rate_per_min(now=1059.9) == pytest.approx(600)


def test_old_buckets_leave_the_window():
    meter = RateMeter(10)
    meter.record(100, now=0.2)
    meter.record(5, now=9.5)
    assert meter.count(now=10.0) == 105   # bucket [0,1) still overlaps (0, 10]
    assert meter.count(now=11.0) == 5     # gone once the window starts at or after 1
    assert meter.count(now=20.0) == 0
    assert meter.rate_per_min(now=20.0) == 0


def test_same_second_shares_a_bucket_and_clock_steps_back_are_tolerated():
    meter = RateMeter(5)
    meter.record(1, now=3.1)
    meter.record(1, now=3.9)
    meter.record(1, now=2.5)  # earlier than the newest bucket
    assert len(meter._buckets) == 1 and meter.count(now=4) == 3


def test_rate_scales_with_window_length():
    meter = RateMeter(30)
    for second in range(30):
        meter.record(5, now=second)
    assert meter.rate_per_min(now=29.5) == pytest.approx(5 * 30 * 2)


def test_meter_memory_is_bounded_by_window():
    meter = RateMeter(60)
    for i in range(100_000):
        meter.record(1, now=i / 10)  # ten per second for ~2.8 hours
    assert len(meter._buckets) <= 61
    assert meter.rate_per_min(now=100_000 / 10) == pytest.approx(600, rel=0.02)


def test_meter_rejects_bad_window():
    with pytest.raises(ValueError):
        RateMeter(0)


# --------------------------------------------------------------------------- breaker


def drive(breaker: DegradationBreaker, rates_by_second: list[float], start: float = 0.0):
    """Observe one rate per second; returns [(second, transition)] for transitions that happened."""
    out = []
    for i, rate in enumerate(rates_by_second):
        t = breaker.observe(rate, start + i)
        if t is not None:
            out.append((start + i, t))
    return out


def test_full_cycle_closed_open_half_open_closed():
    b = DegradationBreaker(open_per_min=500, close_per_min=400, cooldown_s=30, probe_s=10)
    assert b.state is CLOSED and not b.degraded
    transitions = drive(b, [300] * 5 + [650] * 40 + [350] * 60)
    assert [(at, t.from_state, t.to_state) for at, t in transitions] == [
        (5, CLOSED, OPEN),        # first second above 500
        (45, OPEN, HALF_OPEN),    # cooldown passed at 35, but the rate only fell below 400 at 45
        (55, HALF_OPEN, CLOSED),  # probe of 10 s with the rate staying low
    ]
    assert transitions[0][1].rate_per_min == 650
    assert b.state is CLOSED and not b.degraded


def test_degraded_only_while_open():
    b = DegradationBreaker(cooldown_s=10, probe_s=5)
    b.observe(600, 0)
    assert b.state is OPEN and b.degraded
    b.observe(100, 10)
    assert b.state is HALF_OPEN and not b.degraded  # probing runs the full path


def test_cooldown_holds_the_breaker_open_even_when_rate_drops():
    b = DegradationBreaker(cooldown_s=30, probe_s=10)
    b.observe(900, 0)
    transitions = drive(b, [100] * 29, start=1)
    assert transitions == [] and b.state is OPEN
    assert b.observe(100, 30).to_state is HALF_OPEN


def test_half_open_reopens_when_rate_climbs_again():
    b = DegradationBreaker(open_per_min=500, close_per_min=400, cooldown_s=20, probe_s=10)
    b.observe(700, 0)
    assert b.observe(300, 20).to_state is HALF_OPEN
    t = b.observe(420, 25)  # between the marks: not calm enough to close
    assert t.from_state is HALF_OPEN and t.to_state is OPEN and b.degraded
    # a fresh cool-down starts at the re-open
    assert b.observe(100, 44) is None
    assert b.observe(100, 45).to_state is HALF_OPEN
    assert b.observe(100, 55).to_state is CLOSED


def test_no_flapping_around_the_open_threshold():
    """A rate oscillating just around 500/min opens once and stays open: it never falls below 400."""
    b = DegradationBreaker(open_per_min=500, close_per_min=400, cooldown_s=30)
    rates = [495, 505] * 150  # five minutes of wobble
    transitions = drive(b, rates)
    assert [(t.from_state, t.to_state) for _, t in transitions] == [(CLOSED, OPEN)]
    assert b.state is OPEN


def test_rate_between_marks_while_closed_does_not_open():
    b = DegradationBreaker(open_per_min=500, close_per_min=400)
    assert drive(b, [450, 500, 480, 410] * 50) == []  # exactly 500 is not above the mark


def test_default_probe_is_half_the_cooldown():
    b = DegradationBreaker(cooldown_s=30)
    assert b.probe_s == 15
    b.observe(600, 0)
    b.observe(0, 30)
    assert b.observe(0, 44) is None
    assert b.observe(0, 45).to_state is CLOSED


def test_invalid_marks():
    with pytest.raises(ValueError, match="below the open mark"):
        DegradationBreaker(open_per_min=400, close_per_min=400)
    with pytest.raises(ValueError):
        DegradationBreaker(cooldown_s=-1)


def test_meter_and_breaker_together():
    """A burst of 15 orders/s (900/min) then a trickle: the measured rate drives every state."""
    meter = RateMeter(60)
    b = DegradationBreaker(open_per_min=500, close_per_min=400, cooldown_s=30, probe_s=10)
    seen = []
    for second in range(300):
        per_second = 15 if 10 <= second < 70 else 2
        meter.record(per_second, now=second + 0.5)
        t = b.observe(meter.rate_per_min(now=second + 0.9), second + 0.9)
        if t:
            seen.append((second, t.to_state))
    states = [s for _, s in seen]
    assert states == [OPEN, HALF_OPEN, CLOSED]
    opened_at, half_at, closed_at = (s for s, _ in seen)
    # 500/min over a 60 s window needs > 500 orders in it: after ~34 s of burst (with the trickle before)
    assert 40 <= opened_at <= 46
    # after the burst the window drains below 400/min, later than the cool-down
    assert half_at > opened_at + 30 and half_at > 70
    assert closed_at == half_at + 10
    assert b.status()["state"] == "closed"
