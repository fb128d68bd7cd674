"""Faust stream workaround: which event a table write belongs to inside a batch."""
from __future__ import annotations

import contextlib
import weakref

from faust import streams as faust_streams


@contextlib.contextmanager
def handling(event):
    """Make `event` Faust's current event while a batch handles it.

    Upstream: a table write takes its changelog partition and its RocksDB partition from the
    stream's *current* event; inside `take_events` that is the last event buffered, not the one
    being handled, so without this an order's dedupe state lands in another partition."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
