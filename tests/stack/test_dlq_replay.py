"""`orderstream dlq replay` re-drives dead letters onto their source topics, each once, and the console's
re-drive and the CLI's know of each other (one ledger): a letter is re-driven once whichever asks first."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pipeline.codecs import dead_letter_codec
from pipeline.devtools.fake_orders import RawOrderFactory
from tests.stack.helpers import sink_json, sink_sql

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def run_cli(p, *args: str) -> str:
    env = {**os.environ, **p.env}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_dead_letters_are_redriven_once_with_their_original_bytes(pipeline_factory):
    p = pipeline_factory()
    p.start_worker()
    f = RawOrderFactory(seed=3)
    bad = [f.malformed("unknown_status", platform="JD"), f.malformed("truncated", platform="JD")]
    good = f.to_bytes(f.order("JD", external_id="OK1", status="PAID"))
    p.produce([(p.names.raw("JD"), b"k1", bad[0]), (p.names.raw("JD"), b"k2", bad[1]),
               (p.names.raw("JD"), b"k3", good)])
    p.drain()
    letters = [dead_letter_codec().decode(r.value) for r in p.read(p.names.DLQ)]
    assert sorted(letter["payload"] for letter in letters) == sorted(bad)

    first, second = letters[0]["reason_code"], letters[1]["reason_code"]
    assert "re-driven: 1, skipped: 1" in run_cli(p, "dlq", "replay", "--operator", "carol", "--reason", first)
    p.drain()
    # the saved position: only the one dead letter that arrived since (the re-driven one, still bad)
    assert "re-driven: 1, skipped: 0 (dry run)" in run_cli(p, "dlq", "replay", "--dry-run")
    # the letter skipped by the filter is still there for a later, targeted re-drive
    assert "re-driven: 1, skipped: 2" in run_cli(p, "dlq", "replay", "--operator", "carol", "--from-beginning", "--reason", second)
    p.drain()
    raw = p.read(p.names.raw("JD"))
    redriven = [r for r in raw if "redriven_from" in r.headers]
    assert sorted(r.value for r in redriven) == sorted(bad)  # original bytes, each once
    # still broken, so each came back to the dead-letter topic once more; the good order never did
    again = [dead_letter_codec().decode(r.value)["payload"] for r in p.read(p.names.DLQ)]
    assert sorted(again) == sorted(bad * 2)


OPERATOR, TOKEN = "olga", "olga-operator-token-5d1e9a77c3"


def console_redrive(p, letter_id: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.sink_port}/console/api/redrive",
                                 data=json.dumps({"letter_id": letter_id}).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_console_and_cli_re_drive_each_letter_once_whichever_asks_first(pipeline_factory):
    p = pipeline_factory()
    p.start_worker()
    p.start_sink(ORDERSTREAM_OPERATOR_TOKENS=f"{OPERATOR}:{TOKEN}")
    f = RawOrderFactory(seed=5)
    bad = [f.malformed("unknown_status", platform="JD"), f.malformed("truncated", platform="JD")]
    p.produce([(p.names.raw("JD"), b"k1", bad[0]), (p.names.raw("JD"), b"k2", bad[1])])
    p.drain()
    records = p.read(p.names.DLQ)
    ids = {dead_letter_codec().decode(r.value)["payload"]: f"{r.topic}:{r.partition}:{r.offset}" for r in records}
    by_console, by_cli = ids[bad[0]], ids[bad[1]]
    deadline = time.monotonic() + 60  # the console re-drives what the sink has in ClickHouse
    while int(sink_sql(p, "SELECT count() AS n FROM dead_letters")[0]["n"]) < 2:
        assert time.monotonic() < deadline, "the sink never had the two dead letters"
        time.sleep(0.5)

    # console first: the CLI run that follows skips that letter, naming the console's operator
    status, body = console_redrive(p, by_console)
    assert status == 200 and body["status"] == "sent", body
    p.drain()  # the re-driven letter, still bad, is a new dead letter: the run re-drives it and `by_cli`
    out = run_cli(p, "dlq", "replay", "--operator", "carol")
    assert "re-driven: 2, skipped: 0, already re-driven: 1" in out, out
    assert f"{by_console} was already re-driven by {OPERATOR} with the console at " in out, out

    # CLI first: the letter leaves the console's list by itself (the sink mirrors the ledger), and the
    # button is refused, naming the CLI's operator
    deadline = time.monotonic() + 30
    while by_cli in {d["id"] for d in sink_json(p, "/views/execution")["dead_letters"]["letters"]}:
        assert time.monotonic() < deadline, f"{by_cli}, re-driven by the CLI, is still listed"
        time.sleep(0.5)
    status, body = console_redrive(p, by_cli)
    assert status == 200 and body["status"] == "already_sent" and body["via"] == "cli", body
    assert f"{by_cli} was already re-driven by carol with `orderstream dlq replay` at " in body["message"], body
    # and a later run from the beginning re-drives neither again
    out = run_cli(p, "dlq", "replay", "--operator", "carol", "--from-beginning", "--dry-run")
    assert f"{by_console} was already re-driven by {OPERATOR}" in out and f"{by_cli} was already re-driven by carol" in out

    p.drain()
    origins = [dict(r.headers)["redriven_from"].decode() for r in p.read(p.names.raw("JD")) if "redriven_from" in r.headers]
    assert origins.count(by_console) == 1 and origins.count(by_cli) == 1, origins
    redriven_by = {dict(r.headers)["redriven_from"].decode(): dict(r.headers)["redriven_by"].decode()
                   for r in p.read(p.names.raw("JD")) if "redriven_from" in r.headers}
    assert (redriven_by[by_console], redriven_by[by_cli]) == (OPERATOR, "carol")
