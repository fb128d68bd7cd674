"""The same sink and tier suite as test_clickhouse_chdb.py, against a ClickHouse server through
clickhouse-connect. Server: ORDERSTREAM_CLICKHOUSE_TEST_URL (e.g. http://default:@127.0.0.1:8123),
else a testcontainers ClickHouse when Docker answers; otherwise every test skips with the reason.
Each run uses its own database and drops it afterwards.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from pipeline.clickhouse.backends import ServerBackend
from pipeline.clickhouse.migrate import discover, migrate
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


@pytest.fixture(scope="module")
def backend(server_url):
    database = f"orderstream_test_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(server_url)
    b = ServerBackend(urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, "")))
    assert migrate(b) == [m.version for m in discover()]  # every migration, in order
    yield b
    b.command(f"DROP DATABASE IF EXISTS {database}")
    b.close()


@pytest.fixture(scope="module")
def names():
    return TopicNames("servertest.")


class TestServer(SinkSuite):
    pass
