"""Re-driving one dead letter, without Kafka: what goes back to which raw topic, and what is skipped."""
from __future__ import annotations

from pipeline.redrive import RedriveReport, redrive_record

LETTER = {"source_topic": "orders.raw.jd", "key": b"k1", "payload": b'{"orderId": 1}',
          "reason_code": "unknown_status"}


def test_a_letter_goes_back_to_its_source_topic_with_its_original_bytes_and_origin():
    assert redrive_record(LETTER, "", "orders.dlq:2:17") == (
        "orders.raw.jd", b"k1", b'{"orderId": 1}', [("redriven_from", b"orders.dlq:2:17")])


def test_the_reason_filter_skips_other_letters():
    assert redrive_record(LETTER, "truncated", "orders.dlq:0:0") is None
    assert redrive_record(LETTER, "unknown_status", "orders.dlq:0:0") is not None


def test_the_report_reads_as_the_command_prints_it():
    assert str(RedriveReport(1, 2, False)) == "re-driven: 1, skipped: 2"
    assert str(RedriveReport(1, 0, True)) == "re-driven: 1, skipped: 0 (dry run)"
