"""The ClickHouse HTTP interface of the embedded engine, for analysts' own tools (clickhouse-connect,
pandas, curl, Grafana's ClickHouse data source on clickhouse-go, the JDBC driver of DBeaver, Metabase
and DataGrip), served by the sink on its own port.

    engine.py   chDB sessions of their own per request, beside the sink's insert session
    guard.py    which statements an analyst may run, on the engine's own parse of them
    policy.py   accounts, limits, which per-request settings an analyst may change
    errors.py   ClickHouse's error codes, exception text and HTTP statuses
    server.py   the HTTP protocol on aiohttp (make_app / serve_analyst, on http.WebServer)
    framing.py  how a request's and an answer's bytes travel, from the URL parameters:
      native.py            Native in the client's protocol revision (client_protocol_version)
      compressed.py        ClickHouse's compressed blocks (compress=1 / decompress=1)
      http_compression.py  enable_http_compression with Accept-Encoding
"""
from .engine import ChdbEngine, Request, Result
from .errors import ClickHouseError
from .policy import Account, Limits
from .server import make_app, serve_analyst

__all__ = ["Account", "ChdbEngine", "ClickHouseError", "Limits", "Request", "Result", "make_app", "serve_analyst"]
