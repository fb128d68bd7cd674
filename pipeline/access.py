"""The sink's operator surface: every route declares who may call it, and one guard enforces it.

Routes are added through `route()` / `static()` with a role (pipeline.credentials.ROLES), or
OPEN (liveness, which says nothing) or SIGNIN (the sign-in, which checks the token it is given). A
route added to the application without a declaration is refused to everyone (403, logged as a
defect), so a forgotten declaration fails closed, never open. A path no route matches answers 401
to a caller without credentials, so the surface does not tell an anonymous caller what exists.

A caller is named by `Authorization: Bearer <token>` or, in a browser, by the session cookie the
sign-in set (pipeline.console.signin). A write carried by the cookie must come from the console's
own pages (Sec-Fetch-Site: same-origin, or an Origin of this host): the cookie is SameSite=Strict
as well, so another site cannot make a signed-in browser act. Every granted request is logged with
its principal; data reads and writes at INFO.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Awaitable, Callable

from aiohttp import web

from .credentials import ROLES, Credentials, Principal

log = logging.getLogger(__name__)

OPEN = "open"
SIGNIN = "signin"
COOKIE = "orderstream_session"
PRINCIPAL = web.RequestKey("principal", Principal)  # who is calling (set by the guard)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
QUIET_ROLES = ("metrics",)  # a scrape every few seconds: DEBUG, not INFO

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sessions:
    """Browser sign-ins: a random id (the cookie) -> the principal, until it expires or signs out.
    In memory: a restarted sink asks its operators to sign in again."""

    def __init__(self, ttl_s: float, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_id: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            if len(self._by_id) >= self.max_sessions:  # drop expired ones, then the oldest
                self._by_id = {k: v for k, v in self._by_id.items() if v[1] > now}
                while len(self._by_id) >= self.max_sessions:
                    self._by_id.pop(next(iter(self._by_id)))
            self._by_id[sid] = (principal, now + self.ttl_s)
        return sid

    def get(self, sid: str | None) -> Principal | None:
        if not sid:
            return None
        with self._lock:
            found = self._by_id.get(sid)
            if found is None:
                return None
            if found[1] <= time.monotonic():
                del self._by_id[sid]
                return None
            return found[0]

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


ROUTE_ROLES = web.AppKey("route_roles", dict)
CREDENTIALS = web.AppKey("credentials", Credentials)
SESSIONS = web.AppKey("sessions", Sessions)
# the page a browser gets with a 401: the sign-in form (pipeline.console.signin), if the console is there
SIGNIN_PAGE = web.AppKey("signin_page", Callable)


def _check_role(role: str) -> None:
    if role not in (*ROLES, OPEN, SIGNIN):
        raise ValueError(f"unknown role {role!r}")


def route(app: web.Application, method: str, path: str, handler: Handler, role: str) -> None:
    """Add a route that `role` may call (OPEN: anyone); a GET answers HEAD too, as aiohttp's add_get does."""
    _check_role(role)
    for m in (method, "HEAD") if method == "GET" else (method,):
        resource_route = app.router.add_route(m, path, handler)
        app[ROUTE_ROLES][(m, resource_route.resource.canonical)] = role


def static(app: web.Application, prefix: str, directory, role: str) -> None:
    _check_role(role)
    resource = app.router.add_static(prefix, directory, append_version=False)
    app[ROUTE_ROLES][("GET", resource.canonical)] = role
    app[ROUTE_ROLES][("HEAD", resource.canonical)] = role


def declared_role(app: web.Application, method: str, canonical: str) -> str | None:
    roles = app[ROUTE_ROLES]
    return roles.get((method, canonical)) or (roles.get(("GET", canonical)) if method == "HEAD" else None)


def install(app: web.Application, credentials: Credentials, sessions: Sessions) -> None:
    app[ROUTE_ROLES] = {}
    app[CREDENTIALS] = credentials
    app[SESSIONS] = sessions
    app.middlewares.insert(0, guard)  # outermost: nothing answers before the caller is known


def authenticate(request: web.Request) -> tuple[Principal | None, str]:
    """(principal, how): a Bearer header wins over the cookie; ("", ...) when neither is presented."""
    header = request.headers.get("Authorization")
    if header:
        return request.app[CREDENTIALS].principal(header), "bearer"
    sid = request.cookies.get(COOKIE)
    if sid:
        return request.app[SESSIONS].get(sid), "cookie"
    return None, ""


def same_origin(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    origin = request.headers.get("Origin")
    return bool(origin) and origin == f"{request.scheme}://{request.host}"


def json_error(message: str, status: int) -> web.Response:
    import json
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json")


def unauthorized(request: web.Request, message: str = "this needs a token (Authorization: Bearer <token>)"
                 ) -> web.Response:
    if not len(request.app[CREDENTIALS]):
        message = ("no access token is configured (ORDERSTREAM_ACCESS_TOKENS, ORDERSTREAM_OPERATOR_TOKENS): "
                   "this surface refuses everyone")
    page = request.app.get(SIGNIN_PAGE)
    wants_html = "text/html" in request.headers.get("Accept", "")
    if page is not None and request.method in ("GET", "HEAD") and wants_html:
        response = page(request, 401, message if not len(request.app[CREDENTIALS]) else "")
    else:
        response = json_error(message, 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="orderstream"'
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    principal, how = authenticate(request)
    if match.http_exception is not None:  # no such route (404) or method (405)
        if principal is None:
            return unauthorized(request)
        return await handler(request)  # the known caller is told what is not there
    role = declared_role(request.app, request.method, match.route.resource.canonical)
    if role is None:
        log.error("refused %s %s: the route declares no role (pipeline.access.route)", request.method, request.path)
        return json_error("forbidden", 403)
    if role in (OPEN, SIGNIN):
        return await handler(request)
    if principal is None:
        if how:
            log.warning("refused %s %s from %s: unknown or expired %s credential", request.method, request.path,
                        request.remote, how)
        return unauthorized(request)
    if not principal.may(role):
        log.warning("refused %s %s to %s: needs %s", request.method, request.path, principal, role)
        return json_error(f"{principal.name} may not do this: it needs the {role} role", 403)
    if how == "cookie" and request.method not in SAFE_METHODS and not same_origin(request):
        log.warning("refused %s %s to %s: a cookie-carried write from another origin", request.method,
                    request.path, principal)
        return json_error("a signed-in browser may only act from the console's own pages", 403)
    request[PRINCIPAL] = principal
    log.log(logging.DEBUG if role in QUIET_ROLES or request.path.startswith("/console/static/") else logging.INFO,
            "%s %s by %s", request.method, request.path_qs, principal)
    return await handler(request)
