"""A simulated platform refund API (every platform's, one process) for the demo, the replay and the tests.

`POST /platforms/<platform>/refunds` with `Authorization: Bearer <key>` and an
`instruction_body` (pipeline.refund_api) pays a refund back, idempotently by refund id: the
first instruction for a refund id is applied, every later one is answered `duplicate` and moves
no money (a different amount for the same refund id is a 409). What it received is counted per
refund id (`GET /refunds`), so a test can prove that each refund was paid exactly once.

Seed 002's failure story is a switch: `POST /config {"rotate_key": "JD"}` gives JD a new key
(like JD's 14:00 key rotation), and from then on every instruction signed with the old key is
answered 401 {"error": "Invalid API Key"}. `GET /keys` is the platform's developer console
showing the current keys. Latency and a 503 error rate can be changed while it runs.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

from pipeline.topics import PLATFORMS

INVALID_KEY = "Invalid API Key"


def key_for(platform: str, generation: int) -> str:
    return f"{platform.lower()}-key-{generation}"


def initial_keys() -> dict[str, str]:
    """The keys every platform starts with (what a fresh credentials file holds)."""
    return {p: key_for(p, 1) for p in PLATFORMS}


def write_credentials(path: Path, keys: dict[str, str]) -> None:
    """Write a credentials file atomically (the worker re-reads it when it changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(keys, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class RefundServiceConfig:
    latency_ms: float = 10.0
    error_rate: float = 0.0     # share of requests answered 503 (before anything is applied)

    def update(self, changes: dict) -> None:
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key.endswith("_rate") and value > 1:
                raise ValueError(f"{key} must be between 0 and 1")
        for key, value in changes.items():
            setattr(self, key, float(value))


class Ledger:
    """What the platforms hold: current keys, applied refunds, and every instruction received."""

    def __init__(self) -> None:
        self.generation = {p: 1 for p in PLATFORMS}
        self.rotated_at: dict[str, float] = {}
        self.applied: dict[str, dict] = {}
        self.received: Counter = Counter()       # instructions with a valid key, per refund id
        self.auth_failures: Counter = Counter()  # instructions refused for their key, per refund id
        self.stats: Counter = Counter()

    def key(self, platform: str) -> str:
        return key_for(platform, self.generation[platform])

    def rotate(self, platform: str) -> str:
        self.generation[platform] += 1
        self.rotated_at[platform] = time.time()
        return self.key(platform)


CONFIG_KEY = web.AppKey("config", RefundServiceConfig)
LEDGER_KEY = web.AppKey("ledger", Ledger)
RNG_KEY = web.AppKey("rng", random.Random)


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _refund(request: web.Request) -> web.Response:
    app = request.app
    config, ledger, rng = app[CONFIG_KEY], app[LEDGER_KEY], app[RNG_KEY]
    platform = request.match_info["platform"]
    ledger.stats["requests"] += 1
    if platform not in ledger.generation:
        return _bad(f"unknown platform {platform!r}", 404)
    await asyncio.sleep(config.latency_ms / 1000)
    try:
        body = await request.json()
    except ValueError:
        return _bad("body is not JSON")
    if not isinstance(body, dict):
        return _bad("body must be a JSON object")
    refund_id = body.get("refund_id")
    if request.headers.get("Authorization", "") != f"Bearer {ledger.key(platform)}":
        ledger.stats["auth_failures"] += 1
        if isinstance(refund_id, str):
            ledger.auth_failures[refund_id] += 1
        return _bad(INVALID_KEY, 401)
    if rng.random() < config.error_rate:
        ledger.stats["errors"] += 1
        return _bad("refund service temporarily unavailable", 503)
    amount, currency = body.get("amount_minor"), body.get("currency")
    if not isinstance(refund_id, str) or not refund_id:
        return _bad("refund_id is required")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return _bad(f"amount_minor must be a positive integer, got {amount!r}")
    if not isinstance(currency, str) or len(currency) != 3:
        return _bad(f"bad currency {currency!r}")
    ledger.received[refund_id] += 1
    done = ledger.applied.get(refund_id)
    if done is not None:
        if (done["amount_minor"], done["currency"], done["platform"]) != (amount, currency, platform):
            ledger.stats["conflicts"] += 1
            return _bad(f"refund {refund_id} was already paid with {done['amount_minor']} {done['currency']}", 409)
        ledger.stats["duplicates"] += 1
        return web.json_response({"status": "duplicate", "refund_id": refund_id,
                                  "platform_refund_no": done["platform_refund_no"]})
    ledger.stats["applied"] += 1
    done = {"platform": platform, "order_id": body.get("order_id", ""), "amount_minor": amount,
            "currency": currency, "platform_refund_no": f"{platform[:2]}RF{len(ledger.applied) + 1:08d}",
            "applied_at": time.time()}
    ledger.applied[refund_id] = done
    return web.json_response({"status": "accepted", "refund_id": refund_id,
                              "platform_refund_no": done["platform_refund_no"]})


async def _refunds(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER_KEY]
    return web.json_response({"applied": ledger.applied, "received": dict(ledger.received),
                              "auth_failures": dict(ledger.auth_failures), "stats": dict(ledger.stats)})


async def _keys(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER_KEY]
    return web.json_response({p: ledger.key(p) for p in ledger.generation})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _get_config(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER_KEY]
    return web.json_response({**asdict(request.app[CONFIG_KEY]), "rotated_at": ledger.rotated_at,
                              "stats": dict(ledger.stats)})


async def _set_config(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER_KEY]
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        rotate = changes.pop("rotate_key", None)
        if rotate is not None and rotate not in ledger.generation:
            raise ValueError(f"rotate_key: unknown platform {rotate!r}")
        request.app[CONFIG_KEY].update(changes)
    except ValueError as exc:
        return _bad(str(exc))
    out = asdict(request.app[CONFIG_KEY])
    if rotate is not None:
        out["rotated"] = {rotate: ledger.rotate(rotate)}
    return web.json_response(out)


def create_refund_app(latency_ms: float = 10, error_rate: float = 0.0, seed: int = 0) -> web.Application:
    config = RefundServiceConfig()
    config.update({"latency_ms": latency_ms, "error_rate": error_rate})
    app = web.Application()
    app[CONFIG_KEY] = config
    app[LEDGER_KEY] = Ledger()
    app[RNG_KEY] = random.Random(seed)
    app.router.add_post("/platforms/{platform}/refunds", _refund)
    app.router.add_get("/refunds", _refunds)
    app.router.add_get("/keys", _keys)
    app.router.add_get("/health", _health)
    app.router.add_get("/config", _get_config)
    app.router.add_post("/config", _set_config)
    return app


def run_refund_service(host: str = "127.0.0.1", port: int = 18090, **kw) -> None:
    """Serve the simulated refund APIs until interrupted (CLI: `orderstream refund-service`)."""
    web.run_app(create_refund_app(**kw), host=host, port=port, print=None, shutdown_timeout=1.0,
                handler_cancellation=True)


# --------------------------------------------------------------------------- a client for the tools


def _call(url: str, body: dict | None = None) -> dict:
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def rotate_key(base_url: str, platform: str) -> str:
    """Rotate a platform's key on a running service; returns the new key."""
    return _call(f"{base_url.rstrip('/')}/config", {"rotate_key": platform})["rotated"][platform]


def current_keys(base_url: str) -> dict[str, str]:
    return _call(f"{base_url.rstrip('/')}/keys")


def received(base_url: str) -> dict:
    """{applied, received, auth_failures, stats} of a running service."""
    return _call(f"{base_url.rstrip('/')}/refunds")
