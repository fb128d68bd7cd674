"""HTTP compression of answers, as ClickHouse gives it: only when the request sets
`enable_http_compression=1` and its Accept-Encoding names a method served here. Codecs are cramjam's.

ClickHouse's "deflate" is a zlib stream (RFC 1950, what HTTP means by deflate) and its "lz4" the LZ4
frame format. Among several accepted methods the strongest is chosen, as ClickHouse does; a method
given q=0 is not accepted.
"""
from __future__ import annotations

from .errors import ClickHouseError

PREFERENCE = ("zstd", "br", "lz4", "gzip", "deflate")  # what is served, the first accepted wins
DEFAULT_ZLIB_LEVEL = 3  # ClickHouse's http_zlib_compression_level


def accepted(accept_encoding: str) -> set[str]:
    out = set()
    for item in accept_encoding.split(","):
        token, _, params = item.partition(";")
        token = token.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if token and q > 0:
            out.add("gzip" if token == "x-gzip" else token)
    return out


def choose(accept_encoding: str | None) -> str | None:
    """The Content-Encoding to answer with, or None (plain)."""
    if not accept_encoding:
        return None
    ok = accepted(accept_encoding)
    return next((m for m in PREFERENCE if m in ok), None)


def zlib_level(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_ZLIB_LEVEL
    try:
        level = int(raw)
    except ValueError:
        raise ClickHouseError("CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                              f"Cannot parse input: http_zlib_compression_level needs an integer, not {raw!r}") from None
    if not 1 <= level <= 9:
        raise ClickHouseError("BAD_ARGUMENTS", f"http_zlib_compression_level must be between 1 and 9, not {level}")
    return level


def encode(body: bytes, method: str, level: int = DEFAULT_ZLIB_LEVEL) -> bytes:
    import cramjam

    if method == "gzip":
        return bytes(cramjam.gzip.compress(body, level=level))
    if method == "deflate":
        return bytes(cramjam.zlib.compress(body, level=level))
    if method == "zstd":
        return bytes(cramjam.zstd.compress(body, level=level))
    if method == "br":
        return bytes(cramjam.brotli.compress(body, level=min(level, 11)))
    if method == "lz4":
        return bytes(cramjam.lz4.compress(body))
    raise ValueError(f"not a served HTTP compression: {method}")
