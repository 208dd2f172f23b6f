"""Finding things: `followupd physician list`, `referral list` and `visit list`.

Each is a table (cells are rich Text, so a value like "R-[/]" is never console markup) or
`--json`, one object a line, with a count line after the table. A referral's client name is
shown only with `--show-names`; no other patient field is ever read for a list.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd.commands.common import Home, date_option, load_settings, out, session_for
from followupd.commands.entry import physician_app, referral_app, visit_app
from followupd.commands.ledger import AsJson, Limit, row_limit, shown_line, state_summary
from followupd.store import (
    ReferralFilter,
    ReferralLine,
    VisitFilter,
    physician_count,
    physician_page,
    referral_count,
    referral_page,
    visit_count,
    visit_page,
)


def _day(value: date | None) -> str:
    return value.isoformat() if value else ""


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A plain table whose every cell is Text (never markup)."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        numeric = column in {"id", "referrals", "cards", "handouts"}
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _emit(
    title: str,
    records: list[dict],
    shown_total: tuple[int, int],
    noun: str,
    as_json: bool,
) -> None:
    """Print `records` as JSON lines (a cut list says so on standard error) or as a table
    with a count line."""
    shown, total = shown_total
    if as_json:
        for record in records:
            out.print(json.dumps(record), markup=False)
        if shown < total:
            print(shown_line(shown, total, noun), file=sys.stderr)
        return
    if records:
        columns = list(records[0])
        rows = [[_cell(record[column]) for column in columns] for record in records]
        out.print(_table(title, [c.replace("_", " ") for c in columns], rows))
    out.print(shown_line(shown, total, noun), markup=False)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _group(settings: configuration.Settings) -> bool:
    """A group practice: lists say whose each row is."""
    return bool(settings.config.therapists)


def _since(option: str, value: str | None, settings: configuration.Settings) -> date | None:
    return date_option(option, value, settings) if value is not None else None


# --- physicians --------------------------------------------------------------------------------


@physician_app.command("list")
def physician_list(
    unconfirmed: Annotated[
        bool,
        typer.Option(help="Only those whose address waits for `physician confirm`."),
    ] = False,
    limit: Limit = None,
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """The physicians you have, by name: id (for `physician confirm`), address, referrals."""
    settings = load_settings(home)
    with session_for(settings) as session:
        rows = physician_page(session, unconfirmed, row_limit(limit))
        total = physician_count(session, unconfirmed)
    records = [_physician_record(row, as_json) for row in rows]
    _emit("physicians", records, (len(rows), total), "physicians", as_json)


def _physician_record(row: sa.Row, as_json: bool) -> dict:
    """One physician; `confirm` says why notes to the address wait for `physician confirm`."""
    record = {
        "id": row.id,
        "name": row.name,
        "practice": row.practice,
        "specialty": row.specialty,
        "email": row.email,
    }
    if as_json:
        record["needs_confirm"] = row.email_check is not None
        record["email_check"] = row.email_check
    else:
        record["confirm"] = _confirm_cell(row.email_check)
    record["referrals"] = row.referrals
    return record


def _confirm_cell(email_check: str | None) -> str:
    return f"waits: {email_check}" if email_check else ""


# --- referrals ---------------------------------------------------------------------------------


@referral_app.command("list")
def referral_list(
    closed: Annotated[
        bool | None,
        typer.Option("--closed/--open", help="Only closed (or only open) referrals."),
    ] = None,
    physician: Annotated[
        str | None, typer.Option(help="Only from physicians whose name contains this.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only those received on or after, YYYY-MM-DD.")
    ] = None,
    show_names: Annotated[
        bool, typer.Option("--show-names", help="Show each client's name (patient data).")
    ] = False,
    limit: Limit = None,
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Referrals, newest first: physician, dates, releases and their follow-ups' states.
    No patient details unless --show-names (then the client's name only)."""
    settings = load_settings(home)
    where = ReferralFilter(
        closed=closed, physician=physician, since=_since("--since", since, settings)
    )
    with session_for(settings) as session:
        lines = referral_page(session, where, row_limit(limit), names=show_names)
        total = referral_count(session, where)
    records = [_referral_record(line, _group(settings), show_names, as_json) for line in lines]
    _emit("referrals", records, (len(lines), total), "referrals", as_json)


def _referral_record(line: ReferralLine, group: bool, names: bool, as_json: bool) -> dict:
    """One referral; a client's name only if `names`."""
    record: dict = {"ref": line.ref}
    if names:
        record["client"] = line.client_name
    record |= {
        "physician": line.physician,
        "received": _day(line.received_on),
        "closed": _day(line.closed_on) or None,
    }
    if group:
        record["therapist"] = line.therapist
    prescriber = line.prescriber_release_on_file if line.has_prescriber else None
    if as_json:
        record |= {"release": line.release_on_file, "prescriber_release": prescriber}
        record["follow_ups"] = line.follow_ups
    else:
        record["release"] = _release_cell(line.release_on_file, prescriber)
        record["follow-ups"] = state_summary(line.follow_ups) or "none yet"
    return record


def _release_cell(physician: bool, prescriber: bool | None) -> str:
    """Which releases of information are on file: the physician's, the prescriber's."""
    cell = f"physician: {'on file' if physician else 'not on file'}"
    if prescriber is not None:
        cell += f"; prescriber: {'on file' if prescriber else 'not on file'}"
    return cell


# --- visits ------------------------------------------------------------------------------------


@visit_app.command("list")
def visit_list(
    practice: Annotated[
        str | None, typer.Option(help="Only to practices whose name contains this.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only those on or after, YYYY-MM-DD.")] = None,
    limit: Limit = None,
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Outreach visits, newest first: the office, the physician met, cards and handouts."""
    settings = load_settings(home)
    where = VisitFilter(practice=practice, since=_since("--since", since, settings))
    with session_for(settings) as session:
        rows = visit_page(session, where, row_limit(limit))
        total = visit_count(session, where)
    records = [_visit_record(row, _group(settings)) for row in rows]
    _emit("visits", records, (len(rows), total), "visits", as_json)


def _visit_record(row: sa.Row, group: bool) -> dict:
    record = {
        "id": row.id,
        "date": _day(row.visited_on),
        "practice": row.practice,
        "physician": row.physician,
        "cards": row.cards_left,
        "handouts": row.handouts_left,
        "named": ", ".join(n for n in (row.named_physician, row.named_practice) if n) or None,
    }
    if group:
        record["therapist"] = row.therapist
    return record
