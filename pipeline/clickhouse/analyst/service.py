"""The analyst interface as the sink runs it: built from the settings, started beside the sink's
own HTTP server, stopped with it.

It serves the embedded engine only: with the server backend, analysts connect to the ClickHouse
server itself, which has users and settings profiles of its own. A port that is taken does not
stop the sink (ingestion matters more than ad-hoc access): the sink logs it and reports it in
/health. A configuration that would expose the data (no password on a non-loopback address) or
limits that are not positive stop the sink at start, with the reason.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from ..http import WebServer
from .engine import ChdbEngine
from .policy import Account, Limits
from .server import serve_analyst

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class AnalystService:
    """The running interface, or why it is not running (for /health)."""
    port: int
    server: WebServer | None = None
    reason: str | None = None

    def status(self) -> dict:
        running = self.server is not None
        return {"analyst_http": {"running": running, "port": self.server.port if running else self.port,
                                 **({} if running else {"reason": self.reason})}}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def start_analyst_service(settings, backend) -> AnalystService:
    from ..backends import ChdbBackend

    port = int(settings.analyst_port)
    if port == 0:
        return AnalystService(0, reason="turned off (ORDERSTREAM_ANALYST_PORT=0)")
    if not isinstance(backend, ChdbBackend):
        return AnalystService(port, reason="server backend: analysts connect to the ClickHouse server itself")
    if not settings.analyst_password and not is_loopback(settings.bind_host):
        raise ValueError(f"the analyst interface would serve the data on {settings.bind_host}:{port} without a "
                         "password: set ORDERSTREAM_ANALYST_PASSWORD, or ORDERSTREAM_ANALYST_PORT=0 to turn it off")
    if int(settings.analyst_max_queries) < 1:
        raise ValueError(f"ORDERSTREAM_ANALYST_MAX_QUERIES must be at least 1, not {settings.analyst_max_queries}")
    limits = Limits.from_settings(settings)
    account = Account(settings.analyst_user, settings.analyst_password, readonly=True)
    engine = ChdbEngine(backend.path, limits)
    try:
        server = serve_analyst(engine, [account], port, host=settings.bind_host,
                               max_queries=int(settings.analyst_max_queries))
    except OSError as exc:
        log.error("analyst interface not started on %s:%d: %s (the sink keeps sinking)", settings.bind_host, port, exc)
        return AnalystService(port, reason=f"cannot listen on {settings.bind_host}:{port}: {exc}")
    log.info("analyst interface (ClickHouse HTTP) on %s:%d for user %s", settings.bind_host, server.port,
             account.name)
    return AnalystService(port, server=server)
