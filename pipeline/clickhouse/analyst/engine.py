"""Running analyst requests on the embedded engine, in sessions of their own.

The sink's `ChdbBackend` keeps one chDB session under a lock: its inserts and its own queries take
turns. Analyst queries do not join that queue. Each request opens its own chDB session on the
same data directory (benchmarks/bench_analyst.py measures the cost), runs there and closes it.
Measured on chDB 4.4 / engine 26.9:
two sessions on one data directory run at the same time (a 3 s query in one session does not
hold up streaming inserts in the other), a session sees what another inserted as soon as the
insert has finished, and settings, the current database and readonly are per session. So an
analyst's query waits for no insert and no insert waits for it; what they share is CPU, which
`max_threads` (1 by default) and the limits bound.

A read-only request runs as:
    SET <limits, lowered where the request asks>      the ceiling of this query
    SELECT formatQuerySingleLine({q:String})          one statement, as the engine reads it
    EXPLAIN AST <that statement>                      checked by guard.check_statement
    SET <presentation settings>; USE <database>
    SET readonly = 1                                  nothing in the SQL can change the above
    <that statement>                                  in the request's output format
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..backends import escape_parameter
from .errors import ClickHouseError
from .guard import check_statement, strip_wrapper
from .policy import Account, Limits, analyst_settings, set_statement

RESULT_KINDS = ("SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "(")


@dataclass
class Request:
    """One statement to run, as the HTTP layer decoded it."""
    text: str
    database: str | None = None
    default_format: str = "TabSeparated"
    settings: Mapping[str, str] = field(default_factory=dict)  # URL parameters that are settings
    params: Mapping[str, str] = field(default_factory=dict)    # {name:Type} values (param_<name>)
    read_only_method: bool = False                             # a GET: ClickHouse runs it readonly=2
    native_revision: int = 0                                   # client_protocol_version of a Native answer


@dataclass
class Result:
    body: bytes
    output_format: str | None  # None: the statement answers with no result (USE, SET, DDL, INSERT)
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    elapsed_s: float = 0.0
    result_rows: int | None = None
    column_types: list[str] | None = None  # the statement's own types, for a Native revision's header

    def summary(self) -> dict[str, str]:
        """X-ClickHouse-Summary, as a server sends it (numbers as strings)."""
        out = {"read_rows": self.read_rows, "read_bytes": self.read_bytes, "written_rows": self.written_rows,
               "written_bytes": 0, "total_rows_to_read": 0, "result_rows": self.result_rows or 0,
               "result_bytes": len(self.body), "elapsed_ns": int(self.elapsed_s * 1e9)}
        return {k: str(v) for k, v in out.items()}


class ChdbEngine:
    """The embedded engine as the analyst interface sees it: the data directory the sink's backend
    has opened, one short-lived session per request."""

    def __init__(self, path: str | Path, limits: Limits | None = None) -> None:
        from chdb import session  # lazily: the server backend needs no chDB

        self._session_class = session.Session
        self.path = str(path)
        self.limits = limits or Limits()
        s = self._open()
        try:
            version, tz, revision = self._rows(s, "SELECT version(), timezone(), revision()")[0]
            self.version, self.timezone, self.revision = version, tz, int(revision)
            self.setting_names = frozenset(r[0] for r in self._rows(s, "SELECT name FROM system.settings"))
            self.table_functions = frozenset(r[0].casefold()
                                             for r in self._rows(s, "SELECT name FROM system.table_functions"))
        finally:
            s.close()

    def _open(self):
        try:
            return self._session_class(self.path)
        except Exception as exc:
            raise ClickHouseError("UNKNOWN_EXCEPTION", f"cannot open a session on {self.path}: {exc}") from exc

    @staticmethod
    def _rows(s, sql: str, params: dict | None = None) -> list[list[str]]:
        res = s.query(sql, "TabSeparatedRaw", params=params)
        return [line.split("\t") for line in res.bytes().decode().splitlines()]

    @staticmethod
    def _run(s, sql: str, user: str, fmt: str = "TabSeparated", params: Mapping[str, str] | None = None):
        try:
            return s.query(sql, fmt, params=dict(params) if params else None)
        except ClickHouseError:
            raise
        except Exception as exc:  # chDB raises RuntimeError / ChdbError with the engine's text
            raise ClickHouseError.from_engine(str(exc), user) from None

    # -- requests -----------------------------------------------------------------------------

    def execute(self, request: Request, account: Account) -> Result:
        started = time.perf_counter()
        s = self._open()
        try:
            if account.readonly:
                return self._read_only(s, request, account, started)
            return self._read_write(s, request, account, started)
        finally:
            s.close()

    def _read_only(self, s, request: Request, account: Account, started: float) -> Result:
        user = account.name
        settings = analyst_settings(request.settings, self.limits, self.setting_names, user)
        for name in self.limits.caps():  # the ceiling first: parsing and checking run under it too
            self._run(s, set_statement(name, settings[name]), user)
        try:
            res = self._run(s, "SELECT formatQuerySingleLine({q:String})", user, "TabSeparatedRaw",
                            {"q": escape_parameter(request.text)})
        except ClickHouseError as err:
            raise strip_wrapper(err) from None
        canonical = res.bytes().decode().rstrip("\n")
        tree = self._run(s, "EXPLAIN AST " + canonical, user, "TabSeparatedRaw", request.params).bytes().decode()
        statement = check_statement(canonical, tree, self.table_functions, user)
        for name, value in settings.items():
            if name not in self.limits.caps():
                self._run(s, set_statement(name, value), user)
        if request.database:
            self._run(s, f"USE {quote_identifier(request.database)}", user)
        self._run(s, "SET readonly = 1", user)
        fmt = statement.output_format or request.default_format
        res = self._run(s, canonical, user, request.default_format, request.params)
        body = res.bytes()
        cap = int(float(settings["max_result_bytes"]))
        if len(body) > cap:
            raise ClickHouseError("TOO_MANY_ROWS_OR_BYTES",
                                  f"Limit for result exceeded, max bytes: {cap}, current bytes: {len(body)}")
        result = self._result(body, fmt if statement.has_result else None, res, started)
        if fmt == "Native" and request.native_revision and statement.output_format is None and body:
            result.column_types = self._column_types(s, canonical, request.params)
        return result

    def _column_types(self, s, canonical: str, params: Mapping[str, str]) -> list[str] | None:
        """The statement's column types as DESCRIBE prints them: the engine's revision-0 Native
        drops a top-level DateTime's time zone, which a client of a later revision reads. A
        statement DESCRIBE cannot wrap answers without them (the zone stays dropped)."""
        try:
            return [row[1] for row in self._rows(s, f"DESCRIBE ({canonical})", dict(params) or None)]
        except Exception:  # noqa: BLE001 - the answer stands without them
            return None

    def _read_write(self, s, request: Request, account: Account, started: float) -> Result:
        """Statements as they come (a read-write account): settings, database, then the text."""
        user = account.name
        for name, value in request.settings.items():
            self._run(s, set_statement(name, value), user)
        if request.database:
            self._run(s, f"USE {quote_identifier(request.database)}", user)
        if request.read_only_method:
            self._run(s, "SET readonly = 2", user)
        res = self._run(s, request.text, user, request.default_format, request.params)
        body = res.bytes()
        first = request.text.lstrip().split(None, 1)[0].upper() if request.text.strip() else ""
        has_result = bool(body) or first.startswith(RESULT_KINDS)
        return self._result(body, request.default_format if has_result else None, res, started)

    @staticmethod
    def _result(body: bytes, fmt: str | None, res, started: float) -> Result:
        return Result(body=body, output_format=fmt, read_rows=_stat(res, "rows_read"),
                      read_bytes=_stat(res, "bytes_read"), written_rows=_stat(res, "rows_written"),
                      elapsed_s=time.perf_counter() - started)


def _stat(res, name: str) -> int:
    try:
        return int(getattr(res, name)())
    except Exception:  # noqa: BLE001 - statistics are best effort
        return 0


def quote_identifier(name: str) -> str:
    """A database name from the request, back-quoted (the engine then says whether it exists)."""
    if not name or "\n" in name or "\0" in name:
        raise ClickHouseError("BAD_ARGUMENTS", f"Not a database name: {name!r}")
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
