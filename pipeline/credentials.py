"""Who is calling the sink: principals, their roles and their tokens.

A token names one principal (a person, Prometheus, a CLI) and the roles it holds:

    metrics   GET /metrics only (what Prometheus needs, nothing more)
    viewer    metrics + every read page: the console, /views/<tier>, /status, the settlement queue
    operator  viewer + the console's actions (approve, reject, re-drive, resolve)
    analyst   viewer + read-only SQL (/sql)

Where tokens come from (all read at the sink's start; a malformed entry stops it):

- `ORDERSTREAM_ACCESS_TOKENS`: `role:name:token` entries, comma-separated;
  `ORDERSTREAM_ACCESS_TOKENS_FILE`: a file of `role:name:token` lines (blank lines, `#` comments);
- `ORDERSTREAM_OPERATOR_TOKENS` / `ORDERSTREAM_OPERATOR_TOKENS_FILE`: `name:token` entries, role operator
  (as before issue 26).

The same token listed under several roles with the same name holds all of them; one token for two
names is refused. A caller presents its token as `Authorization: Bearer <token>`; the console's
browser sign-in turns one into a session cookie (pipeline.console.signin).
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path

MIN_TOKEN_CHARS = 16
ROLES = ("metrics", "viewer", "operator", "analyst")
# what a role includes besides itself
_IMPLIED = {"metrics": (), "viewer": ("metrics",), "operator": ("viewer", "metrics"),
            "analyst": ("viewer", "metrics")}
_NAME = re.compile(r"^[\w.@-]{1,64}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces


class TokenConfigError(ValueError):
    """The tokens are malformed: the sink refuses to start rather than guess."""


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return role in self.roles

    def __str__(self) -> str:  # how the logs name who did something
        return f"{self.name}[{','.join(r for r in ROLES if r in self.roles)}]"


def _check_token(token: str, where: str, n: int, name: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN.match(token):
        raise TokenConfigError(f"{where} entry {n} ({name}): a token needs at least {MIN_TOKEN_CHARS} "
                               "printable characters without spaces")


def parse_tokens(text: str, where: str = "ORDERSTREAM_OPERATOR_TOKENS", separator: str = ",") -> dict[str, str]:
    """token -> name from `name:token` entries (the operators' lists)."""
    out: dict[str, str] = {}
    for n, entry in enumerate(text.split(separator), start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not _NAME.match(name):
            raise TokenConfigError(f"{where} entry {n}: expected name:token with a plain name "
                                   "(letters, digits, . _ @ -)")
        _check_token(token, where, n, name)
        if token in out and out[token] != name:
            raise TokenConfigError(f"{where}: {out[token]} and {name} share a token")
        out[token] = name
    return out


def parse_access_tokens(text: str, where: str = "ORDERSTREAM_ACCESS_TOKENS",
                        separator: str = ",") -> list[tuple[str, str, str]]:
    """(token, name, role) from `role:name:token` entries."""
    out = []
    for n, entry in enumerate(text.split(separator), start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or parts[0].strip() not in ROLES or not _NAME.match(parts[1].strip()):
            raise TokenConfigError(f"{where} entry {n}: expected role:name:token with a role of "
                                   f"{', '.join(ROLES)} and a plain name (letters, digits, . _ @ -)")
        role, name, token = (p.strip() for p in parts)
        _check_token(token, where, n, name)
        out.append((token, name, role))
    return out


def _read(path: str, setting: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenConfigError(f"{setting} {path}: {exc}") from None


class Credentials:
    """token -> Principal; every lookup compares every known token in constant time, so timing does
    not tell how much of a guess was right."""

    def __init__(self, entries: list[tuple[str, str, str]] = ()) -> None:
        names: dict[str, str] = {}
        roles: dict[str, set[str]] = {}
        for token, name, role in entries:
            if names.setdefault(token, name) != name:
                raise TokenConfigError(f"{names[token]} and {name} share a token")
            roles.setdefault(token, set()).update((role, *_IMPLIED[role]))
        self._by_token = {t: Principal(names[t], frozenset(r)) for t, r in roles.items()}

    @classmethod
    def from_settings(cls, s) -> Credentials:
        entries = [(t, n, "operator") for t, n in parse_tokens(s.operator_tokens).items()]
        if s.operator_tokens_file:
            text = _read(s.operator_tokens_file, "ORDERSTREAM_OPERATOR_TOKENS_FILE")
            entries += [(t, n, "operator") for t, n in
                        parse_tokens(text, s.operator_tokens_file, separator="\n").items()]
        entries += parse_access_tokens(s.access_tokens)
        if s.access_tokens_file:
            text = _read(s.access_tokens_file, "ORDERSTREAM_ACCESS_TOKENS_FILE")
            entries += parse_access_tokens(text, s.access_tokens_file, separator="\n")
        return Credentials(entries)

    def __len__(self) -> int:
        return len(self._by_token)

    def names(self, role: str) -> list[str]:
        return sorted({p.name for p in self._by_token.values() if p.may(role)})

    def operators(self) -> list[str]:
        return self.names("operator")

    def by_token(self, token: str | None) -> Principal | None:
        if not token:
            return None
        found = None
        for known, principal in self._by_token.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        return found

    def principal(self, authorization: str | None) -> Principal | None:
        """The principal a `Bearer <token>` header names, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.by_token(token.strip())

    def operator(self, authorization: str | None) -> str | None:
        """The operator a `Bearer <token>` header names, or None (also for a token without the role)."""
        p = self.principal(authorization)
        return p.name if p is not None and p.may("operator") else None


class OperatorTokens(Credentials):
    """Credentials of operators only, from token -> name (tests and the console's older callers)."""

    def __init__(self, by_token: dict[str, str]) -> None:
        super().__init__([(t, n, "operator") for t, n in by_token.items()])


def bearer_headers(settings) -> dict[str, str]:
    """The header this machine's CLI and tools send to the sink (ORDERSTREAM_SINK_TOKEN), if set."""
    return {"Authorization": f"Bearer {settings.sink_token}"} if settings.sink_token else {}
