"""`followupd status`: the ledger, as a table or one JSON object a follow-up. No patient
details: ids, rules, states and reasons only."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd.commands.common import Home, load_settings, opened_store, out
from followupd.models import FollowUp
from followupd.store import Store, ledger_listing

STATUS_FIELDS = ("id", "rule", "kind", "state", "due_at", "external_id", "attempts", "reason")

# States in which a follow-up's reason says more than its external id does.
_REASON_FIRST = ("sent", "gone", "withdrawn", "withdraw")


def status(
    home: Home = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
) -> None:
    """The ledger: what is planned, held (and why), done, sent, failed. No patient details."""
    settings = load_settings(home)
    with opened_store(settings) as store:
        if as_json:
            group = bool(settings.config.therapists)
            for row in _ledger(store, state):
                out.print(json.dumps(_status_record(row, group)), markup=False)
            return
        print_ledger(settings, store, state)


def _status_record(row: FollowUp, group: bool) -> dict:
    """One follow-up as `status --json` prints it; `group`: a group practice, whose
    mailbox holds it is said too."""
    record = {name: getattr(row, name) for name in STATUS_FIELDS}
    record["due_at"] = row.due_at.isoformat()
    if group:
        record["therapist"] = row.therapist
    return record


def _ledger(store: Store, states: list[str] | None = None) -> list[FollowUp]:
    with store.session() as session:
        return list(ledger_listing(session, states))


def _where(row: FollowUp) -> str | None:
    """Where a follow-up is (its external id), or why not (its reason)."""
    if row.reason and (not row.external_id or row.state in _REASON_FIRST):
        return row.reason
    return row.external_id


def print_ledger(
    settings: configuration.Settings,
    store: Store,
    states: list[str] | None = None,
    title: str | None = None,
) -> None:
    rows = _ledger(store, states)
    zone = settings.config.practice.zone
    table = Table(title=title or f"{len(rows)} follow-ups", title_justify="left")
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("when", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    group = bool(settings.config.therapists)  # a group practice: whose mailbox it went to
    if group:
        table.add_column("therapist", no_wrap=True)
    table.add_column("where it is, or why not", overflow="fold")
    for row in rows:  # cells are Text: a ref like "R-[/]" is not console markup
        when = (row.remind_at or row.due_at).astimezone(zone)
        table.add_row(
            str(row.id),
            Text(row.rule),
            row.kind,
            row.state,
            when.strftime("%Y-%m-%d %H:%M"),
            str(row.attempts),
            *([Text(row.therapist or "")] if group else []),
            Text(_where(row) or ""),
        )
    out.print(table)
    counts = Counter(row.state for row in rows)
    out.print(
        ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "nothing yet",
        markup=False,
    )
