"""`mcdaemon report --html FILE`: the KPI report as one self-contained HTML page.

Inline CSS and SVG charts drawn here (daily missed calls, texts and replies; the distribution
of the time to first text); no script, no external file, font or image, and a
Content-Security-Policy that forbids loading any. Every string that comes from the store or
the config (caller names are chosen by whoever calls) goes through `_e` (html.escape).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

from mcdaemon.report.kpis import (
    ALPHA,
    BOOKING_WINDOW,
    DAY,
    MIN_SAMPLE,
    REPLY_WINDOW,
    AbTest,
    Day,
    Kpis,
    Report,
    arm_lines,
    kpi_lines,
)

#: (upper bound in seconds, label) of the time-to-first-text histogram's bins
BINS: tuple[tuple[float, str], ...] = (
    (5, "< 5 s"), (10, "5–10 s"), (30, "10–30 s"), (60, "30–60 s"), (120, "1–2 min"),
    (300, "2–5 min"), (900, "5–15 min"), (3600, "15–60 min"), (14400, "1–4 h"),
    (math.inf, "≥ 4 h"))
SERIES = (("missed calls", "#c0392b"), ("texts sent", "#2471a3"), ("replies", "#229954"))

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1000px;padding:0 1em;color:#222;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
th,td{padding:.3em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
.counts{color:#666}.na{color:#999}
svg{width:100%;height:auto;display:block;margin:.5em 0}
svg text{font-family:inherit;font-size:11px;fill:#444}
.legend span{display:inline-block;margin-right:1.2em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}
.note{color:#555;font-size:.9em}
"""


def _e(value: object) -> str:
    """Escaped for HTML text and attribute values (quotes too)."""
    return html.escape(str(value), quote=True)


def render(report: Report) -> str:
    zone = ZoneInfo(report.timezone)

    def stamp(epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M")

    title = "mcdaemon KPI report" + (f": group {report.group}" if report.group else "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'style-src \'unsafe-inline\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Calls that ended from {_e(stamp(report.since))} to '
        f"{_e(stamp(report.until))} ({_e(report.timezone)}).</p>",
    ]
    scopes: list[tuple[str, Kpis]] = [] if report.group else [("Overall", report.overall)]
    scopes += [(f"Group {name}", kpis) for name, kpis in report.groups.items()]
    for heading, kpis in scopes:
        parts.append(f"<h2>{_e(heading)}</h2>")
        parts.append(_kpi_table(kpis, report))
    if len(report.currencies) > 1:
        parts.append(f'<p class="note">Bookings in several currencies '
                     f"({_e(', '.join(report.currencies))}) are summed as they are.</p>")
    if report.unattributed_bookings:
        parts.append(f'<p class="note">{report.unattributed_bookings} booking(s) in this '
                     "period could not be attributed to a texted missed call.</p>")
    parts.append("<h2>Per day</h2>")
    parts.append(_legend())
    parts.append(daily_chart(report.days))
    parts.append("<h2>Time to first text</h2>")
    sent = sum(report.times_to_first_text.values())
    parts.append(f'<p class="note">From the end of the call to the SMSC accepting the text; '
                 f"{sent} sent text(s). Texts deferred to the next opening are included.</p>")
    parts.append(histogram(report.times_to_first_text))
    for test in report.ab_tests:
        parts.append(f"<h2>A/B test: group {_e(test.group)}, template "
                     f"{_e(test.template)}</h2>")
        parts.append(_ab_table(test))
    if report.recent:
        parts.append("<h2>Latest missed calls</h2>")
        parts.append(_recent_table(report))
    parts.append(
        f'<h2>Definitions</h2><p class="note">Missed: any outcome but answered and dead_end. '
        f"Replies and opt-outs count within {REPLY_WINDOW / DAY:g} days after a sent text; "
        f"bookings are attributed to the latest texted missed call from the number within "
        f"{BOOKING_WINDOW / DAY:g} days before them. A/B verdicts: two-sided two-proportion "
        f"z-test on the reply rate at {ALPHA:g}, after {MIN_SAMPLE} texted callers per "
        "variant. A rate whose denominator is zero is n/a. See docs/features.md, KPI report "
        "section.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _kpi_table(kpis: Kpis, report: Report) -> str:
    rows = ["<table><tr><th>KPI</th><th>value</th><th>counts</th></tr>"]
    for name, value, counts in kpi_lines(kpis, report.currencies):
        css = "num na" if value == "n/a" else "num"
        rows.append(f'<tr><td>{_e(name)}</td><td class="{css}">{_e(value)}</td>'
                    f'<td class="counts">{_e(counts)}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _ab_table(test: AbTest) -> str:
    header, *body = arm_lines(test)
    rows = ["<table><tr>" + "".join(f"<th>{_e(cell)}</th>" for cell in header) + "</tr>"]
    for row in body:
        rows.append("<tr>" + "".join(
            f'<td class="num">{_e(cell)}</td>' if 0 < index < len(row) - 1
            else f"<td>{_e(cell)}</td>" for index, cell in enumerate(row)) + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def _recent_table(report: Report) -> str:
    rows = ["<table><tr><th>ended</th><th>group</th><th>caller</th><th>name</th>"
            "<th>outcome</th><th>decision</th><th>text</th><th>replied</th></tr>"]
    for call in report.recent:
        rows.append("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in (
            call.ended, call.group, call.caller, call.caller_name, call.outcome, call.reason,
            call.text, "yes" if call.replied else "")) + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def _legend() -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{colour}"></i>{_e(name)}</span>'
        for name, colour in SERIES) + "</p>"


def _nice_ceiling(value: float) -> tuple[float, float]:
    """(top of the axis, tick step) for a maximum value: 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)
    step = max(step, 1.0)
    return math.ceil(value / step) * step, step


def _axis(top: float, step: float, left: float, right: float, y0: float,
          height: float) -> list[str]:
    lines: list[str] = []
    tick = 0.0
    while tick <= top + 1e-9:
        y = y0 - tick / top * height
        lines.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e5e5"/>')
        lines.append(f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{tick:g}</text>")
        tick += step
    return lines


def daily_chart(days: Sequence[Day]) -> str:
    """Grouped bars per day: missed calls, texts sent, replies."""
    width, height, left, right, top, bottom = 960.0, 300.0, 44.0, 10.0, 12.0, 46.0
    plot_w, plot_h = width - left - right, height - top - bottom
    y0 = top + plot_h
    if not days:
        return _empty(width, "no days in the period")
    peak = max(max(day.missed_calls, day.texts, day.replies) for day in days)
    axis_top, step = _nice_ceiling(float(peak))
    slot = plot_w / len(days)
    bar = slot * 0.8 / len(SERIES)
    label_every = max(1, math.ceil(len(days) / 15))
    out = [f'<svg viewBox="0 0 {width:.0f} {height:.0f}" role="img"><title>Missed calls, '
           "texts sent and replies per day</title>"]
    out += _axis(axis_top, step, left, width - right, y0, plot_h)
    for index, day in enumerate(days):
        x = left + index * slot + slot * 0.1
        for (name, colour), value in zip(SERIES, (day.missed_calls, day.texts, day.replies),
                                         strict=True):
            bar_h = value / axis_top * plot_h
            out.append(f'<rect x="{x:.2f}" y="{y0 - bar_h:.2f}" width="{bar:.2f}" '
                       f'height="{bar_h:.2f}" fill="{colour}"><title>'
                       f"{_e(day.date.isoformat())}: {value} {_e(name)}</title></rect>")
            x += bar
        if index % label_every == 0:
            cx = left + (index + 0.5) * slot
            out.append(f'<text x="{cx:.1f}" y="{y0 + 16:.1f}" text-anchor="middle">'
                       f"{_e(day.date.strftime('%d %b'))}</text>")
    out.append(f'<line x1="{left}" y1="{y0}" x2="{width - right}" y2="{y0}" stroke="#999"/>')
    out.append("</svg>")
    return "".join(out)


def histogram(milliseconds: Mapping[int, int]) -> str:
    """Counts of the time to first text ({milliseconds: how many texts}) per bin (`BINS`)."""
    width, height, left, right, top, bottom = 960.0, 260.0, 44.0, 10.0, 18.0, 40.0
    plot_w, plot_h = width - left - right, height - top - bottom
    y0 = top + plot_h
    counts = [0] * len(BINS)
    for value, count in milliseconds.items():
        counts[next(index for index, (upper, _) in enumerate(BINS)
                    if value / 1000 < upper)] += count
    if not any(counts):
        return _empty(width, "no text was sent in the period")
    axis_top, step = _nice_ceiling(float(max(counts)))
    slot = plot_w / len(BINS)
    out = [f'<svg viewBox="0 0 {width:.0f} {height:.0f}" role="img">'
           "<title>Time to first text</title>"]
    out += _axis(axis_top, step, left, width - right, y0, plot_h)
    for index, ((_, label), count) in enumerate(zip(BINS, counts, strict=True)):
        bar_h = count / axis_top * plot_h
        x = left + index * slot + slot * 0.15
        cx = left + (index + 0.5) * slot
        out.append(f'<rect x="{x:.2f}" y="{y0 - bar_h:.2f}" width="{slot * 0.7:.2f}" '
                   f'height="{bar_h:.2f}" fill="#2471a3"><title>{_e(label)}: {count} '
                   "text(s)</title></rect>")
        if count:
            out.append(f'<text x="{cx:.1f}" y="{y0 - bar_h - 4:.1f}" '
                       f'text-anchor="middle">{count}</text>')
        out.append(f'<text x="{cx:.1f}" y="{y0 + 16:.1f}" text-anchor="middle">'
                   f"{_e(label)}</text>")
    out.append(f'<line x1="{left}" y1="{y0}" x2="{width - right}" y2="{y0}" stroke="#999"/>')
    out.append("</svg>")
    return "".join(out)


def _empty(width: float, words: str) -> str:
    return (f'<svg viewBox="0 0 {width:.0f} 60" role="img"><text x="{width / 2:.0f}" y="34" '
            f'text-anchor="middle">{_e(words)}</text></svg>')
