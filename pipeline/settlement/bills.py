"""Settlement bills in: one CSV layout per platform (schemas/settlement/layouts.yaml), validated
line by line. A bad row goes to the dead-letter report with its line number and why; every good
row is kept; nothing is dropped silently (lines read = kept + rejected, always).

Each kept line gets `line_key` = <first 16 hex of the file's sha256>:<line number>, so a re-import
of the same file produces the very same keys and the sink and the engine count each line once.
The platform's own flow number (`bill_line_id`) is kept separately: the same flow number on two
different lines is a duplicate bill line, which the engine reports.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.codecs import SCHEMA_DIR
from pipeline.contracts import SettlementBillLine
from pipeline.domain.normalize import global_order_id
from pipeline.domain.platforms import currency_exponent

from .exceptions import LayoutError

LAYOUTS_FILE = SCHEMA_DIR / "settlement" / "layouts.yaml"
KINDS = ("payment", "refund", "commission", "service_fee", "platform_subsidy", "merchant_subsidy", "shipping",
         "compensation", "adjustment")
FIELDS = ("bill_line_id", "external_order_id", "platform_type", "amount", "currency", "settle_day")
# kinds that always point at an order; the others (fees on a period, adjustments) may not
ORDER_KINDS = ("payment", "refund")
_DECIMAL = re.compile(r"^([+-]?)(\d{1,15})(?:\.(\d+))?$")
_MINOR = re.compile(r"^[+-]?\d{1,17}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_ID = re.compile(r"^[\w\-@.#/]{1,64}$")


@dataclass(frozen=True)
class Layout:
    platform: str
    encoding: str
    currency: str
    amount: str
    day_format: str
    columns: dict[str, str]
    types: dict[str, str]


@lru_cache(maxsize=4)
def load_layouts(path: Path = LAYOUTS_FILE) -> dict[str, Layout]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    layouts = {}
    for platform, spec in raw.items():
        missing = [f for f in FIELDS if f not in spec["columns"]]
        if missing:
            raise LayoutError(f"layout {platform}: no column for {missing}")
        unknown = sorted(set(spec["types"].values()) - set(KINDS))
        if unknown:
            raise LayoutError(f"layout {platform}: unknown kinds {unknown}")
        if spec["amount"] not in ("decimal", "minor"):
            raise LayoutError(f"layout {platform}: amount must be decimal or minor")
        layouts[platform] = Layout(platform, spec["encoding"], spec["currency"], spec["amount"], spec["day_format"],
                                   dict(spec["columns"]), {str(k): v for k, v in spec["types"].items()})
    return layouts


def layout(platform: str) -> Layout:
    try:
        return load_layouts()[platform.upper()]
    except KeyError:
        raise LayoutError(f"no settlement bill layout for platform {platform!r} "
                          f"(known: {', '.join(load_layouts())})") from None


class RowError(ValueError):
    pass


def parse_amount(text: str, style: str, exponent: int) -> int:
    """Bill money text -> integer minor units, by string arithmetic (no float ever)."""
    text = text.strip().replace(",", "")
    if style == "minor":
        if not _MINOR.match(text):
            raise RowError(f"amount {text!r} is not an integer number of minor units")
        return int(text)
    m = _DECIMAL.match(text)
    if not m:
        raise RowError(f"amount {text!r} is not a decimal number")
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if len(frac) > exponent:
        raise RowError(f"amount {text!r} has more than {exponent} decimals")
    minor = int(whole) * 10 ** exponent + (int(frac.ljust(exponent, "0")) if exponent else 0)
    return -minor if sign == "-" else minor


def format_amount(minor: int, style: str, exponent: int) -> str:
    """The inverse of parse_amount (the bill writer of the replay uses it)."""
    if style == "minor":
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10 ** exponent)
    return f"{sign}{whole}.{frac:0{exponent}d}" if exponent else f"{sign}{whole}"


@dataclass(frozen=True)
class Rejected:
    line_no: int
    reason: str
    raw: str


@dataclass
class ImportResult:
    platform: str
    file_name: str
    file_sha256: str
    lines_read: int = 0
    lines: list[SettlementBillLine] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def report(self) -> dict:
        """The dead-letter report: every rejected line with its number, and the counts that add up."""
        return {"platform": self.platform, "file": self.file_name, "file_sha256": self.file_sha256,
                "lines_read": self.lines_read, "lines_kept": len(self.lines), "lines_rejected": len(self.rejected),
                "rejected": [{"line": r.line_no, "reason": r.reason, "raw": r.raw} for r in self.rejected]}


def parse_row(lay: Layout, row: dict[str, str]) -> dict:
    """One data row -> the validated fields of a bill line (RowError says why not)."""
    values = {f: (row.get(lay.columns[f]) or "").strip() for f in FIELDS}
    bill_line_id = values["bill_line_id"]
    if not bill_line_id:
        raise RowError("no bill line id")
    if not _ID.match(bill_line_id):
        raise RowError(f"bill line id {bill_line_id!r} has unexpected characters")
    code = values["platform_type"]
    kind = lay.types.get(code)
    if kind is None:
        raise RowError(f"unknown type {code!r}")
    currency = values["currency"] or lay.currency
    if not _CURRENCY.match(currency):
        raise RowError(f"currency {currency!r} is not an ISO 4217 code")
    if not values["amount"]:
        raise RowError("no amount")
    amount = parse_amount(values["amount"], lay.amount, currency_exponent(currency))
    try:
        day = datetime.strptime(values["settle_day"], lay.day_format).date().isoformat()
    except ValueError:
        raise RowError(f"settle day {values['settle_day']!r} is not {lay.day_format}") from None
    external = values["external_order_id"]
    if kind in ORDER_KINDS and not external:
        raise RowError(f"a {kind} line without an order id")
    if external and not _ID.match(external):
        raise RowError(f"order id {external!r} has unexpected characters")
    return {"bill_line_id": bill_line_id, "external_order_id": external,
            "order_id": global_order_id(lay.platform, external) if external else "",
            "kind": kind, "platform_type": code, "amount_minor": amount, "currency": currency, "settle_day": day}


def read_bill(data: bytes, platform: str, file_name: str, imported_by: str, imported_at_ms: int) -> ImportResult:
    """Validate a bill file's bytes. Raises LayoutError only when the file as a whole is unreadable
    (wrong encoding, header without the layout's columns); a bad row never stops the others."""
    if not imported_by or not imported_by.strip():
        raise LayoutError("an import names who did it (imported_by)")
    lay = layout(platform)
    sha = hashlib.sha256(data).hexdigest()
    result = ImportResult(lay.platform, file_name, sha)
    try:
        text = data.decode(lay.encoding)
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{file_name} is not {lay.encoding} text: {exc}") from None
    physical = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise LayoutError(f"{file_name} is empty") from None
    header = [h.strip() for h in header]
    missing = [col for col in lay.columns.values() if col not in header]
    if missing:
        raise LayoutError(f"{file_name}: header lacks the {lay.platform} columns {missing}")
    while True:
        line_no = reader.line_num + 1  # the physical line the next record starts on
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.lines_read += 1
            result.rejected.append(Rejected(line_no, f"unreadable CSV: {exc}", _raw(physical, line_no)))
            continue
        if not cells or all(not c.strip() for c in cells):
            continue  # a blank line is no row
        result.lines_read += 1
        raw = _raw(physical, line_no)
        if len(cells) != len(header):
            result.rejected.append(Rejected(line_no, f"{len(cells)} cells, the header has {len(header)}", raw))
            continue
        try:
            fields = parse_row(lay, dict(zip(header, cells)))
        except RowError as exc:
            result.rejected.append(Rejected(line_no, str(exc), raw))
            continue
        result.lines.append(SettlementBillLine(
            line_key=f"{sha[:16]}:{line_no}", file_sha256=sha, file_name=file_name, line_no=line_no,
            platform=lay.platform, imported_by=imported_by.strip(), imported_at_ms=imported_at_ms, **fields))
    return result


def _raw(physical: list[str], line_no: int) -> str:
    return physical[line_no - 1][:500] if 0 < line_no <= len(physical) else ""


def write_bill(platform: str, rows: list[dict]) -> bytes:
    """A bill file in the platform's layout from canonical rows (bill_line_id, external_order_id,
    kind, amount_minor, currency, settle_day): the replay's bill writer and the tests use it."""
    lay = layout(platform)
    code_of = {}
    for code, kind in lay.types.items():
        code_of.setdefault(kind, code)
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow([lay.columns[f] for f in FIELDS])
    for r in rows:
        day = datetime.strptime(r["settle_day"], "%Y-%m-%d").strftime(lay.day_format)
        w.writerow([r["bill_line_id"], r.get("external_order_id", ""), code_of[r["kind"]],
                    format_amount(r["amount_minor"], lay.amount, currency_exponent(r["currency"])),
                    r["currency"], day])
    return out.getvalue().encode("utf-8")
