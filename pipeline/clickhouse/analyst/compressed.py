"""ClickHouse's own compressed blocks: the body of a `compress=1` answer and of a `decompress=1`
request (what clickhouse-go sends with LZ4/ZSTD and the JDBC driver asks for by default).

Each block is
    checksum   16 bytes: CityHash128 (v1.0.2) of the rest of the block, low 64 bits first
    method      1 byte: 0x82 LZ4, 0x90 ZSTD, 0x02 none
    compressed  UInt32 LE: the block's size from the method byte on (9-byte header included)
    raw         UInt32 LE: the size once decompressed
    data
and a body is any number of them. Codecs are cramjam's (LZ4 block and ZSTD), the checksum is
clickhouse-cityhash's, the CityHash version ClickHouse froze for this format.
"""
from __future__ import annotations

import struct

from .errors import ClickHouseError

LZ4, ZSTD, NONE = 0x82, 0x90, 0x02
METHOD_BY_NAME = {"lz4": LZ4, "lz4hc": LZ4, "zstd": ZSTD, "none": NONE}
HEADER = struct.Struct("<BII")  # method, compressed size (header included), raw size
CHECKSUM_SIZE = 16
BLOCK_RAW_BYTES = 1 << 20  # ClickHouse's buffer size: a block holds at most 1 MiB of raw data
MASK64 = (1 << 64) - 1


def checksum(block_from_method: bytes | memoryview) -> bytes:
    """CityHash128 v1.0.2 of the method byte onwards, as ClickHouse writes it (low half first)."""
    from clickhouse_cityhash.cityhash import CityHash128  # lazily: nothing done at import

    h = CityHash128(bytes(block_from_method))
    # the package packs the pair as (low << 64) | high; ClickHouse writes low then high
    return struct.pack("<QQ", h >> 64, h & MASK64)


def method_named(name: str) -> int:
    method = METHOD_BY_NAME.get(name.strip().lower())
    if method is None:
        raise ClickHouseError("UNKNOWN_COMPRESSION_METHOD",
                              f"Unknown compression method '{name}' (network_compression_method): "
                              f"use one of {', '.join(sorted(METHOD_BY_NAME))}")
    return method


def compress(data: bytes, method: int = LZ4, zstd_level: int = 1) -> bytes:
    """`data` as compressed blocks of at most BLOCK_RAW_BYTES raw bytes each (one empty body:
    no block at all, as ClickHouse sends for an empty answer)."""
    import cramjam

    view = memoryview(data)
    out = []
    for start in range(0, len(view), BLOCK_RAW_BYTES):
        raw = view[start:start + BLOCK_RAW_BYTES]
        if method == LZ4:
            packed = bytes(cramjam.lz4.compress_block(raw, store_size=False))
        elif method == ZSTD:
            packed = bytes(cramjam.zstd.compress(raw, level=zstd_level))
        elif method == NONE:
            packed = bytes(raw)
        else:
            raise ClickHouseError("UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method 0x{method:02x}")
        framed = HEADER.pack(method, HEADER.size + len(packed), len(raw)) + packed
        out.append(checksum(framed))
        out.append(framed)
    return b"".join(out)


def decompress(body: bytes, verify: bool = True, max_raw_bytes: int | None = None) -> bytes:
    """The raw bytes of a body of compressed blocks; a bad checksum, method, size or truncated
    block is ClickHouse's exception for it, never partial data."""
    import cramjam

    view = memoryview(body)
    out, pos, total = [], 0, 0
    while pos < len(view):
        if len(view) - pos < CHECKSUM_SIZE + HEADER.size:
            raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress: a compressed block is truncated in its "
                                                       f"header at byte {pos} of {len(view)}")
        method, size, raw_size = HEADER.unpack_from(view, pos + CHECKSUM_SIZE)
        if method not in (LZ4, ZSTD, NONE):
            raise ClickHouseError("UNKNOWN_COMPRESSION_METHOD",
                                  f"Unknown compression method 0x{method:02x} in the compressed block at byte {pos}")
        if size < HEADER.size or pos + CHECKSUM_SIZE + size > len(view):
            raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress: the compressed block at byte {pos} says "
                                                       f"{size} bytes, {len(view) - pos - CHECKSUM_SIZE} are left")
        total += raw_size
        if max_raw_bytes is not None and total > max_raw_bytes:
            raise ClickHouseError("TOO_LARGE_SIZE_COMPRESSED", f"Too large size of decompressed data: over "
                                                               f"{max_raw_bytes} bytes")
        framed = view[pos + CHECKSUM_SIZE:pos + CHECKSUM_SIZE + size]
        if verify and checksum(framed) != bytes(view[pos:pos + CHECKSUM_SIZE]):
            raise ClickHouseError("CHECKSUM_DOESNT_MATCH", f"Checksum doesn't match: corrupted data in the compressed "
                                                           f"block at byte {pos} (method 0x{method:02x}, {size} bytes)")
        packed = framed[HEADER.size:]
        try:
            if method == LZ4:
                raw = bytes(cramjam.lz4.decompress_block(packed, output_len=raw_size))
            elif method == ZSTD:
                raw = bytes(cramjam.zstd.decompress(packed, output_len=raw_size))
            else:
                raw = bytes(packed)
        except cramjam.DecompressionError as exc:
            raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress the block at byte {pos}: {exc}") from None
        if len(raw) != raw_size:
            raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress the block at byte {pos}: {len(raw)} bytes, "
                                                       f"its header says {raw_size}")
        out.append(raw)
        pos += CHECKSUM_SIZE + size
    return b"".join(out)
