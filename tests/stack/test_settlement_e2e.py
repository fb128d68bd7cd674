"""Issue 18 end to end: `orderstream replay --bills-dir` through a real worker and the chDB sink; the
replay's bills (written from its own raw messages, with injected differences) imported with `orderstream settlement
import` onto the real broker, landed by the sink; then `orderstream reconcile settlement` on the
sink's data must report exactly the injected differences, balanced to the fen."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from pipeline.config import PROJECT_ROOT
from tests.stack.helpers import distinct_facts, sink_sql, wait_sunk
from tests.stack.test_console_browser import (OPERATOR, TOKEN, VIEWER_ACCESS, VIEWER_TOKEN,  # noqa: F401
                                              action_message, browser_paths, driver, sign_in, wait_for)

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def cli(p, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **p.env, **env})


REASON = "checked with the platform: re-billed next day"


def resolutions_of(p, diff_key: str) -> list[tuple[str, str]]:
    quoted = diff_key.replace("\\", "\\\\").replace("'", "\\'")
    return [(r["operator"], r["reason"]) for r in
            sink_sql(p, f"SELECT operator, reason FROM settlement_resolutions WHERE diff_key = '{quoted}'")]


def resolve_in_the_console(p, d) -> str:
    """An operator resolves the first open difference on the strategic page, in chromium: refused to a
    viewer (403), then recorded under the operator's token, and the row leaves the queue."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    page = f"http://127.0.0.1:{p.sink_port}/console/strategic?tz=UTC&lang=en"
    assert sign_in(d, VIEWER_TOKEN, page)
    rows = wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#settlement-queue tr.difference"), 30,
                    "the settlement queue")
    key = rows[0].get_attribute("data-diff-key")

    def row_action(k):
        row = d.find_element(By.CSS_SELECTOR, f'#settlement-queue tr[data-diff-key="{k}"]')
        return row.find_element(By.CSS_SELECTOR, "input.reason"), row.find_element(By.CSS_SELECTOR, "button.resolve")

    def resolve_with_reason():
        for _ in range(5):  # the panel is replaced on each refresh: find the row right before
            try:
                reason, button = row_action(key)
                if not reason.get_attribute("value"):
                    reason.send_keys(REASON)
                button.click()
                return
            except StaleElementReferenceException:
                time.sleep(0.1)
        raise AssertionError("the settlement queue kept being replaced")

    resolve_with_reason()
    wait_for(d, lambda d: action_message(d)[1] == "403", 15, "the refusal to a viewer")
    assert not resolutions_of(p, key)
    assert sign_in(d, TOKEN, page)
    wait_for(d, lambda d: d.find_element(By.ID, "operator-name").get_attribute("data-operator") == OPERATOR, 15,
             "the sign-in")
    resolve_with_reason()
    wait_for(d, lambda d: action_message(d)[1] == "200", 15, "the resolution")
    wait_for(d, lambda d: not d.find_elements(By.CSS_SELECTOR, f'#settlement-queue tr[data-diff-key="{key}"]'), 20,
             "the resolved difference to leave the queue")
    return key


def test_replay_bills_reconcile_to_exactly_the_injected_differences(pipeline_factory, tmp_path, driver):  # noqa: F811
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3")
    p.start_worker()
    p.start_sink(ORDERSTREAM_OPERATOR_TOKENS=f"{OPERATOR}:{TOKEN}", ORDERSTREAM_ACCESS_TOKENS=VIEWER_ACCESS,
                 ORDERSTREAM_CONSOLE_REFRESH_S="2")
    # the replay command itself writes the bills for the replayed days, differences injected
    res = cli(p, "replay", "--count", "500", "--seed", "18", "--malformed", "0.02", "--update", "0.08",
              "--report", str(tmp_path / "replay.json"), "--bills-dir", str(tmp_path / "bills"),
              "--bill-diff-rate", "0.04", "--bill-seed", "7", "--drain-timeout", "180")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["balanced"], report
    bills = report["settlement_bills"]
    expected = distinct_facts(p)
    assert wait_sunk(p, expected, timeout=60) == expected

    injected = json.loads((tmp_path / "bills" / "injected.json").read_text())
    assert len({i["cls"] for i in injected}) >= 6, bills["injected"]
    files = bills["files"]
    for name in files + files[:1]:  # the first file twice: a re-import changes nothing
        platform = name.split("-", 1)[0].upper()
        res = cli(p, "settlement", "import", str(tmp_path / "bills" / name), "--platform", platform,
                  "--operator", "e2e-importer", "--report", str(tmp_path / f"{name}.json"))
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads((tmp_path / f"{name}.json").read_text())["lines_rejected"] == 0
    deadline = time.monotonic() + 60
    while True:
        n = int(sink_sql(p, "SELECT count() AS n FROM (SELECT line_key FROM settlement_bills LIMIT 1 BY line_key)")
                [0]["n"])
        if n == bills["lines"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert n == bills["lines"]
    # the sink reconciles each (day, platform) that got lines by itself once the import is quiet
    pairs = int(sink_sql(p, "SELECT count() AS n FROM (SELECT DISTINCT settle_day, platform FROM settlement_bills)")
                [0]["n"])
    deadline = time.monotonic() + 60
    while True:
        scheduled = int(sink_sql(p, "SELECT count() AS n FROM (SELECT DISTINCT day, platform FROM settlement_runs "
                                    "WHERE operator = 'scheduler@sink')")[0]["n"])
        if scheduled == pairs or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert scheduled == pairs > 0
    resolved = resolve_in_the_console(p, driver)
    assert resolutions_of(p, resolved) == [(OPERATOR, REASON)]

    # the embedded data directory has one owner: stop the sink, reconcile on its data
    chdb_path = str(p.s.var / f"chdb-{p.ns.rstrip('.')}")
    p.procs["sink"].stop()
    runs = sorted(tuple(name[:-4].split("-", 1)) for name in files)  # (platform, day): one bill file each
    found: Counter = Counter()
    outputs = []
    for platform, day in runs:
        out = tmp_path / f"reconcile-{platform}-{day}.json"
        res = cli(p, "reconcile", "settlement", "--day", day, "--platform", platform, "--operator", "e2e-runner",
                  "--report", str(out), ORDERSTREAM_CHDB_PATH=chdb_path, ORDERSTREAM_SINK_WEB_PORT=str(p.sink_port))
        assert res.returncode == 0, res.stdout + res.stderr
        result = json.loads(out.read_text())
        assert result["balanced"] and result["operator"] == "e2e-runner"
        outputs.append(result)
        for run in result["runs"]:
            for d in run["differences"]:
                found[(d["class"], run["platform"], run["day"], d["order_id"], d["kind"], d["diff_minor"])] += 1
            for t in run["totals"]:
                assert t["settled_minor"] == t["matched_minor"] + sum(
                    d["bill_minor"] for d in run["differences"] if d["currency"] == t["currency"])
    assert found == Counter((i["cls"], i["platform"], i["day"], i["order_id"], i["kind"], i["diff_minor"])
                            for i in injected)
    # the same day again: the same result
    again = tmp_path / "again.json"
    res = cli(p, "reconcile", "settlement", "--day", runs[0][1], "--platform", runs[0][0], "--operator", "e2e-runner",
              "--report", str(again),
              ORDERSTREAM_CHDB_PATH=chdb_path, ORDERSTREAM_SINK_WEB_PORT=str(p.sink_port))
    assert res.returncode == 0, res.stdout + res.stderr

    def strip(r):
        return [{k: v for k, v in run.items() if k != "run_id"} for run in r["runs"]]
    assert strip(json.loads(again.read_text())) == strip(outputs[0])
