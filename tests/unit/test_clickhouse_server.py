"""The same sink and tier suite as test_clickhouse_chdb.py, through the server backend
(`ServerBackend`, clickhouse-connect over HTTP), twice:

- `TestServerOverEmbeddedHttp`, in every run: against the sink's ClickHouse HTTP interface
  (pipeline.clickhouse.analyst) over an embedded chDB engine, with a read-write account, so the
  clickhouse-connect code path (handshake, settings, bound parameters as form fields, raw inserts
  with dedup tokens, errors) runs wherever the unit tests run.
- `TestServer`: against a real ClickHouse server, ORDERSTREAM_CLICKHOUSE_TEST_URL (e.g.
  http://default:@127.0.0.1:8123), else a testcontainers ClickHouse when Docker answers;
  otherwise its tests skip with the reason (the docker-compose hosts' path).
Each run uses its own database and drops it afterwards.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from pipeline.clickhouse.analyst import Account, ChdbEngine, serve_analyst
from pipeline.clickhouse.backends import ChdbBackend, ServerBackend
from pipeline.clickhouse.migrate import migrate
from pipeline.topics import TopicNames
from tests.unit.test_clickhouse_chdb import SinkSuite

URL_ENV = "ORDERSTREAM_CLICKHOUSE_TEST_URL"


def _docker_reason() -> str | None:
    """None when Docker is usable for testcontainers, else why not."""
    try:
        import docker  # testcontainers' own dependency
        import testcontainers  # noqa: F401
    except ImportError as exc:
        return f"testcontainers/docker not installed ({exc.name})"
    try:
        docker.from_env().ping()
    except Exception as exc:  # no socket, no permission, daemon down
        return f"Docker is not reachable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


@pytest.fixture(scope="module")
def server_url():
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    reason = _docker_reason()
    if reason:
        pytest.skip(f"no ClickHouse server: set {URL_ENV}=http://user:pass@host:8123 or make Docker "
                    f"available for testcontainers; {reason}")
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:24.8", port=8123) as ch:
        yield f"http://{ch.username}:{ch.password}@{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}"


def server_backend(server_url: str):
    database = f"orderstream_test_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(server_url)
    b = ServerBackend(urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, "")))
    assert migrate(b) == [1, 2, 3, 4]
    yield b
    b.command(f"DROP DATABASE IF EXISTS {database}")
    b.close()


@pytest.fixture(scope="module")
def names():
    return TopicNames("servertest.")


@pytest.fixture(scope="module")
def embedded_http(tmp_path_factory):
    """The analyst interface over a fresh chDB data dir, with a read-write account for the suite."""
    data = ChdbBackend(tmp_path_factory.mktemp("chdb-http") / "data")  # owns the data dir, as the sink does
    server = serve_analyst(ChdbEngine(data.path), [Account("suite", "suite-pw", readonly=False)], 0)
    yield f"http://suite:suite-pw@127.0.0.1:{server.port}"
    server.stop()
    data.close()


class TestServerOverEmbeddedHttp(SinkSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, embedded_http):
        yield from server_backend(embedded_http)

    def test_the_backend_really_is_clickhouse_connect_over_http(self, backend, embedded_http):
        """Not a shortcut into chDB: the suite's backend is a clickhouse-connect HTTP client of the
        interface, and the interface answers as a ClickHouse server."""
        import clickhouse_connect.driver.httpclient as httpclient

        assert isinstance(backend._client, httpclient.HttpClient)
        assert backend._client.url == "http://127.0.0.1:" + embedded_http.rsplit(":", 1)[1]
        assert backend._client.server_version == backend.query("SELECT version() AS v")[0]["v"]


class TestServer(SinkSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, server_url):
        yield from server_backend(server_url)
