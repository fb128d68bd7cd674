"""The settlement rules as data (rules.yaml): tolerance, which bill kind matches which ledger kind,
the class of one-sided entries, and the auto write-off thresholds. Validated on load."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from .bills import KINDS
from .exceptions import SettlementError

RULES_FILE = Path(__file__).resolve().parent / "rules.yaml"
CLASSES = ("rounding", "delayed_refund", "platform_fee_unrecorded", "unrecorded_subsidy", "order_missing_from_bill",
           "bill_line_without_order", "duplicate_bill_line", "amount_mismatch")


@dataclass(frozen=True)
class WriteOff:
    id: str
    cls: str
    max_abs_minor: int


@dataclass(frozen=True)
class Rules:
    version: int
    timezone: str
    rounding_tolerance_minor: int
    ledger_kind: dict[str, str]     # bill kind -> ledger kind
    bill_only: dict[str, str]       # bill kind -> class
    ledger_only: dict[str, str]     # ledger kind -> class
    write_off: tuple[WriteOff, ...]

    def disposition(self, cls: str, diff_minor: int) -> tuple[str, str]:
        """('written_off', rule id) or ('manual', '')."""
        for rule in self.write_off:
            if rule.cls == cls and abs(diff_minor) <= rule.max_abs_minor:
                return "written_off", rule.id
        return "manual", ""


def _ident(value, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise SettlementError(f"{what} must be a plain name, got {value!r}")
    return value


def parse_rules(text: str) -> Rules:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise SettlementError("the rule set is not a mapping")
    try:
        tz = raw["timezone"]
        ZoneInfo(tz)
        tol = raw["rounding_tolerance_minor"]
        if type(tol) is not int or tol < 0:
            raise SettlementError("rounding_tolerance_minor must be a non-negative integer (minor units)")
        ledger_kind, bill_only = {}, {}
        for kind, spec in raw["kinds"].items():
            if kind not in KINDS:
                raise SettlementError(f"unknown bill kind {kind!r}")
            ledger_kind[kind] = _ident(spec["ledger"], "a ledger kind")
            bill_only[kind] = spec["bill_only"]
        missing = set(KINDS) - set(ledger_kind)
        if missing:
            raise SettlementError(f"no rule for bill kinds {sorted(missing)}")
        ledger_only = {_ident(k, "a ledger kind"): v for k, v in raw["ledger_only"].items()}
        write_off = tuple(WriteOff(_ident(w["id"].replace("-", "_"), "a rule id") and w["id"], w["class"],
                                   w["max_abs_minor"]) for w in raw.get("write_off", ()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SettlementError(f"malformed rule set: {exc!r}") from None
    except Exception as exc:
        if isinstance(exc, SettlementError):
            raise
        raise SettlementError(f"malformed rule set: {exc}") from None
    for cls in (*bill_only.values(), *ledger_only.values(), *(w.cls for w in write_off)):
        if cls not in CLASSES:
            raise SettlementError(f"unknown difference class {cls!r} (known: {', '.join(CLASSES)})")
    for w in write_off:
        if type(w.max_abs_minor) is not int or w.max_abs_minor < 0:
            raise SettlementError(f"write-off {w.id}: max_abs_minor must be a non-negative integer")
    return Rules(int(raw.get("version", 0)), tz, tol, ledger_kind, bill_only, ledger_only, write_off)


def load_rules(path: Path | None = None) -> Rules:
    return parse_rules(Path(path or RULES_FILE).read_text(encoding="utf-8"))
