"""The report as one self-contained HTML page: styles inline, charts as inline SVG drawn by
pygal, no script and no URL to fetch (a Content-Security-Policy says so to the browser too),
readable on a phone (a viewport, a column at most 1000 px wide, tables that scroll
sideways).

pygal draws SVG itself, in pure Python (no browser, no numpy, no font cache), and is
imported only when a page is made: `followupd report --html` and the daemon's report job.
Its SVG is made static here: no script (`js=[]`, and its inline config script removed),
its comments (which name its web site) removed, and each chart's random id replaced by a
fixed one, so the same figures make the same page.
"""

from __future__ import annotations

import math
import re
from datetime import date
from importlib.resources import files

import jinja2
from markupsafe import Markup

from followupd.report.figures import (
    NoteFigures,
    Report,
    Source,
    format_minutes,
    sparkline,
)

PAGE_LINES = 200  # lines of each "needs attention" list on a page (the count says if more)
TOP_SOURCES = 5  # physicians drawn on their own in the referrals chart; the rest as "others"
COLORS = ("#1f6f8b", "#e07a5f", "#3d405b", "#81b29a", "#c9a227", "#9aa0a6")
FONTS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# Buckets of the acknowledgement-times chart: (label, up to this many minutes).
TIME_BUCKETS = (
    ("< 2 h", 120),
    ("2-8 h", 480),
    ("8-24 h", 1440),
    ("1-2 d", 2880),
    ("2-4 d", 5760),
    ("4-7 d", 10080),
    ("1-2 wk", 20160),
    ("2 wk +", None),
)
MONTHS_LABELLED = 12  # a chart names at most this many months under its axis
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ChartsUnavailable(Exception):
    """pygal is not installed: the message says how to install it."""


def _pygal():
    try:
        import pygal
        from pygal.style import Style
    except ImportError:
        raise ChartsUnavailable(
            "the HTML report draws its charts with pygal, which is not installed: "
            "pip install 'pygal>=3.0,<4' (it comes with followupd; was it installed "
            "without its dependencies?)"
        ) from None
    style = Style(
        background="#ffffff",
        plot_background="#ffffff",
        foreground="#1d2327",
        foreground_strong="#1d2327",
        foreground_subtle="#d6d9dc",
        opacity="0.9",
        opacity_hover="1",
        transition="0s",
        colors=COLORS,
        font_family=FONTS,
        label_font_size=16,
        major_label_font_size=15,
        legend_font_size=16,
        title_font_size=18,
        value_font_size=14,
        tooltip_font_size=14,
        no_data_font_size=20,
    )
    return pygal, style


def month_label(month: str) -> str:
    """ "2026-01" -> "Jan" (the chart's title says which years)."""
    return MONTHS[int(month.split("-")[1]) - 1]


def _months_shown(report: Report) -> str:
    """ "Jul 2025 to Jun 2026" """
    first, last = report.months[0], report.months[-1]
    return f"{month_label(first)} {first[:4]} to {month_label(last)} {last[:4]}"


def _chart(kind, style, title: str, labels: list[str], **options):
    pygal, _ = _pygal()
    chart = getattr(pygal, kind)(
        style=style,
        js=[],  # no script: the page fetches nothing
        disable_xml_declaration=True,
        explicit_size=False,
        width=560,
        height=380,
        legend_at_bottom=True,
        legend_at_bottom_columns=2,
        truncate_legend=28,
        truncate_label=-1,
        show_x_guides=False,
        x_label_rotation=0,
        title=title,
        no_data_text="nothing in this period",
        margin=12,
        **options,
    )
    chart.x_labels = labels
    if len(labels) > MONTHS_LABELLED:  # every n-th month named, so that the names fit
        chart.config.x_labels_major_every = math.ceil(len(labels) / MONTHS_LABELLED)
        chart.config.show_minor_x_labels = False
    return chart


def _static(svg: str, name: str) -> str:
    """pygal's SVG made static and fixed: its comments and its inline script (the config
    its tooltips would read; the page runs no script) out, its random chart id replaced."""
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<script\b.*?</script>", "", svg, flags=re.S | re.I)
    found = re.search(r'id="(chart-[0-9a-f-]{36})"', svg)
    if found:
        svg = svg.replace(found.group(1), f"chart-{name}")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{name.replace("-", " ")}" ', 1)


def charts(report: Report) -> dict[str, str]:
    """The page's three charts as inline SVG: referrals per month by top sources,
    acknowledgement times, and visits against referrals by month."""
    _, style = _pygal()
    labels = [month_label(month) for month in report.months]
    shown = _months_shown(report)
    by_source = _chart("StackedBar", style, f"Referrals by source, {shown}", labels)
    top = report.top_physicians(TOP_SOURCES)
    for source in top:
        by_source.add(source.name, [v or None for v in source.months])
    others = [
        total - sum(s.months[n] for s in top) for n, total in enumerate(report.referrals_by_month)
    ]
    if any(others):
        by_source.add("others", [v or None for v in others])
    times = _chart("Bar", style, "Acknowledgement times", [b[0] for b in TIME_BUCKETS])
    ack = report.acknowledgements
    times.add("received to drafted", _buckets(ack.to_draft_minutes))
    times.add("drafted to sent", _buckets(ack.to_send_minutes))
    visits = _chart("Line", style, f"Visits and referrals, {shown}", labels, dots_size=4)
    visits.add("referrals", report.referrals_by_month)
    visits.add("outreach visits", report.visits_by_month)
    return {
        "referrals-by-source": _static(by_source.render(is_unicode=True), "referrals-by-source"),
        "acknowledgement-times": _static(times.render(is_unicode=True), "acknowledgement-times"),
        "visits-and-referrals": _static(visits.render(is_unicode=True), "visits-and-referrals"),
    }


def _buckets(histogram: dict[int, int]) -> list[int | None]:
    """How many times fall in each of TIME_BUCKETS (None for an empty bucket: no bar)."""
    counts = [0] * len(TIME_BUCKETS)
    for minutes, count in histogram.items():
        for n, (_, upto) in enumerate(TIME_BUCKETS):
            if upto is None or minutes < upto:
                counts[n] += count
                break
    return [c or None for c in counts]


# --- the page ---------------------------------------------------------------------------------


def _day(value: date | None) -> str:
    return value.isoformat() if value else "-"


def _months_title(report: Report, source: Source) -> str:
    return ", ".join(f"{m}: {n}" for m, n in zip(report.months, source.months, strict=True))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(day=_day, minutes=format_minutes, spark=sparkline)
    return env


def render_page(report: Report) -> str:
    """The whole page."""
    drawn = {name: Markup(svg) for name, svg in charts(report).items()}
    template = _environment().from_string(
        (files("followupd.report") / "page.html.j2").read_text(encoding="utf-8")
    )
    return template.render(
        r=report,
        charts=drawn,
        months_title=lambda source: _months_title(report, source),
        notes=[report.acknowledgements, report.closing],
        note_rows=_note_rows,
        quiet_after=str(report.quiet_after),
    )


def _note_rows(notes: NoteFigures) -> list[tuple[str, str]]:
    start = "received" if notes.kind == "acknowledgement" else "closed"
    return [
        (f"{start} to drafted, median", format_minutes(notes.to_draft.median)),
        (f"{start} to drafted, 90th percentile", format_minutes(notes.to_draft.p90)),
        ("drafted to sent, median", format_minutes(notes.to_send.median)),
        ("drafted to sent, 90th percentile", format_minutes(notes.to_send.p90)),
    ]


def page_for(settings, session, since: date | None, today: date) -> tuple[Report, str]:
    """The report of `since` (None: the default twelve months) to `today`, and its page."""
    from followupd.report.figures import build, default_since, options_for

    first = since or default_since(today)
    figures = build(session, options_for(settings, first, today, limit=PAGE_LINES))
    return figures, render_page(figures)
