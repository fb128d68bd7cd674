"""Who may connect and what a request may ask for: accounts, the limits every analyst query runs
under, and which per-request settings (URL parameters) an analyst may change.

ClickHouse lets a read-only (readonly=1) user change no setting at all. Here an analyst may still
choose how results look (output formats, time zone, LIMIT/OFFSET) and may *lower* the limits, but
never raise them: raising one is ClickHouse's SETTING_CONSTRAINT_VIOLATION, any other setting is
READONLY, an unknown name UNKNOWN_SETTING, each with ClickHouse's own wording. The query itself
then runs under readonly=1, so its SQL text (SET, a SETTINGS clause) can change nothing either.

One exception: a `max_execution_time` above the limit (or 0, "no limit") is *clamped* to the limit
instead of refused, and the query runs under the limit. Drivers derive that setting from their own
timeouts rather than from anything the analyst chose: clickhouse-go sends a context's deadline
+ 5 s (whole seconds) with every query that has one, so its first query, under its 30 s default
dial timeout, asks 34; Grafana's ClickHouse data source, which is clickhouse-go, runs its ping
under its dial timeout (10 s by default) and each query under its query timeout (60 s by default).
Refusing them would make those drivers unusable with their default settings, and the limit holds
either way (a query still stops at the limit with TIMEOUT_EXCEEDED). `clamped` names what was
clamped, for the answer's X-Orderstream-Clamped header. The other limits are not derived from
timeouts and stay refused when raised, as do readonly=0/2 and every other setting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Mapping

from .errors import ClickHouseError, readonly_refusal
from .framing import FRAMING_PARAMS

MiB = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# URL parameters that are part of the HTTP protocol, never settings. Which of them matter is
# decided in server.py and framing.py; the rest (session_id, wait_end_of_query, ...) change
# nothing here: every request runs in its own session and is answered when it has ended.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "buffer_size", "wait_end_of_query", "role", "stacktrace",
}) | FRAMING_PARAMS

# How results are rendered: an analyst may set these freely.
PRESENTATION_SETTINGS = frozenset({
    "date_time_output_format", "session_timezone", "extremes", "limit", "offset", "join_use_nulls",
    "result_overflow_mode", "timeout_overflow_mode", "max_block_size",
    # clickhouse-connect and other HTTP clients send these; progress headers are not produced
    # here (the answer comes when the query has ended), so they are accepted and change nothing
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close", "date_time_input_format", "cast_string_to_dynamic_use_inference",
})
PRESENTATION_PREFIXES = ("output_format_", "format_csv_", "format_tsv_")
# ...but not these, which name files: output_format_schema writes a schema file on the server
NEVER = frozenset({"output_format_schema"})
OVERFLOW_MODES = frozenset({"throw", "break"})
# limits drivers derive from their own timeouts: asked above the ceiling, clamped to it (see above)
CLAMPED = frozenset({"max_execution_time"})


@dataclass(frozen=True)
class Account:
    """A user of the interface. The sink configures one read-only analyst; a read-write account
    (readonly=False) runs statements as they come and exists so the server backend's own
    clickhouse-connect code can be tested against the embedded engine."""

    name: str
    password: str
    readonly: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"analyst user name must be a plain identifier, not {self.name!r}")


@dataclass(frozen=True)
class Limits:
    """The ceiling of every read-only query; ClickHouse's own settings, enforced by the engine.
    max_result_bytes is also applied to the serialized response, since the engine checks it only
    between blocks (one 65k-row block of wide rows passes it whole)."""

    max_execution_time: float = 10.0      # seconds
    max_memory_usage: int = 512 * MiB     # bytes, per query
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 64 * MiB
    max_threads: int = 1                  # leave the other cores to ingestion
    max_query_size: int = 256 * 1024      # bytes of SQL text (ClickHouse's default)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"analyst limit {f.name} must be positive, not {value!r} (there is no 'unlimited')")

    @classmethod
    def from_settings(cls, s) -> Limits:
        return cls(max_execution_time=float(s.analyst_max_execution_s),
                   max_memory_usage=int(s.analyst_max_memory_mb) * MiB,
                   max_result_rows=int(s.analyst_max_result_rows),
                   max_result_bytes=int(s.analyst_max_result_mb) * MiB,
                   max_threads=int(s.analyst_max_threads))

    def caps(self) -> dict[str, float | int]:
        """The limits as ClickHouse settings (max_query_size is checked on the request itself)."""
        return {"max_execution_time": self.max_execution_time, "max_memory_usage": self.max_memory_usage,
                "max_result_rows": self.max_result_rows, "max_result_bytes": self.max_result_bytes,
                "max_threads": self.max_threads}


def _number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ClickHouseError("CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                              f"Cannot parse input: setting {name} needs a number, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ClickHouseError("BAD_ARGUMENTS", f"Setting {name} needs a finite number, not {raw!r}")
    return value


def _clamps(name: str, value: float, cap: float) -> bool:
    return name in CLAMPED and (value > cap or value == 0)


def clamped(requested: Mapping[str, str], limits: Limits) -> dict[str, float]:
    """{name: the value asked} for each requested limit that runs clamped to its ceiling (what does
    not parse is left to analyst_settings to refuse)."""
    caps = limits.caps()
    out = {}
    for name in CLAMPED & requested.keys():
        try:
            value = _number(name, requested[name])
        except ClickHouseError:
            continue
        if _clamps(name, value, caps[name]):
            out[name] = value
    return out


def analyst_settings(requested: Mapping[str, str], limits: Limits, known: frozenset[str] | set[str],
                     user: str) -> dict[str, str]:
    """The settings a read-only query runs with: the limits, lowered where the request asks (a
    max_execution_time above the limit runs under the limit), and the presentation settings it
    asks for. Raises what ClickHouse would for anything else."""
    out: dict[str, str] = {"result_overflow_mode": "throw", "timeout_overflow_mode": "throw"}
    caps = limits.caps()
    for name, cap in caps.items():
        out[name] = str(cap)
    for name, raw in requested.items():
        if not _NAME.match(name):
            raise ClickHouseError("BAD_ARGUMENTS", f"Not a setting name: {name!r}")
        if name in caps:
            value = _number(name, raw)
            if _clamps(name, value, caps[name]):
                continue  # out[name] is the ceiling already
            if value <= 0 or value > caps[name]:
                why = " (0 means unlimited)" if value == 0 else ""
                raise ClickHouseError("SETTING_CONSTRAINT_VIOLATION",
                                      f"Setting {name} shouldn't be greater than {caps[name]}{why}")
            out[name] = raw
        elif name == "readonly":
            if raw.strip() != "1":
                raise readonly_refusal(user, "Cannot modify 'readonly' setting in readonly mode")
        elif name in ("result_overflow_mode", "timeout_overflow_mode"):
            if raw not in OVERFLOW_MODES:
                raise ClickHouseError("BAD_ARGUMENTS", f"Unexpected value of {name}: {raw!r}, expected 'throw' or 'break'")
            out[name] = raw
        elif name not in known:
            raise ClickHouseError("UNKNOWN_SETTING", f"Unknown setting '{name}'")
        elif name in NEVER or not (name in PRESENTATION_SETTINGS or name.startswith(PRESENTATION_PREFIXES)):
            raise ClickHouseError("READONLY", f"Cannot modify '{name}' setting in readonly mode")
        else:
            out[name] = raw
    return out


def set_statement(name: str, value: str) -> str:
    """`SET name = 'value'`: the name is checked, the value travels as a quoted string literal
    (ClickHouse converts it to the setting's type and refuses what does not parse)."""
    if not _NAME.match(name):
        raise ClickHouseError("BAD_ARGUMENTS", f"Not a setting name: {name!r}")
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"SET {name} = '{quoted}'"
