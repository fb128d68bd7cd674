"""The Avro codec's own timestamp conversion writes exactly the bytes fastavro would."""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import fastavro
from fastavro._logical_writers_py import prepare_timestamp_millis

from pipeline.codecs import MAGIC, epoch_ms, order_codec
from pipeline.domain.normalize import normalize
from pipeline.devtools.fake_orders import ReplayMix, generate_stream

SHANGHAI = timezone(timedelta(hours=8))


def fastavro_bytes(codec, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(MAGIC + codec.fingerprint)
    fastavro.schemaless_writer(buf, codec.schema, record)
    return buf.getvalue()


def test_encoded_orders_are_byte_identical_to_fastavro_and_decode_back():
    codec = order_codec()
    now = datetime.now(timezone.utc)
    orders = [normalize(m.platform, m.value, now).order for m in generate_stream(300, 11, ReplayMix())
              if m.expect == "canonical"]
    for order in orders:
        assert codec.encode(order) == fastavro_bytes(codec, order)
        assert codec.decode(codec.encode(order))["updated_at"] == order["updated_at"]


def test_epoch_ms_matches_fastavro_for_any_offset_and_before_1970():
    for value in (datetime(2026, 11, 11, 0, 0, 0, 999_999, tzinfo=SHANGHAI),
                  datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=timezone.utc),
                  datetime(2038, 1, 19, 3, 14, 8, 1_000, tzinfo=timezone.utc)):
        assert epoch_ms(value) == prepare_timestamp_millis(value, {})
