"""Simulated courier and aggregator tracking APIs (issue 19) for the demo, the replays and the tests.

`GET /track/<source>/<waybill>` (header `X-Api-Key`) answers the events the service holds for
that waybill at that source, one JSON event of the source's own format per line (the contract in
pipeline.couriers). Per source, while it runs (`POST /config`): `latency_ms`, `error_rate` (503),
`down` (every call 503: an outage), `expired_key` (every call 401: seed 000's expired API key).
`POST /events` loads events (`{"source": "SF", "waybill": "...", "events": [...]}`), as the
courier would know them; `GET /stats` counts calls per source and outcome.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

from aiohttp import web


@dataclass
class SourceConfig:
    latency_ms: float = 5.0
    error_rate: float = 0.0
    down: bool = False
    expired_key: bool = False

    def update(self, changes: dict) -> None:
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            if key in ("down", "expired_key"):
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            elif key == "error_rate" and value > 1:
                raise ValueError("error_rate must be between 0 and 1")
        for key, value in changes.items():
            setattr(self, key, value)


class CourierWorld:
    """What the couriers know: events per (source, waybill), and how each source behaves."""

    def __init__(self, seed: int = 0) -> None:
        self.events: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        self.config: dict[str, SourceConfig] = defaultdict(SourceConfig)
        self.stats: Counter = Counter()
        self.rng = random.Random(seed)

    def add(self, source: str, waybill: str, event: dict | bytes) -> None:
        raw = event if isinstance(event, bytes) else json.dumps(event, ensure_ascii=False).encode()
        self.events[(source.upper(), waybill)].append(raw)


WORLD_KEY = web.AppKey("world", CourierWorld)


async def _track(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    source, waybill = request.match_info["source"].upper(), request.match_info["waybill"]
    config = world.config[source]
    await asyncio.sleep(config.latency_ms / 1000)
    if config.expired_key or not request.headers.get("X-Api-Key"):
        world.stats[f"{source}:expired_key"] += 1
        return web.json_response({"error": "api key expired"}, status=401)
    if config.down or world.rng.random() < config.error_rate:
        world.stats[f"{source}:error"] += 1
        return web.json_response({"error": "temporarily unavailable"}, status=503)
    world.stats[f"{source}:ok"] += 1
    body = b"\n".join(world.events.get((source, waybill), []))
    return web.Response(body=body, content_type="application/x-ndjson")


async def _add_events(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    try:
        data = await request.json()
        for event in data["events"]:
            world.add(data["source"], data["waybill"], event)
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"ok": True})


async def _config(request: web.Request) -> web.Response:
    world = request.app[WORLD_KEY]
    if request.method == "POST":
        try:
            changes = await request.json()
            for source, values in changes.items():
                world.config[source.upper()].update(values)
        except (ValueError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({s: asdict(c) for s, c in world.config.items()})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[WORLD_KEY].stats))


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_courier_app(world: CourierWorld | None = None) -> web.Application:
    app = web.Application()
    app[WORLD_KEY] = world or CourierWorld()
    app.router.add_get("/track/{source}/{waybill}", _track)
    app.router.add_post("/events", _add_events)
    app.router.add_get("/config", _config)
    app.router.add_post("/config", _config)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/health", _health)
    return app


def run_courier_service(host: str = "127.0.0.1", port: int = 18091) -> None:
    """Serve the simulated couriers until interrupted (CLI: `orderstream couriers`)."""
    web.run_app(create_courier_app(), host=host, port=port, print=None, shutdown_timeout=1.0)


class CourierServiceThread:
    """The service on its own event loop in a thread (tests, replays in-process)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, world: CourierWorld | None = None) -> None:
        self.world = world or CourierWorld()
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="courier-service")

    def start(self) -> "CourierServiceThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_courier_app(self.world))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def configure(self, source: str, **changes) -> None:
        self._loop.call_soon_threadsafe(self.world.config[source.upper()].update, changes)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
