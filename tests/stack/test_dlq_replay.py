"""`orderstream dlq replay` re-drives dead letters onto their source topics, each once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.codecs import dead_letter_codec
from pipeline.devtools.fake_orders import RawOrderFactory

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
    assert "re-driven: 1, skipped: 1" in run_cli(p, "dlq", "replay", "--reason", first)
    p.drain()
    # the saved position: only the one dead letter that arrived since (the re-driven one, still bad)
    assert "re-driven: 1, skipped: 0 (dry run)" in run_cli(p, "dlq", "replay", "--dry-run")
    # the letter skipped by the filter is still there for a later, targeted re-drive
    assert "re-driven: 1, skipped: 2" in run_cli(p, "dlq", "replay", "--from-beginning", "--reason", second)
    p.drain()
    raw = p.read(p.names.raw("JD"))
    redriven = [r for r in raw if "redriven_from" in r.headers]
    assert sorted(r.value for r in redriven) == sorted(bad)  # original bytes, each once
    # still broken, so each came back to the dead-letter topic once more; the good order never did
    again = [dead_letter_codec().decode(r.value)["payload"] for r in p.read(p.names.DLQ)]
    assert sorted(again) == sorted(bad * 2)
