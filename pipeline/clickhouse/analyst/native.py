"""The Native format in the layout of the client's protocol revision (`client_protocol_version`).

The engine writes Native as for revision 0, the layout of a plain HTTP client. A client that
sends its revision (clickhouse-go over HTTP sends 54460) reads the layout of that revision, as a
ClickHouse server writes it (src/Formats/NativeWriter.cpp):
    revision > 0        each block starts with its BlockInfo: field 1 is_overflows (false),
                        field 2 bucket_num (-1), from 54480 field 3 out_of_order_buckets (empty),
                        then field number 0
    revision >= 54454   after each column's type, one byte: 1 when the column has a custom
                        serialization kind (sparse...), 0 here: the data are the default
                        serialization, byte for byte the same as in the revision-0 layout
So the blocks are walked (every column's extent follows from its type) and the header bytes put
in. Types whose extent cannot be told from the bytes (AggregateFunction states, Dynamic, JSON,
Variant, Object) are refused with a clear exception rather than guessed at, and so is
LowCardinality for clients older than 54405 (a server would send them the full column).
The engine also drops a top-level DateTime's time zone for revision 0 (`DateTime('UTC')` becomes
`DateTime`); from revision 54337 a server sends it, so it is put back from the statement's own
column types when the engine could tell them (engine.py, DESCRIBE); else the values are the same
instants, shown in the server's time zone.
"""
from __future__ import annotations

import struct

from .errors import ClickHouseError

WITH_TIME_ZONE_IN_DATETIME = 54337
WITH_LOW_CARDINALITY = 54405
WITH_CUSTOM_SERIALIZATION = 54454
WITH_OUT_OF_ORDER_BUCKETS = 54480

FIXED_SIZES = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,  # Nothing: one placeholder byte a row
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "DateTime": 4, "Date32": 4, "IPv4": 4, "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "Decimal128": 16, "UUID": 16, "IPv6": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}
# geometry types are aliases of tuples and arrays
ALIASES = {"Point": "Tuple(Float64, Float64)", "Ring": "Array(Tuple(Float64, Float64))",
           "LineString": "Array(Tuple(Float64, Float64))",
           "Polygon": "Array(Array(Tuple(Float64, Float64)))",
           "MultiLineString": "Array(Array(Tuple(Float64, Float64)))",
           "MultiPolygon": "Array(Array(Array(Tuple(Float64, Float64))))"}
LC_KEY_WIDTH_BITS = 0xFF
LC_GLOBAL_DICTIONARY = 1 << 8
LC_ADDITIONAL_KEYS = 1 << 9
U64 = struct.Struct("<Q")
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff"  # field 1 is_overflows=0, field 2 bucket_num=-1


class Unsupported(Exception):
    """A column type whose extent this walker cannot tell."""


# -- type names ------------------------------------------------------------------------------------

def split_top_level(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside parentheses and quotes ('...', `...`, "...")."""
    parts, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def parse_type(name: str) -> tuple[str, list[str]]:
    """("Array", ["String"]) for "Array(String)"; element names of a named Tuple are dropped."""
    name = name.strip()
    name = ALIASES.get(name, name)
    if "(" not in name:
        return name, []
    if not name.endswith(")"):
        raise Unsupported(name)
    head, args = name[:name.index("(")].strip(), name[name.index("(") + 1:-1]
    return head, split_top_level(args)


def element_type(arg: str) -> str:
    """A Tuple/Nested element: `Type` or `name Type`."""
    words = split_top_level(arg, " ")
    return " ".join(words[1:]) if len(words) > 1 and "(" not in words[0] else arg


def decimal_size(args: list[str]) -> int:
    precision = int(args[0])
    return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32


# -- walking the data --------------------------------------------------------------------------------

class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def need(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise ClickHouseError("CANNOT_READ_ALL_DATA", f"Cannot read all data: the Native answer ends at byte "
                                                          f"{len(self.data)}, {n} more bytes were due at {start}")
        self.pos = start + n
        return start

    def varint(self) -> int:
        shift = value = 0
        while True:
            byte = self.data[self.need(1)]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ClickHouseError("CANNOT_READ_ALL_DATA", "Cannot read all data: a varint is too long")

    def u64(self) -> int:
        return U64.unpack_from(self.data, self.need(8))[0]

    def string(self) -> str:
        n = self.varint()
        return bytes(self.data[self.need(n):self.pos]).decode("utf-8", "replace")

    def skip_strings(self, rows: int) -> None:
        data, pos, end = self.data, self.pos, len(self.data)
        for _ in range(rows):  # a varint length, then that many bytes, per row
            shift = n = 0
            while True:
                if pos >= end:
                    self.pos = pos
                    self.need(1)
                byte = data[pos]
                pos += 1
                n |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            pos += n
        self.pos = pos
        if pos > end:
            self.pos = end
            self.need(pos - end)


def skip_prefix(r: Reader, type_name: str) -> None:
    """The serialization state a column's data starts with (LowCardinality's key version)."""
    head, args = parse_type(type_name)
    if head == "LowCardinality":
        r.u64()
    elif head in ("Nullable", "Array"):
        skip_prefix(r, args[0])
    elif head == "SimpleAggregateFunction":
        skip_prefix(r, args[-1])
    elif head in ("Tuple", "Nested"):
        for arg in args:
            skip_prefix(r, element_type(arg))
    elif head == "Map":
        skip_prefix(r, args[0])
        skip_prefix(r, args[1])


def skip_data(r: Reader, type_name: str, rows: int) -> None:
    head, args = parse_type(type_name)
    size = FIXED_SIZES.get(head)
    if head == "Decimal":
        size = decimal_size(args)
    elif head.startswith("Interval"):
        size = 8
    if size is not None:
        r.need(size * rows)
    elif head == "String":
        r.skip_strings(rows)
    elif head == "FixedString":
        r.need(int(args[0]) * rows)
    elif head == "Nullable":
        r.need(rows)
        skip_data(r, args[0], rows)
    elif head in ("Array", "Map", "Nested"):
        inner = args[0] if head == "Array" else f"Tuple({', '.join(args)})"
        if rows:
            r.need(8 * (rows - 1))
            skip_data(r, inner, r.u64())
    elif head == "Tuple":
        for arg in args:
            skip_data(r, element_type(arg), rows)
    elif head == "SimpleAggregateFunction":
        skip_data(r, args[-1], rows)
    elif head == "LowCardinality":
        skip_low_cardinality(r, args[0], rows)
    else:
        raise Unsupported(type_name)


def skip_low_cardinality(r: Reader, inner: str, rows: int) -> None:
    """Granules of (index kind, new dictionary keys, row count, row indexes) until `rows`."""
    head, args = parse_type(inner)
    dictionary_type = args[0] if head == "Nullable" else inner  # the dictionary holds the null as a key
    while rows > 0:
        kind = r.u64()
        if kind & LC_GLOBAL_DICTIONARY:
            raise Unsupported(f"LowCardinality({inner}) with a global dictionary")
        if kind & LC_ADDITIONAL_KEYS:
            skip_data(r, dictionary_type, r.u64())
        count = r.u64()
        if count == 0 or count > rows:
            raise ClickHouseError("CANNOT_READ_ALL_DATA", f"Cannot read all data: a LowCardinality granule of "
                                                          f"{count} rows where {rows} were left")
        r.need(count << (kind & LC_KEY_WIDTH_BITS))
        rows -= count


# -- the rewrite --------------------------------------------------------------------------------------

def to_revision(body: bytes, revision: int, column_types: list[str] | None = None) -> bytes:
    """Revision-0 Native blocks (the engine's) in the layout of `revision`; `column_types`, the
    statement's own types, give back a top-level DateTime its time zone."""
    if revision <= 0 or not body:
        return body
    r = Reader(body)
    out: list[bytes | memoryview] = []
    info = BLOCK_INFO + (b"\x03\x00" if revision >= WITH_OUT_OF_ORDER_BUCKETS else b"") + b"\x00"
    custom_flag = b"\x00" if revision >= WITH_CUSTOM_SERIALIZATION else b""
    while r.pos < len(r.data):
        out.append(info)
        start = r.pos
        columns, rows = r.varint(), r.varint()
        out.append(r.data[start:r.pos])
        zoned = column_types if column_types is not None and len(column_types) == columns else None
        for i in range(columns):
            start = r.pos
            name, type_name = r.string(), r.string()
            real = zoned[i] if zoned is not None else type_name
            if (type_name == "DateTime" and real.startswith("DateTime(")
                    and revision >= WITH_TIME_ZONE_IN_DATETIME):
                out.append(binary_string(name) + binary_string(real))
            else:
                out.append(r.data[start:r.pos])
            out.append(custom_flag)
            if "LowCardinality" in type_name and revision < WITH_LOW_CARDINALITY:
                raise not_served(name, type_name, revision, "clients older than revision 54405 read no LowCardinality")
            start = r.pos
            if rows:
                try:
                    skip_prefix(r, type_name)
                    skip_data(r, type_name, rows)
                except (Unsupported, ValueError, IndexError) as exc:
                    raise not_served(name, type_name, revision, f"the extent of {exc} is not known here") from None
            out.append(r.data[start:r.pos])
    return b"".join(out)


def binary_string(text: str) -> bytes:
    raw = text.encode()
    n, prefix = len(raw), bytearray()
    while True:  # the length as a varint
        byte = n & 0x7F
        n >>= 7
        prefix.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(prefix) + raw


def not_served(column: str, type_name: str, revision: int, why: str) -> ClickHouseError:
    return ClickHouseError("NOT_IMPLEMENTED",
                           f"Column {column} of type {type_name} cannot be sent in the Native format of protocol "
                           f"revision {revision} here ({why}): cast it (toString, finalizeAggregation), or ask "
                           f"for another format (RowBinaryWithNamesAndTypes, JSON) or without client_protocol_version")
