"""Signing a browser in to the console: a token, typed once, becomes a session cookie.

A browser cannot send `Authorization: Bearer` with a page load, so a console page without
credentials answers 401 with this sign-in form (no script; nothing else is reachable before it).
The form posts the token to POST /console/session, which opens a session for its principal
(pipeline.access.Sessions) and sets the cookie: HttpOnly (no script reads it), SameSite=Strict (no
other site sends it), Secure when served over TLS. POST /console/session/end signs out.
"""
from __future__ import annotations

import logging

from aiohttp import web

from pipeline import access

from .pages import _t, environment

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4 * 1024
DEFAULT_NEXT = "/console/strategic"


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a path of this surface only (no open redirect to elsewhere)."""
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw and "\n" not in raw:
        return raw
    return DEFAULT_NEXT


def signin_page(request: web.Request, status: int, message: str, next_path: str | None = None) -> web.Response:
    """The form, coming back to the page that was asked for (or `next_path`)."""
    nxt = next_path or (request.path_qs if request.method == "GET" else DEFAULT_NEXT)
    html = environment().get_template("signin.html").render(t=_t("zh-en"), message=message, next=safe_next(nxt))
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")


async def sign_in(request: web.Request) -> web.StreamResponse:
    if (request.content_length or 0) > MAX_FORM_BYTES:
        return access.json_error("request body too large", 413)
    form = await request.post()
    principal = request.app[access.CREDENTIALS].by_token(str(form.get("token", "")).strip())
    if principal is None:
        log.warning("sign-in refused from %s: unknown token", request.remote)
        response = signin_page(request, 401, "令牌无效或已过期 · unknown or expired token", str(form.get("next", "")))
        response.headers["WWW-Authenticate"] = 'Bearer realm="orderstream"'
        return response
    sessions = request.app[access.SESSIONS]
    sid = sessions.open(principal)
    log.info("signed in: %s from %s", principal, request.remote)
    response = web.Response(status=303, headers={"Location": safe_next(str(form.get("next", "")))})
    response.set_cookie(access.COOKIE, sid, max_age=int(sessions.ttl_s), path="/", httponly=True,
                        samesite="Strict", secure=request.secure)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    request.app[access.SESSIONS].close(request.cookies.get(access.COOKIE))
    log.info("signed out: %s", request[access.PRINCIPAL])
    response = web.Response(status=303, headers={"Location": DEFAULT_NEXT})
    response.del_cookie(access.COOKIE, path="/")
    return response


def setup_signin(app: web.Application) -> None:
    app[access.SIGNIN_PAGE] = signin_page
    access.route(app, "POST", "/console/session", sign_in, access.SIGNIN)
    access.route(app, "POST", "/console/session/end", sign_out, "viewer")
