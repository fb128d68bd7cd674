"""Two ways to reach ClickHouse behind one small interface: embedded chDB or a server.

Both speak the same SQL and both move data as JSONEachRow text, so rows, DDL and queries are
identical and results decode to the same Python values (JSON numbers, strings, lists).
Untrusted text never becomes SQL: rows travel as JSON data, query values as `{name:Type}`
parameters, and identifiers (table, columns) are checked against a strict pattern.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Protocol

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:|,\-]{1,512}$")

# Identical JSON shapes from both backends: 64-bit integers as numbers, not quoted strings.
OUTPUT_SETTINGS = {"output_format_json_quote_64bit_integers": 0}


class BackendError(RuntimeError):
    """An insert, query or command ClickHouse refused (or could not be reached for)."""


def identifier(name: str) -> str:
    """A table or column name, back-quoted; anything but [A-Za-z0-9_] is refused."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"


def check_token(token: str) -> str:
    if not _TOKEN.match(token):
        raise ValueError(f"dedup token has unexpected characters: {token!r}")
    return token


def json_each_row(rows: list[dict], columns: list[str]) -> bytes:
    return "".join(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for r in rows).encode()


def escape_parameter(value: str) -> str:
    """A String query parameter's value in the escaped form ClickHouse parses parameters from."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\0":
            out.append("\\0")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        else:
            out.append(ch)
    return "".join(out)


def parse_json_each_row(text: str | bytes) -> list[dict]:
    if isinstance(text, bytes):
        text = text.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Backend(Protocol):
    def command(self, sql: str) -> None: ...
    def query(self, sql: str, params: dict | None = None) -> list[dict]: ...
    def insert(self, table: str, rows: list[dict], columns: list[str], dedup_token: str | None) -> None: ...
    def close(self) -> None: ...


def insert_settings(dedup_token: str | None) -> dict[str, Any]:
    if dedup_token is None:
        return {}
    # the token also derives the tokens of the blocks the materialized views write
    return {"insert_deduplication_token": check_token(dedup_token),
            "deduplicate_blocks_in_dependent_materialized_views": 1}


class ChdbBackend:
    """Embedded ClickHouse on a data directory. chDB allows one data directory per process,
    so exactly one process (the sink) owns it; others go through the sink's HTTP endpoint.
    A lock serialises every call: inserts and HTTP queries (from worker threads) share one session.
    chDB's session is thread-safe on its own, but a streaming insert holds the connection from
    send_insert to finish, and a statement sent in between fails; the lock keeps that span whole."""

    def __init__(self, path: str | Path, database: str = "default") -> None:
        from chdb import session  # imported lazily: the server backend does not need chDB

        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.lock = threading.RLock()
        try:
            self._session = session.Session(self.path)
        except Exception as exc:  # chDB raises RuntimeError with the engine's message
            raise BackendError(f"cannot open chDB at {self.path}: {exc}") from exc
        if database != "default":
            self.command(f"CREATE DATABASE IF NOT EXISTS {identifier(database)}")
            self.command(f"USE {identifier(database)}")
        for name, value in OUTPUT_SETTINGS.items():
            self.command(f"SET {name} = {int(value)}")

    def command(self, sql: str) -> None:
        with self.lock:
            try:
                self._session.query(sql, "TabSeparated")
            except Exception as exc:
                raise BackendError(str(exc)) from exc

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        # chDB parses parameter values in ClickHouse's escaped text form (as a server does
        # param_<name> values): escape strings, so a backslash, tab or line break arrives as sent
        params = {k: escape_parameter(v) if isinstance(v, str) else v for k, v in (params or {}).items()}
        with self.lock:
            try:
                res = self._session.query(sql, "JSONEachRow", params=params or None)
            except Exception as exc:
                raise BackendError(str(exc)) from exc
        return parse_json_each_row(res.bytes() if hasattr(res, "bytes") else str(res))

    def insert(self, table: str, rows: list[dict], columns: list[str], dedup_token: str | None) -> None:
        if not rows:
            return
        cols = ", ".join(identifier(c) for c in columns)
        settings = insert_settings(dedup_token)
        clause = ""
        if settings:
            # values are checked above (token pattern, integer), so quoting them here is safe
            clause = " SETTINGS " + ", ".join(f"{k} = '{v}'" if isinstance(v, str) else f"{k} = {int(v)}"
                                              for k, v in settings.items())
        data = json_each_row(rows, columns)
        with self.lock:
            try:
                with self._session.send_insert(f"INSERT INTO {identifier(table)} ({cols}){clause}",
                                               "JSONEachRow") as ins:
                    ins.append(data)
                    ins.finish()
            except Exception as exc:
                raise BackendError(str(exc)) from exc

    def close(self) -> None:
        with self.lock:
            if self._session is not None:
                self._session.close()
                self._session = None


class ServerBackend:
    """A ClickHouse server through clickhouse-connect (HTTP). The URL's path names the database,
    which is created when missing."""

    def __init__(self, url: str, database: str | None = None) -> None:
        import clickhouse_connect
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        db = database or parts.path.strip("/") or "default"
        identifier(db)
        base = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
        self.lock = threading.RLock()
        try:
            admin = clickhouse_connect.get_client(dsn=base)
            admin.command(f"CREATE DATABASE IF NOT EXISTS {identifier(db)}")
            admin.close()
            self._client = clickhouse_connect.get_client(dsn=base, database=db,
                                                         settings=dict(OUTPUT_SETTINGS))
        except Exception as exc:
            raise BackendError(f"cannot reach ClickHouse at {parts.scheme}://{parts.hostname}:{parts.port}: {exc}") \
                from exc
        self.database = db

    def command(self, sql: str) -> None:
        with self.lock:
            try:
                self._client.command(sql)
            except Exception as exc:
                raise BackendError(str(exc)) from exc

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        with self.lock:
            try:
                raw = self._client.raw_query(sql, parameters=params or None, fmt="JSONEachRow",
                                             settings=dict(OUTPUT_SETTINGS))
            except Exception as exc:
                raise BackendError(str(exc)) from exc
        return parse_json_each_row(raw)

    def insert(self, table: str, rows: list[dict], columns: list[str], dedup_token: str | None) -> None:
        if not rows:
            return
        identifier(table)
        for c in columns:
            identifier(c)
        with self.lock:
            try:
                self._client.raw_insert(table, columns, insert_block=json_each_row(rows, columns),
                                        settings=insert_settings(dedup_token), fmt="JSONEachRow")
            except Exception as exc:
                raise BackendError(str(exc)) from exc

    def close(self) -> None:
        with self.lock:
            self._client.close()


def open_backend(settings, database: str | None = None) -> Backend:
    """The backend the settings ask for: 'chdb' (default, data in var/chdb) or 'server'."""
    kind = settings.clickhouse_backend
    if kind == "chdb":
        return ChdbBackend(Path(settings.chdb_path) if settings.chdb_path else settings.var / "chdb",
                           database=database or "default")
    if kind == "server":
        return ServerBackend(settings.clickhouse_url, database=database)
    raise ValueError(f"ORDERSTREAM_CLICKHOUSE_BACKEND must be 'chdb' or 'server', not {kind!r}")


# -- read-only SQL for analysts ----------------------------------------------------------------

class ReadOnlyQueryError(ValueError):
    """SQL refused before it reached ClickHouse (several statements, unterminated text, empty)."""


def single_statement(sql: str) -> str:
    """The one statement in `sql` (a trailing `;` allowed). Quotes and comments are scanned so a
    `;` inside a string is data, while a second statement is refused."""
    text = sql.strip()
    state, i, end = "code", 0, len(text)
    semicolon_at = None
    while i < end:
        ch, nxt = text[i], text[i + 1] if i + 1 < end else ""
        if state == "code":
            if ch in "'\"`":
                state = ch
            elif ch == "-" and nxt == "-" or ch == "#":
                state = "line"
            elif ch == "/" and nxt == "*":
                state, i = "block", i + 1
            elif ch == ";":
                if semicolon_at is None:
                    semicolon_at = i
            elif not ch.isspace() and semicolon_at is not None:
                raise ReadOnlyQueryError("only one statement is allowed")
        elif state == "line":
            if ch == "\n":
                state = "code"
        elif state == "block":
            if ch == "*" and nxt == "/":
                state, i = "code", i + 1
        else:  # inside a quoted string or identifier
            if ch == "\\":
                i += 1
            elif ch == state:
                if nxt == state:  # doubled quote is an escaped quote
                    i += 1
                else:
                    state = "code"
        i += 1
    if state not in ("code", "line"):
        raise ReadOnlyQueryError("unterminated string, identifier or comment")
    stmt = text[:semicolon_at] if semicolon_at is not None else text
    if not stmt.strip():
        raise ReadOnlyQueryError("empty query")
    return stmt


def readonly_query(backend: Backend, sql: str, max_rows: int = 10_000, max_execution_s: float = 10.0) -> list[dict]:
    """Run an analyst's SELECT under ClickHouse's readonly=1 and a time limit. The statement is first
    checked as the analyst interface checks one (analyst.guard, on the engine's own parse): readonly=1
    alone lets file() read any file. What runs is the engine's print of the checked statement, as a
    subquery, so anything but a SELECT/WITH is a syntax error, and readonly=1 (no settings changes,
    no writes) and max_execution_time hold for the whole query. It runs on the backend's own
    session, so the sink's inserts may wait for it, at most max_execution_s."""
    stmt = checked_statement(backend, single_statement(sql))
    wrapped = (f"SELECT * FROM (\n{stmt}\n) LIMIT {int(max_rows)}\n"
               f"SETTINGS readonly = 1, max_execution_time = {float(max_execution_s)}")
    return backend.query(wrapped)


def checked_statement(backend: Backend, stmt: str) -> str:
    """The engine's one-line print of `stmt` once analyst.guard has accepted its syntax tree."""
    from .analyst.errors import ClickHouseError  # the analyst package builds on this module
    from .analyst.guard import check_statement

    canonical = backend.query("SELECT formatQuerySingleLine({q:String}) AS q", {"q": stmt})[0]["q"]
    # as a subquery, so the backend's own FORMAT (clickhouse-connect appends one) is the outer query's;
    # the engine explains only a SELECT there, and only a SELECT can run here anyway
    try:
        rows = backend.query(f"SELECT explain FROM (EXPLAIN AST {canonical})")
    except BackendError as exc:
        raise ReadOnlyQueryError(f"only a SELECT can run here ({str(exc)[:300]})") from None
    tree = "\n".join(r["explain"] for r in rows)
    table_functions = frozenset(r["name"].casefold() for r in backend.query("SELECT name FROM system.table_functions"))
    try:
        check_statement(canonical, tree, table_functions, "sql")
    except ClickHouseError as exc:
        raise ReadOnlyQueryError(exc.message) from None
    return canonical
