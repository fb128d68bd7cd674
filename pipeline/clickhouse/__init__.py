"""ClickHouse side of the pipeline: backends (chDB / server), migrations, the sink, the tiers.

Public API (what the CLI and agents call):
    open_backend(settings) -> Backend          ChdbBackend(path) | ServerBackend(url)
    migrate(backend) -> list[int]              apply pending migrations/NNNN_*.sql
    ClickHouseSink(backend, names, max_rows, max_seconds)
    run_sink(settings, names, stop=None, ready=None)
    TIERS["strategic" | "tactical" | "execution"](backend, ...) -> dict
    readonly_query(backend, sql) -> list[dict]
    http.make_app(backend, status=None, credentials=...) -> aiohttp Application (/health /status /metrics /views/<tier> /sql, guarded by pipeline.access)
    http.serve_http(backend, port, host, status=None, credentials=...) -> WebServer (its own loop in a thread; .stop())
    analyst.serve_analyst(engine, accounts, port) -> WebServer: the ClickHouse HTTP interface for
        analysts' own tools over the embedded engine (analyst.service starts it for the sink)
"""
from .backends import (Backend, BackendError, ChdbBackend, ReadOnlyQueryError, ServerBackend, open_backend,
                       readonly_query)
from .migrate import migrate
from .sink import ClickHouseSink, run_sink
from .tiers import TIERS, execution, strategic, tactical

__all__ = ["Backend", "BackendError", "ChdbBackend", "ServerBackend", "ReadOnlyQueryError", "open_backend",
           "readonly_query", "migrate", "ClickHouseSink", "run_sink", "TIERS", "strategic", "tactical",
           "execution"]
