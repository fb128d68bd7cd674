"""Refund auto-approval as data: a YAML rule set, validated when parsed, evaluated per request.

Seed 002: a refund is approved automatically when it is a seven-day no-reason return AND no
refunded item is custom-made AND the order's amount is below 500 CNY; every other request waits
for an operator. Each `auto_approve` rule is a conjunction of conditions; the first rule whose
conditions all hold approves. A rule set that does not parse raises `RefundRuleError` naming the
rule and the problem, and the caller keeps its old rules (the same contract as the risk rules).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable


from pipeline.contracts import RefundRequest

from .risk import RuleSetError, _fx_table, to_cny_minor
from .rule_files import versioned_mapping

DEFAULT_REFUND_RULES_FILE = Path(__file__).with_name("refund_rules.yaml")
DAY_MS = 24 * 3600 * 1000
_TOP_KEYS = {"version", "description", "fx_to_cny", "auto_approve"}
_RULE_KEYS = {"id", "description", "enabled", "when"}
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KINDS = ("return_and_refund", "refund_only")


class RefundRuleError(ValueError):
    """A refund rule set that cannot be used; the message names the rule and the problem."""


# A compiled condition: None when it holds, else why it does not (shown to the operator).
Condition = Callable[[RefundRequest], "str | None"]


@dataclass(frozen=True)
class AutoRule:
    id: str
    when: dict
    description: str = ""
    enabled: bool = True
    conditions: tuple[Condition, ...] = field(default=(), compare=False, repr=False)

    def misses(self, request: RefundRequest) -> list[str]:
        """Why this rule does not approve `request` (empty: it does)."""
        return [why for check in self.conditions if (why := check(request)) is not None]


@dataclass(frozen=True)
class Verdict:
    rule_id: str | None               # the rule that approved it; None: an operator decides
    why_not: tuple[str, ...] = ()     # each enabled rule's first miss, for the operator's queue

    @property
    def auto(self) -> bool:
        return self.rule_id is not None


def _str_list(rule_id: str, name: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise RefundRuleError(f"rule {rule_id!r}: {name} must be a non-empty list of strings, got {value!r}")
    if allowed is not None and set(value) - set(allowed):
        raise RefundRuleError(f"rule {rule_id!r}: {name} {sorted(set(value) - set(allowed))} unknown "
                              f"(allowed: {list(allowed)})")
    return tuple(v.strip() for v in value)


def _limits(rule_id: str, value: Any) -> dict[str, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"CNY": value}
    if not isinstance(value, dict) or not value:
        raise RefundRuleError(f"rule {rule_id!r}: order_total_below_minor must be an integer (CNY minor) "
                              f"or a currency -> minor map, got {value!r}")
    out = {}
    for cur, limit in value.items():
        if not isinstance(cur, str) or not re.fullmatch(r"[A-Z]{3}", cur):
            raise RefundRuleError(f"rule {rule_id!r}: {cur!r} is not an ISO 4217 currency code")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise RefundRuleError(f"rule {rule_id!r}: the limit for {cur} must be a positive integer, got {limit!r}")
        out[cur] = limit
    return out


def _compile(rule_id: str, when: Any, fx: dict[str, float]) -> tuple[dict, tuple[Condition, ...]]:
    if not isinstance(when, dict) or not when:
        raise RefundRuleError(f"rule {rule_id!r}: 'when' needs at least one condition")
    checks: list[Condition] = []
    normalised: dict = {}
    for name, value in when.items():
        if name == "reasons":
            reasons = frozenset(_str_list(rule_id, name, value))
            checks.append(lambda r, s=reasons: None if r.reason_code in s else
                          f"reason {r.reason_code!r} is not one of {sorted(s)}")
            normalised[name] = sorted(reasons)
        elif name == "kinds":
            kinds = frozenset(_str_list(rule_id, name, value, KINDS))
            checks.append(lambda r, s=kinds: None if r.kind in s else f"kind {r.kind!r} is not one of {sorted(s)}")
            normalised[name] = sorted(kinds)
        elif name == "no_custom_items":
            if value is not True:
                raise RefundRuleError(f"rule {rule_id!r}: no_custom_items can only be true, got {value!r}")
            checks.append(lambda r: next((f"custom item {line.sku}" for line in r.lines if line.is_custom), None))
            normalised[name] = True
        elif name == "order_total_below_minor":
            limits = _limits(rule_id, value)
            checks.append(lambda r, lim=limits: _below(r, lim, fx))
            normalised[name] = limits
        elif name == "max_days_since_delivery":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RefundRuleError(f"rule {rule_id!r}: max_days_since_delivery must be a positive integer, "
                                      f"got {value!r}")
            checks.append(lambda r, days=value: _within_days(r, days))
            normalised[name] = value
        else:
            raise RefundRuleError(f"rule {rule_id!r}: unknown condition {name!r} (known: reasons, kinds, "
                                  f"no_custom_items, order_total_below_minor, max_days_since_delivery)")
    return normalised, tuple(checks)


def _below(request: RefundRequest, limits: dict[str, int], fx: dict[str, float]) -> str | None:
    """None when the ORDER's amount is strictly below the limit (seed 002: 订单金额 < 500 元)."""
    total, currency = request.order_total_minor, request.currency
    if currency in limits:
        limit, amount, unit = limits[currency], total, currency
    elif "CNY" in limits and (cny := to_cny_minor(total, currency, fx)) is not None:
        limit, amount, unit = limits["CNY"], cny, "CNY"
    else:
        return f"order amount in {currency} has no limit and no CNY rate"
    return None if amount < limit else f"order amount {amount} {unit} minor is not below {limit}"


def _within_days(request: RefundRequest, days: int) -> str | None:
    if request.delivered_at_ms is None:
        return "no delivery time: the return window cannot be checked"
    waited = request.requested_at_ms - request.delivered_at_ms
    return None if 0 <= waited <= days * DAY_MS else f"requested {waited / DAY_MS:.1f} days after delivery (> {days})"


@dataclass(frozen=True)
class RefundRules:
    version: int
    rules: tuple[AutoRule, ...]
    source_text: str = ""
    fx_to_cny: dict = field(default_factory=dict)
    description: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> "RefundRules":
        """Validate and compile YAML text; any problem raises RefundRuleError."""
        data, version, text = versioned_mapping(text, "refund rules", _TOP_KEYS, RefundRuleError,
                                          "'version' and 'auto_approve'")
        try:
            fx = _fx_table(data.get("fx_to_cny"), "refund rules")
        except RuleSetError as exc:
            raise RefundRuleError(str(exc)) from None
        raw_rules = data.get("auto_approve")
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise RefundRuleError("refund rules: 'auto_approve' must be a list")
        rules, seen = [], set()
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, dict):
                raise RefundRuleError(f"auto_approve[{i}] must be a mapping")
            rule_id = raw.get("id")
            if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
                raise RefundRuleError(f"auto_approve[{i}]: 'id' must match {_ID_RE.pattern}, got {rule_id!r}")
            if rule_id in seen:
                raise RefundRuleError(f"rule {rule_id!r}: duplicate id")
            seen.add(rule_id)
            extra = set(raw) - _RULE_KEYS
            if extra:
                raise RefundRuleError(f"rule {rule_id!r}: unknown keys {sorted(extra)} (allowed: {sorted(_RULE_KEYS)})")
            enabled = raw.get("enabled", True)
            if not isinstance(enabled, bool):
                raise RefundRuleError(f"rule {rule_id!r}: 'enabled' must be true or false")
            when, conditions = _compile(rule_id, raw.get("when"), fx)
            description = raw.get("description", "")
            rules.append(AutoRule(rule_id, when, description if isinstance(description, str) else "", enabled,
                                  conditions))
        description = data.get("description", "")
        return cls(version, tuple(rules), text, fx, description if isinstance(description, str) else "")

    def evaluate(self, request: RefundRequest) -> Verdict:
        """The first enabled rule whose every condition holds approves; else an operator decides."""
        why_not = []
        for rule in self.rules:
            if not rule.enabled:
                continue
            misses = rule.misses(request)
            if not misses:
                return Verdict(rule.id)
            why_not.append(f"{rule.id}: {misses[0]}")
        return Verdict(None, tuple(why_not))


def load_refund_rules(path: str | Path) -> RefundRules:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RefundRuleError(f"cannot read refund rule file {path}: {exc}") from None
    return RefundRules.parse(text)


@lru_cache(maxsize=1)
def default_refund_rules() -> RefundRules:
    return load_refund_rules(DEFAULT_REFUND_RULES_FILE)
