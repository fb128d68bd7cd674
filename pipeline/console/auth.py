"""Who may act in the console: operators and their tokens.

`ORDERSTREAM_OPERATOR_TOKENS` holds `name:token` pairs, comma-separated, and
`ORDERSTREAM_OPERATOR_TOKENS_FILE` a file of `name:token` lines (blank lines and `#` comments
allowed). A write request names its operator by `Authorization: Bearer <token>`; the name the
token belongs to is what the decision records (RiskDecision.operator), never a name the request
claims. Read pages need no token.
"""
from __future__ import annotations

import hmac
import re
from pathlib import Path

MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"^[\w.@-]{1,64}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces


class TokenConfigError(ValueError):
    """The operator tokens are malformed: the sink refuses to start rather than guess."""


def parse_tokens(text: str, where: str = "ORDERSTREAM_OPERATOR_TOKENS", separator: str = ",") -> dict[str, str]:
    """token -> operator name from `name:token` entries."""
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
        if len(token) < MIN_TOKEN_CHARS or not _TOKEN.match(token):
            raise TokenConfigError(f"{where} entry {n} ({name}): a token needs at least {MIN_TOKEN_CHARS} "
                                   "printable characters without spaces")
        if token in out and out[token] != name:
            raise TokenConfigError(f"{where}: {out[token]} and {name} share a token")
        out[token] = name
    return out


class OperatorTokens:
    def __init__(self, by_token: dict[str, str]) -> None:
        self._by_token = dict(by_token)

    @classmethod
    def from_settings(cls, s) -> OperatorTokens:
        tokens = parse_tokens(s.operator_tokens)
        if s.operator_tokens_file:
            path = Path(s.operator_tokens_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise TokenConfigError(f"ORDERSTREAM_OPERATOR_TOKENS_FILE {path}: {exc}") from None
            for token, name in parse_tokens(text, str(path), separator="\n").items():
                if tokens.get(token, name) != name:
                    raise TokenConfigError(f"{path}: {name} has a token that is {tokens[token]}'s")
                tokens[token] = name
        return cls(tokens)

    def __len__(self) -> int:
        return len(self._by_token)

    def operators(self) -> list[str]:
        return sorted(set(self._by_token.values()))

    def operator(self, authorization: str | None) -> str | None:
        """The operator a `Bearer <token>` header names, or None. Every known token is compared in
        constant time, so timing does not tell how much of a guess was right."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        found = None
        for known, name in self._by_token.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = name
        return found
