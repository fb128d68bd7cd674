"""How the bytes of a request and its answer travel, from the request's URL parameters and headers:

- `client_protocol_version`: a Native answer in that revision's layout (native.py), capped at the
  engine's own revision as a server caps it at its own;
- `compress=1`: the answer in ClickHouse's compressed blocks (compressed.py), by
  `network_compression_method` (lz4, the default, or zstd at `network_zstd_compression_level`);
- `decompress=1`: the request body in compressed blocks, checked against their checksums unless
  `http_native_compression_disable_checksumming_on_decompress=1`;
- `enable_http_compression=1` with Accept-Encoding: HTTP compression of the answer
  (http_compression.py), at `http_zlib_compression_level` for gzip and deflate.
These are the transport's, not settings of the query: the engine never sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from . import compressed, http_compression, native
from .errors import ClickHouseError

# the URL parameters read here (policy.TRANSPORT_PARAMS keeps them away from the engine)
FRAMING_PARAMS = frozenset({
    "client_protocol_version", "compress", "decompress", "network_compression_method",
    "network_zstd_compression_level", "http_native_compression_disable_checksumming_on_decompress",
    "enable_http_compression", "http_zlib_compression_level",
})


def flag(params: Mapping[str, str], name: str) -> bool:
    raw = params.get(name, "0").strip().lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise ClickHouseError("CANNOT_PARSE_INPUT_ASSERTION_FAILED", f"Cannot parse input: {name} is a boolean (0 or 1), "
                                                                 f"not {raw!r}")


def integer(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClickHouseError("CANNOT_PARSE_INPUT_ASSERTION_FAILED", f"Cannot parse input: {name} needs an integer, "
                                                                     f"not {raw!r}") from None
    if value < 0:
        raise ClickHouseError("BAD_ARGUMENTS", f"{name} cannot be negative ({value})")
    return value


@dataclass(frozen=True)
class Framing:
    client_revision: int = 0
    compress_method: int | None = None   # compressed blocks for the answer, or None
    zstd_level: int = 1
    decompress: bool = False
    verify_checksums: bool = True
    http_encoding: str | None = None     # Content-Encoding of the answer, or None
    zlib_level: int = http_compression.DEFAULT_ZLIB_LEVEL

    @classmethod
    def from_request(cls, params: Mapping[str, str], accept_encoding: str | None, engine_revision: int) -> Framing:
        compress = flag(params, "compress")
        method = compressed.method_named(params.get("network_compression_method") or "lz4")
        zstd_level = integer(params, "network_zstd_compression_level", 1)
        if not 1 <= zstd_level <= 22:
            raise ClickHouseError("BAD_ARGUMENTS", f"network_zstd_compression_level must be between 1 and 22, "
                                                   f"not {zstd_level}")
        http = flag(params, "enable_http_compression")
        return cls(client_revision=min(integer(params, "client_protocol_version", 0), engine_revision),
                   compress_method=method if compress else None, zstd_level=zstd_level,
                   decompress=flag(params, "decompress"),
                   verify_checksums=not flag(params, "http_native_compression_disable_checksumming_on_decompress"),
                   http_encoding=http_compression.choose(accept_encoding) if http else None,
                   zlib_level=http_compression.zlib_level(params.get("http_zlib_compression_level")))

    def request_body(self, body: bytes, cap: int) -> bytes:
        """The body as sent, undone from compressed blocks when `decompress=1`."""
        if not self.decompress or not body:
            return body
        return compressed.decompress(body, verify=self.verify_checksums, max_raw_bytes=cap)

    def answer_body(self, body: bytes, output_format: str | None, column_types: list[str] | None = None) -> bytes:
        """The engine's bytes as this client reads them (before HTTP compression)."""
        if output_format == "Native" and self.client_revision > 0:
            body = native.to_revision(body, self.client_revision, column_types)
        if self.compress_method is not None:
            body = compressed.compress(body, self.compress_method, self.zstd_level)
        return body

    def http_body(self, body: bytes) -> bytes:
        if self.http_encoding is None:
            return body
        return http_compression.encode(body, self.http_encoding, self.zlib_level)
