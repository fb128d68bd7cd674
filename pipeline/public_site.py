"""The sink's one public surface: the buyers' tracking pages (/t/<code>) and their stylesheet.

Its own listener (ORDERSTREAM_PUBLIC_HOST / ORDERSTREAM_PUBLIC_PORT), apart from the operator
surface (pipeline.clickhouse.http + pipeline.console, every route behind a token), so reaching a
buyer's page reaches nothing else: any other path, and any method but GET/HEAD, is a bare 404 that
names no endpoint. Each client address is rate-limited (pipeline.rate_limit): a code is not
guessable, and a crawler gets 429 long before it could try many.
"""
from __future__ import annotations

import logging

from aiohttp import web

from pipeline import web_headers
from pipeline.clickhouse.backends import Backend
from pipeline.clickhouse.http import BACKEND, Handler
from pipeline.console.tracking import setup_tracking
from pipeline.rate_limit import TokenBuckets, retry_after_header

log = logging.getLogger(__name__)

BUCKETS = web.AppKey("buckets", TokenBuckets)


def bare_not_found() -> web.Response:
    return web.Response(status=404, text="not found", content_type="text/plain")


@web.middleware
async def only_tracking_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Anything but a tracking page or its stylesheet is a 404 that says nothing more (a 405 or a
    static directory's 403 would tell that something is there)."""
    if request.match_info.http_exception is not None:
        return bare_not_found()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return bare_not_found()
        raise


@web.middleware
async def rate_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
    wait_s = request.app[BUCKETS].take(request.remote or "")
    if wait_s > 0:
        log.info("public page rate limit: %s waits %.1f s", request.remote, wait_s)
        return web.Response(status=429, text="too many requests", content_type="text/plain",
                            headers={"Retry-After": retry_after_header(wait_s)})
    return await handler(request)


def make_public_app(backend: Backend, rate_per_s: float = 2.0, burst: int = 20,
                    buckets: TokenBuckets | None = None) -> web.Application:
    app = web.Application(middlewares=[rate_limited, only_tracking_pages], client_max_size=1024)
    app[BACKEND] = backend
    app[BUCKETS] = buckets or TokenBuckets(rate_per_s, burst)
    setup_tracking(app)
    web_headers.install(app, web_headers.PUBLIC_CSP, no_store=False)
    return app
