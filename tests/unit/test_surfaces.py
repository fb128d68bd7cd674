"""Issue 26: one public page, everything else behind credentials.

Every route of both listeners is walked from the applications' own routers (a route added later is
walked too): on the public surface only the buyers' pages and their stylesheet answer, and every
path of the operator surface is a bare 404 there; on the operator surface every route but the
listed liveness refuses a caller without credentials (401) or with the wrong role (403), and
answers one with the right role. Both set the security headers on every answer."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiohttp import test_utils, web

from pipeline import access
from pipeline.clickhouse.http import make_app
from pipeline.config import load_settings
from pipeline.console import setup_console
from pipeline.credentials import Credentials
from pipeline.public_site import make_public_app
from pipeline.rate_limit import TokenBuckets
from tests.unit.test_console import FakePublisher
from tests.unit.test_tracking_page import NAMES, landed  # noqa: F401 - the fixture

TOKENS = {"metrics": "prometheus-token-0123456789", "viewer": "viewer-token-0123456789",
          "operator": "operator-token-0123456789", "analyst": "analyst-token-0123456789"}
NAME_OF = {"metrics": "prometheus", "viewer": "vera", "operator": "otto", "analyst": "anna"}
LESSER = {"viewer": "metrics", "operator": "viewer", "analyst": "operator"}  # holds all but the role asked
OPEN_ON_OPERATOR_SURFACE = {("GET", "/health"), ("HEAD", "/health"), ("POST", "/health")}
HINTS = ("/sql", "/views", "/console", "/metrics", "/status", "/health", "endpoints")
SAMPLE = {"tier": "strategic"}


def credentials() -> Credentials:
    return Credentials([(TOKENS[r], NAME_OF[r], r) for r in TOKENS])


def operator_app(backend) -> web.Application:
    app = make_app(backend, credentials=credentials())
    setup_console(app, load_settings(), NAMES, publisher=FakePublisher())
    return app


def concrete_paths(app: web.Application, code: str = "aaaaaaaaaaaaaaaa") -> list[tuple[str, str, str]]:
    """(method, path, canonical) for every route: dynamic parts filled in, a static directory's first file."""
    out = []
    for r in app.router.routes():
        resource = r.resource
        canonical = resource.canonical
        info = resource.get_info()
        if "directory" in info:
            first = sorted(p.name for p in Path(info["directory"]).iterdir() if p.is_file())[0]
            path = f"{info['prefix']}/{first}"
        else:
            path = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLE.get(m.group(1), code), canonical)
        out.append((r.method, path, canonical))
    return out


def run(app, scenario):
    async def main():
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            return await scenario(client)
    return asyncio.run(main())


def assert_security_headers(headers, path, authenticated: bool) -> None:
    csp = headers.get("Content-Security-Policy", "")
    script = re.search(r"(?:script-src|default-src) ([^;]*)", csp)
    assert "frame-ancestors 'none'" in csp and script and "unsafe-inline" not in script.group(1), (path, csp)
    assert headers.get("X-Frame-Options") == "DENY", path
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("Referrer-Policy") == "no-referrer", path
    if authenticated:
        assert headers.get("Cache-Control") == "no-store", path


# -- the operator surface ----------------------------------------------------------------------------

def test_every_operator_route_declares_its_role(landed):  # noqa: F811
    backend, _ = landed
    app = operator_app(backend)
    undeclared = [(m, c) for m, _, c in concrete_paths(app) if access.declared_role(app, m, c) is None]
    assert undeclared == []


def test_every_operator_route_refuses_without_credentials_and_answers_its_role(landed):  # noqa: F811
    backend, _ = landed
    app = operator_app(backend)
    routes = concrete_paths(app)
    assert len(routes) >= 20  # the walk sees the console's routes, not an empty router

    async def scenario(client):
        seen = []
        for method, path, canonical in routes:
            role = access.declared_role(app, method, canonical)
            ask = lambda headers=None, **kw: client.request(method, path, headers=headers or {},  # noqa: E731
                                                            allow_redirects=False, **kw)
            anonymous = await ask()
            wrong = await ask({"Authorization": "Bearer not-a-token-of-anyone-000"})
            bad_cookie = await ask(cookies={access.COOKIE: "forged-session-id"})
            html = await ask({"Accept": "text/html"})
            row = {"route": (method, path), "anonymous": anonymous.status, "wrong": wrong.status,
                   "cookie": bad_cookie.status, "html": html.status, "body": await anonymous.text()}
            for resp in (anonymous, wrong, bad_cookie):
                assert_security_headers(resp.headers, path, authenticated=True)
            if role in TOKENS:
                if role in LESSER:
                    row["lesser"] = (await ask({"Authorization": f"Bearer {TOKENS[LESSER[role]]}"})).status
                right = await ask({"Authorization": f"Bearer {TOKENS[role]}"})
                row["right"] = right.status
                assert_security_headers(right.headers, path, authenticated=True)
            elif role == access.SIGNIN:
                right = await ask(data={"token": TOKENS["viewer"], "next": "/console/tactical"})
                row["right"] = right.status
                row["cookie_set"] = access.COOKIE in right.cookies
                client.session.cookie_jar.clear()  # the next route is walked anonymous again
            seen.append(row)
        return seen

    for row in run(app, scenario):
        route = row["route"]
        if route in OPEN_ON_OPERATOR_SURFACE:
            body = "" if route[0] == "HEAD" else '{"status": "ok"}'
            assert row["anonymous"] == 200 and row["body"] == body, row  # liveness says nothing
            continue
        assert (row["anonymous"], row["wrong"], row["cookie"]) == (401, 401, 401), row
        assert row["html"] == 401, row
        if "lesser" in row:
            assert row["lesser"] == 403, row
        assert row["right"] not in (401, 403, 404, 405), row  # the role's caller is answered (400 for an empty body)
        if "cookie_set" in row:
            assert row["right"] == 303 and row["cookie_set"], row


def test_an_unknown_path_tells_an_anonymous_caller_nothing(landed):  # noqa: F811
    backend, _ = landed

    async def scenario(client):
        anon = await client.get("/no/such/path")
        known = await client.get("/no/such/path", headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
        return anon.status, await anon.text(), known.status
    status, body, known = run(operator_app(backend), scenario)
    assert status == 401 and "/sql" not in body and "endpoints" not in body
    assert known == 404


def test_sql_needs_the_analyst_and_names_who_read(landed, caplog):  # noqa: F811
    backend, w = landed
    query = "SELECT order_id, waybill, track_code FROM tracking_updates"

    async def scenario(client):
        out = {}
        for who in ("viewer", "operator", "analyst"):
            resp = await client.get("/sql", params={"q": query}, headers={"Authorization": f"Bearer {TOKENS[who]}"})
            out[who] = (resp.status, await resp.json())
        out["anonymous"] = (await client.get("/sql", params={"q": query})).status
        return out
    caplog.set_level("INFO", logger="pipeline.access")
    got = run(operator_app(backend), scenario)
    assert got["anonymous"] == 401
    assert got["viewer"][0] == got["operator"][0] == 403
    assert got["analyst"][0] == 200 and got["analyst"][1]["count"] > 0
    assert any("/sql" in r.getMessage() and "anna[" in r.getMessage() for r in caplog.records)


def test_a_browser_signs_in_and_a_cookie_write_must_come_from_the_console(landed):  # noqa: F811
    backend, _ = landed

    async def scenario(client):
        page = await client.get("/console/execution", headers={"Accept": "text/html"})
        form = await page.text()
        refused = await client.post("/console/session", data={"token": "wrong-token-000000000000"})
        signed = await client.post("/console/session", data={"token": TOKENS["operator"], "next": "/console/execution"},
                                   allow_redirects=False)
        again = await client.get("/console/execution")  # the cookie jar now holds the session
        who = await (await client.get("/console/api/whoami")).json()
        body = {"order_id": "TM-nosuchorder", "action": "approve"}
        cross = await client.post("/console/api/decisions", json=body, headers={"Origin": "http://evil.example"})
        same = await client.post("/console/api/decisions", json=body, headers={"Sec-Fetch-Site": "same-origin"})
        evil_next = await client.post("/console/session", data={"token": TOKENS["viewer"], "next": "//evil.example/x"},
                                      allow_redirects=False)
        out = await client.post("/console/session/end", headers={"Sec-Fetch-Site": "same-origin"},
                                allow_redirects=False)
        after = await client.get("/console/execution")
        return (page.status, form, refused.status, signed.status, signed.headers.get("Location"),
                signed.headers.get("Set-Cookie", ""), again.status, who, cross.status, same.status,
                evil_next.headers.get("Location"), out.status, after.status)
    (page, form, refused, signed, location, cookie, again, who, cross, same, evil_next, out, after) = run(
        operator_app(backend), scenario)
    assert page == 401 and 'action="/console/session"' in form and "<script" not in form
    assert refused == 401
    assert signed == 303 and location == "/console/execution"
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert again == 200 and who == {"name": "otto", "roles": ["metrics", "operator", "viewer"], "operator": "otto"}
    assert cross == 403   # another site's form cannot act with the cookie
    assert same == 404    # the console's own page can: the unknown order is the answer
    assert evil_next == "/console/strategic"  # no redirect off the surface
    assert out == 303 and after == 401


# -- the public surface --------------------------------------------------------------------------------

def test_the_public_surface_answers_only_the_buyers_pages(landed):  # noqa: F811
    backend, w = landed
    public = make_public_app(backend, rate_per_s=1000, burst=1000)  # the walk, not the rate limit, is tested here
    code = w["moving"].track_code
    own = concrete_paths(public, code)
    assert {c for _, _, c in own} == {"/t/{code}", "/t/static"}
    elsewhere = {(m, p) for m, p, _ in concrete_paths(operator_app(backend))}
    elsewhere |= {("GET", "/"), ("GET", "/sql?q=SELECT%201"), ("GET", "/views/strategic"), ("GET", "/t/"),
                  ("GET", "/t/static/"), ("GET", "/t/static/../templates/tracking.html"), ("POST", f"/t/{code}"),
                  ("GET", "/console/static/console.js")}

    async def scenario(client):
        mine = [(m, p, (await client.request(m, p)).status) for m, p, _ in own]
        unknown = await client.get("/t/aaaaaaaaaaaaaaaa")
        others = []
        for method, path in sorted(elsewhere):
            resp = await client.request(method, path, allow_redirects=False,
                                        headers={"Authorization": f"Bearer {TOKENS['analyst']}"})
            others.append((method, path, resp.status, await resp.text(), resp.headers))
        return mine, unknown.status, others
    mine, unknown, others = run(public, scenario)
    assert all(status == 200 for _, _, status in mine), mine
    assert unknown == 404
    assert len(others) > 20
    for method, path, status, body, headers in others:
        assert (status, body) == (404, "" if method == "HEAD" else "not found"), (method, path, status, body)
        assert_security_headers(headers, path, authenticated=False)


def test_the_buyers_pages_hint_at_nothing_else(landed):  # noqa: F811
    backend, w = landed

    async def scenario(client):
        out = []
        for path in (f"/t/{w['moving'].track_code}", "/t/aaaaaaaaaaaaaaaa", "/t/not-a-code", "/nothing"):
            resp = await client.get(path)
            out.append((path, resp.status, await resp.text(), resp.headers))
        return out
    pages = run(make_public_app(backend), scenario)
    assert [status for _, status, _, _ in pages] == [200, 404, 404, 404]
    for path, _, body, headers in pages:
        assert not [h for h in HINTS if h in body], (path, body[:300])
        assert "<script" not in body and "<a " not in body and "<form" not in body, path
        assert_security_headers(headers, path, authenticated=False)
        assert "style-src 'self'" in headers["Content-Security-Policy"]  # no inline style either


def test_the_public_page_is_rate_limited_per_client_address(landed):  # noqa: F811
    backend, w = landed
    now = [0.0]
    public = make_public_app(backend, buckets=TokenBuckets(1.0, 3, clock=lambda: now[0]))

    async def scenario(client):
        path = f"/t/{w['moving'].track_code}"
        burst = [(await client.get(path)).status for _ in range(3)]
        limited = await client.get(path)
        now[0] += 1.0  # one token back
        after = (await client.get(path)).status
        return burst, limited.status, limited.headers.get("Retry-After"), after
    burst, limited, retry_after, after = run(public, scenario)
    assert burst == [200, 200, 200]
    assert limited == 429 and retry_after == "1"
    assert after == 200


def test_token_buckets_refill_at_their_rate_and_keep_addresses_apart():
    now = [100.0]
    buckets = TokenBuckets(2.0, 2, clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)   # empty: the next token in 1 / rate
    assert buckets.take("b") == 0.0                  # another address has its own bucket
    now[0] += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # half a token back: a quarter second to go
    now[0] += 0.25
    assert buckets.take("a") == 0.0
    now[0] += 60
    assert [buckets.take("a"), buckets.take("a"), buckets.take("a") > 0] == [0.0, 0.0, True]  # capped at the burst
    with pytest.raises(ValueError):
        TokenBuckets(0, 1)


# -- tokens ------------------------------------------------------------------------------------------

def test_access_tokens_name_a_principal_and_its_roles(tmp_path):
    from dataclasses import replace

    from pipeline.credentials import TokenConfigError, parse_access_tokens
    s = load_settings()
    path = tmp_path / "access"
    path.write_text(f"# people\nviewer:vera:{TOKENS['viewer']}\n\nanalyst:otto:{TOKENS['operator']}\n", encoding="utf-8")
    creds = Credentials.from_settings(replace(s, access_tokens=f"metrics:prometheus:{TOKENS['metrics']}",
                                              access_tokens_file=str(path), operator_tokens=f"otto:{TOKENS['operator']}",
                                              operator_tokens_file=""))
    otto = creds.principal(f"Bearer {TOKENS['operator']}")
    assert otto.name == "otto" and otto.roles == {"operator", "analyst", "viewer", "metrics"}  # both lists: both roles
    assert creds.principal(f"Bearer {TOKENS['metrics']}").roles == {"metrics"}
    assert creds.principal(f"Bearer {TOKENS['viewer']}").may("viewer") and \
        not creds.principal(f"Bearer {TOKENS['viewer']}").may("operator")
    assert creds.operator(f"Bearer {TOKENS['viewer']}") is None and creds.operator(f"Bearer {TOKENS['operator']}") == "otto"
    for header in (None, "", TOKENS["viewer"], f"Basic {TOKENS['viewer']}", f"Bearer {TOKENS['viewer']}x"):
        assert creds.principal(header) is None, header
    for text, why in (("admin:root:" + "x" * 20, "role:name:token"), ("viewer:vera", "role:name:token"),
                      ("viewer:vera:short", "at least 16"), ("viewer:ve ra:" + "x" * 20, "role:name:token")):
        with pytest.raises(TokenConfigError, match=why):
            parse_access_tokens(text)
    with pytest.raises(TokenConfigError, match="share a token"):
        Credentials.from_settings(replace(s, access_tokens=f"viewer:vera:{'y' * 20},analyst:anna:{'y' * 20}",
                                          access_tokens_file="", operator_tokens="", operator_tokens_file=""))
