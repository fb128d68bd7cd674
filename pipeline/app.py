"""The one Faust application: broker, store, topics and tables. Agents live in `agents/`.

Values travel as raw bytes and are (de)coded by pipeline.codecs, so the wire format is the
project's Avro single-object encoding rather than Faust's own JSON envelope.
"""
from __future__ import annotations

import os

import faust

from . import faust_internals, metrics
from . import topics as t
from .config import faust_stream_options, load_settings
from .faust_internals import RocksDBBudget, require_pinned_versions
from .faust_internals.fenced_tables import fence_table

require_pinned_versions()
settings = load_settings()


def _store_url() -> str:
    return "rocksdb://" if settings.table_store == "rocksdb" else "memory://"


DATADIR = settings.var / "faust" / f"{t.NAMESPACE}worker-{settings.worker_web_port}"
DATADIR.parent.mkdir(parents=True, exist_ok=True)

app = faust.App(
    t.NAMESPACE + settings.app_id,
    store=_store_url(),
    datadir=str(DATADIR),
    topic_allow_declare=True,
    # held-order timers read their own partitions only; no standby copies to reason about
    table_standby_replicas=0,
    broker_commit_interval=float(os.environ.get("ORDERSTREAM_COMMIT_INTERVAL_S", "1.0")),
    web_bind=settings.bind_host,
    logging_config=None,
    **faust_stream_options(settings),
)
faust_internals.install(
    app, compacted_topics=t.names.COMPACTED,
    on_reread=lambda tp, offset: metrics.CLEARED_REREADS.labels(topic=tp.topic).inc(),
    # exactly-once: the order flow and the holds commit their inputs' offsets in their transactions, and the
    # worker reads what other transactions wrote (risk.queue, logistics.waybills) read_committed
    transactional_inputs=(*t.RAW_TOPICS, t.RISK_QUEUE, t.RISK_DECISIONS) if settings.exactly_once else (),
    transactional_topics=t.names.ORDER_FLOW_OUTPUTS if settings.exactly_once else (),
    stable_offsets_from=settings.bootstrap if settings.exactly_once else "",
    stable_offsets_timeout_s=settings.transaction_timeout_s + 5)


def raw_topic(*names: str, partitions: int | None = None, compacted: bool = False) -> faust.TopicT:
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=partitions or settings.partitions,
                     compacting=compacted or None)


# What Faust consumes; everything the worker writes goes through pipeline.outputs.
raw_orders = raw_topic(*t.RAW_TOPICS)
held_and_decided = raw_topic(t.RISK_QUEUE, t.RISK_DECISIONS)
inventory_stock = raw_topic(t.INVENTORY_STOCK)
refund_inputs = raw_topic(t.REFUND_REQUESTS, t.REFUND_ACTIONS)


# Faust opens one RocksDB per table partition with 3 x 64 MB memtables and a 2 GB block cache
# each. Small memtables flush table state to disk early, and all DBs share one memory budget.
ROCKSDB_OPTIONS = {"write_buffer_size": 4 * 2**20, "max_write_buffer_number": 2}
ROCKSDB_BUDGET = RocksDBBudget(settings.table_store_memory_mb * 2**20) if settings.table_store == "rocksdb" else None


def changelogged_table(name: str, default=None, values: str = "json", fenced: bool = False) -> faust.Table:
    """A changelogged table with JSON keys; values JSON, or "raw" bytes a contract encodes.
    `fenced`: a zombie worker's late writes never replace its successor's (faust_internals.fenced_tables)."""
    value_type = bytes if values == "raw" else None  # Faust picks a table's serializers from its types
    schema = faust.Schema(key_type=str, value_type=value_type, key_serializer="json", value_serializer=values)
    options = dict(ROCKSDB_OPTIONS) if settings.table_store == "rocksdb" else None
    table = app.Table(name, default=default, schema=schema, key_type=str, value_type=value_type,
                      partitions=settings.partitions, options=options)
    if ROCKSDB_BUDGET is not None:
        ROCKSDB_BUDGET.share_with(table)
    if fenced:
        fence_table(table, lambda: app.consumer_generation_id,
                    lambda n: metrics.TABLE_WRITES_FENCED.labels(table=name).inc(n))
    return table


def changelog_topics() -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) of every table's changelog topic, exactly as Faust declares it.

    The worker creates them before Faust starts (`orderstream worker`): a changelog Faust creates
    while its consumer joins the group can be missing from the group's metadata, and then the
    assignor ignores it and every write to that table fails (PartitionsMismatch, "0 partitions")
    until the next metadata refresh, minutes later (seen with the refund tables on a fresh namespace)."""
    from mode.utils.times import want_seconds
    out = []
    for table in app.tables.values():
        topic = table.changelog_topic
        flags = sorted(flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on)
        config = {"cleanup.policy": ",".join(flags)} if flags else {}
        if topic.retention:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        config.update({k: str(v) for k, v in (topic.config or {}).items()})
        out.append((topic.get_topic_name(), topic.partitions or app.conf.topic_partitions, config))
    return out
