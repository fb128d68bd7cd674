"""Security headers on every response of both of the sink's listeners (errors and redirects too).

Both surfaces load nothing from elsewhere (they run where there may be no internet), run no inline
script, and may not be framed (clickjacking). The operator surface's answers are all for a signed-in
caller, or a refusal, so none may be cached; the public surface's pages set their own.
"""
from __future__ import annotations

from aiohttp import web

# the console: its own script and stylesheet; inline style stays for computed widths (progress bars)
OPERATOR_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# the buyers' page: one stylesheet, no script at all
PUBLIC_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
              "form-action 'none'")


def install(app: web.Application, csp: str, no_store: bool) -> None:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", csp)
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        if no_store:
            headers["Cache-Control"] = "no-store"
    app.on_response_prepare.append(add_headers)
