"""A simulated external verifier service (payment authenticity, address validity) for the demo and the tests.

`create_verifier_app` serves the checks over real HTTP (`POST /verify/<name>` with an
`order_summary` body, the contract in pipeline.verifiers); its latency, error rate and timeout
rate can be changed while it runs (POST /config), so the tests can make it slow, failing or hung.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass

from aiohttp import web


# --------------------------------------------------------------------------- checks


def check_payment(summary: dict) -> tuple[bool, str]:
    amount = summary.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return False, f"amount {amount!r} is not a positive payment"
    if not summary.get("currency"):
        return False, "payment has no currency"
    return True, "payment confirmed"


def check_address(summary: dict) -> tuple[bool, str]:
    address = summary.get("address") or {}
    country = (address.get("country") or "").strip()
    if not country:
        return False, "no country"
    # Chinese addresses need a province; many countries (SG, HK) have none
    if country == "CN" and not (address.get("province") or "").strip():
        return False, "province is empty"
    if not (address.get("city") or "").strip():
        return False, "city is empty"
    if len((address.get("detail") or "").strip()) < 4:
        return False, "street address shorter than 4 characters"
    return True, "address deliverable"


_CHECKS = {"payment": check_payment, "address": check_address}


# --------------------------------------------------------------------------- local service


@dataclass
class ServiceConfig:
    latency_ms: float = 20.0
    error_rate: float = 0.0     # share of requests answered 503
    timeout_rate: float = 0.0   # share of requests that hang for hang_s (client times out)
    hang_s: float = 5.0

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


CONFIG_KEY = web.AppKey("config", ServiceConfig)
STATS_KEY = web.AppKey("stats", dict)
RNG_KEY = web.AppKey("rng", random.Random)


async def _verify(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    check = _CHECKS.get(name)
    if check is None:
        return web.json_response({"error": f"unknown verifier {name!r}"}, status=404)
    app = request.app
    config, stats, rng = app[CONFIG_KEY], app[STATS_KEY], app[RNG_KEY]
    stats["requests"] += 1
    stats.setdefault(name, 0)
    stats[name] += 1
    try:
        summary = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(summary, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    roll = rng.random()
    if roll < config.timeout_rate:
        stats["hung"] += 1
        await asyncio.sleep(config.hang_s)
    elif roll < config.timeout_rate + config.error_rate:
        stats["errors"] += 1
        await asyncio.sleep(config.latency_ms / 1000)
        return web.json_response({"error": "verifier temporarily unavailable"}, status=503)
    await asyncio.sleep(config.latency_ms / 1000)
    ok, reason = check(summary)
    return web.json_response({"ok": ok, "reason": reason})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response({**asdict(request.app[CONFIG_KEY]), "stats": request.app[STATS_KEY]})


async def _set_config(request: web.Request) -> web.Response:
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        request.app[CONFIG_KEY].update(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(asdict(request.app[CONFIG_KEY]))


def create_verifier_app(latency_ms: float = 20, error_rate: float = 0.0, timeout_rate: float = 0.0,
                        seed: int = 0, hang_s: float = 5.0) -> web.Application:
    config = ServiceConfig()
    config.update({"latency_ms": latency_ms, "error_rate": error_rate, "timeout_rate": timeout_rate,
                   "hang_s": hang_s})
    app = web.Application()
    app[CONFIG_KEY] = config
    app[STATS_KEY] = {"requests": 0, "errors": 0, "hung": 0}
    app[RNG_KEY] = random.Random(seed)
    app.router.add_post("/verify/{name}", _verify)
    app.router.add_get("/health", _health)
    app.router.add_get("/config", _get_config)
    app.router.add_post("/config", _set_config)
    return app


def run_verifier_service(host: str = "127.0.0.1", port: int = 18089, **kw) -> None:
    """Serve the local verifiers until interrupted (CLI: `orderstream verifiers`)."""
    # handler_cancellation: a request the client gave up on stops hanging here too
    web.run_app(create_verifier_app(**kw), host=host, port=port, print=None, shutdown_timeout=1.0,
                handler_cancellation=True)
