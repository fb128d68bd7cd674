"""How the console writes figures: money, counts, shares, times and durations. Pure functions.

Money arrives as integer minor units of its own currency (fen for CNY) and is written with the
currency's own number of decimals by integer arithmetic: no float ever touches an amount. An
average (AOV) is the one division, done on integers and rounded half up to the minor unit.
Times arrive as UTC ISO-8601 text from the tiers and are shown in the viewer's zone.
"""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.domain.platforms import currency_exponent

# a sign only where it is unambiguous (JPY also writes ¥): other currencies carry their code
SYMBOLS = {"CNY": "¥"}


def money(minor: int, currency: str) -> str:
    """Integer minor units -> text: money(123456, "CNY") == "¥1,234.56", money(5, "USD") == "0.05 USD"."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"money is integer minor units, got {minor!r}")
    exp = currency_exponent(currency)
    whole, frac = divmod(abs(minor), 10 ** exp)
    body = f"{whole:,}" + (f".{frac:0{exp}d}" if exp else "")
    sign = "-" if minor < 0 else ""
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{body}" if symbol else f"{sign}{body} {currency}"


def average_minor(total_minor: int, count: int) -> int | None:
    """total / count in minor units, rounded half away from zero, on integers (None for no count)."""
    if count <= 0:
        return None
    q, r = divmod(abs(total_minor), count)
    if 2 * r >= count:
        q += 1
    return -q if total_minor < 0 else q


def average_money(total_minor: int, count: int, currency: str) -> str:
    avg = average_minor(total_minor, count)
    return "—" if avg is None else money(avg, currency)


def count(n: int) -> str:
    return f"{int(n):,}"


def percent(share: float, digits: int = 1) -> str:
    """A share (0..1) as a percentage: percent(0.2345) == "23.5%"."""
    return f"{share * 100:.{digits}f}%"


def pct(value: float, digits: int = 1) -> str:
    """A value that is already a percentage (progress_pct): pct(52.5) == "52.5%"."""
    return f"{value:.{digits}f}%"


def millis(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:,.0f} ms"


def zone(name: str) -> ZoneInfo:
    """The viewer's zone; ValueError for a name that is not an IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai or UTC)") from None


def parse_utc(iso: str) -> datetime:
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def local(iso: str | None, tz: ZoneInfo, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A tier's UTC time in the viewer's zone: local("2026-11-10T16:30:00Z", Shanghai) == "2026-11-11 00:30:00"."""
    if not iso:
        return "—"
    return parse_utc(iso).astimezone(tz).strftime(pattern)


def utc_offset(tz: ZoneInfo, at_iso: str) -> str:
    """"UTC+08:00" for the zone at that moment."""
    off = parse_utc(at_iso).astimezone(tz).utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def duration(seconds: float) -> str:
    """A span, coarsest two units: 45 -> "45s", 200 -> "3m 20s", 3900 -> "1h 05m", 2 days -> "2d 00h"."""
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def countdown(hours_left: float) -> str:
    """SLA countdown: "5h 12m" left, or "-1h 03m" past the deadline."""
    text = duration(hours_left * 3600)
    return f"-{text}" if hours_left < 0 else text


SHORT_ID_HEAD, SHORT_ID_TAIL = 6, 14


def short_id(value: str) -> str:
    """A long id for a table cell: its head and its tail around an ellipsis (the whole id is in the
    cell's title and its copy button). Ids end in what tells them apart (offsets, serials), so the
    tail is the longer part: "t84078…raw.jd:0:12345"."""
    value = str(value)
    if len(value) <= SHORT_ID_HEAD + SHORT_ID_TAIL + 1:
        return value
    return f"{value[:SHORT_ID_HEAD]}…{value[-SHORT_ID_TAIL:]}"
