"""The buyer's tracking page (issue 19, seed 003): `GET /t/<code>`, on the sink's public surface
(pipeline.public_site), the one page served without credentials.

The code is the waybill's short-link code (pipeline.domain.logistics.track_code: an HMAC of the
order id, 16 base32 characters), so a page cannot be found by guessing or by counting order
numbers. The page shows only what a buyer needs and nothing that identifies anyone: the carrier,
the key steps reached and when, the expected arrival, whether the information is current (the
health badge) or still being agreed between sources ("syncing"). It is one small HTML page and its
stylesheet (/t/static/), readable on a phone, with no script, no link anywhere and nothing loaded
from elsewhere.
"""
from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from pipeline.clickhouse.http import BACKEND
from pipeline.clickhouse.tiers import tracking
from pipeline.domain.logistics import KEY_STEPS, LABELS_ZH, RANK, SYNCING

log = logging.getLogger(__name__)

CODE = re.compile(r"^[a-z2-7]{16}$")
CARRIERS_ZH = {"SF": "顺丰速运", "ZTO": "中通快递", "YTO": "圆通速递", "JT": "极兔速递", "EMS": "中国邮政 EMS"}
BADGE_ZH = {"green": "信息实时准确", "yellow": "信息延迟 1-3 小时", "red": "超过 3 小时未更新"}
TZ = ZoneInfo("Asia/Shanghai")
STATIC_DIR = Path(__file__).resolve().parent / "public_static"  # the page's stylesheet, nothing of the console

_env = Environment(loader=PackageLoader("pipeline.console", "templates"), autoescape=select_autoescape(["html"]),
                   undefined=StrictUndefined)


def _local(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(TZ).strftime("%m-%d %H:%M")


def page_model(view: dict) -> dict:
    agreed = view["agreed_state"]
    shown = view["state"]
    steps = [{"key": s, "label": LABELS_ZH[s], "reached": RANK.get(agreed, 0) >= RANK[s],
              "at": _local(view["steps"].get(s))} for s in KEY_STEPS]
    if agreed == "completed":
        steps[-1]["reached"] = True
    return {"carrier": CARRIERS_ZH.get(view["carrier"], view["carrier"]), "state": shown,
            "state_label": LABELS_ZH.get(shown, shown), "syncing": shown == SYNCING, "badge": view["badge"],
            "badge_label": BADGE_ZH.get(view["badge"], ""), "last_update": _local(view["last_update"]),
            "expected_at": _local(view["expected_at"]), "steps": steps}


def _answer(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


async def tracking_page(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if not CODE.match(code):
        return _answer(_env.get_template("tracking_missing.html").render(), 404)
    try:
        view = await asyncio.to_thread(tracking, request.app[BACKEND], code)
    except Exception:  # noqa: BLE001 - the buyer gets a page, the log gets the why
        log.exception("tracking page failed")
        return _answer(_env.get_template("tracking_missing.html").render(), 503)
    if view is None:
        return _answer(_env.get_template("tracking_missing.html").render(), 404)
    return _answer(_env.get_template("tracking.html").render(m=page_model(view)))


def setup_tracking(app: web.Application) -> None:
    """The page and its stylesheet (the security headers are the public surface's, web_headers)."""
    app.router.add_get("/t/{code}", tracking_page)
    app.router.add_static("/t/static", STATIC_DIR, append_version=False)
