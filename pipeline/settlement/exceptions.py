"""Errors of the settlement package."""


class SettlementError(ValueError):
    """Something the settlement commands refuse (a bad layout, rule set, or request)."""


class LayoutError(SettlementError):
    """A bill file that cannot be read at all (unknown platform, missing header columns)."""


class ResolveError(SettlementError):
    """A resolution the manual queue refuses (no operator, no reason, unknown or resolved difference)."""
