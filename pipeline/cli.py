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
cli.add_typer(stack_cli, name="stack")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(rules_cli, name="rules")
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
                                          "chromium-driver (the console's browser tests) when missing.")) -> None:
    """Install what is missing and start Kafka and Redis (idempotent)."""
    from .devtools import stack
    from .kafka_io import TopicError, ensure_topics
    from .topics import names
    s = load_settings()
    try:
        rows = stack.up(s, browser=browser)
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
    from .app import app

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
           report: Path = typer.Option(PROJECT_ROOT / "var" / "replay-report.json", help="JSON report path."),
           drain_timeout: float = 300.0) -> None:
    """Produce a Black Friday replay into the running pipeline and reconcile every message."""
    from rich.progress import Progress

    from .devtools.fake_orders import ReplayMix
    from .devtools.replay import ReplayConfig, run_replay, write_report
    from .topics import names
    s = load_settings()
    mix = ReplayMix(redelivery=redelivery, update=update, malformed=malformed, high_value=high_value,
                    remote=remote, ip_burst=ip_burst)
    cfg = ReplayConfig(count=count, seed=seed, speed=speed, rate_per_min=rate_per_min or None, mix=mix,
                       drain_timeout_s=drain_timeout)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("producing", total=count)
        result = run_replay(s, names, names.ns + s.app_id, cfg, lambda n: progress.advance(task, n))
    write_report(result, report)
    print_report(result, report)
    if not result["balanced"]:
        raise typer.Exit(2)


def print_report(result: dict, path: Path | None) -> None:
    table = Table("measure", "value", title="replay reconciliation")
    for key in ("produced", "canonical", "dead_lettered", "deduplicated_dropped", "unique_new_orders",
                "unique_updates", "flagged", "held", "approved", "auto_released", "rejected", "awaiting_decision",
                "rechecked", "accepted_new_orders", "reserved", "out_of_stock", "released", "raw_lost",
                "raw_doubled", "new_orders_emitted_twice", "unaccounted_new_orders", "elapsed_s",
                "throughput_msgs_per_s", "latency_ms", "breaker_transitions", "worker_peak_rss_mb", "balanced"):
        if key in result:
            table.add_row(key, json.dumps(result[key]) if isinstance(result[key], (dict, list)) else str(result[key]))
    console.print(table)
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
        host = "127.0.0.1" if s.bind_host in ("0.0.0.0", "::", "") else s.bind_host
        if operator is not None:
            console.print(f"operator token (approve, reject, re-drive): {operator[1]}  (operator {operator[0]})")
        else:
            console.print("operator tokens: ORDERSTREAM_OPERATOR_TOKENS / ORDERSTREAM_OPERATOR_TOKENS_FILE")
        if keep:
            console.print("worker, sink and verifiers keep running; stop everything with "
                          "[bold].venv/bin/orderstream stack down[/bold]")
        console.print(f"console: http://{host}:{s.sink_web_port}/console/" if keep else
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
    query = "SELECT count() AS order_events FROM order_events"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.sink_web_port}/sql?q={urllib.parse.quote(query)}",
                                    timeout=10) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


# ------------------------------------------------------------------------------- dead letters

@dlq_cli.command("replay")
def dlq_replay(reason: str = typer.Option("", help="Only dead letters with this reason code."),
               from_beginning: bool = typer.Option(False, help="Ignore the saved position: look at every dead letter."),
               dry_run: bool = False) -> None:
    """Re-drive dead letters onto their source raw topics after a fix.

    A run continues where the last one stopped (a saved group position), so nothing is re-driven
    twice by accident; letters skipped by --reason stay in the topic and can be re-driven later
    with --from-beginning."""
    from .redrive import redrive_dead_letters
    from .topics import names
    report = redrive_dead_letters(load_settings(), names, reason=reason, from_beginning=from_beginning,
                                  dry_run=dry_run)
    console.print(str(report))


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


# ------------------------------------------------------------------------------- views

@cli.command()
def views(tier: str = typer.Argument(..., help="strategic, tactical or execution"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Render a monitoring tier, from the running sink's HTTP endpoint (or chDB directly if no sink runs)."""
    import urllib.request
    s = load_settings()
    if tier not in ("strategic", "tactical", "execution"):
        fail("tier must be strategic, tactical or execution")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.sink_web_port}/views/{tier}", timeout=30) as resp:
            data = json.loads(resp.read())
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
    for section, rows in data.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            table = Table(*rows[0].keys(), title=f"{tier}: {section}")
            for row in rows[:50]:
                table.add_row(*(str(v) for v in row.values()))
            console.print(table)
        else:
            console.print(f"[bold]{tier}: {section}[/bold] {json.dumps(rows, default=str)}")


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
