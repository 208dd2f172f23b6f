"""`followupd report`: referrals per physician and practice, acknowledgement and closing-note
times, outreach visits against referrals, and what needs attention, over a period. As tables
on the terminal, as CSV (`--csv`: the physicians and practices, one row each, a column a
month), or as one self-contained HTML page with charts (`--html FILE`, readable by you only).

No patient value is ever read for it: refs, physician and practice names, dates and counts.
The figures are defined in followupd.report.figures (and, for the reader, docs/operations.md).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd.commands.common import (
    EXIT_CONFIG,
    Home,
    date_option,
    fail,
    load_settings,
    out,
    session_for,
    today,
)
from followupd.commands.ledger import Limit, row_limit, shown_line
from followupd.permissions import write_private
from followupd.report import (
    NoteFigures,
    Report,
    Source,
    build,
    default_since,
    format_minutes,
    options_for,
    sparkline,
)


def report(
    since: Annotated[
        str | None,
        typer.Option(
            help="The first day, YYYY-MM-DD (default: twelve months: the first of the month "
            "eleven months ago).",
        ),
    ] = None,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="The physicians and practices as CSV on standard output: one row each, a "
            "column a month.",
        ),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Write one self-contained HTML page with charts (readable by you only).",
        ),
    ] = None,
    limit: Limit = None,
    home: Home = None,
) -> None:
    """The report: referrals, note times, visits, what needs attention (no patient data).

    Referrals per physician and practice by month, acknowledgement and closing-note times
    (median, 90th percentile), referrals in the 90 days after visits against the 90 before,
    quiet physicians, unsent and held notes, prospects. --csv: the physicians and practices
    for a spreadsheet; --html FILE: one self-contained page with charts."""
    if as_csv and html is not None:
        fail(EXIT_CONFIG, "--csv and --html: one at a time")
    settings = load_settings(home)
    first, last = _period(settings, since)
    if html is not None:
        _write_html(settings, first, last, html)
        return
    lines = None if as_csv else row_limit(limit)
    with session_for(settings) as session:
        figures = build(session, options_for(settings, first, last, limit=lines))
    if as_csv:
        write_csv(figures, sys.stdout)
    else:
        print_report(figures, row_limit(limit))


def _period(settings: configuration.Settings, since: str | None) -> tuple[date, date]:
    """(first day, today) in the practice's zone; a bad or future --since is exit 2."""
    last = today(settings)
    first = date_option("--since", since, settings) if since is not None else default_since(last)
    if first > last:
        fail(EXIT_CONFIG, f"--since: {first.isoformat()} is after today ({last.isoformat()})")
    return first, last


def _write_html(settings: configuration.Settings, first: date, last: date, path: Path) -> None:
    """The page, written atomically and readable by you only."""
    from followupd.report.html import ChartsUnavailable, page_for

    try:
        with session_for(settings) as session:
            figures, page = page_for(settings, session, first, last)
    except ChartsUnavailable as exc:
        fail(EXIT_CONFIG, str(exc))
    write_private(path, page)
    out.print(
        f"wrote {path} ({len(page.encode()) // 1024:,} KB): {figures.referrals:,} referrals, "
        f"{figures.since.isoformat()} to {figures.today.isoformat()}",
        markup=False,
    )


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "kind",
    "name",
    "practice",
    "referrals",
    "referrals_ever",
    "first",
    "last",
    "days_since",
    "visits",
    "cards_left",
    "visits_90_days_old",
    "referrals_90_days_before",
    "referrals_90_days_after",
)


def _cell(text: str | None) -> str:
    """A name as a spreadsheet will read it: never a formula ("=...", "+...", "@...")."""
    if not text:
        return ""
    return f"'{text}" if text[0] in "=+-@\t\r" else text


def write_csv(figures: Report, stream) -> None:
    """One header row, then a row a physician and a row a practice (the busiest first)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *figures.months])
    for source in [*figures.physicians, *figures.practices]:
        writer.writerow(
            [
                source.kind,
                _cell(source.name),
                _cell(source.practice),
                source.referrals,
                source.ever,
                source.first.isoformat() if source.first else "",
                source.last.isoformat() if source.last else "",
                "" if source.days_since is None else source.days_since,
                source.visits,
                source.cards,
                source.windows,
                source.before if source.windows else "",
                source.after if source.windows else "",
                *source.months,
            ]
        )


# --- the terminal ------------------------------------------------------------------------------


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        numeric = column in {"referrals", "days", "visits", "cards", "before", "after", "ever"}
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # never console markup
    return table


def _day(value: date | None) -> str:
    return value.isoformat() if value else "-"


def _source_rows(sources: list[Source], physicians: bool) -> list[list[str]]:
    return [
        [
            s.name,
            *([s.practice or "-"] if physicians else []),
            sparkline(s.months),
            str(s.referrals),
            _day(s.first),
            _day(s.last),
            "-" if s.days_since is None else str(s.days_since),
            str(s.visits),
            str(s.cards),
            str(s.before) if s.windows else "-",
            str(s.after) if s.windows else "-",
        ]
        for s in sources
    ]


def _sources(title: str, sources: list[Source], limit: int | None, physicians: bool) -> None:
    shown = sources[:limit] if limit is not None else sources
    columns = ["physician", "practice"] if physicians else ["practice"]
    columns += ["by month", "referrals", "first", "last", "days", "visits", "cards"]
    if shown:
        out.print(_table(title, [*columns, "before", "after"], _source_rows(shown, physicians)))
    out.print(shown_line(len(shown), len(sources), title), markup=False)


def _notes(figures: Report, notes: NoteFigures) -> None:
    start = "received" if notes.kind == "acknowledgement" else "closed"
    title = "acknowledgements" if notes.kind == "acknowledgement" else "closing notes"
    out.print(Text(f"\n{title} ({notes.referrals:,} referrals {start} in the period)", "bold"))
    if not notes.rules:
        out.print(f"  no rule makes them (a draft to the physician on referral.{start})")
    spreads = ((f"{start} to drafted", notes.to_draft), ("drafted to sent", notes.to_send))
    for label, spread in spreads:
        if spread.count:
            out.print(
                f"  {label}: median {format_minutes(spread.median)}, 90th percentile "
                f"{format_minutes(spread.p90)} ({spread.count:,} notes)",
                markup=False,
            )
        else:
            why = figures.sent_times if label == "drafted to sent" and figures.sent_times else ""
            out.print(f"  {label}: none{f' ({why})' if why else ''}", markup=False)
    summary = f"  sent {notes.sent:,}, not sent {notes.not_sent:,}"
    if notes.kind != "acknowledgement":
        summary += f" (held {notes.held:,}, missing {notes.missing:,})"
    out.print(summary, markup=False)
    for label, count in notes.standings():
        out.print(f"    {count:>5,}  {label}", markup=False)


def _attention(figures: Report) -> None:
    a = figures.attention
    out.print(Text("\nneeds attention", "bold"))
    quiet = [
        [s.name, s.practice or "-", str(s.ever), _day(s.last), str(s.days_since)] for s in a.quiet
    ]
    _list(
        f"quiet physicians (nothing for {figures.quiet_after} or more)",
        ["physician", "practice", "ever", "last", "days"],
        quiet,
        a.quiet_total,
        "quiet physicians",
    )
    unsent = [
        [str(n.id), n.rule, n.ref or "-", n.to or "-", _day(n.due), str(n.days)] for n in a.unsent
    ]
    _list(
        "notes unsent in Drafts",
        ["id", "rule", "ref", "to", "due", "days"],
        unsent,
        a.unsent_total,
        "unsent notes",
    )
    held = [
        [
            str(n.id),
            n.rule,
            n.ref or "-",
            n.to or "-",
            _day(n.due),
            n.releases or "",
            n.reason or "",
        ]
        for n in a.held
    ]
    _list(
        "held notes, and what releases them",
        ["id", "rule", "ref", "to", "due", "released by", "why held"],
        held,
        a.held_total,
        "held notes",
    )
    if a.prospects is None:
        out.print("prospects: this version of followupd does not record them", markup=False)
        return
    prospects = [
        [p.practice or "-", p.physician or "-", p.specialty or "-", _day(p.named_on), p.named_at]
        for p in a.prospects
    ]
    _list(
        "prospects not yet visited",
        ["practice", "physician", "specialty", "named on", "named at"],
        prospects,
        a.prospects_total,
        "prospects",
    )


def _list(title: str, columns: list[str], rows: list[list[str]], total: int, noun: str) -> None:
    if rows:
        out.print(_table(title, columns, rows))
        out.print(shown_line(len(rows), total, noun), markup=False)
    else:
        out.print(f"{title}: none", markup=False)


def print_report(figures: Report, limit: int | None) -> None:
    """The report as tables, each cut to `limit` lines (None: all) with a count line."""
    referring = sum(1 for s in figures.physicians if s.referrals)
    practices = sum(1 for s in figures.practices if s.referrals)
    out.print(
        f"report {figures.since.isoformat()} to {figures.today.isoformat()} "
        f"({len(figures.months)} months): {figures.referrals:,} referrals from {referring:,} "
        f"physicians at {practices:,} practices; {figures.visits:,} outreach visits, "
        f"{sum(figures.cards_by_month):,} cards left",
        markup=False,
    )
    by_month = " ".join(
        f"{m}:{n}" for m, n in zip(figures.months, figures.referrals_by_month, strict=True)
    )
    out.print(f"referrals by month: {by_month}", markup=False)
    _sources("physicians", figures.physicians, limit, physicians=True)
    _sources("practices", figures.practices, limit, physicians=False)
    out.print(
        f"by month: {figures.months[0]} to {figures.months[-1]}; first, last: ever; before, "
        f"after: referrals in the {figures.window_days} days before and after the visits of "
        f"{figures.since.isoformat()} to {figures.windows_until.isoformat()}",
        markup=False,
    )
    _notes(figures, figures.acknowledgements)
    _notes(figures, figures.closing)
    _attention(figures)
    out.print("\n--html FILE: the same with charts, as one page; --csv: for a spreadsheet")
