"""Faust agents, one module per stage. Importing this package registers them all on the app."""
from . import normalize, dedupe, risk, holds, inventory, breaker, web  # noqa: F401
