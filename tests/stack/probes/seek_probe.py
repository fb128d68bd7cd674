"""A minimal Faust worker with the project's consumer, for driving the restart seek by hand.

    python -m tests.stack.probes.seek_probe TOPIC GROUP OUT_FILE EXPECTED SEEK_DELAY_S

It consumes TOPIC in group GROUP (with one table, so the recovery path runs as in the worker),
appends every offset its agent receives to OUT_FILE as `partition:offset`, acks it, and exits
once EXPECTED messages arrived (or exits 3 after 40 s). SEEK_DELAY_S holds the start-up seek open
that long, and the agent busy with its first message as long: the window in which Faust's fetcher
already delivers the resumed partitions into the stream's queue, widened so the race is the same
on every run instead of depending on the broker's answer time and the agent's work.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import faust

from pipeline import faust_internals
from pipeline.config import load_settings


def main(topic_name: str, group: str, out_file: str, expected: int, seek_delay_s: float) -> None:
    settings = load_settings()
    app = faust.App(group, broker=f"kafka://{settings.bootstrap}", store="memory://",
                    datadir=tempfile.mkdtemp(prefix="seek-probe-"), topic_partitions=2,
                    topic_replication_factor=1, consumer_auto_offset_reset="earliest",
                    web_enabled=False, autodiscover=False, broker_commit_interval=0.2)
    faust_internals.install(app)

    class SlowSeek(app.transport.Consumer):
        async def perform_seek(self) -> None:
            await asyncio.sleep(seek_delay_s)
            await super().perform_seek()

    app.transport.Consumer = SlowSeek
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=2)
    app.Table("probe-seen", default=int, partitions=2)  # a table: the worker's recovery path
    seen = []

    @app.agent(topic)
    async def record(stream):
        async for event in stream.events():
            if not seen:
                await asyncio.sleep(2 * seek_delay_s)  # busy with the first while the fetcher fills the queue
            seen.append(f"{event.message.partition}:{event.message.offset}")
            with open(out_file, "a") as fh:
                fh.write(seen[-1] + "\n")
            if len(seen) >= expected:
                await asyncio.sleep(1.0)  # let the ack be committed
                os._exit(0)

    @app.timer(interval=40.0, on_leader=False)
    async def give_up():
        if app.tables.recovery.completed.is_set():
            os._exit(3)

    app.main()


if __name__ == "__main__":
    topic, grp, out, n, delay = sys.argv[1:6]
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    main(topic, grp, out, int(n), float(delay))
