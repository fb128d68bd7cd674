"""The Faust ceiling: a bare faust-streaming app whose one agent copies raw bytes from a benchmark's
source topic to its copy topic (benchmarks.bench_pipeline.copy_topics), with pipeline/app.py's
settings and nothing else: no codecs, tables, metrics or custom consumer.

    ORDERSTREAM_NAMESPACE=bf1a2b3c. ORDERSTREAM_WORKER_WEB_PORT=6509 \
        .venv/bin/python -m benchmarks.faust_copy_app worker --loglevel warn

benchmarks.bench_pipeline.faust_copy starts it, waits for /ready, produces and measures.
"""
from __future__ import annotations

import os

import faust

from benchmarks.bench_pipeline import copy_topics
from pipeline.config import faust_stream_options, load_settings

settings = load_settings()
NAMESPACE = os.environ["ORDERSTREAM_NAMESPACE"]
SOURCE, COPY = copy_topics(NAMESPACE)

app = faust.App(
    NAMESPACE + "faust-copy",
    store="memory://",
    datadir=str(settings.var / "faust" / f"{NAMESPACE}faust-copy"),
    broker_commit_interval=1.0,
    **faust_stream_options(settings),
)
source = app.topic(SOURCE, key_type=bytes, value_type=bytes)
copy_topic = app.topic(COPY, key_type=bytes, value_type=bytes)


@app.agent(source)
async def copy(stream):
    async for event in stream.events():
        await copy_topic.send(key=event.key, value=event.value)


@app.page("/ready")
async def ready(web, request):
    """200 once the consumer holds its partitions and no rebalance is running."""
    is_ready = not app.rebalancing and bool(app.consumer.assignment())
    return web.json({"ready": is_ready}, status=200 if is_ready else 503)


if __name__ == "__main__":
    app.main()
