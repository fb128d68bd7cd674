"""Avro single-object encoding (Avro spec: 0xC3 0x01, CRC-64-AVRO fingerprint, body).

The fingerprint names the writer's schema, so a reader resolves bytes written by any schema
version it knows (every `schemas/*.avsc`) into its own reader schema. No registry server is
needed; `SchemaStore.register` adds a schema at run time.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC = b"\xc3\x01"


class CodecError(ValueError):
    """Bytes that are not single-object Avro of a known schema."""


class SchemaStore:
    def __init__(self) -> None:
        self._by_fp: dict[bytes, dict] = {}
        self._by_name: dict[str, dict] = {}
        self._fp_by_name: dict[str, bytes] = {}

    def register(self, schema: dict, name: str | None = None) -> bytes:
        """Add a raw (unparsed) schema; returns its fingerprint."""
        parsed = fastavro.parse_schema(schema)
        # fastavro gives the CRC-64-AVRO bytes little-endian, as the spec's header wants them
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        self._by_fp[fp] = parsed
        if name:
            self._by_name[name] = parsed
            self._fp_by_name[name] = fp
        return fp

    def load_dir(self, directory: Path = SCHEMA_DIR) -> None:
        for path in sorted(directory.glob("*.avsc")):
            self.register(json.loads(path.read_text()), name=path.stem)

    def schema(self, name: str) -> dict:
        return self._by_name[name]

    def fingerprint_of(self, name: str) -> bytes:
        return self._fp_by_name[name]

    def writer(self, fp: bytes) -> dict:
        try:
            return self._by_fp[fp]
        except KeyError:
            raise CodecError(f"unknown schema fingerprint {fp.hex()}") from None


@lru_cache(maxsize=1)
def default_store() -> SchemaStore:
    store = SchemaStore()
    store.load_dir()
    return store


class AvroCodec:
    """Encode with one schema; decode anything the store knows into that schema."""

    def __init__(self, schema_name: str, store: SchemaStore | None = None) -> None:
        self.store = store or default_store()
        self.schema = self.store.schema(schema_name)
        self.fingerprint = self.store.fingerprint_of(schema_name)
        self._header = MAGIC + self.fingerprint
        self._millis = millis_fields(self.schema)

    def encode(self, record: dict) -> bytes:
        # fastavro converts aware datetimes itself, slowly; the same arithmetic here is ~3x faster
        times = {k: epoch_ms(v) for k in self._millis if isinstance(v := record.get(k), datetime) and v.tzinfo}
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self.schema, {**record, **times} if times else record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict:
        if len(data) < 10 or data[:2] != MAGIC:
            raise CodecError("not Avro single-object encoding (bad magic)")
        writer = self.store.writer(bytes(data[2:10]))
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, self.schema)
        except Exception as exc:  # fastavro raises several types for truncated or corrupt bodies
            raise CodecError(f"corrupt Avro body: {exc}") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_ms(value: datetime) -> int:
    """Avro timestamp-millis of an aware datetime, as fastavro computes it."""
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + int(delta.microseconds / 1000)


def millis_fields(schema: dict) -> tuple[str, ...]:
    """Top-level fields of a record schema that are timestamp-millis (possibly nullable)."""
    out = []
    for f in schema.get("fields", ()):
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") == "timestamp-millis" for t in types):
            out.append(f["name"])
    return tuple(out)


@lru_cache(maxsize=None)
def codec(schema_name: str) -> AvroCodec:
    return AvroCodec(schema_name)


def order_codec() -> AvroCodec:
    return codec("order")


def dead_letter_codec() -> AvroCodec:
    return codec("dead_letter")
