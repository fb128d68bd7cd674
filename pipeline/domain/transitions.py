"""Trusted state changes (seed 003): is a status update a legal, believable next step?

The rules are data (`transitions.yaml`, or the file `ORDERSTREAM_TRANSITIONS_FILE` names): for
every standard state the states that may follow it, and time windows between two states. A
status update is judged against the order's last *trusted* state and the platform time at which
the order entered it; `check` answers None (trust it) or a `SuspectHit` naming the rule that fired:

- `backwards`     the target is not a legal next state and comes earlier in the lifecycle (or
                  the order was already final): SHIPPED -> PAID, CANCELLED -> PAID
- `illegal_skip`  the target is later in the lifecycle but not a legal next state: PAID -> DELIVERED
- `too_fast`      a legal move sooner than its window's `min_s` after entering the state
                  (seed 003: shipped within 3 minutes of packing)
- `too_slow`      a legal move later than its window's `max_s` (only where a window has one)

Pure: the dedupe stage, which already keeps every order's previous version, calls `check` for
the updates that pass it, so the hot path pays a few dict lookups per update and no I/O.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping


from .platforms import STANDARD_STATES
from .rule_files import versioned_mapping

DEFAULT_TRANSITIONS_FILE = Path(__file__).with_name("transitions.yaml")
RULES = ("backwards", "illegal_skip", "too_fast", "too_slow")
FINAL_STATES = frozenset({"CANCELLED"})
_RANK = {s: i for i, s in enumerate(STANDARD_STATES)}
_TOP_KEYS = {"version", "description", "next", "windows"}
_WINDOW_KEYS = {"id", "from", "to", "min_s", "max_s", "description"}


class TransitionRulesError(ValueError):
    """A transition rule file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class SuspectHit:
    """Why a status update is not trusted. Times are the platform's update times (epoch ms)."""
    rule: str                 # one of RULES
    from_status: str          # the order's last trusted state
    to_status: str            # what the update says
    from_at_ms: int           # when the order entered from_status
    to_at_ms: int             # the update's own time
    limit_ms: int | None      # the window bound that was broken (time rules only)
    window: str = ""          # the window's id (time rules only)
    reason: str = ""

    @property
    def elapsed_ms(self) -> int:
        return self.to_at_ms - self.from_at_ms

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "SuspectHit":
        return cls(str(data["rule"]), str(data["from_status"]), str(data["to_status"]), int(data["from_at_ms"]),
                   int(data["to_at_ms"]), None if data.get("limit_ms") is None else int(data["limit_ms"]),
                   str(data.get("window", "")), str(data.get("reason", "")))


@dataclass(frozen=True)
class Window:
    id: str
    from_status: str
    to_status: str
    min_ms: int | None
    max_ms: int | None


@dataclass(frozen=True)
class TransitionRules:
    version: int
    next: Mapping[str, frozenset[str]]
    windows: Mapping[tuple[str, str], Window]
    source_text: str = ""

    # ------------------------------------------------------------------ judging
    def check(self, from_status: str, from_at_ms: int, to_status: str, to_at_ms: int) -> SuspectHit | None:
        """None when moving from `from_status` (entered at `from_at_ms`) to `to_status` at
        `to_at_ms` is trustworthy; otherwise the rule that fired. Same status: not a move."""
        if to_status == from_status:
            return None
        if to_status not in self.next[from_status]:
            backwards = from_status in FINAL_STATES or _RANK[to_status] < _RANK[from_status]
            rule = "backwards" if backwards else "illegal_skip"
            allowed = ", ".join(sorted(self.next[from_status], key=_RANK.__getitem__)) or "nothing (final)"
            return SuspectHit(rule, from_status, to_status, from_at_ms, to_at_ms, None, "",
                              f"{from_status} -> {to_status} is not a legal move (allowed: {allowed})")
        window = self.windows.get((from_status, to_status))
        if window is None:
            return None
        elapsed = to_at_ms - from_at_ms
        if window.min_ms is not None and elapsed < window.min_ms:
            return SuspectHit("too_fast", from_status, to_status, from_at_ms, to_at_ms, window.min_ms, window.id,
                              f"{to_status} {elapsed / 1000:.0f} s after {from_status}, "
                              f"sooner than the {window.min_ms / 1000:.0f} s window")
        if window.max_ms is not None and elapsed > window.max_ms:
            return SuspectHit("too_slow", from_status, to_status, from_at_ms, to_at_ms, window.max_ms, window.id,
                              f"{to_status} {elapsed / 1000:.0f} s after {from_status}, "
                              f"later than the {window.max_ms / 1000:.0f} s window")
        return None

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, text: str | bytes) -> "TransitionRules":
        data, version, text = versioned_mapping(text, "transition rules", _TOP_KEYS, TransitionRulesError,
                                          "'version', 'next' and 'windows'")
        return cls(version, _parse_next(data.get("next")), _parse_windows(data.get("windows") or []), text)


def _state(value, where: str) -> str:
    if value not in _RANK:
        raise TransitionRulesError(f"{where}: {value!r} is not one of the 12 standard states {list(STANDARD_STATES)}")
    return value


def _parse_next(raw) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise TransitionRulesError("`next` must map every standard state to the list of states that may follow it")
    out: dict[str, frozenset[str]] = {}
    for state, targets in raw.items():
        _state(state, "next")
        if targets is None:
            targets = []
        if not isinstance(targets, list):
            raise TransitionRulesError(f"next.{state} must be a list of states, got {targets!r}")
        out[state] = frozenset(_state(t, f"next.{state}") for t in targets)
        if state in out[state]:
            raise TransitionRulesError(f"next.{state} lists the state itself (a repeated status is never a move)")
    missing = [s for s in STANDARD_STATES if s not in out]
    if missing:
        raise TransitionRulesError(f"`next` misses {missing}: list every state (an empty list for a final one)")
    return out


def _seconds(window: dict, key: str, where: str) -> int | None:
    value = window.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TransitionRulesError(f"{where}.{key} must be a number of seconds >= 0, got {value!r}")
    return int(round(value * 1000))


def _parse_windows(raw) -> dict[tuple[str, str], Window]:
    if not isinstance(raw, list):
        raise TransitionRulesError("`windows` must be a list")
    out: dict[tuple[str, str], Window] = {}
    for i, w in enumerate(raw):
        where = f"windows[{i}]"
        if not isinstance(w, dict):
            raise TransitionRulesError(f"{where} must be a mapping with from, to and min_s and/or max_s")
        unknown = set(w) - _WINDOW_KEYS
        if unknown:
            raise TransitionRulesError(f"{where}: unknown keys {sorted(unknown)}")
        src, dst = _state(w.get("from"), f"{where}.from"), _state(w.get("to"), f"{where}.to")
        lo, hi = _seconds(w, "min_s", where), _seconds(w, "max_s", where)
        if lo is None and hi is None:
            raise TransitionRulesError(f"{where} ({src} -> {dst}) needs min_s or max_s")
        if lo is not None and hi is not None and lo > hi:
            raise TransitionRulesError(f"{where} ({src} -> {dst}): min_s is above max_s")
        if (src, dst) in out:
            raise TransitionRulesError(f"{where}: a second window for {src} -> {dst}")
        out[(src, dst)] = Window(str(w.get("id") or f"{src.lower()}_to_{dst.lower()}"), src, dst, lo, hi)
    return out


def load_transition_file(path: str | Path = DEFAULT_TRANSITIONS_FILE) -> TransitionRules:
    """The rules in `path`; TransitionRulesError (naming the file) when they cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TransitionRulesError(f"{path}: cannot read: {exc}") from None
    try:
        return TransitionRules.parse(text)
    except TransitionRulesError as exc:
        raise TransitionRulesError(f"{path}: {exc}") from None
