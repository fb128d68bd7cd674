"""Small helpers every agent uses: header handling and the end-to-end clock."""
from __future__ import annotations

import time


def headers_of(msg) -> dict[str, bytes]:
    """Faust gives headers as a list of pairs or a dict depending on the path; normalise."""
    raw = msg.headers or {}
    return dict(raw.items() if isinstance(raw, dict) else raw)


def with_header(headers: dict[str, bytes], **extra: str) -> list[tuple[str, bytes]]:
    out = {**headers, **{k: v.encode() for k, v in extra.items()}}
    return list(out.items())


def ms_since_raw(headers: dict[str, bytes]) -> float | None:
    """Milliseconds since the raw message reached the broker (its `raw_ts` header)."""
    raw_ts = headers.get("raw_ts")
    if not raw_ts:
        return None
    return time.time() * 1000 - int(raw_ts)


def now_ms() -> int:
    return int(time.time() * 1000)


def forget_older_than(stamps: dict[str, int], now: int, age_ms: int) -> None:
    """Drop entries stamped `age_ms` or longer ago: the timers' "already requested" guards stay
    bounded over millions of orders instead of growing for the worker's lifetime."""
    for key, at in list(stamps.items()):
        if now - at >= age_ms:
            del stamps[key]
