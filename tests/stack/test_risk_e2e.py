"""Issue 5 on the real broker: held orders wait for an operator, undecided holds are released by
the default policy (also across a worker restart), and a rule set published on the rules topic
changes the following orders' outcomes without a restart while an invalid one is refused."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.contracts import Hold, RiskDecision
from pipeline.domain.normalize import global_order_id
from pipeline.devtools.fake_orders import RawOrderFactory
from pipeline.domain.risk import DEFAULT_RULES_FILE, RuleSet, RuleSetError
from tests.stack.helpers import Watch

pytestmark = [pytest.mark.stack, pytest.mark.slow]

BIG = 600_000      # 6000 CNY in fen: above the default 5000 CNY hold threshold
SMALL = 10_000     # 100 CNY: clean under the default rules


# --------------------------------------------------------------------------- helpers


def send_orders(p, f: RawOrderFactory, specs: list[tuple[str, str, dict]]) -> dict[str, str]:
    """specs: (platform, external_id, order kwargs) -> {external_id: global order id}."""
    p.produce([(p.names.raw(platform), ext.encode(), f.to_bytes(f.order(platform, external_id=ext, **kw)))
               for platform, ext, kw in specs])
    return {ext: global_order_id(platform, ext) for platform, ext, _ in specs}


def decision(order_id: str, action: str, operator: str, reason: str) -> bytes:
    """Exactly what `orderstream decide` publishes."""
    return RiskDecision(order_id=order_id, action=action, operator=operator, reason=reason,
                        decided_at_ms=int(time.time() * 1000)).encode()


def cli(p, *args: str) -> subprocess.CompletedProcess:
    """`orderstream ...` inside this pipeline's namespace."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, **p.env},
                          capture_output=True, text=True, timeout=60)


def metric(p, name: str) -> float | None:
    with urllib.request.urlopen(f"{p.worker_url()}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return None


def wait_metric(p, name: str, wanted: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = metric(p, name)
        if value == wanted:
            return
        time.sleep(0.3)
    raise AssertionError(f"{name} stayed {value}, expected {wanted}")


def changelog(p, table: str) -> str:
    return f"{p.group}-{table}-changelog"


def unique_ext(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


# --------------------------------------------------------------------------- operator decisions


@pytest.fixture(scope="module")
def decisions_pipeline(pipeline_factory):
    # a long timeout: nothing may be released by the default policy while operators decide
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="900")
    p.start_worker()
    return p


def test_held_order_waits_for_the_operators_decision(decisions_pipeline):
    p = decisions_pipeline
    n = p.names
    f = RawOrderFactory(seed=101, start=datetime.now(timezone.utc))
    watch = Watch(p, n.ACCEPTED, n.RISK_QUEUE, n.RISK_EVENTS)
    ids = send_orders(p, f, [
        ("TMALL", unique_ext("APPROVE"), {"amount_minor": BIG, "province": "广东"}),
        ("JD", unique_ext("REJECT"), {"amount_minor": 750_000, "province": "浙江"}),
        ("TMALL", unique_ext("CLEAN"), {"amount_minor": SMALL, "province": "上海"}),
    ])
    approve_id, reject_id, clean_id = ids.values()

    watch.until(lambda w: w.events(p, approve_id, "held") and w.events(p, reject_id, "held")
                and w.order_ids(n.ACCEPTED)[clean_id],
                60, "two holds and the clean order accepted", p.check_alive)
    for held_id in (approve_id, reject_id):
        [held] = watch.events(p, held_id, "held")
        assert "amount_over_5000" in held["rule_ids"]
        assert held["approvers"] == ["regional_manager"]   # routing: above 5000 CNY
        assert watch.order_ids(n.RISK_QUEUE)[held_id] == 1
    watch.settle(2)
    # held means stopped before fulfilment
    assert watch.order_ids(n.ACCEPTED) == Counter({clean_id: 1})

    # approve through the CLI, reject with a plain producer (the same RiskDecision, keyed by order id)
    done = cli(p, "decide", approve_id, "approve", "--operator", "alice", "--reason", "called the buyer")
    assert done.returncode == 0, done.stdout + done.stderr
    p.produce([(n.RISK_DECISIONS, reject_id.encode(), decision(reject_id, "reject", "bob", "stolen card report")),
               # a late second decision on an order already decided changes nothing
               (n.RISK_DECISIONS, approve_id.encode(), decision(approve_id, "reject", "carol", "too late"))])

    watch.until(lambda w: w.events(p, approve_id, "approved") and w.events(p, reject_id, "rejected"),
                60, "the approval and the rejection", p.check_alive)
    p.drain()
    watch.settle(2)
    [approved] = watch.events(p, approve_id, "approved")
    assert (approved["operator"], approved["reason"], approved["source"]) == ("alice", "called the buyer", "operator")
    assert approved["rule_ids"] == ["amount_over_5000"]
    [rejected] = watch.events(p, reject_id, "rejected")
    assert (rejected["operator"], rejected["reason"]) == ("bob", "stolen card report")
    assert not watch.events(p, approve_id, "rejected")

    accepted = watch.order_ids(n.ACCEPTED)
    assert accepted == Counter({clean_id: 1, approve_id: 1})
    [released] = [m for m in watch.on(n.ACCEPTED) if m.key() == approve_id.encode()]
    assert dict(released.headers())["risk"] == b"approved"
    watch.close()


# --------------------------------------------------------------------------- rules as data


BAD_RULES = """\
version: 3
rules:
  - id: amount_over_tiny
    kind: amount_above
    severity: enormous
    action: hold
    params:
      threshold_minor: 100
"""


def rules_text(version: int, threshold_minor: int) -> str:
    """The default rule file with another version and amount threshold."""
    text = DEFAULT_RULES_FILE.read_text(encoding="utf-8")
    assert "version: 1\n" in text and "threshold_minor: {CNY: 500000}" in text
    return (text.replace("version: 1\n", f"version: {version}\n", 1)
                .replace("threshold_minor: {CNY: 500000}", f"threshold_minor: {{CNY: {threshold_minor}}}", 1))


def test_rule_change_on_the_rules_topic_changes_outcomes_without_restart(decisions_pipeline, tmp_path: Path):
    p = decisions_pipeline
    n = p.names
    worker_pid = p.procs["worker-0"].pid
    f = RawOrderFactory(seed=202, start=datetime.now(timezone.utc))
    watch = Watch(p, n.ACCEPTED, n.RISK_EVENTS)

    def outcome(order_id: str, timeout: float = 60) -> str:
        return watch.until(lambda w: ("accepted" if w.order_ids(n.ACCEPTED)[order_id] else None)
                           or ("held" if w.events(p, order_id, "held") else None),
                           timeout, f"an outcome for {order_id}", p.check_alive)

    def hundred_yuan_order(tag: str) -> str:
        [order_id] = send_orders(p, f, [("TMALL", unique_ext(tag), {"amount_minor": SMALL})]).values()
        return order_id

    # version 1 (the default file): 100 CNY is clean
    assert outcome(hundred_yuan_order("V1")) == "accepted"

    # version 2 lowers the threshold to 50 CNY, published with the CLI (validates, then publishes)
    v2 = tmp_path / "v2.yaml"
    v2.write_text(rules_text(2, 5_000), encoding="utf-8")
    done = cli(p, "rules", "publish", str(v2))
    assert done.returncode == 0 and "version 2" in done.stdout, done.stdout + done.stderr
    wait_metric(p, "orderstream_risk_ruleset_version", 2)
    held_id = hundred_yuan_order("V2")
    assert outcome(held_id) == "held"
    [held] = watch.events(p, held_id, "held")
    assert held["rule_ids"] == ["amount_over_5000"] and held["ruleset_version"] == 2

    # an invalid rule set is refused by the tools with a clear error ...
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RULES, encoding="utf-8")
    with pytest.raises(RuleSetError, match=r"amount_over_tiny.*severity"):
        RuleSet.parse(BAD_RULES)
    for command in ("check", "publish"):
        done = cli(p, "rules", command, str(bad))
        assert done.returncode == 1, done.stdout
        assert "amount_over_tiny" in done.stdout and "severity" in done.stdout, done.stdout
    # ... and by the worker when it reaches the topic anyway: version 2 stays active
    p.produce([(n.RISK_RULES, b"ruleset", BAD_RULES.encode())])
    wait_metric(p, "orderstream_risk_ruleset_rejected_total", 1)
    assert metric(p, "orderstream_risk_ruleset_version") == 2
    still_held = hundred_yuan_order("BAD")
    assert outcome(still_held) == "held"
    assert watch.events(p, still_held, "held")[0]["ruleset_version"] == 2

    # a later valid version takes over again (the default threshold): 100 CNY is clean again
    p.produce([(n.RISK_RULES, b"ruleset", rules_text(4, 500_000).encode())])
    wait_metric(p, "orderstream_risk_ruleset_version", 4)
    assert outcome(hundred_yuan_order("V4")) == "accepted"
    assert p.procs["worker-0"].pid == worker_pid and p.procs["worker-0"].alive()  # never restarted
    watch.close()


# --------------------------------------------------------------------------- default policy


def test_undecided_hold_is_released_by_the_default_policy(pipeline_factory):
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="3")
    p.start_worker()
    n = p.names
    f = RawOrderFactory(seed=303, start=datetime.now(timezone.utc))
    watch = Watch(p, n.ACCEPTED, n.RISK_EVENTS)
    [order_id] = send_orders(p, f, [("DOUYIN", unique_ext("AUTO"), {"amount_minor": BIG})]).values()

    [held] = watch.until(lambda w: w.events(p, order_id, "held"), 60, "the hold", p.check_alive)
    assert not watch.order_ids(n.ACCEPTED)[order_id]
    [released] = watch.until(lambda w: w.events(p, order_id, "auto_released"), 30, "the default release",
                             p.check_alive)
    assert released["operator"] == "default_policy" and released["source"] == "default_policy"
    assert released["reason"] == "no decision within 3 s"
    assert released["waited_ms"] >= 3000
    p.drain()
    watch.settle(1)
    assert watch.order_ids(n.ACCEPTED)[order_id] == 1
    [out] = [m for m in watch.on(n.ACCEPTED) if m.key() == order_id.encode()]
    assert dict(out.headers())["risk"] == b"auto_released"
    watch.close()
    p.stop()


@pytest.fixture(scope="module")
def restart_pipeline(pipeline_factory):
    # a short Kafka session timeout so the group notices a SIGKILLed member in seconds, not a minute
    p = pipeline_factory(ORDERSTREAM_RISK_HOLD_TIMEOUT_S="8", BROKER_SESSION_TIMEOUT="8")
    p.start_worker()
    return p


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_hold_timeout_survives_a_worker_restart(restart_pipeline, how):
    p = restart_pipeline
    n = p.names
    if not p.procs["worker-0"].alive():
        p.start_worker()
    f = RawOrderFactory(seed=404 if how == "sigterm" else 405, start=datetime.now(timezone.utc))
    watch = Watch(p, n.ACCEPTED, n.RISK_EVENTS, changelog(p, "risk-holds"))
    [order_id] = send_orders(p, f, [("KUAISHOU", unique_ext(how.upper()), {"amount_minor": BIG})]).values()

    # the hold is in the changelogged table (what a restarted worker rebuilds from)
    def hold_record(w):
        for m in w.on(changelog(p, "risk-holds")):
            value = Hold.decode(m.value()) if m.value() else None
            if value and value.order_id == order_id and value.status == "held":
                return value
        return None
    hold = watch.until(hold_record, 60, "the hold in the risk-holds changelog", p.check_alive)
    worker = p.procs["worker-0"]
    if how == "sigterm":
        worker.stop()
    else:
        worker.kill()
    assert not worker.alive()
    # the worker went down before the deadline: nothing was released yet
    assert time.time() * 1000 < hold.due_at_ms, "worker stopped too late to test the restart"
    watch.settle(0.5)
    assert not watch.events(p, order_id, "auto_released") and not watch.order_ids(n.ACCEPTED)[order_id]

    p.start_worker()
    [released] = watch.until(lambda w: w.events(p, order_id, "auto_released"), 90,
                             "the default release after the restart", p.check_alive)
    # the original deadline counted, not a fresh one from the restart
    assert released["at_ms"] >= hold.due_at_ms
    assert released["at_ms"] - released["waited_ms"] == hold.held_at_ms
    p.drain()
    watch.settle(2)
    assert watch.order_ids(n.ACCEPTED)[order_id] == 1
    assert len(watch.events(p, order_id, "auto_released")) == 1
    watch.close()
