"""Faust agents. Importing this package registers them all on the app.

`orders` is the hot path (one consumption per raw order, stages over a batch); holds, refunds,
stock, rules, re-checks, the breaker, logistics tracking, timers and the web endpoints are
low-volume paths of their own."""
from . import orders, holds, refunds, inventory, risk, breaker, commit_watchdog, logistics, web  # noqa: F401
