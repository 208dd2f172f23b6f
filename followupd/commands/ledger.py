"""`followupd status`: the ledger, as a table or one JSON object a follow-up. No patient
details: ids, rules, states and reasons only.

The filters, the order and the limit are the store's SQL (followupd.store.listing), so a page
of a 20,000-row ledger reads a page; the count line is counted by the database too. What the
lists share (`--limit`, the count line) is here as well, for `physician|referral|visit list`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    Home,
    date_option,
    fail,
    load_settings,
    opened_store,
    out,
)
from followupd.models import FollowUp, State
from followupd.store import (
    LedgerFilter,
    Store,
    ledger_counts,
    ledger_page,
    ledger_rules,
    ledger_size,
    referral_exists,
)

STATUS_FIELDS = ("id", "rule", "kind", "state", "due_at", "external_id", "attempts", "reason")

# States in which a follow-up's reason says more than its external id does.
_REASON_FIRST = ("sent", "gone", "withdrawn", "withdraw")

# How many rows a list shows on a terminal unless told (`--limit 0`: all); piped: all.
TERMINAL_LIMIT = 50

Limit = Annotated[
    int | None,
    typer.Option(
        min=0,
        help=f"Show at most N (default: {TERMINAL_LIMIT} on a terminal, all when piped; 0: all).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def row_limit(limit: int | None) -> int | None:
    """The rows to read: what was asked, else a screenful on a terminal; None is all."""
    if limit is None:
        return TERMINAL_LIMIT if sys.stdout.isatty() else None
    return limit or None


def shown_line(shown: int, matching: int, noun: str) -> str:
    """ "12 referrals", or "showing 50 of 20,040 referrals; --limit 0 for all"."""
    if shown < matching:
        return f"showing {shown:,} of {matching:,} {noun}; --limit 0 for all"
    return f"{matching:,} {noun.removesuffix('s') if matching == 1 else noun}"


def state_summary(counts: Mapping[str, int]) -> str:
    """ "10 done, 2 held", in the order of the states' life (followupd.models.State)."""
    order = {state.value: n for n, state in enumerate(State)}
    ranked = sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    return ", ".join(f"{n:,} {state}" for state, n in ranked if n)


def status(
    home: Home = None,
    as_json: AsJson = False,
    state: Annotated[
        list[str] | None, typer.Option(help="Only this state (repeat for several).")
    ] = None,
    rule: Annotated[
        list[str] | None, typer.Option(help="Only this rule (repeat for several).")
    ] = None,
    ref: Annotated[str | None, typer.Option(help="Only the follow-ups of this referral.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only those due (or reminding) on or after, YYYY-MM-DD.")
    ] = None,
    limit: Limit = None,
) -> None:
    """The ledger: what is planned, held (and why), done, sent, failed. No patient details."""
    settings = load_settings(home)
    with opened_store(settings) as store:
        where = _ledger_filter(settings, store, state, rule, ref, since)
        if as_json:
            _print_json(settings, store, where, row_limit(limit))
            return
        print_ledger(settings, store, where=where, limit=row_limit(limit))


def _ledger_filter(
    settings: configuration.Settings,
    store: Store,
    states: list[str] | None,
    rules: list[str] | None,
    ref: str | None,
    since: str | None,
) -> LedgerFilter:
    """The filter `status` was given; a value that can match nothing is exit 2 (1 for a
    referral that does not exist), so a typo is never "nothing yet"."""
    _known("--state", states or [], [s.value for s in State])
    if rules and not set(rules) <= _rule_names(settings):
        _known("--rule", rules, sorted(_rule_names(settings) | _ledger_rules(store)))
    if ref is not None and not _referral_exists(store, ref.strip()):
        fail(EXIT_FAILED, f"--ref: no referral {ref.strip()}")
    start = None
    if since is not None:
        day = date_option("--since", since, settings)
        start = datetime.combine(day, time(), tzinfo=settings.config.practice.zone)
    return LedgerFilter(
        states=tuple(states or ()),
        rules=tuple(rules or ()),
        ref=ref.strip() if ref is not None else None,
        since=start,
    )


def _known(option: str, given: Iterable[str], valid: list[str]) -> None:
    """Exit 2 on a value that is not one of `valid`, naming them."""
    unknown = [value for value in given if value not in valid]
    if unknown:
        fail(EXIT_CONFIG, f"{option}: {unknown[0]!r} is not one of: {', '.join(valid)}")


def _rule_names(settings: configuration.Settings) -> set[str]:
    return {rule.name for rule in settings.config.rules}


def _ledger_rules(store: Store) -> set[str]:
    """Rules with rows in the ledger: a rule removed from the configuration still lists."""
    with store.session() as session:
        return ledger_rules(session)


def _referral_exists(store: Store, ref: str) -> bool:
    with store.session() as session:
        return referral_exists(session, ref)


def _print_json(
    settings: configuration.Settings, store: Store, where: LedgerFilter, limit: int | None
) -> None:
    """`status --json`: one object a line; a cut list says so on standard error only."""
    group = bool(settings.config.therapists)
    rows, counts, _ = _read_ledger(store, where, limit)
    for row in rows:
        out.print(json.dumps(_status_record(row, group)), markup=False)
    if len(rows) < sum(counts.values()):
        print(shown_line(len(rows), sum(counts.values()), "follow-ups"), file=sys.stderr)


def _status_record(row: FollowUp, group: bool) -> dict:
    """One follow-up as `status --json` prints it; `group`: a group practice, whose
    mailbox holds it is said too."""
    record = {name: getattr(row, name) for name in STATUS_FIELDS}
    record["due_at"] = row.due_at.isoformat()
    if group:
        record["therapist"] = row.therapist
    return record


def _read_ledger(
    store: Store, where: LedgerFilter, limit: int | None
) -> tuple[list[FollowUp], dict[str, int], int]:
    """A page of the ledger, the matching rows' counts by state, and the ledger's size."""
    with store.session() as session:
        rows = list(ledger_page(session, where, limit))
        counts = ledger_counts(session, where)
        size = ledger_size(session) if where.narrowed else sum(counts.values())
    return rows, counts, size


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
    *,
    where: LedgerFilter | None = None,
    limit: int | None = None,
) -> None:
    """The ledger as a table, then a count line (`where`, `limit`: what `status` was asked;
    the demo passes neither and sees every row)."""
    where = where or LedgerFilter(states=tuple(states or ()))
    rows, counts, size = _read_ledger(store, where, limit)
    if rows:
        out.print(_ledger_table(settings, rows, title or "follow-ups"))
    out.print(_count_line(len(rows), counts, size), markup=False)


def _ledger_table(settings: configuration.Settings, rows: list[FollowUp], title: str) -> Table:
    zone = settings.config.practice.zone
    table = Table(title=title, title_justify="left")
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
        when = (row.remind_at or row.due_at).astimezone(zone)  # the store orders by this
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
    return table


def _count_line(shown: int, counts: Mapping[str, int], size: int) -> str:
    """ "12 of 20,040 follow-ups shown: 10 done, 2 held": the counts are of every row that
    matches, shown or not (and say so when the limit cut some off)."""
    if not size:
        return "nothing yet: no follow-ups (add a referral or a visit, then `followupd run`)"
    matching = sum(counts.values())
    line = f"{shown:,} of {size:,} follow-ups shown"
    if shown < matching:
        line += (
            " (--limit 0 for all)"
            if matching == size
            else f" ({matching:,} match; --limit 0 for all)"
        )
    summary = state_summary(counts)
    return f"{line}: {summary}" if summary else line
