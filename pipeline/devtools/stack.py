"""The local stack without Docker: a real Kafka broker (KRaft, loopback) and a real redis-server.

Kafka's jars come from Maven Central through `stack/pom.xml` and run on the installed JDK;
redis-server is Debian's package. Every step is idempotent: `up` twice is harmless, `down`
stops only what `up` started (pid files under var/run), `status` reports each component.
ClickHouse needs no server here: chDB is embedded in the sink process.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..config import PROJECT_ROOT, Settings, load_settings
from ..kafka_io import TopicError, ensure_topics

log = logging.getLogger(__name__)

POM = PROJECT_ROOT / "stack" / "pom.xml"
KAFKA_LIBS = PROJECT_ROOT / "stack" / ".cache" / "kafka-libs"


class StackError(RuntimeError):
    """A component could not be installed or started; the message says what and why."""


@dataclass
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    detail: str = ""


# ---------------------------------------------------------------- processes and files

def _run_dir(s: Settings) -> Path:
    path = s.var / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn(cmd: list[str], log_file: Path, pid_file: Path, env: dict | None = None, cwd: Path | None = None) -> int:
    """Start a daemon in its own session (so the caller's Ctrl-C does not kill it) and record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_pid_file(pid_file: Path, timeout: float = 20.0, sig: int = signal.SIGTERM) -> bool:
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.2)
        _reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


# ---------------------------------------------------------------- Kafka

def fetch_kafka_jars() -> Path:
    """Copy the pinned broker and its dependencies from Maven Central once (stamped by the pom's hash)."""
    stamp = KAFKA_LIBS / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        return KAFKA_LIBS
    if not shutil.which("mvn"):
        raise StackError("Maven (mvn) is not installed; it fetches the Kafka broker jars from Maven Central")
    if not shutil.which("java"):
        raise StackError("No Java runtime (java) found; the Kafka broker runs on the installed JDK")
    shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
    KAFKA_LIBS.mkdir(parents=True)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={KAFKA_LIBS}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"mvn could not fetch the Kafka jars:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    stamp.write_text(digest)
    return KAFKA_LIBS


def _kafka_dir(s: Settings) -> Path:
    return s.var / "kafka"


def new_cluster_id(random_bytes=lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id (URL-safe base64 of a UUID). One in 64 begins with '-', which the
    storage tool's argument parser reads as an option and fails on: draw again then."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_properties(s: Settings) -> str:
    data = _kafka_dir(s) / "data"
    host, port = s.kafka_host, s.kafka_port
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{port + 1}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{port + 1}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        f"num.partitions={s.partitions}",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        # small machine: few threads, modest buffers
        "num.network.threads=2",
        "num.io.threads=4",
        "log.retention.hours=72",
        "log.segment.bytes=268435456",
        "",
    ])


def _log4j_properties(s: Settings) -> str:
    return "\n".join([
        "log4j.rootLogger=INFO, stdout",
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
        "log4j.logger.kafka=INFO",
        "log4j.logger.org.apache.kafka=WARN",
        "log4j.logger.state.change.logger=WARN",
        "",
    ])


def kafka_up(s: Settings, timeout: float = 90.0) -> ComponentStatus:
    kdir = _kafka_dir(s)
    pid_file = _run_dir(s) / "kafka.pid"
    log_file = kdir / "broker.log"
    if read_pid(pid_file) and kafka_healthy(s):
        return kafka_status(s)
    if port_open(s.kafka_host, s.kafka_port) and not read_pid(pid_file):
        raise StackError(f"port {s.kafka_port} is taken by a process this project did not start; "
                         "set ORDERSTREAM_KAFKA_PORT to a free port")
    libs = fetch_kafka_jars()
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_kafka_properties(s))
    (kdir / "log4j.properties").write_text(_log4j_properties(s))
    classpath = f"{libs}/*"
    java_base = ["java", f"-Xmx{s.kafka_heap_mb}m", f"-Xms{min(s.kafka_heap_mb, 256)}m",
                 f"-Dlog4j.configuration=file:{kdir / 'log4j.properties'}", "-cp", classpath]
    if not (kdir / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        fmt = subprocess.run([*java_base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                             capture_output=True, text=True)
        if fmt.returncode != 0:
            raise StackError(f"formatting KRaft storage failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
    if not read_pid(pid_file):
        spawn([*java_base, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
               "kafka.Kafka", str(props)], log_file, pid_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not read_pid(pid_file):
            raise StackError(f"the Kafka broker exited during start-up; log tail:\n{log_tail(log_file)}")
        if kafka_healthy(s):
            try:
                ensure_topics(s)
            except TopicError as exc:
                raise StackError(str(exc)) from exc
            return kafka_status(s)
        time.sleep(0.5)
    raise StackError(f"the Kafka broker did not answer within {timeout:.0f}s; log tail:\n{log_tail(log_file)}")


def kafka_healthy(s: Settings, timeout: float = 3.0) -> bool:
    if not port_open(s.kafka_host, s.kafka_port):
        return False
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": s.bootstrap, "log_level": 0}).list_topics(timeout=timeout)
        return bool(md.brokers)
    except Exception:  # KafkaException while the broker is still starting
        return False


def kafka_status(s: Settings) -> ComponentStatus:
    pid = read_pid(_run_dir(s) / "kafka.pid")
    healthy = kafka_healthy(s) if pid else False
    return ComponentStatus("kafka", s.bootstrap, pid, healthy, "KRaft broker+controller" if healthy else "down")


# ---------------------------------------------------------------- Redis

def _locate(what: str) -> str | None:
    """A command on PATH, or an absolute path (a file no command names: a font)."""
    if what.startswith("/"):
        return what if Path(what).exists() else None
    return shutil.which(what)


def ensure_debian_packages(required: list[str], packages: list[str], why: str) -> dict[str, str]:
    """{what: path} for each command (or absolute path) in `required`; when one is missing, install
    Debian's `packages` with apt-get (root only), or raise StackError saying what to install."""
    found = {what: _locate(what) for what in required}
    if all(found.values()):
        return found  # type: ignore[return-value]
    missing = ", ".join(what for what, path in found.items() if not path)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"{missing} missing ({why}); install Debian's packages as root: "
                         f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    found = {what: _locate(what) for what in required}
    still = [what for what, path in found.items() if not path]
    if still:
        raise StackError(f"apt-get installed {' '.join(packages)}, but {', '.join(still)} is still missing")
    return found  # type: ignore[return-value]


def ensure_redis_installed() -> str:
    return ensure_debian_packages(["redis-server"], ["redis-server"], "the project's own Redis")["redis-server"]


# Debian's Chromium and its driver for the console's browser tests, and a CJK font, so the Chinese
# labels render (in the screenshots too) instead of empty boxes
BROWSER_PACKAGES = ["chromium", "chromium-driver", "fonts-wqy-microhei"]
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


def ensure_browser_installed() -> dict[str, str]:
    """{"chromium": path, "chromedriver": path, CJK_FONT: path}, installing Debian's packages when
    missing (as `ensure_redis_installed` does): root only, a clear error otherwise."""
    return ensure_debian_packages(["chromium", "chromedriver", CJK_FONT], BROWSER_PACKAGES,
                                  "the console's browser tests drive Debian's Chromium")


# Debian's Prometheus server: the metrics stack test evaluates every dashboard and alert expression
# on a real one (pipeline.devtools.prometheus); its packaged service is not used (or started)
PROMETHEUS_PACKAGES = ["prometheus"]


def ensure_prometheus_installed() -> dict[str, str]:
    """{"prometheus": path, "promtool": path}, installing Debian's package when missing (root only)."""
    return ensure_debian_packages(["prometheus", "promtool"], PROMETHEUS_PACKAGES,
                                  "the metrics stack test queries a real Prometheus server")


def redis_up(s: Settings, timeout: float = 20.0) -> ComponentStatus:
    pid_file = _run_dir(s) / "redis.pid"
    if read_pid(pid_file) and redis_healthy(s):
        return redis_status(s)
    if s.redis_url:
        # an external Redis was configured: nothing to start, only to check
        return redis_status(s)
    if port_open("127.0.0.1", s.redis_port) and not read_pid(pid_file):
        raise StackError(f"port {s.redis_port} is taken by a process this project did not start; "
                         "set ORDERSTREAM_REDIS_PORT to a free port")
    binary = ensure_redis_installed()
    rdir = s.var / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    log_file = rdir / "redis.log"
    # append-only file so a restarted Redis keeps reservations (the reliability tests restart it)
    spawn([binary, "--port", str(s.redis_port), "--bind", "127.0.0.1", "--dir", str(rdir),
           "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
           "--protected-mode", "yes"], log_file, pid_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_healthy(s):
            return redis_status(s)
        if not read_pid(pid_file):
            raise StackError(f"redis-server exited during start-up; log tail:\n{log_tail(log_file)}")
        time.sleep(0.1)
    raise StackError(f"redis-server did not answer within {timeout:.0f}s; log tail:\n{log_tail(log_file)}")


def redis_healthy(s: Settings) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(s.redis, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_status(s: Settings) -> ComponentStatus:
    pid = read_pid(_run_dir(s) / "redis.pid")
    healthy = redis_healthy(s)
    return ComponentStatus("redis", s.redis, pid, healthy, "" if healthy else "down")


# ---------------------------------------------------------------- the whole stack

def clickhouse_status(s: Settings) -> ComponentStatus:
    if s.clickhouse_backend == "chdb":
        path = s.var / "chdb"
        return ComponentStatus("clickhouse", f"chdb:{path}", None, True, "embedded in the sink process")
    return ComponentStatus("clickhouse", s.clickhouse_url, None, _clickhouse_server_healthy(s), "server")


def _clickhouse_server_healthy(s: Settings) -> bool:
    try:
        from ..clickhouse.backends import open_backend  # type: ignore[attr-defined]

        backend = open_backend(s)
        backend.query("SELECT 1")
        return True
    except Exception:
        return False


def browser_status() -> ComponentStatus:
    paths = {what: _locate(what) for what in ("chromium", "chromedriver", CJK_FONT)}
    ok = all(paths.values())
    return ComponentStatus("browser", paths["chromium"] or "-", None, ok,
                           "chromium + chromedriver (console tests)" if ok else
                           f"missing: {', '.join(w for w, p in paths.items() if not p)}")


def prometheus_status() -> ComponentStatus:
    paths = {what: _locate(what) for what in ("prometheus", "promtool")}
    ok = all(paths.values())
    return ComponentStatus("prometheus", paths["prometheus"] or "-", None, ok,
                           "installed, started per test (metrics stack test)" if ok else
                           f"missing: {', '.join(w for w, p in paths.items() if not p)}")


def ephemeral_ports(proc_file: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range | None:
    """The ports the kernel hands out to outgoing connections (None where it does not say)."""
    try:
        low, high = (int(x) for x in proc_file.read_text().split())
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def warn_if_ephemeral(s: Settings, ports: range | None = None) -> list[int]:
    """The stack's listening ports inside the ephemeral range, each logged: while the broker (or
    Redis) restarts, any outgoing connection may be given its port, and the restart fails with
    "Address already in use" (seen with ORDERSTREAM_KAFKA_PORT=49092)."""
    ports = ephemeral_ports() if ports is None else ports
    risky = [p for p in (s.kafka_port, s.kafka_port + 1, s.redis_port) if ports is not None and p in ports]
    for port in risky:
        log.warning("port %d is inside the ephemeral port range %d-%d: a restart can find it taken by an "
                    "outgoing connection; choose a port below %d", port, ports.start, ports.stop - 1, ports.start)
    return risky


def up(s: Settings | None = None, browser: bool = False, prometheus: bool = False) -> list[ComponentStatus]:
    """Kafka, Redis (and with `browser`, Debian's Chromium for the console's browser tests; with
    `prometheus`, Debian's Prometheus server for the metrics stack test, installed, not started)."""
    s = s or load_settings()
    warn_if_ephemeral(s)
    rows = [redis_up(s), kafka_up(s), clickhouse_status(s)]
    if browser:
        ensure_browser_installed()
        rows.append(browser_status())
    if prometheus:
        ensure_prometheus_installed()
        rows.append(prometheus_status())
    return rows


def status(s: Settings | None = None) -> list[ComponentStatus]:
    s = s or load_settings()
    return [kafka_status(s), redis_status(s), clickhouse_status(s)]


def down(s: Settings | None = None) -> list[str]:
    """Stop what `up` started (and any pipeline processes started through pipeline.devtools.processes)."""
    s = s or load_settings()
    stopped = []
    for pid_file in sorted(_run_dir(s).glob("*.pid"), key=lambda p: p.name in ("kafka.pid", "redis.pid")):
        if stop_pid_file(pid_file):
            stopped.append(pid_file.stem)
    return stopped
