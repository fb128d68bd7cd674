"""The sink's operator surface on aiohttp: tier views as JSON, read-only SQL, /metrics, /status
and /health; every route but /health needs a token (pipeline.access: viewer, analyst for /sql,
metrics for /metrics). The buyers' public page has its own listener (pipeline.public_site).

chDB is embedded in the sink process, so this is how analysts and the CLI reach its data while the
sink owns the data directory. aiohttp is the project's one HTTP stack (Faust's web server and the
verifiers are aiohttp too).

- `make_app(backend, status, credentials=...)` builds the application with its guard; further
  routes (the operators' console) are added to it through pipeline.access.route, with their role.
- `WebServer(app, host, port)` serves an application on its own event loop in a daemon thread,
  since the sink's consumer loop is synchronous (confluent-kafka); `serve_http` does both.

Backend calls block (chDB), so handlers run them in worker threads: a slow query never holds up
/health, /metrics or the event loop. Queries still take turns at the backend, with each other and
with the sink's inserts: `ChdbBackend` holds one chDB session under a lock, and a chDB session runs
one statement at a time by itself (two threads sleeping 1 s each take 2 s on one session, 1 s on
two sessions of the same data directory).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline import access, web_headers
from pipeline.credentials import Credentials

from .backends import Backend, BackendError, ReadOnlyQueryError, readonly_query
from .tiers import TIERS

log = logging.getLogger(__name__)
MAX_SQL_BYTES = 64 * 1024
ENDPOINTS = ["/health", "/status", "/metrics", "/views/<tier>", "/sql?q="]  # told to a caller with a token only

BACKEND = web.AppKey("backend", Backend)
STATUS = web.AppKey("status", Callable[[], dict])  # merged into /status

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- responses and parameters ------------------------------------------------------------------

def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj, ensure_ascii=False, default=str).encode(),
                        content_type="application/json")


def param(request: web.Request, name: str) -> str | None:
    """The first non-blank value of a query parameter; a blank one counts as absent."""
    return next((v for v in request.query.getall(name, ()) if v), None)


def json_api(handler: Handler) -> Handler:
    """The sink's JSON endpoints answer every failure as {"error": ...}: refused or malformed input
    400 (ClickHouse's refusals too: readonly violations and syntax errors are the caller's to fix),
    anything else 500 and logged."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return json_response({"error": "request body too large"}, 413)
        except web.HTTPException:
            raise
        except (ReadOnlyQueryError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)
        except BackendError as exc:
            return json_response({"error": str(exc)[:2000]}, 400)
        except Exception as exc:  # noqa: BLE001 - a handler must answer, not die
            log.exception("http %s failed", request.path)
            return json_response({"error": str(exc)[:2000]}, 500)
    return wrapped


@web.middleware
async def not_found_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path no route matches gets the JSON 404 listing the endpoints (a route's own 404 stands);
    only a caller with a token gets this far (pipeline.access.guard answers 401 to the others)."""
    if isinstance(request.match_info.http_exception, web.HTTPNotFound):
        return json_response({"error": "not found", "endpoints": ENDPOINTS}, 404)
    return await handler(request)


# -- the sink's endpoints ----------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    """Liveness for anyone (a container's healthcheck, a process waiting for the sink): says nothing."""
    return json_response({"status": "ok"})


@json_api
async def status_handler(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "time": datetime.now(timezone.utc).isoformat(),
                          **request.app[STATUS]()})


@json_api
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _tier_args(tier: str, request: web.Request) -> dict:
    args: dict = {}
    if (now := param(request, "now")) is not None:
        args["now"] = datetime.fromisoformat(now.replace("Z", "+00:00"))
    if tier == "strategic" and (days := param(request, "days")) is not None:
        args["days"] = int(days)
    if tier == "strategic" and (tz := param(request, "tz")) is not None:
        args["tz"] = tz  # days are this zone's calendar days; tiers.check_tz refuses an unknown zone
    if tier == "tactical" and (hours := param(request, "hours")) is not None:
        args["hours"] = int(hours)
    return args


@json_api
async def view(request: web.Request) -> web.Response:
    tier = request.match_info["tier"]
    if tier not in TIERS:
        return json_response({"error": f"unknown tier {tier!r}", "tiers": sorted(TIERS)}, 404)
    args = _tier_args(tier, request)
    return json_response(await asyncio.to_thread(TIERS[tier], request.app[BACKEND], **args))


@json_api
async def sql(request: web.Request) -> web.Response:
    """?q=... (GET or POST), else the POST body: the SQL itself, or {"q": ...} as application/json."""
    body = None
    if request.method == "POST":
        if (request.content_length or 0) > MAX_SQL_BYTES:
            return json_response({"error": "request body too large"}, 413)
        raw = await request.read()  # a chunked body is bounded by the app's client_max_size
        if len(raw) > MAX_SQL_BYTES:
            return json_response({"error": "request body too large"}, 413)
        body = raw.decode(errors="replace")
    query = param(request, "q")
    if query is None and body:
        query = body
        if request.headers.get("Content-Type", "").startswith("application/json"):
            query = json.loads(body).get("q")
    if not query:
        return json_response({"error": "give the query as ?q=... or the request body"}, 400)
    rows = await asyncio.to_thread(readonly_query, request.app[BACKEND], query)
    return json_response({"rows": rows, "count": len(rows)})


def make_app(backend: Backend, status: Callable[[], dict] | None = None, *, credentials: Credentials,
             sessions: access.Sessions | None = None) -> web.Application:
    """The sink's operator surface: GET or POST /health (anyone), /status and /views/<tier> (viewer),
    /metrics (metrics), /sql (analyst)."""
    app = web.Application(middlewares=[not_found_as_json])
    access.install(app, credentials, sessions or access.Sessions(12 * 3600))
    web_headers.install(app, web_headers.OPERATOR_CSP, no_store=True)
    app[BACKEND] = backend
    app[STATUS] = status or (lambda: {})
    for path, handler, role in (("/health", health, access.OPEN), ("/status", status_handler, "viewer"),
                                ("/metrics", metrics, "metrics"), ("/views/{tier:.*}", view, "viewer"),
                                ("/sql", sql, "analyst")):
        access.route(app, "GET", path, handler, role)
        access.route(app, "POST", path, handler, role)
    return app


# -- serving from a synchronous process ----------------------------------------------------------

class _DebugAccessLog(AbstractAccessLogger):
    """Access lines at DEBUG: scrapes and health checks would otherwise fill the sink's log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug("http %s %s %s %.1f ms", request.method, request.path_qs, response.status,
                          time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class WebServer:
    """An aiohttp application on its own event loop in a daemon thread. `start()` returns once the
    socket listens, or raises why it cannot (port taken); `stop()` shuts the runner down (requests
    in flight get `shutdown_timeout` seconds) and ends the loop. Port 0 picks a free port (`port`)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0, *,
                 shutdown_timeout: float = 2.0, name: str = "sink-http") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> WebServer:
        self.thread.start()
        self._started.wait()
        if self._error is not None:
            self.thread.join()
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self.thread.is_alive():
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("%s still finishing a request after %.0f s", self.thread.name, timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), or logged once serving
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("%s stopped", self.thread.name)

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app, shutdown_timeout=self.shutdown_timeout,
                               access_log_class=_DebugAccessLog, access_log=log)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            self.port = runner.addresses[0][1]
            self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._started.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()


def serve_http(backend: Backend, port: int, host: str = "127.0.0.1",
               status: Callable[[], dict] | None = None, *, credentials: Credentials) -> WebServer:
    """The sink's application, serving in a daemon thread; `server.stop()` stops it."""
    return WebServer(make_app(backend, status, credentials=credentials), host, port).start()
