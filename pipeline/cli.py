"""`orderstream`: the single entry point (typer). Every role and tool is a sub-command."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .config import PROJECT_ROOT, load_settings, settings_table

cli = typer.Typer(help="orderstream: multi-platform order stream processing.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
stack_cli = typer.Typer(help="The local stack: Kafka (KRaft) and Redis, no Docker needed.", no_args_is_help=True)
dlq_cli = typer.Typer(help="Dead letters.", no_args_is_help=True)
rules_cli = typer.Typer(help="Risk rules as data (compacted topic risk.rules).", no_args_is_help=True)
reconcile_cli = typer.Typer(help="Reconciliation runs: order states (platforms, ClickHouse, Redis) and settlement bills.",
                            no_args_is_help=True)
refunds_cli = typer.Typer(help="Refunds: operator decisions, returned goods, re-driving failed instructions, rules.",
                          no_args_is_help=True)
refund_rules_cli = typer.Typer(help="Refund auto-approval rules as data (compacted topic refunds.rules).",
                               no_args_is_help=True)
refunds_cli.add_typer(refund_rules_cli, name="rules")
cli.add_typer(stack_cli, name="stack")
cli.add_typer(reconcile_cli, name="reconcile")
cli.add_typer(refunds_cli, name="refunds")
cli.add_typer(dlq_cli, name="dlq")
settlement_cli = typer.Typer(help="Settlement bills and the manual queue of their differences.", no_args_is_help=True)
cli.add_typer(rules_cli, name="rules")
cli.add_typer(settlement_cli, name="settlement")
console = Console()


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


# ------------------------------------------------------------------------------- stack

def print_status(rows) -> None:
    table = Table("component", "address", "pid", "health", "detail")
    for c in rows:
        table.add_row(c.name, c.address, str(c.pid or "-"), "[green]up[/green]" if c.healthy else "[red]down[/red]",
                      c.detail)
    console.print(table)


@stack_cli.command("up")
def stack_up(browser: bool = typer.Option(False, "--browser", help="Also install Debian's chromium + "
                                          "chromium-driver (the console's browser tests) when missing."),
             prometheus: bool = typer.Option(False, "--prometheus", help="Also install Debian's prometheus "
                                             "(the metrics stack test's server) when missing.")) -> None:
    """Install what is missing and start Kafka and Redis (idempotent)."""
    from .devtools import stack
    from .kafka_io import TopicError, ensure_topics
    from .topics import names
    s = load_settings()
    try:
        rows = stack.up(s, browser=browser, prometheus=prometheus)
        ensure_topics(s, names)
    except (stack.StackError, TopicError) as exc:
        fail(str(exc))
    print_status(rows)


@stack_cli.command("status")
def stack_status() -> None:
    from .devtools import stack
    rows = stack.status(load_settings())
    print_status(rows)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_cli.command("down")
def stack_down() -> None:
    """Stop only the processes `up` (and the demo) started, by pid file."""
    from .devtools import stack
    stopped = stack.down(load_settings())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


# ------------------------------------------------------------------------------- roles

@cli.command()
def worker(loglevel: str = "info") -> None:
    """Run one Faust worker with every agent (normalize, dedupe, risk, holds, inventory, breaker)."""
    from .kafka_io import ensure_topics
    from .logs import setup_logging
    from .topics import names
    s = load_settings()
    setup_logging(s.log_json, library_level=s.library_log_level)
    ensure_topics(s, names)
    import faust

    import agents  # noqa: F401  - registers the agents on the app
    from .app import app, changelog_topics
    from .kafka_io import ensure_changelogs, wait_until_visible
    changelogs = changelog_topics()
    ensure_changelogs(s, changelogs)  # before the group join: see changelog_topics
    wait_until_visible(s, [*names.ALL_TOPICS, *(name for name, _, _ in changelogs)])
    from .metrics import start_worker_series
    start_worker_series()  # the Hold resolutions panel has data on a worker that has resolved nothing yet

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger, level):  # Faust installed its handler: put ours back
            setup_logging(s.log_json, level=getattr(logging, loglevel.upper(), logging.INFO),
                          library_level=s.library_log_level)

    Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


@cli.command()
def sink() -> None:
    """Run the ClickHouse sink (owns the embedded chDB data dir) and its HTTP views."""
    from .clickhouse.sink import run_sink
    from .logs import setup_logging
    from .topics import names
    s = load_settings()
    setup_logging(s.log_json, library_level=s.library_log_level)
    run_sink(s, names)


@cli.command()
def verifiers(latency_ms: float = 5.0, error_rate: float = 0.0) -> None:
    """Run the local external-verifier service (payment, address) over HTTP on loopback."""
    from .devtools.verifier_service import run_verifier_service
    s = load_settings()
    run_verifier_service(s.bind_host, s.verifier_port, latency_ms=latency_ms, error_rate=error_rate)


@cli.command("refund-service")
def refund_service(latency_ms: float = 10.0, error_rate: float = 0.0) -> None:
    """Run the simulated platform refund APIs over HTTP on loopback (idempotent by refund id; key rotation)."""
    from .devtools.refund_service import run_refund_service
    s = load_settings()
    run_refund_service(s.bind_host, s.refund_service_port, latency_ms=latency_ms, error_rate=error_rate)
@cli.command()
def couriers() -> None:
    """Run the simulated courier and aggregator tracking APIs (SF, ZTO, YTO, JT, EMS, Cainiao, Kuaidi100)."""
    from .devtools.courier_service import run_courier_service
    s = load_settings()
    run_courier_service(s.bind_host, s.courier_api_port)


@cli.command("logistics-replay")
def logistics_replay(mode: str = typer.Option("all", help="all, or one of seed 000's failure stories: "
                                                          "never_scanned, replaced_carrier, expired_key, unknown_code"),
                     outages: bool = typer.Option(True, help="Take ZTO's API down and expire YTO's key.")) -> None:
    """Produce shipments and courier events (late, duplicated, out of order, conflicting, an outage)
    into the running pipeline, load what the couriers' APIs know into `orderstream couriers`, and
    print each parcel's expected fate."""
    import json as _json
    import time as _time
    import urllib.request

    from . import kafka_io
    from .devtools import logistics_replay as lr
    from .topics import names
    s = load_settings()
    start = int(_time.time() * 1000)
    tag = f"{start % 10_000:04d}"
    if mode == "all":
        stories = lr.stories(start, tag)
    elif mode in lr.STORY_MODES:
        stories = lr.STORY_MODES[mode](start, tag)
    else:
        fail(f"unknown mode {mode!r}: all, {', '.join(lr.STORY_MODES)}")

    def post(path: str, body) -> None:
        req = urllib.request.Request(f"{s.courier_api}{path}", data=_json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    from .devtools.courier_service import CourierWorld
    world = CourierWorld()
    lr.load_api(world, stories)
    for (source, waybill), events in world.events.items():
        post("/events", {"source": source, "waybill": waybill, "events": [_json.loads(e) for e in events]})
    if outages:
        post("/config", lr.OUTAGES)
    kafka_io.ensure_topics(s, names)
    producer = kafka_io.producer(s)
    kafka_io.produce_all(producer, ((t, k, v, None) for t, k, v in lr.records(stories, names, start)))
    for story in stories:
        console.print(f"{story.name:20} {story.waybill:14} expect {story.expect}")


# ------------------------------------------------------------------------------- replay

@cli.command()
def replay(count: int = typer.Option(2000, help="Raw messages to produce (all kinds)."),
           seed: int = 11,
           speed: str = typer.Option("max", help="'max', or a factor on the 24 h sale-day curve (1440 = a day per minute)."),
           rate_per_min: float = typer.Option(0.0, help="Constant rate instead of the curve (0 = use --speed)."),
           redelivery: float = 0.05, update: float = 0.05, malformed: float = 0.01,
           high_value: float = 0.02, remote: float = 0.03, ip_burst: float = 0.01,
           ship: float = typer.Option(0.05, help="Share of messages that ship a paid order."),
           suspect: float = typer.Option(0.01, help="Share of updates the transition rules must flag "
                                                    "(backwards, skipping, too fast)."),
           out_of_order: float = typer.Option(0.01, help="Share of older versions sent after newer ones."),
           late_payment: float = typer.Option(0.0, help="Share of unpaid orders paid only after their reservation "
                                                        "timed out (the replay waits --late-after seconds for it)."),
           late_after: float = typer.Option(-1.0, help="Seconds between the drained main phase and the late payments "
                                                       "(default: ORDERSTREAM_RESERVATION_TIMEOUT_S + 5)."),
           report: Path = typer.Option(PROJECT_ROOT / "var" / "replay-report.json", help="JSON report path."),
           drain_timeout: float = 300.0,
           refunds: float = typer.Option(0.0, help="Share of reserved orders that get a refund request afterwards."),
           refund_auto: float = typer.Option(0.5, help="Share of refunds written to fit the auto-approval rule."),
           refund_approve: float = typer.Option(0.7, help="Share of the operator's refund queue approved."),
           refund_rotated_key: str = typer.Option("", help="Rotate this platform's refund API key first (seed "
                                                           "002), then fix it and re-drive (needs refund-service)."),
           bills_dir: Path = typer.Option(None, help="Also write each platform's settlement bills for the "
                                          "replayed days here (CSV per platform and day, injected.json)."),
           bill_diff_rate: float = typer.Option(0.01, help="Chance per billed order of each injected settlement "
                                                "difference class."),
           bill_seed: int = typer.Option(18, help="Seed of the settlement bills' injections.")) -> None:
    """Produce a Black Friday replay into the running pipeline and reconcile every message and every unit of stock."""
    from rich.progress import Progress

    from .devtools.fake_orders import ReplayMix
    from .devtools.fake_refunds import RefundMix
    from .devtools.replay import ReplayConfig, run_replay, write_report
    from .topics import names
    s = load_settings()
    mix = ReplayMix(redelivery=redelivery, update=update, malformed=malformed, high_value=high_value,
                    remote=remote, ip_burst=ip_burst, ship=ship, suspect=suspect, out_of_order=out_of_order,
                    late_payment=late_payment)
    cfg = ReplayConfig(count=count, seed=seed, speed=speed, rate_per_min=rate_per_min or None, mix=mix,
                       drain_timeout_s=drain_timeout,
                       late_after_s=late_after if late_after >= 0 else s.reservation_timeout_s + 5.0,
                       refunds=RefundMix(rate=refunds, auto=refund_auto, approve=refund_approve,
                                         rotated_key=refund_rotated_key.upper()))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("producing", total=count)
        sent: list = []
        result = run_replay(s, names, names.ns + s.app_id, cfg, lambda n: progress.advance(task, n),
                            messages_out=sent)
    if bills_dir is not None:
        from .devtools.settlement_bills import INJECTABLE, BillMix, bills_for_replay
        from .settlement.rules import load_rules
        rules = load_rules()
        result["settlement_bills"] = bills_for_replay(
            sent, bill_seed, BillMix(rates={c: bill_diff_rate for c in INJECTABLE},
                                     tolerance_minor=rules.rounding_tolerance_minor, timezone=rules.timezone),
            bills_dir)
    write_report(result, report)
    print_report(result, report)
    if not result["balanced"]:
        raise typer.Exit(2)


def print_report(result: dict, path: Path | None) -> None:
    table = Table("measure", "value", title="replay reconciliation")
    for key in ("produced", "canonical", "dead_lettered", "deduplicated_dropped", "unique_new_orders",
                "unique_updates", "flagged", "held", "approved", "auto_released", "rejected", "awaiting_decision",
                "rechecked", "accepted_new_orders", "reserved", "out_of_stock", "released", "expired", "shipped",
                "units_shipped", "ship_skipped", "unique_suspects", "stale_dropped", "raw_lost",
                "raw_doubled", "new_orders_emitted_twice", "unaccounted_new_orders", "elapsed_s",
                "throughput_msgs_per_s", "latency_ms", "breaker_transitions", "worker_peak_rss_mb", "suspects",
                "late_payments", "refunds", "settlement_bills", "balanced"):
        if key in result:
            table.add_row(key, json.dumps(result[key]) if isinstance(result[key], (dict, list)) else str(result[key]))
    console.print(table)
    for key in ("stock", "stock_after_refunds"):   # after the refunds: the returned units counted too
        stock = result.get(key)
        if stock:
            console.print(f"{key}: " + json.dumps({k: v for k, v in stock.items() if not k.endswith("_sample")}))
    if path:
        console.print(f"report: {path}")


# ------------------------------------------------------------------------------- demo

@cli.command()
def demo(count: int = 2000, seed: int = 11,
         stop: bool = typer.Option(False, "--stop", help="Stop worker, sink and verifiers at the end "
                                   "(by default they keep running, so the console shows the replay).")) -> None:
    """Fresh machine to summary: stack up, worker + sink + verifiers, a replay, a reconciliation,
    and the console's address."""
    import secrets

    from .devtools import processes, stack
    from .kafka_io import TopicError, ensure_topics
    from .logs import setup_logging
    from .topics import TopicNames
    namespace = os.environ.get("ORDERSTREAM_NAMESPACE") or f"demo{time.strftime('%m%d%H%M%S')}."
    env = {"ORDERSTREAM_NAMESPACE": namespace,
           # a short hold timeout so the default policy's releases show up within the demo
           "ORDERSTREAM_RISK_HOLD_TIMEOUT_S": os.environ.get("ORDERSTREAM_RISK_HOLD_TIMEOUT_S", "10")}
    operator = None
    if not os.environ.get("ORDERSTREAM_OPERATOR_TOKENS") and not os.environ.get("ORDERSTREAM_OPERATOR_TOKENS_FILE"):
        operator = ("demo", secrets.token_urlsafe(18))  # the console's approve/reject/re-drive need one
        env["ORDERSTREAM_OPERATOR_TOKENS"] = f"{operator[0]}:{operator[1]}"
    if not os.environ.get("ORDERSTREAM_SINK_TOKEN"):
        # the demo's own reads of the sink (the summary's row count) name it as an analyst
        cli_token = secrets.token_urlsafe(18)
        env["ORDERSTREAM_SINK_TOKEN"] = cli_token
        env["ORDERSTREAM_ACCESS_TOKENS"] = ",".join(filter(None, [os.environ.get("ORDERSTREAM_ACCESS_TOKENS", ""),
                                                                  f"analyst:demo-cli:{cli_token}"]))
    os.environ.update(env)
    s = load_settings()
    # warnings only between the steps: librdkafka's own lines go through logging (kafka_io) and a
    # broker's coordinator still loading after a start is INFO there
    setup_logging(s.log_json, level=logging.WARNING, library_level=s.library_log_level)
    console.print(f"[bold]1/5[/bold] stack up (namespace {namespace})")
    try:
        print_status(stack.up(s))
        ensure_topics(s, TopicNames(namespace))
    except (stack.StackError, TopicError) as exc:
        fail(str(exc))
    console.print("[bold]2/5[/bold] starting verifiers, worker and sink")
    procs = [processes.start_verifiers(s, env), processes.start_worker(s, 0, env), processes.start_sink(s, env)]
    keep = False
    try:
        console.print(f"[bold]3/5[/bold] replaying {count} raw orders")
        from .devtools.fake_orders import ReplayMix
        from .devtools.replay import ReplayConfig, run_replay, write_report
        names = TopicNames(namespace)
        report_path = s.var / "demo-report.json"
        from rich.progress import Progress
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("producing", total=count)
            result = run_replay(s, names, namespace + s.app_id,
                                ReplayConfig(count=count, seed=seed, mix=ReplayMix()),
                                lambda n: progress.advance(task, n), settle_holds_s=60)
        result["sunk"] = _sunk_rows(s)
        write_report(result, report_path)
        console.print("[bold]4/5[/bold] summary")
        print_report(result, report_path)
        console.print(f"orders in: {result['produced']}  out (canonical): {result['canonical']}  "
                      f"dead-lettered: {result['dead_lettered']}  elapsed: {result['elapsed_s']} s")
        keep = not stop
        console.print("[bold]5/5[/bold] console")
        host = "127.0.0.1" if s.sink_listen_host in ("0.0.0.0", "::", "") else s.sink_listen_host
        public_host = "127.0.0.1" if s.public_listen_host in ("0.0.0.0", "::", "") else s.public_listen_host
        if operator is not None:
            console.print(f"operator token (sign in on the console; approve, reject, re-drive): {operator[1]}  "
                          f"(operator {operator[0]})")
        else:
            console.print("operator tokens: ORDERSTREAM_OPERATOR_TOKENS / ORDERSTREAM_OPERATOR_TOKENS_FILE")
        if keep:
            console.print("worker, sink and verifiers keep running; stop everything with "
                          "[bold].venv/bin/orderstream stack down[/bold]")
        console.print(f"console: http://{host}:{s.sink_web_port}/console/ (sign in with a token)  "
                      f"buyers' tracking pages: http://{public_host}:{s.public_port}/t/<code>" if keep else
                      "console: stopped with the sink (--stop); run the demo without --stop to browse it")
        if not result["balanced"]:
            raise typer.Exit(2)
    finally:
        if not keep:
            for p in procs:
                p.stop()


def _sunk_rows(s) -> dict | None:
    import urllib.parse
    import urllib.request
    from .credentials import bearer_headers
    query = "SELECT count() AS order_events FROM order_events"
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{s.sink_web_port}/sql?q={urllib.parse.quote(query)}", headers=bearer_headers(s)),
                timeout=10) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


# ------------------------------------------------------------------------------- dead letters

@dlq_cli.command("replay")
def dlq_replay(operator: str = typer.Option("", help="Who re-drives (required unless --dry-run): recorded in "
                                                      "the ledger shared with the console and in a redriven_by header."),
               reason: str = typer.Option("", help="Only dead letters with this reason code."),
               from_beginning: bool = typer.Option(False, help="Ignore the saved position: look at every dead letter."),
               dry_run: bool = False) -> None:
    """Re-drive dead letters onto their source raw topics after a fix.

    A run continues where the last one stopped (a saved group position); letters skipped by
    --reason stay in the topic and can be re-driven later with --from-beginning. A letter already
    re-driven, here or from the console, is not sent again: the run names who did it and when."""
    from .redrive import redrive_dead_letters
    from .topics import names
    try:
        report = redrive_dead_letters(load_settings(), names, operator=operator, reason=reason,
                                      from_beginning=from_beginning, dry_run=dry_run)
    except ValueError as exc:
        fail(str(exc))
    console.print(str(report), markup=False, highlight=False)
    if report.failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------- rules and decisions

@rules_cli.command("publish")
def rules_publish(path: Path) -> None:
    """Validate a rule file and publish it; every worker switches within seconds."""
    from . import kafka_io
    from .domain.risk import RuleSet, RuleSetError
    from .topics import RuleSetText, names
    text = path.read_text(encoding="utf-8")
    try:
        rules = RuleSet.parse(text)
    except RuleSetError as exc:
        fail(f"{path}: {exc} (nothing published; the active rule set stays)")
    kafka_io.produce_all(kafka_io.producer(load_settings()), [(names.RISK_RULES, b"ruleset", RuleSetText.encode(text), None)])
    console.print(f"published rule set version {rules.version} ({len(rules.rules)} rules) to {names.RISK_RULES}")


@rules_cli.command("check")
def rules_check(path: Path) -> None:
    """Parse a rule file without publishing it."""
    from .domain.risk import RuleSet, RuleSetError
    try:
        rules = RuleSet.parse(path.read_text(encoding="utf-8"))
    except RuleSetError as exc:
        fail(f"{path}: {exc}")
    console.print(f"ok: version {rules.version}, {len(rules.rules)} rules")


@cli.command()
def decide(order_id: str, action: str = typer.Argument(..., help="approve or reject"),
           operator: str = typer.Option(..., help="Who decides."), reason: str = "") -> None:
    """Publish an operator's decision on a held order."""
    from . import kafka_io
    from .contracts import RiskDecision
    from .domain.holds import DecisionError, parse_decision
    from .topics import names
    try:  # the holds agent would ignore an invalid decision: refuse it here, where the operator sees why
        decision = parse_decision(RiskDecision(order_id=order_id, action=action, operator=operator, reason=reason,
                                               decided_at_ms=int(time.time() * 1000)))
    except DecisionError as exc:
        fail(str(exc))
    kafka_io.produce_all(kafka_io.producer(load_settings()),
                         [(names.RISK_DECISIONS, order_id.encode(), decision.encode(), None)])
    console.print(f"{action} {order_id} by {operator} published")


# ------------------------------------------------------------------------------- consistency

@reconcile_cli.command("states")
def reconcile_states(day: str = typer.Option(..., "--day", help="The business day to check, YYYY-MM-DD."),
                     utc_offset: float = typer.Option(8.0, help="The day's time zone as hours from UTC (China: 8)."),
                     out: Path = typer.Option(None, help="Report path (default var/consistency/states-<day>.json)."),
                     sink_url: str = typer.Option("", help="The sink's HTTP address (default: the local sink's port); "
                                                           "without a running sink the chDB data dir is read directly."),
                     target: float = typer.Option(99.997, help="Consistency target in percent (seed 003).")) -> None:
    """Seed 003's daily robot: per platform, the orders and latest states the platforms sent on DAY
    against what ClickHouse and Redis hold; prints the differences, writes them as JSON, and exits 3
    when the consistency ratio is below the target."""
    from datetime import date as date_type

    from .consistency import CheckError, backend_query, check_states, sink_query, write_report
    from .topics import names
    s = load_settings()
    try:
        the_day = date_type.fromisoformat(day)
    except ValueError:
        fail(f"--day must be YYYY-MM-DD, got {day!r}")
    url = sink_url or f"http://127.0.0.1:{s.sink_web_port}"
    backend = None
    try:
        try:
            sink_running = _sink_alive(url)
        except OSError:
            sink_running = False
        if sink_running:
            query = sink_query(url, token=s.sink_token)
        else:
            from .clickhouse.backends import BackendError, open_backend
            try:
                backend = open_backend(s)
            except BackendError as exc:
                fail(f"no sink answers at {url} and ClickHouse cannot be opened directly: {exc}")
            query = backend_query(backend)
        report = check_states(s, names, the_day, query, utc_offset, target / 100, group=names.ns + s.app_id)
    except CheckError as exc:
        fail(str(exc))
    finally:
        if backend is not None:
            backend.close()
    path = write_report(report, out or s.var / "consistency" / f"states-{the_day.isoformat()}.json")
    print_consistency(report, path)
    if not report["total"]["meets_target"]:
        raise typer.Exit(3)


def _sink_alive(url: str) -> bool:
    import urllib.request
    with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=3) as resp:
        return resp.status == 200


def print_consistency(report: dict, path: Path | None) -> None:
    table = Table("platform", "orders", "consistent", "ratio %", "target met", "differences", "dead letters",
                  title=f"state consistency {report['day']} (target {report['target_pct']} %)")
    rows = list(report["platforms"].items()) + [("TOTAL", report["total"])]
    for plat, r in rows:
        table.add_row(plat, str(r["orders"]), str(r["consistent"]), f"{r['ratio_pct']:.4f}",
                      "yes" if r["meets_target"] else "[red]no[/red]",
                      json.dumps(r["differences"]) if r["differences"] else "-", str(r["dead_letters"]))
    console.print(table)
    diffs = report["differences"]
    for d in diffs[:20]:
        console.print(json.dumps(d, ensure_ascii=False))
    if len(diffs) > 20:
        console.print(f"... {len(diffs) - 20} more differences in the report")
    if report.get("worker_lag_at_check"):
        console.print(f"[yellow]note:[/yellow] the worker had {report['worker_lag_at_check']} raw messages "
                      "still to process when the check ran")
    if path:
        console.print(f"report: {path}")

# ------------------------------------------------------------------------------- refunds

def _refund_action(refund_id: str, action: str, operator: str, reason: str = "", warehouse: str | None = None) -> None:
    """Validate an operator's action here, where the operator sees why it is refused, then publish it."""
    from . import kafka_io
    from .contracts import RefundAction
    from .domain.refunds import RefundError, parse_action
    from .topics import names
    try:
        parsed = parse_action(RefundAction(refund_id=refund_id, action=action, operator=operator,
                                           at_ms=int(time.time() * 1000), reason=reason, warehouse=warehouse))
    except RefundError as exc:
        fail(f"{exc} (nothing published)")
    tracker = kafka_io.produce_all(kafka_io.producer(load_settings()),
                                   [(names.REFUND_ACTIONS, refund_id.encode(), parsed.encode(), None)])
    if tracker.failed:
        fail(f"the broker refused the action: {tracker.failed[0]}")
    console.print(f"{action} {refund_id} by {parsed.operator} published")


_OPERATOR = typer.Option(..., help="Who does it (required: every refund action is audited).")


@refunds_cli.command("approve")
def refunds_approve(refund_id: str, operator: str = _OPERATOR, reason: str = "") -> None:
    """Approve a refund waiting for review: a return then waits for its goods, a refund-only is paid."""
    _refund_action(refund_id, "approve", operator, reason)


@refunds_cli.command("reject")
def refunds_reject(refund_id: str, operator: str = _OPERATOR,
                   reason: str = typer.Option("", help="Why (required).")) -> None:
    """Reject a refund under review or still waiting for its goods; its amount is freed."""
    _refund_action(refund_id, "reject", operator, reason)


@refunds_cli.command("cancel")
def refunds_cancel(refund_id: str, operator: str = _OPERATOR,
                   reason: str = typer.Option("", help="Why (required), e.g. the buyer withdrew it.")) -> None:
    """Cancel a refund that is not approved-and-paid yet (the buyer withdrew it)."""
    _refund_action(refund_id, "cancel", operator, reason)


@refunds_cli.command("receive")
def refunds_receive(refund_id: str, operator: str = _OPERATOR,
                    warehouse: str = typer.Option("", help="Where the goods came back to (default: the warehouse "
                                                           "the order was reserved in)."),
                    reason: str = "") -> None:
    """The returned goods arrived: back to stock (once), then the refund instruction goes to the platform."""
    _refund_action(refund_id, "receive", operator, reason, warehouse or None)


@refunds_cli.command("redrive")
def refunds_redrive(operator: str = _OPERATOR,
                    platform: str = typer.Option("", help="Only this platform's failures (e.g. JD)."),
                    from_beginning: bool = typer.Option(False, help="Ignore the saved position: every parked failure."),
                    dry_run: bool = False) -> None:
    """Send the parked (failed) refund instructions again, e.g. after a rotated API key was fixed.

    A run continues where the last one stopped; each refund is asked for once per run, and the
    agent sends only instructions that are still failed (the platform's API is idempotent by
    refund id), so every refund is paid exactly once."""
    from .redrive import redrive_failed_refunds
    from .topics import names
    if not operator.strip():
        fail("--operator must name who re-drives (nothing published)")
    report = redrive_failed_refunds(load_settings(), names, operator, platform=platform.upper(),
                                    from_beginning=from_beginning, dry_run=dry_run)
    console.print(str(report))


@refund_rules_cli.command("publish")
def refund_rules_publish(path: Path) -> None:
    """Validate a refund rule file and publish it; every worker switches within seconds."""
    from . import kafka_io
    from .domain.refund_rules import RefundRuleError, RefundRules
    from .topics import RuleSetText, names
    text = path.read_text(encoding="utf-8")
    try:
        rules = RefundRules.parse(text)
    except RefundRuleError as exc:
        fail(f"{path}: {exc} (nothing published; the active refund rules stay)")
    kafka_io.produce_all(kafka_io.producer(load_settings()),
                         [(names.REFUND_RULES, b"refund-rules", RuleSetText.encode(text), None)])
    console.print(f"published refund rules version {rules.version} ({len(rules.rules)} rules) to {names.REFUND_RULES}")


@refund_rules_cli.command("check")
def refund_rules_check(path: Path) -> None:
    """Parse a refund rule file without publishing it."""
    from .domain.refund_rules import RefundRuleError, RefundRules
    try:
        rules = RefundRules.parse(path.read_text(encoding="utf-8"))
    except RefundRuleError as exc:
        fail(f"{path}: {exc}")
    console.print(f"ok: version {rules.version}, {len(rules.rules)} auto-approval rules")


# ------------------------------------------------------------------------------- views

@cli.command()
def views(tier: str = typer.Argument(..., help="strategic, tactical or execution"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Render a monitoring tier, from the running sink's HTTP endpoint (or chDB directly if no sink runs)."""
    import urllib.error
    import urllib.request
    s = load_settings()
    if tier not in ("strategic", "tactical", "execution"):
        fail("tier must be strategic, tactical or execution")
    from .credentials import bearer_headers
    url = f"http://127.0.0.1:{s.sink_web_port}/views/{tier}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=bearer_headers(s)), timeout=30) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a running sink refused: say why rather than open chDB behind its back
        fail(f"the sink at {url} refused ({exc.code}): set ORDERSTREAM_SINK_TOKEN to a viewer's token")
    except OSError:
        from .clickhouse.backends import open_backend
        from .clickhouse.migrate import migrate
        from .clickhouse.tiers import TIERS
        backend = open_backend(s)
        migrate(backend)
        data = TIERS[tier](backend)
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    def render(title: str, rows) -> None:
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            table = Table(*rows[0].keys(), title=title)
            for row in rows[:50]:
                table.add_row(*(str(v) for v in row.values()))
            console.print(table)
        elif isinstance(rows, dict) and any(isinstance(v, list) for v in rows.values()):
            for part, value in rows.items():  # a section of sections (the refunds' queue, parked instructions)
                render(f"{title}.{part}", value)
        else:
            console.print(f"[bold]{title}[/bold] {json.dumps(rows, default=str)}")

    for section, rows in data.items():
        render(f"{tier}: {section}", rows)


# ------------------------------------------------------------------------------- settlement

def _default_operator() -> str:
    import getpass
    return os.environ.get("ORDERSTREAM_OPERATOR") or getpass.getuser()


def _settlement_backend(s):
    """ClickHouse for the settlement commands. The embedded chDB data directory belongs to one
    process: while a sink owns it, these commands refuse rather than open it a second time."""
    import urllib.request

    from .clickhouse.backends import open_backend
    from .clickhouse.migrate import migrate
    if s.clickhouse_backend == "chdb":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.sink_web_port}/health", timeout=2):
                fail("a sink owns the embedded chDB data directory: it reconciles each imported bill itself; "
                     "the queue is at /console/api/settlement/queue and resolving at POST "
                     "/console/api/settlement/resolve (operator token); or stop the sink (or use the "
                     "ClickHouse server backend) to use these commands")
        except OSError:
            pass
    backend = open_backend(s)
    migrate(backend)
    return backend


@settlement_cli.command("import")
def settlement_import(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
                      platform: str = typer.Option(..., "--platform", help="TMALL, JD, PINDUODUO, DOUYIN, "
                                                   "KUAISHOU, SHOPEE or SHOPIFY (its layout in schemas/settlement/)"),
                      operator: str = typer.Option(_default_operator, help="Who imports the bill (recorded)."),
                      report: Path = typer.Option(None, help="Dead-letter report (JSON); default "
                                                  "var/settlement/<file>.import.json")) -> None:
    """Validate a platform's settlement bill and publish its lines to settlement.bills (the sink lands
    them). Bad rows go to the report with their line numbers; good rows are published; a re-import of
    the same file repeats the same line keys, which change nothing."""
    from . import kafka_io
    from .settlement.bills import read_bill
    from .settlement.exceptions import LayoutError
    from .topics import names
    s = load_settings()
    try:
        result = read_bill(file.read_bytes(), platform, file.name, operator, int(time.time() * 1000))
    except LayoutError as exc:
        fail(str(exc))
    out = report or s.var / "settlement" / f"{file.name}.import.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.report(), ensure_ascii=False, indent=1) + "\n")
    if result.lines:
        kafka_io.ensure_topics(s, names)
        tracker = kafka_io.produce_all(kafka_io.producer(s), ((names.SETTLEMENT_BILLS, line.line_key.encode(),
                                                                line.encode(), None) for line in result.lines))
        if tracker.failed or tracker.delivered != len(result.lines):
            fail(f"{len(result.lines) - tracker.delivered} lines were not acknowledged by the broker: "
                 f"{tracker.failed[:3]}")
    for r in result.rejected:
        console.print(f"[yellow]line {r.line_no}[/yellow]: {r.reason}")
    console.print(f"{result.platform} {file.name}: {result.lines_read} lines read, {len(result.lines)} published, "
                  f"{len(result.rejected)} rejected (report {out}), imported by {operator}")


@reconcile_cli.command("settlement")
def reconcile_settlement(day: str = typer.Option(..., "--day", help="Bill day, YYYY-MM-DD."),
                         platform: str = typer.Option(None, "--platform", help="Only this platform."),
                         operator: str = typer.Option(_default_operator, help="Who runs it (recorded)."),
                         rules: Path = typer.Option(None, help="Rule set (YAML); default "
                                                    "pipeline/settlement/rules.yaml"),
                         report: Path = typer.Option(None, help="JSON report; default "
                                                     "var/settlement/reconcile-<day>.json"),
                         ) -> None:
    """Match a bill day against the ledger in ClickHouse, classify and record every difference."""
    from .settlement.engine import reconcile_day
    from .settlement.exceptions import SettlementError
    from .settlement.rules import load_rules
    s = load_settings()
    backend = _settlement_backend(s)
    try:
        result = reconcile_day(backend, load_rules(rules), day, operator, platform)
    except (SettlementError, ValueError) as exc:
        fail(str(exc))
    finally:
        backend.close()
    out = report or s.var / "settlement" / f"reconcile-{result['day']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    table = Table("platform", "currency", "settled", "ledger", "matched", "difference", "differences")
    for run in result["runs"]:
        for t in run["totals"]:
            table.add_row(run["platform"], t["currency"], str(t["settled_minor"]), str(t["ledger_minor"]),
                          str(t["matched_minor"]), str(t["difference_minor"]), str(t["differences"]))
    console.print(table)
    console.print(f"balanced: {result['balanced']}; report {out}")


@settlement_cli.command("queue")
def settlement_queue(day: str = typer.Option(None, "--day"), platform: str = typer.Option(None, "--platform"),
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """The open manual queue: differences above the write-off thresholds nobody has resolved."""
    from .settlement.queue import open_queue
    backend = _settlement_backend(load_settings())
    try:
        rows = open_queue(backend, day, platform)
    finally:
        backend.close()
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table("diff_key", "class", "currency", "diff_minor")
    for r in rows:
        table.add_row(r["diff_key"], r["class"], r["currency"], str(r["diff_minor"]))
    console.print(table)


@settlement_cli.command("resolve")
def settlement_resolve(diff_key: str,
                       operator: str = typer.Option(..., "--operator", help="Who resolves it (required)."),
                       reason: str = typer.Option(..., "--reason", help="Why (required).")) -> None:
    """Resolve one difference of the manual queue, naming who and why."""
    from .settlement.exceptions import ResolveError
    from .settlement.queue import resolve
    if not operator.strip():
        fail("a resolution names the person who made it (--operator)")
    backend = _settlement_backend(load_settings())
    try:
        done = resolve(backend, diff_key, operator, reason)
    except ResolveError as exc:
        fail(str(exc))
    finally:
        backend.close()
    console.print(f"{diff_key} resolved by {done['resolved_by']}: {done['reason']}")


@cli.command()
def config() -> None:
    """Every ORDERSTREAM_* setting, its default and meaning."""
    table = Table("variable", "default", "meaning")
    for row in settings_table():
        table.add_row(*row)
    console.print(table)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
