"""The Docker deployment files agree with the code: services, settings, ports, metric names.

No Docker engine is needed: these tests read docker-compose.yml, the Dockerfile, the
Prometheus config and alert rules and the Grafana provisioning and dashboard, and check them
against pipeline.config.Settings, the CLI and pipeline.metrics. Renaming a metric, a label,
a setting or a CLI command without updating the deployment makes one of them fail.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from pipeline import metrics
from pipeline.config import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
DEPLOY = PROJECT_ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orderstream.json"
ANALYST_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "analyst.json"
ROLLUP_TABLES = {"orders_hourly", "exceptions_15m", "warehouse_15m", "order_state"}

INFRA_SERVICES = {"kafka", "redis", "clickhouse", "prometheus", "grafana"}
ROLE_SERVICES = {"worker": "worker", "sink": "sink", "verifiers": "verifiers"}  # service -> CLI command
EXPECTED_SERVICES = INFRA_SERVICES | set(ROLE_SERVICES)

# Prometheus' own series and the labels every scraped sample gets.
PROMETHEUS_BUILTIN_METRICS = {"up"}
TARGET_LABELS = {"instance", "job"}

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan"}


# ---------------------------------------------------------------------------------- helpers

def load_yaml(path: Path):
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def exported_samples() -> set[str]:
    """Sample names a scrape really contains: `foo_total`, `foo_bucket`, ... but not the bare
    family name `foo` of a counter or histogram, which exported_metric_names() also lists."""
    names = metrics.exported_metric_names()
    suffixes = ("_total", "_bucket", "_count", "_sum", "_created")
    families = {n for n in names if any(n + s in names for s in suffixes)}
    return names - families


def metric_labels() -> dict[str, set[str]]:
    """Label names of every exported sample (histogram buckets add `le`)."""
    out: dict[str, set[str]] = {}
    registry = metrics.REGISTRY
    for collector, names in list(registry._collector_to_names.items()):  # noqa: SLF001 - no public listing
        labelnames = set(getattr(collector, "_labelnames", ()))
        for name in names:
            if name.startswith("orderstream_"):
                out[name] = labelnames | ({"le"} if name.endswith("_bucket") else set())
    return out


def _strip(expr: str, pattern: str) -> str:
    return re.sub(pattern, " ", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are neither functions, keywords,
    label names (inside {...} or by/without/on/ignoring (...)), durations nor numbers."""
    e = _strip(expr, r'"(?:[^"\\]|\\.)*"')            # string literals
    e = _strip(e, r"\{[^}]*\}")                        # label matchers
    e = _strip(e, r"\[[^\]]*\]")                       # range / subquery selectors
    e = _strip(e, r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
    e = _strip(e, r"(?<![A-Za-z_:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")  # numbers, 1e-9
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def promql_label_uses(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(metric, matcher label names) pairs and the labels named in by/without/on/ignoring."""
    selectors = [(m.group(1), set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2))))
                 for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr)]
    grouping = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return selectors, grouping


_SOURCE_LITERALS: set[str] | None = None


def source_literals() -> set[str]:
    """Every quoted word in pipeline/ and agents/: label values the code can emit come from these."""
    global _SOURCE_LITERALS
    if _SOURCE_LITERALS is None:
        found: set[str] = set()
        for folder in ("pipeline", "agents"):
            for path in (PROJECT_ROOT / folder).rglob("*.py"):
                found |= set(re.findall(r"[\"']([A-Za-z0-9_.-]+)[\"']", path.read_text(encoding="utf-8")))
        _SOURCE_LITERALS = found
    return _SOURCE_LITERALS


def label_values_used(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) for literal matchers on orderstream_* metrics; a regex matcher
    counts when it is a plain alternation like "a|b" (no Grafana variables, no wildcards)."""
    out = []
    for m in re.finditer(r"(orderstream_[A-Za-z0-9_]+)\s*\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2)):
            if op in ("=", "!="):
                out.append((m.group(1), label, value))
            elif re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value):
                out += [(m.group(1), label, v) for v in value.split("|")]
    return out


def problems_in(expr: str, where: str) -> list[str]:
    """Everything wrong with one expression, as readable messages (empty when it is fine)."""
    samples = exported_samples()
    labels = metric_labels()
    out = []
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}") \
            or expr.count("[") != expr.count("]"):
        out.append(f"{where}: unbalanced brackets in {expr!r}")
    named = promql_metric_names(expr)
    # the prefix regex on its own catches `orderstream_*` names hidden anywhere in the text
    named |= set(re.findall(r"\borderstream_[A-Za-z0-9_]+", _strip(expr, r'"(?:[^"\\]|\\.)*"')))
    if not named:
        out.append(f"{where}: selects no metric: {expr!r}")
    for name in sorted(named - samples - PROMETHEUS_BUILTIN_METRICS):
        out.append(f"{where}: {name} is not exported by pipeline/metrics.py")
    selectors, grouping = promql_label_uses(expr)
    for name, used in selectors:
        if name in labels:
            unknown = used - labels[name] - TARGET_LABELS
            if unknown:
                out.append(f"{where}: {name} has no label(s) {sorted(unknown)} (has {sorted(labels[name])})")
    available = set(TARGET_LABELS)
    for name in named:
        available |= labels.get(name, set())
    if grouping - available:
        out.append(f"{where}: groups by {sorted(grouping - available)}, which no selected metric carries")
    # a label value the code never writes selects nothing: the panel stays flat, the alert silent
    for name, label, value in label_values_used(expr):
        if value not in source_literals():
            out.append(f"{where}: {name}{{{label}=\"{value}\"}} - no code emits {value!r}")
    return out


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def walk_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels") or [])


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_expressions() -> list[str]:
    """The PromQL of every Prometheus query on the dashboard."""
    return [t["expr"] for p in walk_panels(load_dashboard()["panels"]) for t in p.get("targets") or ()
            if (t.get("datasource") or p.get("datasource") or {}).get("type") == "prometheus"]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


# ---------------------------------------------------------------------------------- compose

def test_compose_names_every_service_the_code_expects(services):
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_every_infra_service_has_a_healthcheck(services):
    for name in sorted(INFRA_SERVICES):
        check = services[name].get("healthcheck") or {}
        test = check.get("test")
        assert test and test not in (["NONE"], "NONE"), f"{name} has no healthcheck"
        if isinstance(test, list):
            assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, f"{name}: malformed healthcheck {test}"


def test_kafka_runs_single_node_kraft_from_the_pinned_release(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # KRaft refuses to format storage with a cluster id that is not 16 base64url-encoded bytes
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), env["CLUSTER_ID"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_clickhouse_creates_the_database_the_url_names(services):
    db = env_of(services["clickhouse"])["CLICKHOUSE_DB"]
    for role in ROLE_SERVICES:
        url = env_of(services[role]).get("ORDERSTREAM_CLICKHOUSE_URL")
        if url:
            assert urlparse(url).path.strip("/") == db, f"{role} points at another database than {db}"


def test_compose_env_vars_are_settings_fields(services):
    known = {f"ORDERSTREAM_{f.name.upper()}" for f in fields(Settings)}
    used = {(name, var) for name, svc in services.items() for var in env_of(svc) if var.startswith("ORDERSTREAM_")}
    assert used, "no ORDERSTREAM_* variable in docker-compose.yml"
    unknown = sorted(f"{name}: {var}" for name, var in used if var not in known)
    assert not unknown, f"not fields of pipeline.config.Settings: {unknown}"


def test_role_services_point_at_the_compose_servers(services, monkeypatch):
    import pipeline.config as config

    for name in ROLE_SERVICES:
        env = env_of(services[name])
        for var in [v for v in os.environ if v.startswith("ORDERSTREAM_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        s = config.load_settings()  # also proves every value casts to its field's type
        assert s.bootstrap == "kafka:9092", name
        assert s.redis == "redis://redis:6379/0", name
        assert s.clickhouse_backend == "server", name
        assert s.clickhouse_url == "http://default:@clickhouse:8123/orderstream", name
        if s.verifier_url:
            assert urlparse(s.verifier_url).hostname in services
            assert urlparse(s.verifier_url).port == s.verifier_port


def test_role_services_listen_beyond_their_own_container(services, monkeypatch):
    """Prometheus scrapes the workers and the sink, workers call the verifiers: in a container a
    server bound to the default loopback address is unreachable from every other container."""
    import pipeline.config as config

    for name in ROLE_SERVICES:
        for var in [v for v in os.environ if v.startswith("ORDERSTREAM_")]:
            monkeypatch.delenv(var)
        for var, value in env_of(services[name]).items():
            monkeypatch.setenv(var, value)
        assert config.load_settings().bind_host == "0.0.0.0", f"{name} listens on loopback only"


def test_role_services_run_existing_cli_commands_from_the_dockerfile_image(services):
    import typer

    from pipeline.cli import cli

    commands = set(typer.main.get_command(cli).commands)
    for name, command in ROLE_SERVICES.items():
        svc = services[name]
        assert svc.get("build", {}).get("dockerfile", "Dockerfile") == "Dockerfile"
        argv = svc["command"] if isinstance(svc["command"], list) else svc["command"].split()
        assert argv[:2] == ["orderstream", command], f"{name} runs {argv}"
        assert command in commands, f"`orderstream {command}` is not a CLI command"


def test_roles_wait_for_healthy_dependencies(services):
    needs = {"worker": {"kafka", "redis"}, "sink": {"kafka", "clickhouse"}}
    for role, deps in needs.items():
        depends = services[role].get("depends_on") or {}
        assert isinstance(depends, dict), f"{role}: depends_on needs the long form to wait for health"
        for dep in deps:
            assert depends.get(dep, {}).get("condition") == "service_healthy", f"{role} does not wait for {dep}"
            assert "healthcheck" in services[dep]


def test_mounted_host_paths_exist(services):
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"


# ---------------------------------------------------------------------------------- image

def test_dockerfile_installs_the_project_with_constraints():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install[^\n]*-c constraints\.txt[^\n]* \.(\s|$)", text), "pip install . with constraints"
    assert (PROJECT_ROOT / "constraints.txt").exists()
    copied = set(re.findall(r"^COPY\s+(\S+)", text, re.M))
    # the codecs load schemas/*.avsc from next to the package, so the image needs them
    for needed in ("pipeline", "agents", "schemas", "pyproject.toml"):
        assert any(needed in c for c in copied) or f" {needed}" in text, f"Dockerfile does not copy {needed}"


def test_dockerignore_keeps_what_the_build_copies():
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("pipeline", "agents", "schemas", "pyproject.toml", "constraints.txt", "README.md"):
        assert needed not in ignored, f".dockerignore drops {needed}, which the Dockerfile copies"
    assert {".venv", "var"} <= ignored


# ---------------------------------------------------------------------------------- prometheus

def _scrape_targets(job: dict) -> set[tuple[str, int]]:
    out = set()
    for sc in job.get("static_configs") or []:
        for target in sc["targets"]:
            host, port = target.rsplit(":", 1)
            out.add((host, int(port)))
    for sd in job.get("dns_sd_configs") or []:
        out |= {(n, int(sd["port"])) for n in sd["names"]}
    return out


def test_prometheus_scrapes_workers_and_sink_on_their_ports(services):
    config = load_yaml(PROMETHEUS)
    defaults = Settings()
    targets = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for host, port in _scrape_targets(job):
            targets[host] = port
    worker_port = int(env_of(services["worker"]).get("ORDERSTREAM_WORKER_WEB_PORT", defaults.worker_web_port))
    sink_port = int(env_of(services["sink"]).get("ORDERSTREAM_SINK_WEB_PORT", defaults.sink_web_port))
    assert targets.get("worker") == worker_port == defaults.worker_web_port
    assert targets.get("sink") == sink_port == defaults.sink_web_port


def test_prometheus_scrapes_the_sink_with_a_token_the_sink_gives_the_metrics_role(services):
    """Issue 26: the sink's /metrics needs a Bearer token; Prometheus reads it from the secret compose
    mounts, filled from the same variable the sink's metrics entry names."""
    config = load_yaml(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if ("sink", Settings().sink_web_port) in _scrape_targets(j)]
    auth = job.get("authorization") or {}
    assert auth.get("type", "Bearer") == "Bearer" and auth.get("credentials_file"), job
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in services["prometheus"].get("secrets", []), "the token file is not mounted into prometheus"
    compose = load_yaml(COMPOSE)
    variable = compose["secrets"][secret]["environment"]
    entries = env_of(services["sink"])["ORDERSTREAM_ACCESS_TOKENS"].split(",")
    assert any(e.startswith("metrics:prometheus:${" + variable + ":?") for e in entries), entries  # required, never empty


def test_the_sink_publishes_only_its_public_surface_beyond_loopback(services):
    sink_env = env_of(services["sink"])
    public = int(sink_env.get("ORDERSTREAM_PUBLIC_PORT", Settings().public_port))
    operator = int(sink_env.get("ORDERSTREAM_SINK_WEB_PORT", Settings().sink_web_port))
    published = {}
    for mapping in services["sink"].get("ports", []):
        parts = str(mapping).split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        published[int(parts[-1])] = host_ip
    assert published == {operator: "127.0.0.1", public: "0.0.0.0"}
    for name, svc in services.items():  # every other port of every service stays on loopback
        for mapping in svc.get("ports", []):
            if not (name == "sink" and int(str(mapping).split(":")[-1]) == public):
                assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"


def test_prometheus_loads_the_alert_file_compose_mounts(services):
    config = load_yaml(PROMETHEUS)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith(".")}
    for rule_file in config["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted into the prometheus container"
        assert (PROJECT_ROOT / mounts[rule_file]).resolve() == ALERTS.resolve()


def test_alert_rules_are_well_formed_and_cover_the_required_signals():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in rules:
        assert r["expr"].strip() and r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smhd]", r["for"]), r["alert"]
    exprs = [re.sub(r"\s+", " ", r["expr"]) for r in rules]

    def some(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert some(r"(deriv|increase|delta)\(orderstream_consumer_lag_messages\["), "consumer lag growing"
    assert some(r"orderstream_dead_letters_total"), "dead-letter rate"
    assert some(r"orderstream_breaker_state == 2"), "breaker open"
    assert some(r"orderstream_end_to_end_latency_seconds_bucket"), "SLA breach"
    assert some(r"rate\(orderstream_sink_failures_total\["), "sink failing"
    assert some(r'up\{job="orderstream-worker"\} == 0'), "worker down"


def test_alert_jobs_match_scrape_jobs():
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS)["scrape_configs"]}
    for r in alert_rules():
        for job in re.findall(r'job="([^"]+)"', r["expr"]):
            assert job in jobs, f"{r['alert']} filters on job {job!r}, which Prometheus does not scrape"


def test_alert_expressions_use_only_exported_metrics():
    problems = [p for r in alert_rules() for p in problems_in(r["expr"], r["alert"])]
    assert not problems, "\n".join(problems)


def test_metric_check_catches_a_renamed_metric_or_label():
    """The checker itself must be able to fail, or the two tests above prove nothing."""
    assert problems_in("sum(rate(orderstream_sink_failures_total[5m]))", "ok") == []
    renamed = problems_in("sum(rate(orderstream_sink_failure_total[5m]))", "renamed")
    assert any("orderstream_sink_failure_total" in p for p in renamed)
    bare_family = problems_in("rate(orderstream_dead_letters[5m])", "family")
    assert any("orderstream_dead_letters " in p for p in bare_family)
    unprefixed = problems_in("rate(dead_letters_total[5m]) > 0", "unprefixed")
    assert any("dead_letters_total" in p for p in unprefixed)
    wrong_label = problems_in('sum(rate(orderstream_dead_letters_total{channel="JD"}[5m]))', "label")
    assert any("channel" in p for p in wrong_label)
    wrong_value = problems_in('sum(rate(orderstream_reservations_total{outcome=~"reserved|sold_out"}[5m]))', "value")
    assert any("sold_out" in p for p in wrong_value)
    assert sql_problems("SELECT platform, sum(orders) AS n FROM orderstream.orders_hourly GROUP BY platform", "ok") == []
    assert sql_problems("SELECT sum(gmv) FROM orderstream.orders_hourly", "column")
    assert sql_problems("SELECT count() FROM orderstream.orders_daily", "table")
    wrong_grouping = problems_in("sum by (stage) (rate(orderstream_dead_letters_total[5m]))", "grouping")
    assert any("stage" in p for p in wrong_grouping)


# ---------------------------------------------------------------------------------- grafana

SQL_WORDS = {"select", "from", "where", "group", "by", "order", "as", "and", "or", "not", "interval",
             "day", "hour", "minute", "desc", "asc", "limit", "having", "in", "is", "null", "orderstream"}


def clickhouse_tables() -> dict[str, set[str]]:
    """table -> columns, from the sink's migrations (CREATE TABLE only; MVs write into these)."""
    tables = {}
    for path in sorted((PROJECT_ROOT / "pipeline" / "clickhouse" / "migrations").glob("*.sql")):
        sql = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        for m in re.finditer(r"CREATE TABLE IF NOT EXISTS\s+(\w+)\s*\((.*?)\)\s*ENGINE", sql, re.S):
            tables[m.group(1)] = {line.split()[0] for line in m.group(2).split(",\n") if line.strip()}
    return tables


def sql_problems(sql: str, where: str) -> list[str]:
    """A ClickHouse panel may only read tables and columns the sink's migrations create."""
    tables = clickhouse_tables()
    used = re.findall(r"\bFROM\s+(?:orderstream\.)?(\w+)", sql, re.I)
    out = [f"{where}: table {t} is not created by pipeline/clickhouse/migrations" for t in used if t not in tables]
    if not used:
        out.append(f"{where}: reads no table")
    columns = set().union(*(tables.get(t, set()) for t in used)) if used else set()
    aliases = set(re.findall(r"\bAS\s+(\w+)", sql, re.I))
    body = re.sub(r"'[^']*'", " ", sql)
    for m in re.finditer(r"[A-Za-z_]\w*", body):
        word = m.group(0)
        if (word.lower() in SQL_WORDS or word in aliases or word in used
                or body[m.end():].lstrip().startswith("(")):
            continue
        if word not in columns:
            out.append(f"{where}: {word} is not a column of {used}")
    return out


EXPECTED_PANEL_TITLES = {
    # strategic
    "Orders per minute by platform", "Channel share (unique orders)",
    # tactical
    "Dead letters by reason (15 min)", "Risk holds (15 min)", "Out of stock (15 min)",
    # execution
    "Held orders", "Processing latency p95/p99", "Breaker state",
    # SRE
    "Consumer lag by topic", "Stage throughput", "Sink batch latency", "Sink rows and failures", "Dependency up",
}


def test_dashboard_has_the_expected_panels_with_unique_ids(dashboard):
    panels = list(walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    titles = {p["title"] for p in panels}
    missing = EXPECTED_PANEL_TITLES - titles
    assert not missing, f"dashboard lacks panels {sorted(missing)}"
    assert dashboard["uid"] and dashboard["title"]


def test_dashboard_panels_do_not_overlap(dashboard):
    boxes = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        for other_title, o in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                       and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, f"{p['title']} overlaps {other_title}"
        boxes.append((p["title"], g))


def test_dashboard_queries_use_only_exported_metrics_on_the_provisioned_datasource(dashboard):
    uids = {ds["uid"] for ds in load_yaml(DATASOURCES)["datasources"]}
    problems, queries = [], 0
    for p in walk_panels(dashboard["panels"]):
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"{p['title']} has no query"
        for t in p["targets"]:
            ds = t.get("datasource") or p.get("datasource")
            assert ds and ds["uid"] in uids, f"{p['title']}: datasource {ds} is not provisioned"
            queries += 1
            if ds["type"] == "prometheus":
                problems += problems_in(t["expr"], f"{p['title']}/{t['refId']}")
            else:
                problems += sql_problems(t["rawSql"], f"{p['title']}/{t['refId']}")
    for var in dashboard.get("templating", {}).get("list", []):
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        for name in re.findall(r"\borderstream_[A-Za-z0-9_]+", query):
            if name not in exported_samples():
                problems.append(f"variable {var['name']}: {name} is not exported")
    assert queries >= len(EXPECTED_PANEL_TITLES)
    assert not problems, "\n".join(problems)


def compose_value(value: str) -> str:
    """A compose environment value as compose sees it with nothing set: `${X:-d}` / `${X-d}` -> d."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def grafana_value(value, env: dict[str, str]):
    """A provisioning value after Grafana's `$VAR` / `${VAR}` lookup in its environment; a name
    the environment lacks is an error here (Grafana would silently use an empty string)."""
    if not isinstance(value, str):
        return value

    def look_up(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"provisioning uses ${name}, which grafana's environment in docker-compose.yml lacks"
        return compose_value(env[name])
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", look_up, value)


def test_grafana_provisioning_points_at_compose_services_and_the_mounted_dashboards(services):
    datasources = load_yaml(DATASOURCES)["datasources"]
    prom = urlparse(next(ds for ds in datasources if ds["type"] == "prometheus")["url"])
    assert prom.hostname in services and prom.port == 9090
    grafana_env = env_of(services["grafana"])
    clickhouses = [ds for ds in datasources if ds["type"] == "grafana-clickhouse-datasource"]
    assert {ds["uid"] for ds in clickhouses} == {"orderstream-clickhouse", "orderstream-analyst"}
    for ds in clickhouses:
        data = {k: grafana_value(v, grafana_env) for k, v in ds["jsonData"].items()}
        assert data["host"] in services, ds["name"]
        assert data["port"] == 8123 and data["protocol"] == "http", ds["name"]
        if data["host"] == "clickhouse":
            assert data["defaultDatabase"] == env_of(services["clickhouse"])["CLICKHOUSE_DB"], ds["name"]
        grafana_value(ds.get("secureJsonData", {}).get("password", ""), grafana_env)
    mounts = {}
    for v in services["grafana"]["volumes"]:
        source, _, rest = v.partition(":")
        if source.startswith("."):
            mounts[rest.split(":")[0]] = (PROJECT_ROOT / source).resolve()
    assert mounts.get("/etc/grafana/provisioning") == (DEPLOY / "grafana" / "provisioning").resolve()
    for provider in load_yaml(DASHBOARD_PROVIDERS)["providers"]:
        assert mounts.get(provider["options"]["path"]) == DASHBOARD.parent.resolve()



# ---------------------------------------------------------------------------------- analyst dashboard

@pytest.fixture(scope="module")
def analyst_dashboard() -> dict:
    return json.loads(ANALYST_DASHBOARD.read_text(encoding="utf-8"))


def test_analyst_dashboard_reads_real_rollup_columns_on_the_analyst_datasource(analyst_dashboard):
    provisioned = {ds["uid"]: ds for ds in load_yaml(DATASOURCES)["datasources"]}
    panels = list(walk_panels(analyst_dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and analyst_dashboard["uid"] != load_dashboard()["uid"]
    assert len(panels) >= 5
    problems = []
    for p in panels:
        assert p.get("targets"), f"{p['title']} has no query"
        for t in p["targets"]:
            ds = t.get("datasource") or p.get("datasource")
            assert ds == {"type": "grafana-clickhouse-datasource", "uid": "orderstream-analyst"}, p["title"]
            assert provisioned[ds["uid"]]["type"] == ds["type"]
            problems += sql_problems(t["rawSql"], f"{p['title']}/{t['refId']}")
            tables = set(re.findall(r"\bFROM\s+(\w+)", t["rawSql"], re.I))
            assert tables and tables <= ROLLUP_TABLES, f"{p['title']} reads {tables}, not only the rollups"
    assert not problems, "\n".join(problems)
    assert {t for p in panels for t in re.findall(r"\bFROM\s+(\w+)", p["targets"][0]["rawSql"])} == ROLLUP_TABLES


def test_analyst_dashboard_panels_do_not_overlap(analyst_dashboard):
    boxes = []
    for p in analyst_dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        for other_title, o in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                       and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, f"{p['title']} overlaps {other_title}"
        boxes.append((p["title"], g))


def test_analyst_datasource_timeouts_outlast_the_analyst_limit():
    """The plugin reads dialTimeout and queryTimeout as whole seconds in strings (strconv.Atoi) and
    sends each deadline + 5 s as max_execution_time, which the sink's interface clamps to its limit.
    The query timeout outlasts a slot wait plus a run (each up to the limit), so the interface's own
    error reaches the panel first."""
    ds = next(d for d in load_yaml(DATASOURCES)["datasources"] if d["uid"] == "orderstream-analyst")
    timeouts = {k: ds["jsonData"][k] for k in ("dialTimeout", "queryTimeout")}
    assert all(isinstance(v, str) and v.isdigit() and int(v) > 0 for v in timeouts.values()), timeouts
    assert int(timeouts["queryTimeout"]) > 2 * Settings().analyst_max_execution_s, timeouts
