"""Faust agents, one module per stage. Importing this package registers them all on the app."""
from . import normalize, dedupe, risk, holds, inventory, breaker, commit_watchdog, web  # noqa: F401
