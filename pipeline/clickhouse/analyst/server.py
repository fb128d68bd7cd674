"""The ClickHouse HTTP interface on aiohttp, served by the sink on its own port (8123 by default).

What a client may send, as to a ClickHouse server (https://clickhouse.com/docs/interfaces/http):
- the statement in the `query` URL parameter, the POST body, or both (the body is appended), or as
  the `query` field of a multipart/form-data body (clickhouse-connect sends one when it binds
  parameters);
- `database`, `default_format`, `query_id`; `param_<name>` values for `{name:Type}` placeholders;
  any other URL parameter is a setting (see policy.analyst_settings for what an analyst may set);
- credentials as HTTP basic auth, `X-ClickHouse-User`/`X-ClickHouse-Key` or `user`/`password`
  parameters (one way at a time); `X-ClickHouse-Database` and `X-ClickHouse-Format` headers.
What comes back: the result in the requested format with `X-ClickHouse-Query-Id`,
`X-ClickHouse-Format`, `X-ClickHouse-Timezone` and `X-ClickHouse-Summary`; or ClickHouse's exception
text (plain, never compressed) with `X-ClickHouse-Exception-Code` and ClickHouse's HTTP status.
Either carries `X-Orderstream-Clamped` when a max_execution_time above the analyst limit ran
clamped to it (policy.py says why it is clamped, not refused).
How the bytes travel (framing.py), as the standard drivers ask with their defaults:
- `client_protocol_version`: Native in that revision's layout (clickhouse-go over HTTP, the
  library inside Grafana's data source, sends 54460; native.py);
- `compress=1`: the answer in ClickHouse's compressed blocks, LZ4 or `network_compression_method`
  zstd (the JDBC driver's default); `decompress=1`: the request body in them (compressed.py);
- `enable_http_compression=1` with Accept-Encoding zstd, br, lz4, gzip or deflate (http_compression.py);
- request bodies may be gzip or deflate (Content-Encoding).
Not served: other request encodings, sessions (`session_id`, `session_timeout` are accepted and
every request runs in a session of its own), external data, progress headers (the answer comes
when the query has ended: `wait_end_of_query` is how it always runs). GET /, /ping and
/replicas_status answer "Ok.".

Queries run in worker threads, at most `max_queries` at a time; the next ones wait for a slot up to
the execution time limit and then get TOO_MANY_SIMULTANEOUS_QUERIES.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import uuid
from typing import Iterable

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from ..http import WebServer
from .engine import ChdbEngine, Request
from .errors import ClickHouseError, authentication_failed
from .framing import Framing
from .policy import TRANSPORT_PARAMS, Account, clamped

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", ChdbEngine)
ACCOUNTS = web.AppKey("accounts", dict)
SLOTS = web.AppKey("slots", asyncio.Semaphore)
MAX_QUERIES = web.AppKey("max_queries", int)
MAX_WRITE_BODY = 256 * 1024 * 1024  # a read-write account's INSERT data
REQUEST_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})  # what aiohttp decodes for us

CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8", "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8", "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8; header=present",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8; header=present",
    "TSV": "text/tab-separated-values; charset=UTF-8", "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "Arrow": "application/vnd.apache.arrow.file", "ArrowStream": "application/vnd.apache.arrow.stream",
    "Parquet": "application/vnd.apache.parquet",
}
OK_TEXT = b"Ok.\n"


def content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    return CONTENT_TYPES.get(fmt, "application/octet-stream")


# -- reading a request ---------------------------------------------------------------------------

def credentials(request: web.Request) -> tuple[str, str]:
    """(user, password) from exactly one of: basic auth, X-ClickHouse-User/Key, user/password
    parameters; none of them means ClickHouse's `default` user with an empty password."""
    q, h = request.query, request.headers
    ways = []
    auth = h.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "basic":
            raise ClickHouseError("AUTHENTICATION_FAILED",
                                  f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported")
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ClickHouseError("AUTHENTICATION_FAILED", "Invalid authentication: malformed basic credentials") \
                from None
        if not sep:
            raise ClickHouseError("AUTHENTICATION_FAILED", "Invalid authentication: basic credentials need user:password")
        ways.append((user, password))
    if "X-ClickHouse-User" in h or "X-ClickHouse-Key" in h:
        ways.append((h.get("X-ClickHouse-User", "default"), h.get("X-ClickHouse-Key", "")))
    if "user" in q or "password" in q:
        ways.append((q.get("user", "default"), q.get("password", "")))
    if len(ways) > 1:
        raise ClickHouseError("AUTHENTICATION_FAILED",
                              "Invalid authentication: it is not allowed to use more than one way of passing "
                              "credentials (Authorization header, X-ClickHouse-User/Key headers, user/password "
                              "parameters) simultaneously")
    return ways[0] if ways else ("default", "")


def authenticate(request: web.Request) -> Account:
    user, password = credentials(request)
    account = request.app[ACCOUNTS].get(user)
    # compare in constant time, and as long for an unknown user as for a wrong password
    expected = account.password if account is not None else "\0" + password
    if not hmac.compare_digest(password.encode(), expected.encode()) or account is None:
        raise authentication_failed(user)
    return account


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The body (aiohttp has undone a gzip/deflate Content-Encoding), refused past `cap` bytes."""
    chunks, size = [], 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise ClickHouseError("SYNTAX_ERROR", f"Max query size exceeded: the request body is over {cap} "
                                                      f"bytes (max_query_size)")
            chunks.append(chunk)
    except (ContentEncodingError, web.RequestPayloadError) as exc:
        raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress the request body: {exc}") from None
    return b"".join(chunks)


def decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError("BAD_ARGUMENTS", f"The {what} is not valid UTF-8 (byte {exc.start})") from None


async def build_request(request: web.Request, account: Account, max_query_size: int,
                        framing: Framing) -> Request:
    q = request.query
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in REQUEST_ENCODINGS:
        raise ClickHouseError("NOT_IMPLEMENTED", f"Content-Encoding {encoding} is not served here; send the "
                                                 f"body as {', '.join(sorted(REQUEST_ENCODINGS - {''}))}")
    form: dict[str, str] = {}
    body = ""
    if request.method == "POST":
        cap = max_query_size if account.readonly else MAX_WRITE_BODY
        # a multipart form carries the query and param_<name> fields; any other body is the query
        # itself (curl -d sends application/x-www-form-urlencoded, and ClickHouse reads it as SQL)
        if request.content_type == "multipart/form-data":
            form = await read_form(request, cap)
        else:
            raw = await read_capped(request, cap)
            if framing.decompress:  # up to a write account's 256 MiB: off the event loop
                raw = await asyncio.to_thread(framing.request_body, raw, cap)
            body = decode(raw, "request body")
    params = {**{k[6:]: v for k, v in q.items() if k.startswith("param_")},
              **{k[6:]: v for k, v in form.items() if k.startswith("param_")}}
    settings = {k: v for k, v in q.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
    text = q.get("query", "") + form.get("query", "") + body
    if not text.strip():
        raise ClickHouseError("SYNTAX_ERROR", "Empty query")
    if account.readonly and len(text.encode()) > max_query_size:
        raise ClickHouseError("SYNTAX_ERROR", f"Max query size exceeded: {len(text.encode())} bytes, "
                                              f"max_query_size is {max_query_size}")
    database = q.get("database") or request.headers.get("X-ClickHouse-Database") or None
    fmt = q.get("default_format") or request.headers.get("X-ClickHouse-Format") or "TabSeparated"
    return Request(text=text, database=database, default_format=fmt, settings=settings, params=params,
                   read_only_method=request.method == "GET", native_revision=framing.client_revision)


async def read_form(request: web.Request, cap: int) -> dict[str, str]:
    if (request.content_length or 0) > cap:
        raise ClickHouseError("SYNTAX_ERROR", f"Max query size exceeded: the form is over {cap} bytes")
    out: dict[str, str] = {}
    reader = await request.multipart()
    size = 0
    async for part in reader:
        if part.filename is not None:
            raise ClickHouseError("NOT_IMPLEMENTED", "External data (file parts) is not served here")
        value = await part.read(decode=False)
        size += len(value)
        if size > cap:
            raise ClickHouseError("SYNTAX_ERROR", f"Max query size exceeded: the form is over {cap} bytes")
        out[part.name or ""] = decode(bytes(value), f"form field {part.name!r}")
    return out


# -- answering -------------------------------------------------------------------------------------

def base_headers(request: web.Request, engine: ChdbEngine) -> dict[str, str]:
    return {"X-ClickHouse-Query-Id": request.query.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": engine.timezone,
            "X-ClickHouse-Server-Display-Name": "orderstream-sink"}


def error_response(err: ClickHouseError, headers: dict[str, str], version: str) -> web.Response:
    return web.Response(status=err.status, body=err.text(version).encode(),
                        headers={**headers, "X-ClickHouse-Exception-Code": str(err.code),
                                 "Content-Type": "text/plain; charset=UTF-8"})


async def handle_query(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    headers = base_headers(request, engine)
    if request.method == "GET" and "query" not in request.query:
        return web.Response(body=OK_TEXT, headers={"Content-Type": "text/plain; charset=UTF-8"})
    try:
        account = authenticate(request)
        framing = Framing.from_request(request.query, request.headers.get("Accept-Encoding"),
                                       getattr(engine, "revision", 0))
        req = await build_request(request, account, engine.limits.max_query_size, framing)
        if account.readonly:
            note_clamps(headers, req, account, engine)
        slots = request.app[SLOTS]
        try:  # Semaphore.acquire gives its slot back when cancelled after getting it
            async with asyncio.timeout(engine.limits.max_execution_time):
                await slots.acquire()
        except TimeoutError:
            raise ClickHouseError("TOO_MANY_SIMULTANEOUS_QUERIES",
                                  f"Too many simultaneous queries: all {request.app[MAX_QUERIES]} analyst query "
                                  f"slots stayed busy for {engine.limits.max_execution_time:g} s") from None
        try:
            result, body = await asyncio.to_thread(run_and_frame, engine, req, account, framing)
        finally:
            slots.release()
    except ClickHouseError as err:
        if err.name == "UNKNOWN_EXCEPTION":
            log.warning("analyst query failed: %s", err.message[:500])
        return error_response(err, headers, engine.version)
    except Exception as exc:  # noqa: BLE001 - a request must be answered, in ClickHouse's terms
        log.exception("analyst request failed")
        return error_response(ClickHouseError("UNKNOWN_EXCEPTION", f"{type(exc).__name__}: {exc}"), headers,
                              engine.version)
    headers["X-ClickHouse-Summary"] = json.dumps(result.summary(), separators=(",", ":"))
    if result.output_format is not None:
        headers["X-ClickHouse-Format"] = result.output_format
    headers["Content-Type"] = content_type(result.output_format)
    if framing.http_encoding is not None and body:
        headers["Content-Encoding"] = framing.http_encoding
    return web.Response(body=body, headers=headers)


def note_clamps(headers: dict[str, str], req: Request, account: Account, engine: ChdbEngine) -> None:
    """X-Orderstream-Clamped on the answer (a success or an error) when a limit the request asked
    above its ceiling runs clamped to it, e.g. `max_execution_time=10 (asked 35)`."""
    caps = engine.limits.caps()
    asked = clamped(req.settings, engine.limits)
    if asked:
        note = ", ".join(f"{name}={caps[name]:g} (asked {value:g})" for name, value in sorted(asked.items()))
        headers["X-Orderstream-Clamped"] = note
        log.debug("analyst %s: %s", account.name, note)


def run_and_frame(engine: ChdbEngine, req: Request, account: Account, framing: Framing):
    """The result and its bytes as the client reads them (in a worker thread: re-encoding and
    compressing a large answer takes a while)."""
    result = engine.execute(req, account)
    body = framing.answer_body(result.body, result.output_format, result.column_types)
    if framing.http_encoding is not None and body:
        body = framing.http_body(body)
    return result, body


async def ping(request: web.Request) -> web.Response:
    return web.Response(body=OK_TEXT, headers={"Content-Type": "text/plain; charset=UTF-8"})


async def no_handler(request: web.Request) -> web.Response:
    return web.Response(status=404, headers={"Content-Type": "text/plain; charset=UTF-8"},
                        body=f"There is no handle {request.path}\n\nUse / or /ping for health checks.\n"
                             "Send queries with POST to / or GET /?query=...\n".encode())


def make_app(engine: ChdbEngine, accounts: Iterable[Account], max_queries: int = 2) -> web.Application:
    """The ClickHouse-compatible application over `engine` for `accounts`."""
    accounts = list(accounts)
    if not accounts:
        raise ValueError("the analyst interface needs at least one account")
    if len({a.name for a in accounts}) != len(accounts):
        raise ValueError("analyst account names must be distinct")
    if max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, not {max_queries}")
    app = web.Application(client_max_size=MAX_WRITE_BODY)
    app[ENGINE] = engine
    app[ACCOUNTS] = {a.name: a for a in accounts}
    app[SLOTS] = asyncio.Semaphore(max_queries)
    app[MAX_QUERIES] = max_queries
    app.router.add_route("GET", "/", handle_query)
    app.router.add_route("POST", "/", handle_query)
    for path in ("/ping", "/replicas_status"):
        app.router.add_get(path, ping)
    app.router.add_route("*", "/{tail:.*}", no_handler)
    return app


def serve_analyst(engine: ChdbEngine, accounts: Iterable[Account], port: int, host: str = "127.0.0.1",
                  max_queries: int = 2) -> WebServer:
    """The interface on its own port and event loop (a daemon thread); `server.stop()` stops it."""
    return WebServer(make_app(engine, accounts, max_queries), host, port, name="analyst-http").start()
