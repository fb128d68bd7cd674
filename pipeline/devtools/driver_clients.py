"""The analysts' standard ClickHouse drivers, built for tests/unit/test_analyst_drivers.py:
clickhouse-go v2 (the library inside Grafana's ClickHouse data source) from the Go module proxy,
and the ClickHouse JDBC driver (DBeaver, Metabase, DataGrip) from Maven Central. Their pins are
tests/clients/go/go.mod (+ go.sum) and tests/clients/jdbc/pom.xml.

`python -m pipeline.devtools.driver_clients` downloads and builds both (scripts/dev test runs it,
so CI fetches them before the tests); a missing `go` or `mvn`/`java` is reported and skipped, as
the test skips then. Builds go under var/ (Go's module and build caches too); Maven uses the
local repository the Kafka jars come through.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import PROJECT_ROOT

GO_SOURCE = PROJECT_ROOT / "tests" / "clients" / "go"
JDBC_SOURCE = PROJECT_ROOT / "tests" / "clients" / "jdbc"
BUILD = PROJECT_ROOT / "var" / "clients"
GO_BINARY = BUILD / "go-driver-check"
JDBC_BUILD = BUILD / "jdbc"  # the pom's build directory
BUILD_TIMEOUT_S = 900  # a first download on a slow link; later builds take seconds


class BuildError(RuntimeError):
    pass


def go_env() -> dict[str, str]:
    cache = PROJECT_ROOT / "var" / "go"
    return {**os.environ, "GOMODCACHE": str(cache / "mod"), "GOCACHE": str(cache / "build"),
            "GOPATH": str(cache / "path"), "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}


def missing_go() -> str | None:
    return None if shutil.which("go") else "Go (go) is not installed; it builds the clickhouse-go client"


def missing_jdbc() -> str | None:
    for tool, what in (("mvn", "Maven (mvn) fetches the JDBC driver"), ("java", "a JDK runs the JDBC driver")):
        if not shutil.which(tool):
            return f"{tool} is not installed; {what}"
    if not shutil.which("javac"):
        return "javac is not installed; the JDBC client is compiled with the JDK"
    return None


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{' '.join(cmd[:3])} took over {BUILD_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")


def build_go_client() -> Path:
    """The clickhouse-go client's binary (go build is incremental: seconds once cached)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-o", str(GO_BINARY), "."], GO_SOURCE, go_env())
    return GO_BINARY


@dataclass(frozen=True)
class JavaClient:
    classpath: str

    def command(self, *args: str) -> list[str]:
        return ["java", "-cp", self.classpath, "DriverCheck", *args]


def build_jdbc_client() -> JavaClient:
    """The JDBC client compiled, with the driver's jars on its class path."""
    listing = JDBC_BUILD / "classpath.txt"
    _run(["mvn", "-q", "-B", "-f", str(JDBC_SOURCE / "pom.xml"), "compile", "dependency:build-classpath",
          f"-Dmdep.outputFile={listing}"], JDBC_SOURCE)
    return JavaClient(f"{JDBC_BUILD / 'classes'}{os.pathsep}{listing.read_text().strip()}")


def main() -> int:
    failed = False
    for name, missing, build in (("clickhouse-go", missing_go, build_go_client),
                                 ("clickhouse-jdbc", missing_jdbc, build_jdbc_client)):
        reason = missing()
        if reason:
            print(f"{name}: not built ({reason}); its driver test will skip")
            continue
        try:
            build()
            print(f"{name}: built")
        except BuildError as exc:
            failed = True
            print(f"{name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
