"""The analyst interface's wire pieces without a driver: ClickHouse's compressed blocks (known
vectors made by ch-go's writer, the library inside clickhouse-go), the Native layout of a protocol
revision, HTTP compression's choice and codecs, and how the URL parameters select them."""
from __future__ import annotations

import gzip
import struct
import zlib

import cramjam
from chdb import session

from pipeline.clickhouse.analyst import compressed, http_compression, native
from pipeline.clickhouse.analyst.errors import ClickHouseError
from pipeline.clickhouse.analyst.framing import Framing

TEXT = b"SELECT platform, count() FROM order_events GROUP BY platform -- orderstream orderstream orderstream"
# ch-go v0.75.0 compress.NewWriter(LevelZero, method).Compress(TEXT): checksum, header, data
CH_GO_NONE = bytes.fromhex(
    "34290a60900929fb596fc49d6d67367d" "02" "6c000000" "63000000" + TEXT.hex())
CH_GO_LZ4 = bytes.fromhex(
    "f9dcadb668888e1440ff41e0acf54caf826500000063000000f52453454c45435420706c6174666f726d2c20636f756e742829"
    "2046524f4d206f726465725f6576656e74732047524f55502042592d00f100202d2d206f7264657273747265616d0c00000c00"
    "000c00b06f7264657273747265616d")
CH_GO_ZSTD = bytes.fromhex(
    "85d2603e9c4d6936bf8d0ee32616fbf9905f0000006300000028b52ffd04004d0200c40353454c45435420706c6174666f7"
    "26d2c20636f756e7428292046524f4d206f726465725f6576656e74732047524f5550204259202d2d73747265616d03002f"
    "a01485c7c04241012450e5d5")


class _Refusal:
    """`with _Refusal("NAME"):` the block raises ClickHouseError of that name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        assert exc is not None, f"nothing was raised, {self.name} was due"
        assert isinstance(exc, ClickHouseError) and exc.name == self.name, (kind, exc)
        return True


# -- compressed blocks ------------------------------------------------------------------------------

def test_checksum_is_cityhash128_v102_as_clickhouse_writes_it():
    assert compressed.checksum(CH_GO_NONE[16:]) == CH_GO_NONE[:16]
    assert compressed.checksum(CH_GO_LZ4[16:]) == CH_GO_LZ4[:16]


def test_known_vectors_decode_and_the_uncompressed_frame_is_byte_identical():
    for frame in (CH_GO_NONE, CH_GO_LZ4, CH_GO_ZSTD):
        assert compressed.decompress(frame) == TEXT
    assert compressed.compress(TEXT, compressed.NONE) == CH_GO_NONE
    for method, frame in ((compressed.LZ4, CH_GO_LZ4), (compressed.ZSTD, CH_GO_ZSTD)):
        ours = compressed.compress(TEXT, method)
        assert ours[16] == frame[16] == method  # method byte
        method_, size, raw = struct.unpack_from("<BII", ours, 16)
        assert (size, raw) == (len(ours) - 16, len(TEXT))
        assert compressed.decompress(ours) == TEXT


def test_round_trip_over_several_blocks_and_empty():
    data = bytes(range(256)) * 9000  # 2.2 MiB: three blocks of at most 1 MiB raw
    for method in (compressed.LZ4, compressed.ZSTD, compressed.NONE):
        body = compressed.compress(data, method)
        blocks, pos = [], 0
        while pos < len(body):
            _, size, raw = struct.unpack_from("<BII", body, pos + 16)
            blocks.append(raw)
            pos += 16 + size
        assert blocks == [1 << 20, 1 << 20, len(data) - 2 * (1 << 20)]
        assert compressed.decompress(body) == data
    assert compressed.compress(b"") == b"" and compressed.decompress(b"") == b""


def test_bad_blocks_are_clickhouse_exceptions_never_data():
    corrupt = bytearray(CH_GO_LZ4)
    corrupt[-1] ^= 0xFF
    with _Refusal("CHECKSUM_DOESNT_MATCH"):
        compressed.decompress(bytes(corrupt))
    bad_sum = b"\0" * 16 + CH_GO_NONE[16:]
    with _Refusal("CHECKSUM_DOESNT_MATCH"):
        compressed.decompress(bad_sum)
    assert compressed.decompress(bad_sum, verify=False) == TEXT  # checksumming turned off
    with _Refusal("UNKNOWN_COMPRESSION_METHOD"):
        compressed.decompress(CH_GO_NONE[:16] + b"\x07" + CH_GO_NONE[17:])
    with _Refusal("CANNOT_DECOMPRESS"):
        compressed.decompress(CH_GO_LZ4[:-5])  # truncated data
    with _Refusal("CANNOT_DECOMPRESS"):
        compressed.decompress(CH_GO_LZ4 + CH_GO_LZ4[:20])  # truncated header
    with _Refusal("TOO_LARGE_SIZE_COMPRESSED"):
        compressed.decompress(CH_GO_NONE, max_raw_bytes=10)
    lying = bytearray(CH_GO_LZ4)
    lying[21:25] = struct.pack("<I", 5)  # raw size smaller than the data: the codec refuses
    lying[:16] = compressed.checksum(bytes(lying[16:]))
    with _Refusal("CANNOT_DECOMPRESS"):
        compressed.decompress(bytes(lying))
    with _Refusal("UNKNOWN_COMPRESSION_METHOD"):
        compressed.method_named("snappy")


# -- Native in a protocol revision ------------------------------------------------------------------

def revision0_block() -> bytes:
    """2 rows of (a UInt8, s String), as the engine writes Native for revision 0."""
    return (b"\x02\x02" + b"\x01a\x05UInt8" + b"\x07\x09" + b"\x01s\x06String" + b"\x02hi\x00")


def test_native_headers_for_each_revision():
    body = revision0_block() * 2
    info = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # is_overflows=0, bucket_num=-1, end
    as_54460 = info + b"\x02\x02" + b"\x01a\x05UInt8\x00" + b"\x07\x09" + b"\x01s\x06String\x00" + b"\x02hi\x00"
    assert native.to_revision(body, 54460) == as_54460 * 2
    as_54480 = as_54460.replace(info, b"\x01\x00\x02\xff\xff\xff\xff\x03\x00\x00", 1)
    assert native.to_revision(body, 54480) == as_54480 * 2
    as_54453 = info + revision0_block()  # block info, no serialization-kind byte yet
    assert native.to_revision(body, 54453) == as_54453 * 2
    assert native.to_revision(body, 0) == body
    with _Refusal("CANNOT_READ_ALL_DATA"):
        native.to_revision(body[:-1], 54460)


def test_a_top_level_datetime_gets_its_time_zone_back_from_the_statements_types():
    block = b"\x01\x01" + b"\x01t\x08DateTime" + b"\x00\x00\x00\x00"  # what the engine writes
    info = b"\x01\x00\x02\xff\xff\xff\xff\x00"
    zoned = native.to_revision(block, 54460, ["DateTime('Asia/Shanghai')"])
    assert zoned == info + b"\x01\x01" + b"\x01t\x19DateTime('Asia/Shanghai')\x00" + b"\x00\x00\x00\x00"
    assert native.to_revision(block, 54460, None) == info + b"\x01\x01\x01t\x08DateTime\x00\x00\x00\x00\x00"
    assert native.to_revision(block, 54460, ["DateTime", "UInt8"]) == native.to_revision(block, 54460)  # not its
    assert native.to_revision(block, 54336, ["DateTime('UTC')"]) == info + block  # older clients: no zone


def test_native_walk_covers_the_engines_types():
    s = session.Session()
    try:
        sql = ("SELECT number AS n, toString(number) AS s, [toString(number), 'x'] AS a, "
               "toLowCardinality(toString(number % 3)) AS lc, if(number % 2, NULL, number) AS nu, "
               "toLowCardinality(if(number % 2, NULL, 'q')) AS lcn, map('k', number) AS m, (number, 'b', [1, 2]) AS t, "
               "CAST((1, 'x'), 'Tuple(a UInt8, `b c` String)') AS nt, toDecimal64(number, 3) AS d, "
               "toDecimal128(1, 2) AS d2, toFixedString('ab', 2) AS fs, toUUID('00000000-0000-0000-0000-000000000001') AS u, "
               "toIPv6('::1') AS ip6, toDate(number) AS dt, now64(3, 'Asia/Shanghai') AS t64, NULL AS nothing, "
               "[] AS empty, toInt256(number) AS big, CAST('a', 'Enum8(\\'a\\' = 1, \\'b, c\\' = 2)') AS e, "
               "[[toLowCardinality('z')]] AS nested_lc, (1.0, 2.0)::Point AS p, toIntervalDay(3) AS iv, "
               "toNullable(toString(number)) AS ns FROM numbers(3000) SETTINGS max_block_size = 1000")
        body = s.query(sql, "Native").bytes()
        blocks, columns = 3, 24
        for revision, extra in ((54405, 8), (54460, 8 + columns), (54480, 10 + columns)):
            assert len(native.to_revision(body, revision)) == len(body) + blocks * extra
        state = s.query("SELECT uniqState(1) AS st", "Native").bytes()
        lc = s.query("SELECT toLowCardinality('x') AS lc", "Native").bytes()
    finally:
        s.close()
    with _Refusal("NOT_IMPLEMENTED"):
        native.to_revision(state, 54460)
    with _Refusal("NOT_IMPLEMENTED"):
        native.to_revision(lc, 54404)  # older clients read no LowCardinality
    assert native.to_revision(lc, 54405) == b"\x01\x00\x02\xff\xff\xff\xff\x00" + lc


def test_type_names_split_as_the_engine_writes_them():
    assert native.parse_type("Map(String, Array(Nullable(UInt8)))") == ("Map", ["String", "Array(Nullable(UInt8))"])
    assert native.parse_type("Enum8('a, b' = 1, 'c' = 2)") == ("Enum8", ["'a, b' = 1", "'c' = 2"])
    assert native.element_type("`b c` String") == "String"
    assert native.element_type("x DateTime64(3, 'UTC')") == "DateTime64(3, 'UTC')"
    assert native.element_type("DateTime64(3, 'UTC')") == "DateTime64(3, 'UTC')"
    assert native.parse_type("Point") == ("Tuple", ["Float64", "Float64"])


# -- HTTP compression ------------------------------------------------------------------------------

def test_http_compression_choice_and_codecs():
    assert http_compression.choose("gzip, deflate, br, zstd") == "zstd"
    assert http_compression.choose("gzip;q=1.0, zstd;q=0") == "gzip"
    assert http_compression.choose("identity") is None and http_compression.choose(None) is None
    assert http_compression.choose("x-gzip") == "gzip"
    assert gzip.decompress(http_compression.encode(TEXT, "gzip")) == TEXT
    assert zlib.decompress(http_compression.encode(TEXT, "deflate")) == TEXT  # HTTP's deflate is zlib
    assert bytes(cramjam.zstd.decompress(http_compression.encode(TEXT, "zstd"))) == TEXT
    assert bytes(cramjam.brotli.decompress(http_compression.encode(TEXT, "br"))) == TEXT
    assert bytes(cramjam.lz4.decompress(http_compression.encode(TEXT, "lz4"))) == TEXT
    with _Refusal("BAD_ARGUMENTS"):
        http_compression.zlib_level("12")


def test_framing_from_url_parameters():
    plain = Framing.from_request({}, "gzip", 54515)
    assert plain == Framing() and plain.answer_body(b"x", "Native") == b"x" and plain.http_body(b"x") == b"x"
    f = Framing.from_request({"client_protocol_version": "99999", "compress": "1",
                              "network_compression_method": "ZSTD", "network_zstd_compression_level": "3",
                              "enable_http_compression": "1", "decompress": "1",
                              "http_native_compression_disable_checksumming_on_decompress": "1"}, "br, gzip", 54515)
    assert (f.client_revision, f.compress_method, f.zstd_level, f.http_encoding) == (54515, compressed.ZSTD, 3, "br")
    assert f.decompress and not f.verify_checksums
    answer = f.answer_body(revision0_block(), "Native")
    assert compressed.decompress(answer) == native.to_revision(revision0_block(), 54515)
    assert f.answer_body(b"1\n", "TabSeparated") == compressed.compress(b"1\n", compressed.ZSTD, 3)
    assert f.request_body(compressed.compress(b"SELECT 1"), 1024) == b"SELECT 1"
    with _Refusal("CANNOT_PARSE_INPUT_ASSERTION_FAILED"):
        Framing.from_request({"compress": "yes"}, None, 54515)
    with _Refusal("CANNOT_PARSE_INPUT_ASSERTION_FAILED"):
        Framing.from_request({"client_protocol_version": "new"}, None, 54515)
    with _Refusal("BAD_ARGUMENTS"):
        Framing.from_request({"compress": "1", "network_compression_method": "zstd",
                              "network_zstd_compression_level": "40"}, None, 54515)
