"""Start and stop the pipeline's own processes (workers, sink, verifiers, refund service) as daemons.

The demo, the tests and the benchmarks all start them the same way: `orderstream <role>` in
a child process with its environment, a pid file under var/run and a log under var/log.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .stack import log_tail, pid_alive, read_pid, spawn, stop_pid_file


@dataclass
class Proc:
    name: str
    pid: int
    pid_file: Path
    log_file: Path
    env: dict
    args: list

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Abrupt death (SIGKILL) for the fault tests: no shutdown hooks run."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.alive():
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        stop_pid_file(self.pid_file, timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)


def start(s: Settings, name: str, args: list[str], env: dict | None = None) -> Proc:
    run_dir = s.var / "run"
    log_dir = s.var / "log"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / f"{name}.pid"
    if read_pid(pid_file):
        stop_pid_file(pid_file)
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    log_file = log_dir / f"{name}.log"
    with log_file.open("a") as log:  # a restarted process keeps its predecessor's log above this line
        log.write(f"--- {name} starting {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
    pid = spawn(cmd, log_file, pid_file, env=full_env)
    return Proc(name, pid, pid_file, log_file, full_env, args)


def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up; log tail:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    tail = proc.tail() if proc else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{tail}")


def start_worker(s: Settings, index: int = 0, env: dict | None = None, wait: bool = True) -> Proc:
    port = s.worker_web_port + index
    env = {**(env or {}), "ORDERSTREAM_WORKER_WEB_PORT": str(port)}
    proc = start(s, f"worker-{index}", ["worker"], env)
    if wait:
        wait_http(f"http://127.0.0.1:{port}/ready", proc, timeout=90)
    return proc


def start_sink(s: Settings, env: dict | None = None, wait: bool = True) -> Proc:
    proc = start(s, "sink", ["sink"], env)
    if wait:
        wait_http(f"http://127.0.0.1:{s.sink_web_port}/health", proc, timeout=90)
    return proc


def start_verifiers(s: Settings, env: dict | None = None, wait: bool = True) -> Proc:
    proc = start(s, "verifiers", ["verifiers"], env)
    if wait:
        wait_http(f"http://127.0.0.1:{s.verifier_port}/health", proc, timeout=30)
    return proc


def start_refund_service(s: Settings, env: dict | None = None, wait: bool = True) -> Proc:
    """The simulated platform refund APIs, and the credentials file the worker reads
    (settings.refund_credentials) set to the keys a fresh service starts with."""
    from .refund_service import initial_keys, write_credentials
    write_credentials(s.refund_credentials, initial_keys())
    proc = start(s, "refund-service", ["refund-service"], env)
    if wait:
        wait_http(f"{s.refund_api}/health", proc, timeout=30)
    return proc
