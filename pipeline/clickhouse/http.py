"""The sink's small HTTP server: tier views as JSON, read-only SQL, /metrics and /health.

chDB is embedded in the sink process, so this is how analysts and the CLI reach its data
while the sink owns the data directory. stdlib ThreadingHTTPServer in a daemon thread: no
event loop to share with the consumer; the backend's lock serialises queries with inserts.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backends import Backend, BackendError, ReadOnlyQueryError, readonly_query
from .tiers import TIERS

log = logging.getLogger(__name__)
MAX_SQL_BYTES = 64 * 1024


class SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, backend: Backend, status: Callable[[], dict] | None):
        super().__init__(address, _Handler)
        self.backend = backend
        self.status = status or (lambda: {})
        self.thread: threading.Thread | None = None

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()


def _tier_args(tier: str, query: dict[str, list[str]]) -> dict:
    args: dict = {}
    if "now" in query:
        args["now"] = datetime.fromisoformat(query["now"][0].replace("Z", "+00:00"))
    if tier == "strategic" and "days" in query:
        args["days"] = int(query["days"][0])
    if tier == "tactical" and "hours" in query:
        args["hours"] = int(query["hours"][0])
    return args


class _Handler(BaseHTTPRequestHandler):
    server: SinkHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # route access logs to logging, quietly
        log.debug("http %s", fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False, default=str).encode())

    def do_GET(self) -> None:
        self._route(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_SQL_BYTES:
            self._json(413, {"error": "request body too large"})
            return
        self._route(self.rfile.read(length).decode(errors="replace") if length else "")

    def _route(self, body: str | None) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/health":
                self._json(200, {"status": "ok", "time": datetime.now(timezone.utc).isoformat(),
                                 **self.server.status()})
            elif url.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif url.path.startswith("/views/"):
                tier = url.path[len("/views/"):]
                if tier not in TIERS:
                    self._json(404, {"error": f"unknown tier {tier!r}", "tiers": sorted(TIERS)})
                    return
                self._json(200, TIERS[tier](self.server.backend, **_tier_args(tier, query)))
            elif url.path == "/sql":
                sql = query.get("q", [None])[0]
                if sql is None and body:
                    sql = body
                    if self.headers.get("Content-Type", "").startswith("application/json"):
                        sql = json.loads(body).get("q")
                if not sql:
                    self._json(400, {"error": "give the query as ?q=... or the request body"})
                    return
                rows = readonly_query(self.server.backend, sql)
                self._json(200, {"rows": rows, "count": len(rows)})
            else:
                self._json(404, {"error": "not found",
                                 "endpoints": ["/health", "/metrics", "/views/<tier>", "/sql?q="]})
        except (ReadOnlyQueryError, ValueError) as exc:
            self._json(400, {"error": str(exc)})
        except BackendError as exc:
            # ClickHouse refused: readonly violations and syntax errors are the caller's to fix
            self._json(400, {"error": str(exc)[:2000]})
        except Exception as exc:  # noqa: BLE001 - a handler must answer, not die
            log.exception("http %s failed", url.path)
            self._json(500, {"error": str(exc)[:2000]})


def serve_http(backend: Backend, port: int, host: str = "127.0.0.1",
               status: Callable[[], dict] | None = None) -> SinkHTTPServer:
    """Start serving in a daemon thread; `server.shutdown()` stops it. Port 0 picks a free port
    (`server.server_address[1]`)."""
    server = SinkHTTPServer((host, port), backend, status)
    server.thread = threading.Thread(target=server.serve_forever, name="sink-http", daemon=True)
    server.thread.start()
    return server
