"""Server-side SVG charts: the console's pages need no chart library and load nothing from outside.

Each function takes figures that are already computed (by the tiers) and their display text
(formatted by pipeline.console.format), and returns inline SVG markup. Every bar or point has a
<title> (the browser's tooltip) with its label and value, and carries `data-label`/`data-value`,
so a test can read what was drawn. All text is escaped: labels come from data (platform names,
warehouse codes) and data is never markup.
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#f97316", "#64748b")
AXIS = "#94a3b8"
TEXT = "#334155"


@dataclass(frozen=True)
class Point:
    label: str       # category or time, as shown
    value: float     # what the height encodes
    text: str = ""   # the value as shown (formatted); defaults to the number


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, title: str, body: list[str], css_class: str) -> Markup:
    return Markup(
        f'<svg class={quoteattr("chart " + css_class)} viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label={quoteattr(title)} preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def _ticks(top: float) -> list[float]:
    """Three gridlines at round values up to `top`."""
    if top <= 0:
        return [0.0]
    step = top / 3
    magnitude = 10 ** (len(str(int(step))) - 1) if step >= 1 else 1
    step = max(1.0, round(step / magnitude) * magnitude) if step >= 1 else step
    return [step * i for i in range(4) if step * i <= top * 1.0001]


def _label_every(n: int, room: int) -> int:
    return max(1, -(-n // room))


def bar_chart(points: list[Point], title: str, *, width: int = 1100, height: int = 240,
              color: str = PALETTE[0], max_labels: int = 14) -> Markup:
    """Vertical bars, one per point, labels along the bottom (thinned to max_labels)."""
    left, right, top, bottom = 44, 8, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    body: list[str] = []
    peak = max((p.value for p in points), default=0) or 1
    for tick in _ticks(peak):
        y = top + plot_h - plot_h * tick / peak
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{AXIS}" '
                    f'stroke-width="0.5" stroke-dasharray="3,3"/>'
                    f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{TEXT}">'
                    f'{escape(_num(tick))}</text>')
    if not points:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{TEXT}">—</text>')
        return _svg(width, height, title, body, "bar-chart")
    slot = plot_w / len(points)
    every = _label_every(len(points), max_labels)
    for i, p in enumerate(points):
        h = plot_h * p.value / peak
        x = left + i * slot + slot * 0.12
        y = top + plot_h - h
        shown = p.text or _num(p.value)
        body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}" height="{h:.1f}" '
                    f'fill="{color}" data-label={quoteattr(p.label)} data-value={quoteattr(_num(p.value))}>'
                    f'<title>{escape(p.label)}: {escape(shown)}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
                        f'text-anchor="middle" font-size="10" fill="{TEXT}">{escape(p.label)}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    return _svg(width, height, title, body, "bar-chart")


def line_chart(points: list[Point], title: str, *, width: int = 1100, height: int = 220,
               color: str = PALETTE[2], max_labels: int = 12) -> Markup:
    """One series as a line with a dot per point (AOV per hour)."""
    left, right, top, bottom = 56, 10, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    body: list[str] = []
    if not points:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{TEXT}">—</text>')
        return _svg(width, height, title, body, "line-chart")
    peak = max(p.value for p in points) or 1
    for tick in _ticks(peak):
        y = top + plot_h - plot_h * tick / peak
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{AXIS}" '
                    f'stroke-width="0.5" stroke-dasharray="3,3"/>')
    step = plot_w / max(1, len(points) - 1)
    coords = [(left + (i * step if len(points) > 1 else plot_w / 2), top + plot_h - plot_h * p.value / peak)
              for i, p in enumerate(points)]
    body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points='
                f'{quoteattr(" ".join(f"{x:.1f},{y:.1f}" for x, y in coords))}/>')
    every = _label_every(len(points), max_labels)
    for i, (p, (x, y)) in enumerate(zip(points, coords)):
        shown = p.text or _num(p.value)
        body.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}" '
                    f'data-label={quoteattr(p.label)} data-value={quoteattr(_num(p.value))}>'
                    f'<title>{escape(p.label)}: {escape(shown)}</title></circle>')
        if i % every == 0:
            body.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10" '
                        f'fill="{TEXT}">{escape(p.label)}</text>')
    top_text = max(points, key=lambda p: p.value)
    body.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10" fill="{TEXT}">'
                f'{escape(top_text.text or _num(top_text.value))}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    return _svg(width, height, title, body, "line-chart")


def share_bars(points: list[Point], title: str, *, width: int = 720, row: int = 26) -> Markup:
    """Horizontal bars of shares (value 0..1), one row per point, its text at the end."""
    left, right = 110, 130
    height = max(row, row * len(points)) + 6
    body: list[str] = []
    for i, p in enumerate(points):
        y = 3 + i * row
        w = (width - left - right) * max(0.0, min(1.0, p.value))
        body.append(f'<text x="{left - 8}" y="{y + row * 0.65:.1f}" text-anchor="end" font-size="12" '
                    f'fill="{TEXT}">{escape(p.label)}</text>'
                    f'<rect class="bar" x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                    f'fill="{PALETTE[i % len(PALETTE)]}" data-label={quoteattr(p.label)} '
                    f'data-value={quoteattr(f"{p.value:.6f}")}><title>{escape(p.label)}: {escape(p.text)}</title></rect>'
                    f'<text x="{left + w + 6:.1f}" y="{y + row * 0.65:.1f}" font-size="12" fill="{TEXT}">'
                    f'{escape(p.text)}</text>')
    if not points:
        body.append(f'<text x="{width / 2}" y="{row * 0.7}" text-anchor="middle" fill="{TEXT}">—</text>')
    return _svg(width, height, title, body, "share-bars")


def stacked_bars(labels: list[str], series: list[tuple[str, str, list[int]]], title: str, *,
                 width: int = 1100, height: int = 240, max_labels: int = 14) -> Markup:
    """Columns of stacked counts: series = [(key, shown name, counts per label)]; a legend on top."""
    left, right, top, bottom = 44, 8, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    body: list[str] = []
    x = left
    for j, (key, name, _) in enumerate(series):  # legend
        color = PALETTE[j % len(PALETTE)]
        body.append(f'<rect x="{x:.1f}" y="6" width="10" height="10" fill="{color}"/>'
                    f'<text x="{x + 14:.1f}" y="15" font-size="11" fill="{TEXT}">{escape(name)}</text>')
        x += 30 + sum(12 if ord(ch) > 0x2e80 else 6.5 for ch in name)  # CJK glyphs are about twice as wide
    totals = [sum(s[2][i] for s in series) for i in range(len(labels))]
    peak = max(totals, default=0) or 1
    for tick in _ticks(peak):
        y = top + plot_h - plot_h * tick / peak
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{AXIS}" '
                    f'stroke-width="0.5" stroke-dasharray="3,3"/>'
                    f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{TEXT}">'
                    f'{escape(_num(tick))}</text>')
    if not labels:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{TEXT}">—</text>')
        return _svg(width, height, title, body, "stacked-bars")
    slot = plot_w / len(labels)
    every = _label_every(len(labels), max_labels)
    for i, label in enumerate(labels):
        base = top + plot_h
        for j, (key, name, counts) in enumerate(series):
            n = counts[i]
            if not n:
                continue
            h = plot_h * n / peak
            base -= h
            body.append(f'<rect class="bar" x="{left + i * slot + slot * 0.12:.1f}" y="{base:.1f}" '
                        f'width="{slot * 0.76:.1f}" height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}" '
                        f'data-label={quoteattr(label)} data-series={quoteattr(key)} data-value="{n}">'
                        f'<title>{escape(label)} {escape(name)}: {n}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
                        f'text-anchor="middle" font-size="10" fill="{TEXT}">{escape(label)}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    return _svg(width, height, title, body, "stacked-bars")
