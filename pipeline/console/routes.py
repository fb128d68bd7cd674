"""The console's routes on the sink's aiohttp application (pipeline.clickhouse.http.make_app).

    GET  /console/<tier>            the page (strategic, tactical, execution), refreshing itself
    GET  /console/<tier>/panel      the page's figures alone, what the refresh fetches
    GET  /console/static/...        the stylesheet and script, served from this package
    GET  /console/api/whoami        the operator a token names (401 without one)
    POST /console/api/decisions     {"order_id", "action": approve|reject, "reason"}: operator token required
    POST /console/api/redrive       {"letter_id": "<dlq topic>:<partition>:<offset>"}: operator token required
    POST /console/api/refunds/decisions  {"refund_id", "action": approve|reject, "reason"}: operator token required
    GET  /console/api/settlement/queue    the open settlement differences (?day=, ?platform=)
    POST /console/api/settlement/resolve  {"diff_key", "reason"}: operator token required
    GET  /t/<code>                  the buyer's tracking page (pipeline.console.tracking)

Pages take what /views/<tier> takes (`now`, `days`, `hours`; `tz` for strategic's days) and the
viewer's `tz` and `lang`. Every response forbids loading anything from elsewhere
(Content-Security-Policy default-src 'self'): the console runs on a machine with no internet.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from pipeline.clickhouse.http import BACKEND, json_response
from pipeline.topics import TopicNames

from . import format as fmt
from .actions import ConsoleActions, KafkaPublisher, Publisher
from .auth import OperatorTokens
from .pages import Renderer, compute, parse_options
from .tracking import setup_tracking

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_ACTION_BYTES = 16 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class Console:
    """What the routes share: the backend, the operators' tokens, the actions and the renderer."""

    def __init__(self, backend, settings, names: TopicNames, *, publisher: Publisher | None = None,
                 tokens: OperatorTokens | None = None, outcome_wait_s: float = 6.0) -> None:
        self.backend = backend
        self.default_tz = settings.console_timezone
        fmt.zone(self.default_tz)  # a wrong ORDERSTREAM_CONSOLE_TIMEZONE stops the sink at start, not a page later
        self.tokens = tokens if tokens is not None else OperatorTokens.from_settings(settings)
        self.publisher = publisher if publisher is not None else KafkaPublisher(settings)
        self.actions = ConsoleActions(backend, names, self.publisher, outcome_wait_s=outcome_wait_s)
        self.renderer = Renderer(settings.console_refresh_s)

    def operator(self, request: web.Request) -> str | None:
        return self.tokens.operator(request.headers.get("Authorization"))


CONSOLE = web.AppKey("console", Console)


@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path == "/" or request.path.startswith("/console"):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/strategic")


async def _tier(request: web.Request, whole_page: bool) -> web.Response:
    console = request.app[CONSOLE]
    tier = request.match_info["tier"]
    try:
        opts = parse_options(tier, request.query, console.default_tz)
    except KeyError:
        return _html(console.renderer.error(404, f"unknown tier {tier!r}: strategic, tactical or execution"), 404)
    except ValueError as exc:
        return _html(console.renderer.error(400, str(exc)), 400)
    try:
        view = await asyncio.to_thread(compute, request.app[BACKEND], opts)
    except Exception as exc:  # noqa: BLE001 - a page must answer, not die
        log.exception("console %s failed", request.path)
        return _html(console.renderer.error(500, f"the {tier} figures could not be read: {str(exc)[:500]}"), 500)
    render = console.renderer.page if whole_page else console.renderer.panel
    return _html(render(view, opts, datetime.now(timezone.utc)))


async def page(request: web.Request) -> web.Response:
    return await _tier(request, whole_page=True)


async def panel(request: web.Request) -> web.Response:
    return await _tier(request, whole_page=False)


def _unauthorized(console: Console) -> web.Response:
    why = ("this needs an operator token (Authorization: Bearer <token>)" if len(console.tokens) else
           "no operator is configured (ORDERSTREAM_OPERATOR_TOKENS): the console is read-only")
    response = json_response({"error": why}, 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="orderstream console"'
    return response


async def whoami(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    operator = console.operator(request)
    if operator is None:
        return _unauthorized(console)
    return json_response({"operator": operator})


async def _payload(request: web.Request) -> dict | web.Response:
    if (request.content_length or 0) > MAX_ACTION_BYTES:
        return json_response({"error": "request body too large"}, 413)
    raw = await request.read()
    if len(raw) > MAX_ACTION_BYTES:
        return json_response({"error": "request body too large"}, 413)
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        return json_response({"error": "the body must be a JSON object"}, 400)
    if not isinstance(payload, dict):
        return json_response({"error": "the body must be a JSON object"}, 400)
    return payload


def _action(name: str):
    async def handler(request: web.Request) -> web.Response:
        console = request.app[CONSOLE]
        operator = console.operator(request)  # before anything else: without a token nothing happens
        if operator is None:
            return _unauthorized(console)
        payload = await _payload(request)
        if isinstance(payload, web.Response):
            return payload
        try:
            answer = await getattr(console.actions, name)(operator, payload)
        except Exception as exc:  # noqa: BLE001
            log.exception("console %s by %s failed", name, operator)
            return json_response({"error": f"{name} failed: {str(exc)[:500]}"}, 500)
        return json_response(answer.body, answer.status)
    handler.__name__ = name
    return handler


async def settlement_queue(request: web.Request) -> web.Response:
    from pipeline.settlement.queue import open_queue
    console = request.app[CONSOLE]
    rows = await asyncio.to_thread(open_queue, console.backend, request.query.get("day") or None,
                                   request.query.get("platform") or None)
    return json_response({"open": rows, "count": len(rows)})


def setup_console(app: web.Application, settings, names: TopicNames, **options) -> Console:
    """Add the console to the sink's application (which already holds the backend)."""
    console = Console(app[BACKEND], settings, names, **options)
    app[CONSOLE] = console
    app.middlewares.append(security_headers)
    app.router.add_get("/", to_console)
    app.router.add_get("/console", to_console)
    app.router.add_get("/console/", to_console)
    app.router.add_static("/console/static", STATIC_DIR, append_version=False)
    app.router.add_get("/console/api/whoami", whoami)
    app.router.add_post("/console/api/decisions", _action("decide"))
    app.router.add_post("/console/api/redrive", _action("redrive"))
    app.router.add_post("/console/api/refunds/decisions", _action("refund_decide"))
    app.router.add_get("/console/api/settlement/queue", settlement_queue)
    app.router.add_post("/console/api/settlement/resolve", _action("settlement_resolve"))
    app.router.add_get("/console/{tier}", page)
    app.router.add_get("/console/{tier}/panel", panel)
    setup_tracking(app)  # the buyers' /t/<code> pages (no token: the code is the secret)

    async def close_publisher(_app: web.Application) -> None:
        await asyncio.to_thread(console.publisher.close)
    app.on_cleanup.append(close_publisher)
    return console
