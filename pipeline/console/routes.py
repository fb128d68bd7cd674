"""The console's routes on the sink's operator surface (pipeline.clickhouse.http.make_app), each
declared with who may call it (pipeline.access):

    POST /console/session            sign in: a token from the form -> a session cookie   (anyone; checks the token)
    POST /console/session/end        sign out                                             viewer
    GET  /, /console, /console/      to /console/strategic                                viewer
    GET  /console/<tier>             the page (strategic, tactical, execution)            viewer
    GET  /console/<tier>/panel       the page's figures alone, what the refresh fetches   viewer
    GET  /console/static/...         the stylesheet and script                            viewer
    GET  /console/api/whoami         the caller's name and roles                          viewer
    GET  /console/api/settlement/queue    the open settlement differences (?day=, ?platform=)   viewer
    POST /console/api/decisions      {"order_id", "action": approve|reject, "reason"}     operator
    POST /console/api/redrive        {"letter_id": "<dlq topic>:<partition>:<offset>"}    operator
    POST /console/api/refunds/decisions  {"refund_id", "action": approve|reject, "reason"}   operator
    POST /console/api/settlement/resolve {"diff_key", "reason"}                            operator

A page asked for without credentials answers 401 with the sign-in form (pipeline.console.signin).
The buyers' tracking page is not here: it is the public surface's (pipeline.public_site).

Pages take what /views/<tier> takes (`now`, `days`, `hours`; `tz` for strategic's days) and the
viewer's `tz` and `lang`. Every response forbids loading anything from elsewhere (pipeline.web_headers):
the console runs on a machine with no internet.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from pipeline import access
from pipeline.clickhouse.http import BACKEND, json_response
from pipeline.redrive_ledger import RedriveLedger, redis_ledger
from pipeline.topics import TopicNames

from . import format as fmt
from .actions import ConsoleActions, KafkaPublisher, Publisher
from .pages import Renderer, compute, parse_options
from .signin import setup_signin

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_ACTION_BYTES = 16 * 1024


class Console:
    """What the routes share: the backend, the actions and the renderer (who calls: pipeline.access)."""

    def __init__(self, backend, settings, names: TopicNames, *, publisher: Publisher | None = None,
                 redrives: RedriveLedger | None = None, outcome_wait_s: float = 6.0) -> None:
        self.backend = backend
        self.default_tz = settings.console_timezone
        fmt.zone(self.default_tz)  # a wrong ORDERSTREAM_CONSOLE_TIMEZONE stops the sink at start, not a page later
        self.publisher = publisher if publisher is not None else KafkaPublisher(settings)
        # the re-drive ledger shared with `orderstream dlq replay` (Redis; connects on first re-drive)
        self.redrives = redrives if redrives is not None else redis_ledger(settings)
        self.actions = ConsoleActions(backend, names, self.publisher, self.redrives, outcome_wait_s=outcome_wait_s)
        self.renderer = Renderer(settings.console_refresh_s)


CONSOLE = web.AppKey("console", Console)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


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


async def whoami(request: web.Request) -> web.Response:
    principal = request[access.PRINCIPAL]
    return json_response({"name": principal.name, "roles": sorted(principal.roles),
                          "operator": principal.name if principal.may("operator") else None})


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
        operator = request[access.PRINCIPAL].name  # the guard let only an operator through
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
    """Add the console to the sink's operator surface (which already holds the backend and the guard)."""
    console = Console(app[BACKEND], settings, names, **options)
    app[CONSOLE] = console
    setup_signin(app)
    for path in ("/", "/console", "/console/"):
        access.route(app, "GET", path, to_console, "viewer")
    access.static(app, "/console/static", STATIC_DIR, "viewer")
    access.route(app, "GET", "/console/api/whoami", whoami, "viewer")
    access.route(app, "POST", "/console/api/decisions", _action("decide"), "operator")
    access.route(app, "POST", "/console/api/redrive", _action("redrive"), "operator")
    access.route(app, "POST", "/console/api/refunds/decisions", _action("refund_decide"), "operator")
    access.route(app, "GET", "/console/api/settlement/queue", settlement_queue, "viewer")
    access.route(app, "POST", "/console/api/settlement/resolve", _action("settlement_resolve"), "operator")
    access.route(app, "GET", "/console/{tier}", page, "viewer")
    access.route(app, "GET", "/console/{tier}/panel", panel, "viewer")

    async def close_publisher(_app: web.Application) -> None:
        await asyncio.to_thread(console.publisher.close)
    app.on_cleanup.append(close_publisher)
    return console
