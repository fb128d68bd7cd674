"""Structured logs: one JSON object per line, the global order id as its own field."""
import json
import logging

from pipeline.logs import JsonFormatter, TextFormatter


def record(msg, **extra):
    rec = logging.LogRecord("agents.holds", logging.INFO, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_line_carries_order_id_and_extra_fields():
    line = JsonFormatter().format(record("held", order_id="TM-abc", platform="TMALL"))
    data = json.loads(line)
    assert data["msg"] == "held" and data["order_id"] == "TM-abc" and data["platform"] == "TMALL"
    assert data["level"] == "info" and data["logger"] == "agents.holds" and data["ts"].endswith("Z")


def test_json_keeps_non_ascii_and_injection_text_as_data():
    data = json.loads(JsonFormatter().format(record("备注: '); DROP TABLE x; --")))
    assert data["msg"] == "备注: '); DROP TABLE x; --"


def test_text_format_appends_order_id():
    assert TextFormatter("%(message)s").format(record("held", order_id="JD-1")) == "held order_id=JD-1"
    assert TextFormatter("%(message)s").format(record("started")) == "started"
