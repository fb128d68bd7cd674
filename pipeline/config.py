"""All settings come from ORDERSTREAM_* environment variables with safe local defaults.

One frozen dataclass so every module reads the same names; the README's configuration
table is generated from FIELDS' docs (see `orderstream config`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default, cast=str):
    raw = os.environ.get(f"ORDERSTREAM_{name.upper()}")
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return cast(raw)
    except ValueError as exc:
        raise ValueError(f"ORDERSTREAM_{name.upper()}={raw!r} is not a valid {cast.__name__}") from exc


def _setting(default, doc: str, cast=None):
    return field(default=default, metadata={"doc": doc, "cast": cast or type(default)})


@dataclass(frozen=True)
class Settings:
    var_dir: str = _setting(str(PROJECT_ROOT / "var"), "Runtime data: broker logs, Redis data, chDB data, pid files.")
    kafka_host: str = _setting("127.0.0.1", "Loopback address the local broker binds to.")
    kafka_port: int = _setting(19092, "Broker port (controller uses port + 1).")
    kafka_heap_mb: int = _setting(512, "JVM heap of the local broker.")
    kafka_bootstrap: str = _setting("", "Bootstrap servers; empty means the local broker.")
    redis_port: int = _setting(16379, "Port of the project's own redis-server.")
    redis_url: str = _setting("", "Redis URL; empty means the local redis-server.")
    clickhouse_backend: str = _setting("chdb", "chdb (embedded, default) or server (clickhouse-connect).")
    chdb_path: str = _setting("", "Data dir of the embedded chDB engine; empty means <var_dir>/chdb.")
    clickhouse_url: str = _setting("http://default:@127.0.0.1:8123/orderstream", "ClickHouse server URL for the server backend.")
    partitions: int = _setting(4, "Partitions of every pipeline topic.")
    app_id: str = _setting("orderstream", "Faust application id (consumer group, changelog prefix).")
    session_timeout_s: float = _setting(10.0, "Consumer-group session timeout: how soon a killed worker's partitions move.")
    table_store: str = _setting("rocksdb", "Faust table store: rocksdb (rocksdict, bounded by disk) or memory.")
    table_store_memory_mb: int = _setting(48, "Memory all of a worker's RocksDB tables share (block cache and memtables).")
    bind_host: str = _setting("127.0.0.1", "Address the HTTP servers (worker, sink, verifiers) listen on; 0.0.0.0 in containers.")
    processing_guarantee: str = _setting("exactly_once", "exactly_once: each batch's outputs and its input offsets commit in one Kafka transaction (read_committed readers see every output once); at_least_once: outputs flushed before the offsets commit, up to a commit interval plus a batch re-done after a crash.")
    transaction_timeout_s: float = _setting(10.0, "A worker's open transaction is aborted by the broker after this long (a killed worker's outputs stop blocking read_committed readers).")
    crash_at: str = _setting("", "Fault injection for the reliability tests: FLOW:POINT:N ends the worker at once (os._exit, as a SIGKILL would) at the N-th transaction of FLOW (order-flow, holds), POINT before-commit (outputs flushed, nothing committed) or after-commit (committed, not yet acked). Empty: never.")
    worker_id: str = _setting("", "This worker's stable identity (its transactional id: a restarted worker fences its previous self); empty: host name + web port.")
    worker_web_port: int = _setting(6066, "HTTP port of a worker's web server (/metrics, /health, /ready).")
    sink_web_port: int = _setting(6070, "HTTP port of the sink's operator surface (console, tier views, read-only SQL, /metrics): every route but /health needs a token.")
    sink_host: str = _setting("", "Address the sink's operator surface listens on; empty: ORDERSTREAM_BIND_HOST (loopback by default).")
    public_port: int = _setting(6080, "HTTP port of the one public surface: the buyers' tracking pages (/t/<code>) and nothing else; 0 turns it off.")
    public_host: str = _setting("", "Address the public surface listens on; empty: ORDERSTREAM_BIND_HOST (set 0.0.0.0 to serve buyers).")
    public_rate_per_s: float = _setting(2.0, "Tracking pages a client address may fetch per second on the public surface ...")
    public_burst: int = _setting(20, "... and in one burst, beyond which it gets 429 with Retry-After.")
    analyst_port: int = _setting(8123, "Port of the sink's ClickHouse HTTP interface for analysts' own tools (clickhouse-connect, pandas, curl, Grafana), embedded chDB only; 0 turns it off.")
    analyst_user: str = _setting("analyst", "The interface's read-only user.")
    analyst_password: str = _setting("", "Its password; empty is refused unless the sink listens on loopback only.")
    analyst_max_execution_s: float = _setting(10.0, "Every analyst query stops after this long (ClickHouse max_execution_time) ...")
    analyst_max_memory_mb: int = _setting(512, "... may use this much memory (max_memory_usage) ...")
    analyst_max_result_rows: int = _setting(1_000_000, "... may return this many rows (max_result_rows) ...")
    analyst_max_result_mb: int = _setting(64, "... and this many MB (max_result_bytes, also checked on the response).")
    analyst_max_threads: int = _setting(1, "Threads per analyst query (max_threads); the other cores stay with ingestion.")
    analyst_max_queries: int = _setting(2, "Analyst queries running at once; more wait up to the execution limit, then get TOO_MANY_SIMULTANEOUS_QUERIES.")
    dedupe_window_s: int = _setting(24 * 3600, "Retention window of the dedupe tables.")
    idempotency_ttl_s: int = _setting(48 * 3600, "TTL of processed-order idempotency keys in Redis.")
    max_payload_bytes: int = _setting(256 * 1024, "Raw payloads above this size are dead-lettered as oversized.")
    risk_rules_file: str = _setting(str(PROJECT_ROOT / "pipeline" / "domain" / "risk_rules.yaml"), "Initial risk rule set (YAML).")
    transitions_file: str = _setting(str(PROJECT_ROOT / "pipeline" / "domain" / "transitions.yaml"),
                                     "Legal order-state moves and their time windows (YAML, seed 003).")
    risk_hold_timeout_s: int = _setting(30 * 60, "A held order with no decision is released after this long.")
    ip_window_s: int = _setting(3600, "Window of the same-IP order counter.")
    breaker_open_per_min: int = _setting(500, "Intake rate (orders/minute) that opens the circuit breaker.")
    breaker_close_per_min: int = _setting(400, "Rate below which the breaker may close again (hysteresis).")
    breaker_window_s: int = _setting(60, "Sliding window of the intake-rate measurement.")
    breaker_cooldown_s: int = _setting(30, "Time the breaker stays open before probing (half-open).")
    verifier_url: str = _setting("", "Base URL of the external verifiers; empty means the local one.")
    verifier_port: int = _setting(18089, "Port of the local verifier service.")
    verifier_timeout_s: float = _setting(0.5, "Per-call timeout of an external verifier.")
    refund_rules_file: str = _setting(str(PROJECT_ROOT / "pipeline" / "domain" / "refund_rules.yaml"),
                                      "Initial refund auto-approval rules (YAML).")
    refund_api_url: str = _setting("", "Base URL of the platforms' refund APIs; empty means the local simulated one.")
    refund_service_port: int = _setting(18090, "Port of the local simulated platform refund service.")
    refund_api_timeout_s: float = _setting(2.0, "Per-call timeout of a refund instruction to a platform.")
    refund_credentials_file: str = _setting("", "JSON {platform: API key} for the refund APIs, re-read when it "
                                                "changes; empty means <var_dir>/refund-credentials.json.")
    reservation_timeout_s: int = _setting(30 * 60, "An unpaid order's reservation is released after this long.")
    safety_stock: int = _setting(10, "Available units below which non-primary channels are paused.")
    primary_platform: str = _setting("SHOPIFY", "The channel that keeps selling when stock runs low.")
    sink_batch_rows: int = _setting(10_000, "The sink flushes when a batch has this many rows ...")
    sink_batch_seconds: float = _setting(1.0, "... or when the oldest row has waited this long.")
    operator_tokens: str = _setting("", "Who may act in the console (approve, reject, re-drive): name:token pairs, comma-separated; empty: nobody.")
    operator_tokens_file: str = _setting("", "A file of name:token lines, read as well (keeps tokens out of the environment).")
    access_tokens: str = _setting("", "Who may call the sink's operator surface: role:name:token entries, comma-separated; role viewer (read pages, views), operator (viewer + actions), analyst (viewer + /sql) or metrics (/metrics only, for Prometheus).")
    access_tokens_file: str = _setting("", "A file of role:name:token lines, read as well.")
    sink_token: str = _setting("", "The token this machine's CLI and tools send to the sink (views, SQL, status); empty: none, and the sink refuses them.")
    console_session_hours: float = _setting(12.0, "A console sign-in (session cookie) lasts this long.")
    console_timezone: str = _setting("Asia/Shanghai", "Time zone the console shows times in, unless the viewer picks another.")
    console_refresh_s: float = _setting(5.0, "How often a console page refreshes its figures by itself.")
    tracking_stale_after_s: float = _setting(25 * 60, "A waybill with no update for this long is re-pulled from its courier's API (seed 003: 25 min).")
    tracking_retry_after_s: float = _setting(60.0, "After a failed pull, the next one is tried this much later.")
    tracking_yellow_after_s: float = _setting(3600.0, "A waybill without update this long gets a yellow badge ...")
    tracking_red_after_s: float = _setting(3 * 3600.0, "... and beyond this long a red one.")
    tracking_secret: str = _setting("", "Key of the buyers' short-link codes (/t/<code>); empty: a fixed development key.")
    courier_api_url: str = _setting("", "Base URL of the couriers' tracking APIs; empty means the local simulated one.")
    courier_api_port: int = _setting(18091, "Port of the local simulated courier service.")
    courier_api_key: str = _setting("dev-key", "API key sent to the couriers' tracking APIs.")
    courier_api_timeout_s: float = _setting(1.0, "Per-call timeout of a courier API pull.")
    courier_api_retries: int = _setting(2, "Retries of one pull (timeouts, 5xx) before it counts as failed.")
    log_json: bool = _setting(False, "Structured JSON logs.")
    library_log_level: str = _setting("WARNING", "Log level of Faust, aiokafka, mode and librdkafka (INFO shows rebalances and the client retries librdkafka heals itself).")

    @property
    def exactly_once(self) -> bool:
        if self.processing_guarantee not in ("exactly_once", "at_least_once"):
            raise ValueError(f"ORDERSTREAM_PROCESSING_GUARANTEE={self.processing_guarantee!r}: "
                             "exactly_once or at_least_once")
        return self.processing_guarantee == "exactly_once"

    @property
    def sink_listen_host(self) -> str:
        return self.sink_host or self.bind_host

    @property
    def public_listen_host(self) -> str:
        return self.public_host or self.bind_host

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def courier_api(self) -> str:
        return self.courier_api_url or f"http://127.0.0.1:{self.courier_api_port}"

    @property
    def tracking_key(self) -> bytes:
        return (self.tracking_secret or "orderstream-dev-tracking-key").encode()

    @property
    def var(self) -> Path:
        return Path(self.var_dir)

    @property
    def refund_api(self) -> str:
        return self.refund_api_url or f"http://127.0.0.1:{self.refund_service_port}"

    @property
    def refund_credentials(self) -> Path:
        return Path(self.refund_credentials_file) if self.refund_credentials_file else \
            self.var / "refund-credentials.json"


def faust_stream_options(s: Settings) -> dict:
    """The Faust settings the worker and the benchmarks' bare Faust copy share, so the ceiling
    is measured with the worker's own broker, serializer and buffering choices."""
    return dict(
        broker=f"kafka://{s.bootstrap}",
        topic_partitions=s.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        # a SIGKILLed worker never says goodbye: its partitions move after this long
        broker_session_timeout=s.session_timeout_s,
        web_host="127.0.0.1",
        web_port=s.worker_web_port,
        web_in_thread=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        # what a worker holds fetched ahead of its agents: a few batches, not a minute of orders
        stream_buffer_maxsize=2048,
        consumer_max_fetch_size=128 * 1024,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
    )


def load_settings() -> Settings:
    """Read the environment now (tests change it between runs)."""
    values = {f.name: _env(f.name, f.default, f.metadata["cast"]) for f in fields(Settings)}
    return Settings(**values)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows for the README and `orderstream config`."""
    return [(f"ORDERSTREAM_{f.name.upper()}", str(f.default), f.metadata["doc"]) for f in fields(Settings)]
