"""Channel pause / resume: protect the last units of a SKU for the primary platform (seed 002).

When a SKU's available stock drops below the safety threshold, every platform except the
primary one stops selling it; when stock recovers, they resume. This module only decides
which events a transition produces; whether a transition happened at all is decided
atomically in Redis (`InventoryStore.set_channel_paused`) so that among several workers
exactly one emits the events.

Hysteresis: by default a paused SKU resumes as soon as available >= threshold (the same
line it paused at). `resume_margin` > 0 makes it resume only at threshold + margin, which
stops a SKU hovering around the threshold from flapping its channels.
"""
from __future__ import annotations

from typing import Iterable

from pipeline.contracts import ChannelEvent

PAUSE = "pause"
RESUME = "resume"


def should_pause(available: int, threshold: int, was_paused: bool, resume_margin: int = 0) -> bool:
    """The paused state after seeing `available` (it keeps the state inside the hysteresis band)."""
    if available < threshold:
        return True
    if available >= threshold + max(0, resume_margin):
        return False
    return was_paused


def channel_events(sku: str, available: int, threshold: int, was_paused: bool, platforms: Iterable[str],
                   primary: str, now_ms: int, resume_margin: int = 0) -> list[ChannelEvent]:
    """One pause (or resume) event per non-primary platform on a state change, else []."""
    paused = should_pause(available, threshold, was_paused, resume_margin)
    if paused == was_paused:
        return []
    event = PAUSE if paused else RESUME
    primary_key = (primary or "").strip().upper()
    seen: set[str] = set()
    events = []
    for platform in platforms:
        key = platform.strip().upper()
        if key == primary_key or key in seen:
            continue
        seen.add(key)
        events.append(ChannelEvent(event=event, sku=sku, platform=platform, available=int(available),
                                   threshold=int(threshold), at_ms=int(now_ms)))
    return events
