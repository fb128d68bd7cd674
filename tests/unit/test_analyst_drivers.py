"""Issue 26: the analysts' standard clients connect to the analyst interface with their defaults.

The real drivers, built by pipeline.devtools.driver_clients (pins: tests/clients/go/go.mod,
tests/clients/jdbc/pom.xml), run against the interface served in-process on a free port over a
chDB data dir the real sink loaded (no Kafka):
- clickhouse-go v2 over HTTP, the library inside Grafana's ClickHouse data source: Native with
  client_protocol_version, and with its LZ4, ZSTD (compress=1), gzip and brotli (HTTP) compressions;
  no option changed but the compression, so its deadlines arrive as a max_execution_time above the
  interface's limit (its 30 s dial timeout + 5 s on the first query), which runs clamped to it;
- the ClickHouse JDBC driver (DBeaver, Metabase, DataGrip) with its default settings
  (compress=1, its answers in LZ4 compressed blocks).
Each connects, reads a real table and a known result, binds a parameter, and is refused a write
with ClickHouse's READONLY. A request log checks that the driver really took the path named.
The tests skip only when go, or mvn/java/javac, are missing.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from aiohttp import web

from pipeline.clickhouse.analyst import Account, ChdbEngine, Limits, make_app
from pipeline.clickhouse.http import WebServer
from pipeline.devtools import driver_clients
from pipeline.topics import TopicNames
from tests.unit.test_clickhouse_chdb import sunk_dataset

USER, PASSWORD = "analyst", "drivers-pw"
RUN_TIMEOUT_S = 120
READONLY = 164


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    backend = sunk_dataset(tmp_path_factory.mktemp("chdb-drivers") / "data", TopicNames("drivertest."))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def served(data):
    """(port, requests): the interface for a read-only analyst, and every request's URL
    parameters and headers as it came, with its answer's Content-Encoding."""
    seen: list[tuple[dict[str, str], dict[str, str], str | None]] = []

    @web.middleware
    async def record(request, handler):
        response = await handler(request)
        seen.append((dict(request.query), dict(request.headers), response.headers.get("Content-Encoding")))
        return response

    app = make_app(ChdbEngine(data.path), [Account(USER, PASSWORD)], max_queries=2)
    app.middlewares.append(record)
    server = WebServer(app, "127.0.0.1", 0, name="analyst-drivers").start()
    yield server.port, seen
    server.stop()


def expected(data) -> dict:
    """What every driver must read, straight from the sink's own session."""
    platforms = [{"platform": r["platform"], "n": int(r["n"])} for r in data.query(
        "SELECT platform, count() AS n FROM order_events GROUP BY platform ORDER BY platform")]
    orders = data.query("SELECT order_id, platform, ship_by IS NULL AS no_ship_by, "
                        "arrayConcat(risk_flags, [toString(status)]) AS risk_flags, "
                        "toUnixTimestamp64Milli(created_at) AS created_ms FROM order_events "
                        "ORDER BY src_topic, src_partition, src_offset LIMIT 50")
    bound = int(data.query("SELECT count() AS n FROM order_events WHERE platform = 'JD'")[0]["n"])
    assert bound > 0 and len(platforms) > 1 and len(orders) == 50
    assert all(r["risk_flags"] for r in orders) and 0 < sum(bool(r["no_ship_by"]) for r in orders) < 50, \
        "the sample must hold arrays, NULLs and non-NULLs to decode"
    first_hour = int(data.query("SELECT toUnixTimestamp(min(hour)) AS h FROM orders_hourly")[0]["h"])
    return {"platforms": platforms, "orders": orders, "bound": bound, "first_hour": first_hour,
            "version": data.query("SELECT version() AS v")[0]["v"]}


def run_client(cmd: list[str]) -> dict:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"{cmd[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_write_refused(out: dict) -> None:
    assert out["write_error_code"] == READONLY, out["write_error"]
    assert "READONLY" in out["write_error"] and "readonly" in out["write_error"], out["write_error"]


# -- clickhouse-go v2 (Grafana's ClickHouse data source) --------------------------------------------

@pytest.fixture(scope="module")
def go_client():
    reason = driver_clients.missing_go()
    if reason:
        pytest.skip(reason)
    return driver_clients.build_go_client()


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd", "gzip", "br"])
def test_clickhouse_go_over_http_with_its_defaults(go_client, served, data, compression):
    port, seen = served
    before = len(seen)
    out = run_client([str(go_client), "-addr", f"127.0.0.1:{port}", "-user", USER, "-password", PASSWORD,
                      "-compression", compression])
    want = expected(data)
    # the server hello: displayName(), version(), revision(), timezone() decoded from Native
    major_minor_patch = ".".join(want["version"].split(".")[:3])
    revision = data.query("SELECT revision() AS r")[0]["r"]
    assert f"server version {major_minor_patch} revision {revision} " in out["server_version"], out["server_version"]
    assert out["platforms"] == want["platforms"]
    assert [(o["order_id"], o["platform"], o["ship_by_is_null"], o["risk_flags"] or []) for o in out["orders"]] == \
        [(r["order_id"], r["platform"], bool(r["no_ship_by"]), r["risk_flags"]) for r in want["orders"]]
    assert [o["created_at"] for o in out["orders"]][:1] and all(o["created_at"].endswith("Z") for o in out["orders"])
    assert out["bound_count"] == want["bound"]
    assert out["positional_sum"] == 42
    assert out["std_bound_count"] == want["bound"]  # through database/sql, as Grafana opens it
    # DateTime('UTC') arrives with its zone, not as a bare DateTime in the engine's zone (this tells
    # the two apart where that zone is not literally "UTC"; test_clickhouse_analyst checks the bytes)
    assert (out["first_hour_unix"], out["first_hour_zone"]) == (want["first_hour"], "UTC")
    assert_write_refused(out)
    # the path this test is about: Native in the driver's protocol revision (and its compression)
    requests = seen[before:]
    assert requests and all(q.get("default_format") == "Native" and q.get("client_protocol_version") == "54460"
                            for q, _, _ in requests), requests[:2]
    assert any(q.get("param_p") == "JD" for q, _, _ in requests)
    # its defaults send each deadline + 5 s as max_execution_time (the hello under the 30 s dial
    # timeout, the queries under Grafana's 60 s): above the 10 s limit, so run clamped, not refused
    asked = [float(q["max_execution_time"]) for q, _, _ in requests if "max_execution_time" in q]
    assert len(asked) >= 5 and min(asked) > Limits().max_execution_time, asked
    if compression in ("lz4", "zstd"):
        # the hello and the four reads come in compressed blocks (the write's refusal is plain text)
        assert sum(q.get("compress") == "1" for q, _, _ in requests) >= 5, requests
    if compression in ("gzip", "br"):
        assert sum(h.get("Accept-Encoding") == compression and q.get("enable_http_compression") == "1"
                   and answered == compression for q, h, answered in requests) >= 5, requests


# -- the ClickHouse JDBC driver (DBeaver, Metabase, DataGrip) -----------------------------------------

@pytest.fixture(scope="module")
def jdbc_client():
    reason = driver_clients.missing_jdbc()
    if reason:
        pytest.skip(reason)
    return driver_clients.build_jdbc_client()


def test_clickhouse_jdbc_with_its_defaults(jdbc_client, served, data):
    port, seen = served
    before = len(seen)
    out = run_client(jdbc_client.command(f"jdbc:clickhouse://127.0.0.1:{port}/default", USER, PASSWORD))
    want = expected(data)
    assert out["server_version"] == want["version"], out
    assert out["platforms"] == want["platforms"]
    assert [(o["order_id"], o["platform"], o["ship_by_is_null"], o["risk_flags"], o["created_at_ms"])
            for o in out["orders"]] == \
        [(r["order_id"], r["platform"], bool(r["no_ship_by"]), r["risk_flags"], int(r["created_ms"]))
         for r in want["orders"]]
    assert out["bound_count"] == want["bound"]
    # a SQL tool's navigator: tables and columns through DatabaseMetaData
    assert "order_events" in out["tables"] and "orders_hourly" in out["tables"], out["tables"]
    assert "order_id String" in out["columns"] and "risk_flags Array(String)" in out["columns"], out["columns"]
    assert_write_refused(out)
    requests = seen[before:]
    # its default: the answers in ClickHouse's compressed blocks
    assert requests and all(q.get("compress") == "1" for q, _, _ in requests), requests[:3]
    assert any(h.get("X-ClickHouse-Format") == "RowBinaryWithNamesAndTypes" for _, h, _ in requests)
