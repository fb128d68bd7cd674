"""Risk rules as data: parse a YAML rule set, evaluate an order against it, route approvals.

Operations change rules without a deploy, so everything a rule needs is in the YAML and every
rule is validated when the text is parsed: a bad file raises `RuleSetError` naming the rule and
the problem, and the caller keeps its old rule set. Parsing compiles each rule into a small
closure so `evaluate` is a tight loop over precomputed checks (no YAML, no lookups per order).

State that needs a store (orders per IP inside a window, external verifier outcomes, whether
the breaker is open) is measured by the agent and handed in as a `RiskContext`; this module
stays pure.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from pipeline.contracts import RuleHit

from .platforms import currency_exponent  # the same minor-unit table normalize uses
from .rule_files import versioned_mapping

SEVERITIES = ("low", "medium", "high")
ACTIONS = ("flag", "hold", "reject")
VERDICT_ACTIONS = ("accept", "hold", "reject")
_ACTION_RANK = {"flag": 0, "hold": 1, "reject": 2}
_VERDICT_OF_RANK = {0: "accept", 1: "hold", 2: "reject"}
DOMESTIC_COUNTRY = "CN"
KNOWN_NOTE_FLAGS = ("invoice", "gift", "urgent", "gift_card")
# fields a cross-border declaration template may require (paths into schemas/order.avsc)
DECLARATION_FIELDS = frozenset({
    "address.province", "address.city", "address.district", "address.detail", "address.postal_code",
    "buyer.name", "buyer.phone", "buyer.buyer_id", "note", "lines[].title", "lines[].sku",
})
_RULE_KEYS = {"id", "kind", "severity", "action", "expensive", "enabled", "description", "params"}
_TOP_KEYS = {"version", "description", "fx_to_cny", "rules", "routing"}
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

DEFAULT_RULES_FILE = Path(__file__).with_name("risk_rules.yaml")


class RuleSetError(ValueError):
    """A rule set that cannot be used; the message names the rule and the problem."""


@dataclass(frozen=True)
class RiskContext:
    ip_order_count: int = 0          # orders from this buyer IP inside the window, this one included
    degraded: bool = False           # breaker open: skip expensive rules
    verifier_results: dict = field(default_factory=dict)  # name -> True/False, None = not checked


@dataclass(frozen=True)
class Verdict:
    action: str                       # accept | hold | reject (strongest hit wins)
    hits: tuple[RuleHit, ...] = ()
    approvers: tuple[str, ...] = ()   # who must decide; only for holds
    skipped: tuple[str, ...] = ()     # rule ids skipped because degraded
    ruleset_version: int = 0
    amount_minor: int = 0
    currency: str = ""

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(h.rule_id for h in self.hits)

    @property
    def checked_lightly(self) -> bool:
        return bool(self.skipped)

    @property
    def severity(self) -> str:
        """Highest severity among hits ('' when none); strings do not sort by severity."""
        return max((h.severity for h in self.hits), key=SEVERITIES.index, default="")


# A compiled check returns None (no hit) or the human reason for the hit.
Check = Callable[[dict, RiskContext], "str | None"]


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    severity: str
    action: str
    expensive: bool = False
    params: dict = field(default_factory=dict)
    enabled: bool = True
    description: str = ""
    check: Check | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "severity": self.severity, "action": self.action,
               "expensive": self.expensive, "enabled": self.enabled, "params": self.params}
        if self.description:
            out["description"] = self.description
        return out


# --------------------------------------------------------------------------- money


def to_cny_minor(amount_minor: int, currency: str, fx_to_cny: dict[str, float]) -> int | None:
    """Amount in CNY fen, or None when the currency has no rate (the caller then skips)."""
    if currency == "CNY":
        return amount_minor
    rate = fx_to_cny.get(currency)
    if rate is None:
        return None
    units = amount_minor / 10 ** currency_exponent(currency)
    return round(units * rate * 100)


def _amount_over(order: dict, thresholds: dict[str, int], fx: dict[str, float]) -> tuple[bool, str] | None:
    """(above?, description) against a per-currency threshold; None when not comparable."""
    amount = order["amounts"]["total_minor"]
    currency = _currency_of(order)
    limit = thresholds.get(currency)
    if limit is not None:
        return amount > limit, f"total {amount} {currency} minor > {limit}"
    cny_limit = thresholds.get("CNY")
    if cny_limit is None:
        return None
    cny = to_cny_minor(amount, currency, fx)
    if cny is None:
        return None
    return cny > cny_limit, f"total {amount} {currency} minor (= {cny} CNY minor) > {cny_limit}"


def _currency_of(order: dict) -> str:
    # the canonical schema keeps currency at top level; tolerate it inside amounts too
    return order.get("currency") or order["amounts"].get("currency", "")


# --------------------------------------------------------------------------- params helpers


class _Params:
    """Reads one rule's params, collecting the rule id into every error."""

    def __init__(self, rule_id: str, kind: str, params: Any, allowed: set[str], label: str = "") -> None:
        self.rule_id, self.kind = rule_id, kind
        self.label = label or f"rule {rule_id!r} ({kind})"
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise self.error(f"params must be a mapping, got {type(params).__name__}")
        unknown = set(params) - allowed
        if unknown:
            raise self.error(f"unknown params {sorted(unknown)} (allowed: {sorted(allowed)})")
        self.raw = params

    def error(self, problem: str) -> RuleSetError:
        return RuleSetError(f"{self.label}: {problem}")

    def positive_int(self, name: str, default: int | None = None) -> int:
        value = self.raw.get(name, default)
        if value is None:
            raise self.error(f"missing param {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(f"param {name!r} must be a positive integer, got {value!r}")
        return value

    def str_list(self, name: str, default: list | None = None) -> list[str]:
        value = self.raw.get(name, default)
        if value is None:
            raise self.error(f"missing param {name!r}")
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.error(f"param {name!r} must be a non-empty list of strings, got {value!r}")
        return [v.strip() for v in value]

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        choices = tuple(choices)
        value = self.raw.get(name, default)
        if value is None:
            raise self.error(f"missing param {name!r}")
        if value not in choices:
            raise self.error(f"param {name!r} must be one of {list(choices)}, got {value!r}")
        return value


def _threshold_map(p: _Params, name: str, default: dict | None = None) -> dict[str, int]:
    """`threshold_minor: 500000` (CNY) or `threshold_minor: {CNY: 500000, USD: 70000}`."""
    value = p.raw.get(name, default)
    if value is None:
        raise p.error(f"missing param {name!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"CNY": value}
    if not isinstance(value, dict) or not value:
        raise p.error(f"param {name!r} must be an integer (CNY minor) or a currency -> minor map, got {value!r}")
    out = {}
    for cur, limit in value.items():
        if not isinstance(cur, str) or not re.fullmatch(r"[A-Z]{3}", cur):
            raise p.error(f"param {name!r}: {cur!r} is not an ISO 4217 currency code")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise p.error(f"param {name!r}: threshold for {cur} must be a non-negative integer, got {limit!r}")
        out[cur] = limit
    return out


def _fx_table(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RuleSetError(f"{where}: fx_to_cny must be a currency -> rate map")
    out = {}
    for cur, rate in value.items():
        if not isinstance(cur, str) or not re.fullmatch(r"[A-Z]{3}", cur):
            raise RuleSetError(f"{where}: fx_to_cny key {cur!r} is not an ISO 4217 currency code")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            raise RuleSetError(f"{where}: fx_to_cny rate for {cur} must be a positive number, got {rate!r}")
        out[cur] = float(rate)
    return out


# --------------------------------------------------------------------------- rule kinds
# Each builder validates params and returns (normalised params, check, default expensive).


def _build_amount_above(p: _Params, fx: dict[str, float]):
    thresholds = _threshold_map(p, "threshold_minor", {"CNY": 500_000})
    fx = {**fx, **_fx_table(p.raw.get("fx_to_cny"), f"rule {p.rule_id!r} ({p.kind})")}

    def check(order: dict, ctx: RiskContext) -> str | None:
        result = _amount_over(order, thresholds, fx)
        if result is not None and result[0]:
            return result[1]
        return None

    params = {"threshold_minor": thresholds}
    if "fx_to_cny" in p.raw:
        params["fx_to_cny"] = p.raw["fx_to_cny"]
    return params, check, False


def _build_remote_region(p: _Params, fx):
    provinces = tuple(p.str_list("provinces"))
    countries = frozenset(p.str_list("countries", [DOMESTIC_COUNTRY]))

    def check(order: dict, ctx: RiskContext) -> str | None:
        address = order["address"]
        if address.get("country") not in countries:
            return None
        province = (address.get("province") or "").strip()
        # prefix match: "新疆" also covers the official "新疆维吾尔自治区"
        if province and province.startswith(provinces):
            return f"delivery to remote region {province}"
        return None

    return {"provinces": list(provinces), "countries": sorted(countries)}, check, False


def _build_ip_burst(p: _Params, fx):
    min_orders = p.positive_int("min_orders", 5)
    window_s = p.positive_int("window_s", 3600)

    def check(order: dict, ctx: RiskContext) -> str | None:
        if ctx.ip_order_count >= min_orders and order["buyer"].get("ip"):
            return f"{ctx.ip_order_count} orders from IP {order['buyer']['ip']} within {window_s}s (>= {min_orders})"
        return None

    return {"min_orders": min_orders, "window_s": window_s}, check, False


def _build_gift_card(p: _Params, fx):
    def check(order: dict, ctx: RiskContext) -> str | None:
        if order["flags"].get("gift_card"):
            return "gift-card order needs a second confirmation"
        for line in order["lines"]:
            if line.get("is_gift_card"):
                return f"gift-card line {line['sku']} needs a second confirmation"
        return None

    return {}, check, False


def _build_note_flag(p: _Params, fx):
    flags = tuple(p.str_list("flags", ["invoice", "gift", "urgent"]))
    for flag in flags:
        if flag not in KNOWN_NOTE_FLAGS:
            raise p.error(f"unknown flag {flag!r} (known: {list(KNOWN_NOTE_FLAGS)})")

    def check(order: dict, ctx: RiskContext) -> str | None:
        order_flags = order["flags"]
        found = [f for f in flags if order_flags.get(f)]
        return f"buyer note asks for: {', '.join(found)}" if found else None

    return {"flags": list(flags)}, check, False


def _field_value(order: dict, path: str):
    if path.startswith("lines[]."):
        key = path[len("lines[]."):]
        return [line.get(key) for line in order["lines"]]
    if "." in path:
        record, key = path.split(".", 1)
        return (order.get(record) or {}).get(key)
    return order.get(path)


def _is_missing(value) -> bool:
    if isinstance(value, list):  # every line must carry the field
        return not value or any(_is_missing(v) for v in value)
    return value is None or (isinstance(value, str) and not value.strip())


def _build_cross_border(p: _Params, fx):
    domestic = frozenset(p.str_list("domestic", [DOMESTIC_COUNTRY]))
    raw_templates = p.raw.get("templates")
    if not isinstance(raw_templates, dict) or not raw_templates:
        raise p.error("param 'templates' must map country codes (or '*') to lists of required fields")
    templates: dict[str, tuple[str, ...]] = {}
    for country, fields_ in raw_templates.items():
        if not isinstance(country, str) or not (country == "*" or re.fullmatch(r"[A-Z]{2}", country)):
            raise p.error(f"template key {country!r} is not an ISO 3166-1 alpha-2 code or '*'")
        if not isinstance(fields_, list) or not fields_:
            raise p.error(f"template {country!r} must be a non-empty list of fields")
        for f in fields_:
            if f not in DECLARATION_FIELDS:
                raise p.error(f"template {country!r}: unknown field {f!r} (known: {sorted(DECLARATION_FIELDS)})")
        templates[country] = tuple(fields_)
    fallback = templates.get("*")

    def check(order: dict, ctx: RiskContext) -> str | None:
        country = order["address"].get("country") or ""
        if country in domestic:
            return None
        template = templates.get(country, fallback)
        if template is None:
            return None
        missing = [f for f in template if _is_missing(_field_value(order, f))]
        if missing:
            return f"cross-border to {country or '??'}: declaration template misses {', '.join(missing)}"
        return None

    return ({"domestic": sorted(domestic), "templates": {k: list(v) for k, v in templates.items()}},
            check, False)


VERIFIER_NAMES = ("payment", "address")


def _build_verifier(p: _Params, fx):
    name = p.choice("name", VERIFIER_NAMES)
    on_unavailable = p.choice("on_unavailable", ("accept", "flag"), "accept")

    def check(order: dict, ctx: RiskContext) -> str | None:
        outcome = ctx.verifier_results.get(name)
        if outcome is False:
            return f"{name} verification failed"
        if outcome is None and on_unavailable == "flag":
            return f"{name} verification unavailable"
        return None

    return {"name": name, "on_unavailable": on_unavailable}, check, True


def _build_blocked_ip(p: _Params, fx):
    entries = p.str_list("ips")
    exact: set[str] = set()
    networks = []
    for entry in entries:
        try:
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                exact.add(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise p.error(f"{entry!r} is not an IP address or CIDR network") from None

    def check(order: dict, ctx: RiskContext) -> str | None:
        ip = order["buyer"].get("ip")
        if not ip:
            return None
        if ip in exact:
            return f"IP {ip} is blocked"
        if networks:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return None
            for net in networks:
                if addr.version == net.version and addr in net:
                    return f"IP {ip} is in blocked network {net}"
        return None

    return {"ips": entries}, check, False


_KINDS: dict[str, tuple[set[str], Callable]] = {
    "amount_above": ({"threshold_minor", "fx_to_cny"}, _build_amount_above),
    "remote_region": ({"provinces", "countries"}, _build_remote_region),
    "ip_burst": ({"min_orders", "window_s"}, _build_ip_burst),
    "gift_card": (set(), _build_gift_card),
    "note_flag": ({"flags"}, _build_note_flag),
    "cross_border": ({"domestic", "templates"}, _build_cross_border),
    "verifier": ({"name", "on_unavailable"}, _build_verifier),
    "blocked_ip": ({"ips"}, _build_blocked_ip),
}
RULE_KINDS = tuple(_KINDS)


def _build_rule(raw: Any, index: int, fx: dict[str, float]) -> Rule:
    if not isinstance(raw, dict):
        raise RuleSetError(f"rule #{index + 1}: must be a mapping, got {type(raw).__name__}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
        raise RuleSetError(f"rule #{index + 1}: 'id' must be a short lower-case identifier, got {rule_id!r}")
    where = f"rule {rule_id!r}"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleSetError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_RULE_KEYS)})")
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise RuleSetError(f"{where}: unknown kind {kind!r} (known: {list(_KINDS)})")
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise RuleSetError(f"{where}: severity must be one of {list(SEVERITIES)}, got {severity!r}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise RuleSetError(f"{where}: action must be one of {list(ACTIONS)}, got {action!r}")
    for flag in ("expensive", "enabled"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise RuleSetError(f"{where}: {flag!r} must be true or false, got {raw[flag]!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RuleSetError(f"{where}: 'description' must be text")
    allowed, builder = _KINDS[kind]
    params, check, expensive_default = builder(_Params(rule_id, kind, raw.get("params"), allowed), fx)
    return Rule(id=rule_id, kind=kind, severity=severity, action=action,
                expensive=raw.get("expensive", expensive_default), params=params,
                enabled=raw.get("enabled", True), description=description, check=check)


# --------------------------------------------------------------------------- routing

_ROUTE_CONDITIONS = {"amount_above_minor", "any_custom_line", "any_gift_card", "cross_border",
                     "rule_ids", "min_severity"}
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Route:
    approvers: tuple[str, ...]
    also: bool                     # adds to the primary approvers instead of replacing the default
    test: Callable[[dict, tuple[RuleHit, ...]], bool] = field(compare=False, repr=False)
    when: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Routing:
    default: tuple[str, ...] = ("risk_ops",)
    routes: tuple[Route, ...] = ()


def _build_route(raw: Any, index: int, fx: dict[str, float], rule_ids: set[str]) -> Route:
    where = f"routing route #{index + 1}"
    if not isinstance(raw, dict) or set(raw) - {"when", "approvers", "also", "description"}:
        raise RuleSetError(f"{where}: must be a mapping with 'when', 'approvers' and optional 'also'")
    approvers = raw.get("approvers")
    if not isinstance(approvers, list) or not approvers or not all(isinstance(a, str) and a for a in approvers):
        raise RuleSetError(f"{where}: 'approvers' must be a non-empty list of names")
    also = raw.get("also", False)
    if not isinstance(also, bool):
        raise RuleSetError(f"{where}: 'also' must be true or false")
    when = raw.get("when")
    if not isinstance(when, dict) or not when:
        raise RuleSetError(f"{where}: 'when' must be a non-empty mapping of conditions")
    unknown = set(when) - _ROUTE_CONDITIONS
    if unknown:
        raise RuleSetError(f"{where}: unknown conditions {sorted(unknown)} (known: {sorted(_ROUTE_CONDITIONS)})")

    tests: list[Callable[[dict, tuple], bool]] = []
    if "amount_above_minor" in when:
        p = _Params(where, "route", {"amount_above_minor": when["amount_above_minor"]}, {"amount_above_minor"},
                    label=where)
        thresholds = _threshold_map(p, "amount_above_minor")
        tests.append(lambda o, h: bool((r := _amount_over(o, thresholds, fx)) and r[0]))
    for cond, probe in (("any_custom_line", lambda o: any(l.get("is_custom") for l in o["lines"])),
                        ("any_gift_card", lambda o: bool(o["flags"].get("gift_card"))
                         or any(l.get("is_gift_card") for l in o["lines"])),
                        ("cross_border", lambda o: o["address"].get("country") != DOMESTIC_COUNTRY)):
        if cond in when:
            wanted = when[cond]
            if not isinstance(wanted, bool):
                raise RuleSetError(f"{where}: {cond!r} must be true or false")
            tests.append(lambda o, h, probe=probe, wanted=wanted: probe(o) == wanted)
    if "rule_ids" in when:
        ids = when["rule_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise RuleSetError(f"{where}: 'rule_ids' must be a non-empty list of rule ids")
        missing = [i for i in ids if i not in rule_ids]
        if missing:
            raise RuleSetError(f"{where}: 'rule_ids' names unknown rules {missing}")
        wanted_ids = frozenset(ids)
        tests.append(lambda o, h: any(x.rule_id in wanted_ids for x in h))
    if "min_severity" in when:
        sev = when["min_severity"]
        if sev not in SEVERITIES:
            raise RuleSetError(f"{where}: 'min_severity' must be one of {list(SEVERITIES)}")
        floor = _SEVERITY_RANK[sev]
        tests.append(lambda o, h: any(_SEVERITY_RANK[x.severity] >= floor for x in h))

    def test(order: dict, hits: tuple[RuleHit, ...]) -> bool:
        return all(t(order, hits) for t in tests)

    return Route(approvers=tuple(approvers), also=also, test=test, when=dict(when))


def _build_routing(raw: Any, fx: dict[str, float], rule_ids: set[str]) -> Routing:
    if raw is None:
        return Routing()
    if not isinstance(raw, dict) or set(raw) - {"default", "routes"}:
        raise RuleSetError("routing: must be a mapping with 'default' and 'routes'")
    default = raw.get("default", ["risk_ops"])
    if not isinstance(default, list) or not default or not all(isinstance(a, str) and a for a in default):
        raise RuleSetError("routing: 'default' must be a non-empty list of approver names")
    routes = raw.get("routes") or []
    if not isinstance(routes, list):
        raise RuleSetError("routing: 'routes' must be a list")
    return Routing(default=tuple(default),
                   routes=tuple(_build_route(r, i, fx, rule_ids) for i, r in enumerate(routes)))


# --------------------------------------------------------------------------- rule set


@dataclass(frozen=True)
class RuleSet:
    version: int
    rules: tuple[Rule, ...]
    source_text: str = ""
    routing: Routing = field(default_factory=Routing)
    fx_to_cny: dict = field(default_factory=dict)
    description: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> "RuleSet":
        """Validate and compile YAML text; any problem raises RuleSetError."""
        data, version, text = versioned_mapping(text, "rule set", _TOP_KEYS, RuleSetError, "'version' and 'rules'")
        fx = _fx_table(data.get("fx_to_cny"), "rule set")
        raw_rules = data.get("rules")
        if not isinstance(raw_rules, list):
            raise RuleSetError("rule set: 'rules' must be a list")
        rules = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_rules):
            rule = _build_rule(raw, i, fx)
            if rule.id in seen:
                raise RuleSetError(f"rule {rule.id!r}: duplicate id")
            seen.add(rule.id)
            rules.append(rule)
        routing = _build_routing(data.get("routing"), fx, seen)
        description = data.get("description", "")
        return cls(version=version, rules=tuple(rules), source_text=text, routing=routing,
                   fx_to_cny=fx, description=description if isinstance(description, str) else "")

    def to_text(self) -> str:
        """The text to publish on the rules topic (what operators wrote, comments included)."""
        if self.source_text:
            return self.source_text
        data: dict = {"version": self.version}
        if self.fx_to_cny:
            data["fx_to_cny"] = self.fx_to_cny
        data["rules"] = [r.to_json() for r in self.rules]
        data["routing"] = {"default": list(self.routing.default),
                           "routes": [{"when": r.when, "approvers": list(r.approvers), "also": r.also}
                                      for r in self.routing.routes]}
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    @property
    def ip_window_s(self) -> int | None:
        """Window the agent's same-IP counter must cover (the widest enabled ip_burst rule)."""
        windows = [r.params["window_s"] for r in self.rules if r.enabled and r.kind == "ip_burst"]
        return max(windows) if windows else None


def load_rule_file(path: str | Path) -> RuleSet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleSetError(f"cannot read rule file {path}: {exc}") from None
    return RuleSet.parse(text)


@lru_cache(maxsize=1)
def default_rules() -> RuleSet:
    return load_rule_file(DEFAULT_RULES_FILE)


# --------------------------------------------------------------------------- evaluation


def verifiers_needed(rules: RuleSet) -> list[str]:
    """Names of the external verifiers the enabled rules consult (in rule order, no repeats)."""
    names: list[str] = []
    for rule in rules.rules:
        if rule.enabled and rule.kind == "verifier" and rule.params["name"] not in names:
            names.append(rule.params["name"])
    return names


def route_approvers(ruleset: RuleSet, order: dict, hits: Iterable[RuleHit]) -> tuple[str, ...]:
    """Approvers for a held order: matching primary routes (else the default), plus every
    matching 'also' route (custom items also go to production)."""
    hits = tuple(hits)
    primary: list[str] = []
    extra: list[str] = []
    for route in ruleset.routing.routes:
        if route.test(order, hits):
            (extra if route.also else primary).extend(route.approvers)
    out: list[str] = []
    for name in (primary or list(ruleset.routing.default)) + extra:
        if name not in out:
            out.append(name)
    return tuple(out)


def evaluate(rules: RuleSet, order: dict, ctx: RiskContext) -> Verdict:
    """Run every enabled rule; the strongest action among hits wins (reject > hold > flag)."""
    hits: list[RuleHit] = []
    skipped: list[str] = []
    rank = 0
    degraded = ctx.degraded
    for rule in rules.rules:
        if not rule.enabled:
            continue
        if degraded and rule.expensive:
            skipped.append(rule.id)
            continue
        reason = rule.check(order, ctx)
        if reason is not None:
            hits.append(RuleHit(rule.id, rule.kind, rule.severity, rule.action, reason))
            r = _ACTION_RANK[rule.action]
            if r > rank:
                rank = r
    action = _VERDICT_OF_RANK[rank]
    hit_tuple = tuple(hits)
    approvers = route_approvers(rules, order, hit_tuple) if action == "hold" else ()
    return Verdict(action=action, hits=hit_tuple, approvers=approvers, skipped=tuple(skipped),
                   ruleset_version=rules.version, amount_minor=order["amounts"]["total_minor"],
                   currency=_currency_of(order))


def evaluate_summary(order: dict, rules: RuleSet | None = None) -> Verdict:
    """A hold verdict rebuilt from an order that already carries `risk_flags` (risk.queue):
    hit details come from `rules` (default rule file if None), approvers from its routing."""
    rules = rules or default_rules()
    hits = []
    for rule_id in order.get("risk_flags") or ():
        rule = rules.rule(rule_id)
        if rule is None:
            hits.append(RuleHit(rule_id, "unknown", "medium", "hold", "rule not in the active rule set"))
        else:
            hits.append(RuleHit(rule.id, rule.kind, rule.severity, rule.action, rule.description or rule.kind))
    hit_tuple = tuple(hits)
    return Verdict(action="hold", hits=hit_tuple, approvers=route_approvers(rules, order, hit_tuple),
                   ruleset_version=rules.version, amount_minor=order["amounts"]["total_minor"],
                   currency=_currency_of(order))
