"""A real pipeline per test module: its own topic namespace, a real worker process on the real broker."""
from __future__ import annotations

import itertools
import json
import os
import urllib.request
import uuid

import pytest

from pipeline import kafka_io
from pipeline.devtools import processes, stack
from pipeline.config import load_settings
from pipeline.devtools.replay import wait_drained
from pipeline.topics import TopicNames

pytestmark = pytest.mark.stack


# the stack tests' own reader of the sink's operator surface (views, SQL, status): an analyst
STACK_TOKEN = "stack-tests-analyst-token-0123456789"
STACK_ACCESS = f"analyst:stack-tests:{STACK_TOKEN}"

# distinct per pytest process too, so helpers/CI shards running side by side never collide
_port_offsets = itertools.count(10 + (os.getpid() % 40) * 20, 4)


def _free_offset() -> int:
    """The next offset whose worker, sink, verifier and refund-service ports are all free (other pytest processes)."""
    base = load_settings()
    for offset in _port_offsets:
        ports = [base.worker_web_port + offset + i for i in range(3)] + [7000 + offset, 7001 + offset, 7002 + offset,
                                                                         18100 + offset, 17100 + offset]
        if not any(stack.port_open("127.0.0.1", port, timeout=0.05) for port in ports):
            return offset
    raise RuntimeError("no free port offset")


class Pipeline:
    """Start/stop workers and produce/read messages inside one namespace."""

    def __init__(self, namespace: str, env: dict[str, str]):
        self.ns = namespace
        self.port_offset = _free_offset()  # pipelines alive at once never share a web port
        self.env = {"ORDERSTREAM_NAMESPACE": namespace,
                    "ORDERSTREAM_VERIFIER_PORT": str(18100 + self.port_offset),
                    "ORDERSTREAM_REFUND_SERVICE_PORT": str(17100 + self.port_offset),
                    "ORDERSTREAM_REFUND_CREDENTIALS_FILE": str(load_settings().var / "run" /
                                                               f"refund-credentials-{namespace.rstrip('.')}.json"),
                    "ORDERSTREAM_ACCESS_TOKENS": STACK_ACCESS, "ORDERSTREAM_SINK_TOKEN": STACK_TOKEN,
                    **env}
        self.names = TopicNames(namespace)
        self.procs: dict[str, processes.Proc] = {}
        os.environ.update(self.env)
        self.s = load_settings()
        stack.up(self.s)
        kafka_io.ensure_topics(self.s, self.names)
        self.producer = kafka_io.producer(self.s)

    @property
    def group(self) -> str:
        return self.ns + self.s.app_id

    def start_worker(self, index: int = 0, **overrides: str) -> processes.Proc:
        env = {**self.env, **overrides}
        proc = processes.start(self.s, f"{self.ns}worker-{index}", ["worker"],
                               {**env, "ORDERSTREAM_WORKER_WEB_PORT": str(self.worker_port(index))})
        self.procs[f"worker-{index}"] = proc  # registered first: stopped at teardown even if it never gets ready
        processes.wait_http(f"{self.worker_url(index)}/ready", proc, timeout=120)
        return proc

    def worker_port(self, index: int = 0) -> int:
        return self.s.worker_web_port + self.port_offset + index

    def worker_url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.worker_port(index)}"

    @property
    def sink_port(self) -> int:
        return 7000 + self.port_offset

    @property
    def analyst_port(self) -> int:
        """The sink's ClickHouse HTTP interface (offsets step by 4, so 7001 + offset is no other sink's)."""
        return 7001 + self.port_offset

    @property
    def public_port(self) -> int:
        """The sink's public surface (the buyers' tracking pages)."""
        return 7002 + self.port_offset

    @property
    def sink_auth(self) -> dict[str, str]:
        """The header the stack tests read the sink's operator surface with."""
        return {"Authorization": f"Bearer {STACK_TOKEN}"}

    def start_sink(self, **overrides: str) -> processes.Proc:
        """The ClickHouse sink on its own chDB data dir and ports; access tokens given here are added to
        the stack tests' own."""
        if "ORDERSTREAM_ACCESS_TOKENS" in overrides:
            overrides["ORDERSTREAM_ACCESS_TOKENS"] = f"{self.env['ORDERSTREAM_ACCESS_TOKENS']},{overrides['ORDERSTREAM_ACCESS_TOKENS']}"
        env = {**self.env, "ORDERSTREAM_SINK_WEB_PORT": str(self.sink_port),
               "ORDERSTREAM_ANALYST_PORT": str(self.analyst_port), "ORDERSTREAM_PUBLIC_PORT": str(self.public_port),
               "ORDERSTREAM_CHDB_PATH": str(self.s.var / f"chdb-{self.ns.rstrip('.')}"), **overrides}
        proc = processes.start(self.s, f"{self.ns}sink", ["sink"], env)
        self.procs["sink"] = proc
        processes.wait_http(f"http://127.0.0.1:{self.sink_port}/health", proc, timeout=120)
        return proc

    def start_verifiers(self, *args: str) -> processes.Proc:
        """The local verifier service on this pipeline's own port (args: --latency-ms, --error-rate)."""
        proc = processes.start(self.s, f"{self.ns}verifiers", ["verifiers", *args], self.env)
        self.procs["verifiers"] = proc
        processes.wait_http(f"http://127.0.0.1:{self.s.verifier_port}/health", proc, timeout=30)
        return proc

    def start_refund_service(self, *args: str) -> processes.Proc:
        """The simulated platform refund APIs on this pipeline's own port, and a credentials file
        holding the platforms' first keys (args: --latency-ms, --error-rate)."""
        from pipeline.devtools.refund_service import initial_keys, write_credentials
        write_credentials(self.s.refund_credentials, initial_keys())
        proc = processes.start(self.s, f"{self.ns}refund-service", ["refund-service", *args], self.env)
        self.procs["refund-service"] = proc
        processes.wait_http(f"{self.s.refund_api}/health", proc, timeout=30)
        return proc

    def produce(self, records) -> None:
        """records: (topic, key, value) tuples."""
        kafka_io.produce_all(self.producer, ((t, k, v, None) for t, k, v in records))

    def read(self, topic: str, idle_s: float = 1.5):
        return list(kafka_io.read_topics(self.s, [topic], idle_s=idle_s))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if not proc.alive():
                raise RuntimeError(f"{name} died; log tail:\n{proc.tail(60)}")

    def drain(self, timeout: float = 120.0) -> None:
        try:
            wait_drained(self.s, self.names, self.group, timeout, check_alive=self.check_alive)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """What each live worker says about its offsets, and its log tail: why a drain got stuck."""
        out = []
        for name, proc in self.procs.items():
            if not name.startswith("worker-") or not proc.alive():
                continue
            try:
                with urllib.request.urlopen(f"{self.worker_url(int(name.split('-')[1]))}/debug/offsets",
                                            timeout=5) as resp:
                    offsets = json.loads(resp.read())
                behind = {tp: row for tp, row in offsets.items()
                          if row["acked_pending"] or row["unacked"] or row["gaps"]
                          or (row["highwater"] or 0) != (row["committed"] or 0)}
                out.append(f"{name} offsets: {json.dumps(behind)}")
            except OSError as exc:
                out.append(f"{name} offsets unavailable: {exc}")
            out.append(f"{name} log tail:\n{proc.tail(40)}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def _retire(pipelines: list[Pipeline]) -> None:
    for p in pipelines:
        p.stop()
        p.s.refund_credentials.unlink(missing_ok=True)
        if os.environ.get("ORDERSTREAM_TEST_KEEP_TOPICS"):
            continue  # investigating a failure: the topics and offsets stay for inspection
        try:  # the shared broker stays small: restarts and metadata stay fast
            kafka_io.delete_topics(p.s, list(p.names.ALL_TOPICS))
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


class PipelineFactory:
    """Makes pipelines; those a test makes in its body are retired when it ends (a module's
    shared ones when the module ends), so the broker holds few namespaces at a time."""

    def __init__(self) -> None:
        self.made: list[Pipeline] = []
        self.saved = dict(os.environ)

    def __call__(self, **env: str) -> Pipeline:
        # each pipeline starts from the test session's environment, not the previous pipeline's
        os.environ.clear()
        os.environ.update(self.saved)
        p = Pipeline(f"t{uuid.uuid4().hex[:8]}.", {k: str(v) for k, v in env.items()})
        self.made.append(p)
        return p

    def retire_since(self, count: int) -> None:
        retiring, self.made[count:] = self.made[count:], []
        if not retiring:
            return
        _retire(retiring)
        # the environment of the pipeline still in use (a module's shared one), as when it was made
        os.environ.clear()
        os.environ.update({**self.saved, **(self.made[-1].env if self.made else {})})


@pytest.fixture(scope="module")
def pipeline_factory():
    factory = PipelineFactory()
    yield factory
    factory.retire_since(0)


@pytest.fixture(autouse=True)
def _retire_the_tests_own_pipelines(request):
    if "pipeline_factory" not in request.fixturenames:
        yield
        return
    factory = request.getfixturevalue("pipeline_factory")
    before = len(factory.made)  # module fixtures made theirs already (wider scopes set up first)
    yield
    factory.retire_since(before)
