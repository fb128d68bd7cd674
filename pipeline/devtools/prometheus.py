"""A throw-away Prometheus server for the metrics stack test: Debian's `prometheus` binary
(`orderstream stack up --prometheus` installs it) on a free loopback port, scraping the test's
worker and sink (the sink with a Bearer token from a file, as deploy/prometheus/prometheus.yml
does) every second and evaluating the project's alert rules, with its data in a temporary
directory. The test then asks it what a Grafana panel or an alert would get.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: tuple[str, ...]          # host:port
    token_file: Path | None = None    # Bearer credentials (the sink's metrics role)


def config_text(jobs: list[ScrapeJob], rule_files: list[Path], interval_s: float = 1.0) -> str:
    """prometheus.yml for `jobs` and `rule_files`, scraping and evaluating every `interval_s`."""
    every = f"{max(1, int(interval_s * 1000))}ms"
    scrape = []
    for job in jobs:
        entry = {"job_name": job.name, "scrape_interval": every, "scrape_timeout": every,
                 "static_configs": [{"targets": list(job.targets)}]}
        if job.token_file is not None:
            entry["authorization"] = {"type": "Bearer", "credentials_file": str(job.token_file)}
        scrape.append(entry)
    return yaml.safe_dump({"global": {"scrape_interval": every, "evaluation_interval": every},
                           "rule_files": [str(p) for p in rule_files], "scrape_configs": scrape}, sort_keys=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    def __init__(self, binary: str, workdir: Path, jobs: list[ScrapeJob], rule_files: list[Path],
                 interval_s: float = 1.0) -> None:
        self.binary, self.workdir = binary, workdir
        self.config = workdir / "prometheus.yml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(jobs, rule_files, interval_s))
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "PrometheusServer":
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - the child writes it until stop
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {timeout_s:.0f}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, path: str, **params: str) -> dict:
        """The `data` of an HTTP API answer; an error answer raises with Prometheus's own message."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar, as one row) `expr` evaluates to now."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def series_names(self, prefix: str = "orderstream_") -> set[str]:
        return {r["metric"]["__name__"] for r in self.query(f'group by (__name__) ({{__name__=~"{prefix}.+"}})')}

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
