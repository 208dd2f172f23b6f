"""What `followupd report` reads: aggregates over referrals, visits and the ledger, grouped in
SQL (by physician, practice, month, state, or a duration in minutes), so the report of
100,000 referrals reads hundreds of rows, not 100,000.

Never a patient column: referrals are read for their ids, refs, dates and physicians only.
The few things SQLite and PostgreSQL write differently (a month's name, the minutes between
two times, the later of two times, a time written in a sync's reason, a column SQLite should
not look up by its index) are small SQL constructs at the top, compiled for each dialect.

How the ledger's times are read: a draft's making time is `made_at` where the ledger
recorded it. A draft made before it did (migration 0008 set those to their due time) was
made at the first tick after the latest of its due time, the moment followupd learned of its
referral (`referral.created_at`, for acknowledgements) and, for a note that waits for a
release, the moment that release was recorded; `drafted_at` is never earlier than that
latest time. A draft's sending time is known only from a sync with Gmail's read scope,
which records it in the reason as "sent YYYY-MM-DD HH:MM UTC".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.functions import FunctionElement

from followupd.models import FollowUp, Physician, Practice, Referral, Release, State, Visit

# --- what the dialects write differently -------------------------------------------------------


class month_of(FunctionElement):
    """The month of a date as "YYYY-MM"."""

    type = sa.String()
    inherit_cache = True


@compiles(month_of)
def _month_sqlite(element, compiler, **kw):
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


@compiles(month_of, "postgresql")
def _month_postgresql(element, compiler, **kw):
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM')"


class unindexed(FunctionElement):
    """A column SQLite should not look up by its index (`+column`): where another index
    is far narrower, as the rules' is beside the state's for done drafts among a million
    done reminders. Other databases plan with statistics and get the column as it is."""

    type = sa.String()
    inherit_cache = True


@compiles(unindexed)
def _unindexed_plain(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element, compiler, **kw):
    return f"+{compiler.process(element.clauses, **kw)}"


class minutes_between(FunctionElement):
    """Whole minutes from the first time (or date: its midnight, UTC) to the second."""

    type = sa.Integer()
    inherit_cache = True


@compiles(minutes_between)
def _minutes_sqlite(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(ROUND((julianday({end}) - julianday({start})) * 1440) AS INTEGER)"


@compiles(minutes_between, "postgresql")
def _minutes_postgresql(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(ROUND(EXTRACT(EPOCH FROM ({end} - {start})) / 60) AS INTEGER)"


class later_of(FunctionElement):
    """The later of two times (neither may be NULL)."""

    type = sa.DateTime()
    inherit_cache = True


@compiles(later_of)
def _later_sqlite(element, compiler, **kw):
    return f"max({compiler.process(element.clauses, **kw)})"  # one text format: it sorts


@compiles(later_of, "postgresql")
def _later_postgresql(element, compiler, **kw):
    return f"GREATEST({compiler.process(element.clauses, **kw)})"


class sent_time(FunctionElement):
    """The time in a synced reason "sent YYYY-MM-DD HH:MM UTC" (only where it matches)."""

    type = sa.DateTime()
    inherit_cache = True


@compiles(sent_time)
def _sent_sqlite(element, compiler, **kw):
    return f"substr({compiler.process(element.clauses, **kw)}, 6, 16)"


@compiles(sent_time, "postgresql")
def _sent_postgresql(element, compiler, **kw):
    return f"CAST(substr({compiler.process(element.clauses, **kw)}, 6, 16) AS TIMESTAMP)"


SENT_REASON = "sent ____-__-__ __:__ UTC"  # what the sync writes when Gmail says when

# --- referrals by physician and month -----------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """The report's days: from `since` to `until` (today), both included."""

    since: date
    until: date


def physician_spans(session: Session, span: Span) -> Sequence[sa.Row]:
    """Every physician who ever referred (up to `until`): first and last referral ever, how
    many in the span and ever, with their practice. The referrals are grouped alone (on the
    index of physician and day), then named."""
    in_span = sa.case((Referral.received_on >= span.since, 1), else_=0)
    spans = (
        sa.select(
            Referral.physician_id.label("id"),
            sa.func.min(Referral.received_on).label("first"),
            sa.func.max(Referral.received_on).label("last"),
            sa.func.sum(in_span).label("referrals"),
            sa.func.count().label("ever"),
        )
        .where(Referral.received_on <= span.until)
        .group_by(Referral.physician_id)
        .subquery()
    )
    query = (
        sa.select(
            spans,
            Physician.name,
            Practice.id.label("practice_id"),
            Practice.name.label("practice"),
        )
        .select_from(spans)
        .join(Physician, Physician.id == spans.c.id)
        .outerjoin(Practice, Practice.id == Physician.practice_id)
    )
    return session.execute(query).all()


def referral_months(session: Session, span: Span) -> Sequence[sa.Row]:
    """(physician_id, month "YYYY-MM", referrals) over the span."""
    month = month_of(Referral.received_on).label("month")
    query = (
        sa.select(Referral.physician_id, month, sa.func.count().label("referrals"))
        .where(Referral.received_on.between(span.since, span.until))
        .group_by(Referral.physician_id, month)
    )
    return session.execute(query).all()


def visit_months(session: Session, span: Span) -> Sequence[sa.Row]:
    """(month, visits, cards left) over the span."""
    month = month_of(Visit.visited_on).label("month")
    query = (
        sa.select(
            month,
            sa.func.count().label("visits"),
            sa.func.coalesce(sa.func.sum(Visit.cards_left), 0).label("cards"),
        )
        .where(Visit.visited_on.between(span.since, span.until))
        .group_by(month)
    )
    return session.execute(query).all()


# --- outreach visits ------------------------------------------------------------------------------


def visit_totals(session: Session, span: Span, by: str) -> Sequence[sa.Row]:
    """Visits and cards left in the span, by physician met (`by="physician"`, with the
    physician's name and practice) or by practice (`by="practice"`, with its name)."""
    if by == "physician":
        query = (
            sa.select(
                Physician.id,
                Physician.name,
                Practice.id.label("practice_id"),
                Practice.name.label("practice"),
                sa.func.count().label("visits"),
                sa.func.coalesce(sa.func.sum(Visit.cards_left), 0).label("cards"),
            )
            .select_from(Visit)
            .join(Physician, Physician.id == Visit.physician_id)
            .outerjoin(Practice, Practice.id == Physician.practice_id)
            .group_by(Physician.id, Physician.name, Practice.id, Practice.name)
        )
    else:
        query = (
            sa.select(
                Practice.id,
                Practice.name,
                sa.func.count().label("visits"),
                sa.func.coalesce(sa.func.sum(Visit.cards_left), 0).label("cards"),
            )
            .select_from(Visit)
            .join(Practice, Practice.id == Visit.practice_id)
            .group_by(Practice.id, Practice.name)
        )
    return session.execute(query.where(Visit.visited_on.between(span.since, span.until))).all()


def window_visits(session: Session, since: date, last_visit: date, by: str) -> Sequence[sa.Row]:
    """(physician or practice id, day) of the visits from `since` to `last_visit` (by
    physician: those where one was met)."""
    key = Visit.physician_id if by == "physician" else Visit.practice_id
    query = (
        sa.select(key.label("id"), Visit.visited_on)
        .where(Visit.visited_on.between(since, last_visit), key.is_not(None))
        .distinct()
    )
    return session.execute(query).all()


WINDOWS_AT_ONCE = 1000  # windows a statement counts in (4 parameters each)


def referrals_within(
    session: Session, windows: Sequence[tuple[int, str, date, date]], by: str
) -> Sequence[sa.Row]:
    """(id, side, referrals) for windows (physician or practice id, side, first day, last
    day) that do not overlap one another on a side: how many referrals each source received
    in its windows, a range read on the index of physician and day for each."""
    found: list[sa.Row] = []
    for start in range(0, len(windows), WINDOWS_AT_ONCE):
        rows = (
            sa.values(
                sa.column("id", sa.Integer),
                sa.column("side", sa.String),
                sa.column("first", sa.Date),
                sa.column("last", sa.Date),
                name="windows",
            )
            .data(list(windows[start : start + WINDOWS_AT_ONCE]))
            .cte("windows")
        )
        inside = Referral.received_on.between(rows.c.first, rows.c.last)
        if by == "physician":
            joined = rows.join(Referral, sa.and_(Referral.physician_id == rows.c.id, inside))
        else:
            joined = rows.join(Physician, Physician.practice_id == rows.c.id).join(
                Referral, sa.and_(Referral.physician_id == Physician.id, inside)
            )
        query = (
            sa.select(rows.c.id, rows.c.side, sa.func.count())
            .select_from(joined)
            .group_by(rows.c.id, rows.c.side)
        )
        found += session.execute(query).all()
    return found


# --- notes: acknowledgements and closing notes ------------------------------------------------

# A note's best state, for a referral with several rows of the same kind of note (two
# acknowledgement rules): the smaller, the further it got. Unknown states rank last.
BEST_FIRST = (
    State.sent,
    State.gone,
    State.done,
    State.claimed,
    State.waiting,
    State.held,
    State.planned,
    State.failed,
    State.deleted,
    State.withdraw,
    State.withdrawing,
    State.withdrawn,
    State.cancelled,
    State.skipped,
)
DRAFTED = (State.done, State.sent, State.gone, State.deleted)  # a draft was made


@dataclass(frozen=True)
class Notes:
    """Which notes to read: the rules that make them, the ones among those that wait for a
    release, and the date that starts their clock (`received_on` or `closed_on`)."""

    rules: tuple[str, ...]
    needs_release: tuple[str, ...]
    start: str  # "received" | "closed"

    @property
    def start_column(self) -> sa.ColumnElement[date]:
        return Referral.received_on if self.start == "received" else Referral.closed_on


def note_states(session: Session, notes: Notes, span: Span) -> dict[str | None, int]:
    """Referrals whose clock started in the span, counted by the best state of their notes
    of this kind (None: no such note at all). With one rule (the usual), a referral has at
    most one such note, and the notes are counted by state straight away."""
    in_span = notes.start_column.between(span.since, span.until)
    if len(notes.rules) > 1:
        return _best_states(session, notes, in_span)
    counts: dict[str | None, int] = {}
    if notes.rules:
        query = (
            sa.select(FollowUp.state, sa.func.count())
            .select_from(FollowUp)
            .join(Referral, _of_referral(FollowUp))
            .where(FollowUp.rule == notes.rules[0], in_span)
            .group_by(FollowUp.state)
        )
        counts = {state: count for state, count in session.execute(query)}
    referrals = session.execute(sa.select(sa.func.count()).where(in_span)).scalar_one()
    if referrals > sum(counts.values()):
        counts[None] = referrals - sum(counts.values())
    return counts


def _of_referral(note) -> sa.ColumnElement[bool]:
    return sa.and_(note.subject_type == "referral", note.subject_id == Referral.id)


def _best_states(session: Session, notes: Notes, in_span) -> dict[str | None, int]:
    """As note_states, for several rules: each referral's best state first."""
    note = aliased(FollowUp)
    rank = sa.case(*((note.state == state.value, n) for n, state in enumerate(BEST_FIRST)))
    per_referral = (
        sa.select(Referral.id, sa.func.min(rank).label("best"))
        .select_from(Referral)
        .outerjoin(note, sa.and_(note.rule.in_(notes.rules), _of_referral(note)))
        .where(in_span)
        .group_by(Referral.id)
        .subquery()
    )
    query = sa.select(per_referral.c.best, sa.func.count()).group_by(per_referral.c.best)
    counts: dict[str | None, int] = {}
    for best, count in session.execute(query):
        state = BEST_FIRST[best].value if best is not None else None
        counts[state] = counts.get(state, 0) + count
    return counts


def _drafted_at(note, notes: Notes) -> sa.ColumnElement:
    """When this draft was made: the time the ledger recorded (`made_at`), or, for a draft
    made before it did (no made_at, or migration 0008's stand-in: its due time), the
    earliest a tick can have made it (see the module's docstring). The release is looked up
    only then, and only for a rule whose notes wait for one."""
    released = (
        sa.select(sa.func.min(Release.created_at))
        .where(Release.referral_id == Referral.id, Release.recipient == "physician")
        .scalar_subquery()
    )
    waited = sa.case((note.rule.in_(notes.needs_release), released))
    earliest = later_of(note.due_at, sa.func.coalesce(waited, note.due_at))
    if notes.start == "received":
        earliest = later_of(earliest, Referral.created_at)
    if not records_making():
        return earliest
    return sa.case((note.made_at > note.due_at, note.made_at), else_=earliest)


def records_making() -> bool:
    """Whether this version's ledger records when each note was made (`made_at`)."""
    return "made_at" in FollowUp.__table__.c


def note_times(
    session: Session, notes: Notes, span: Span
) -> tuple[list[tuple[date, int, int]], list[tuple[int, int]]]:
    """How long the drafted notes took, in whole minutes, as two histograms from one pass
    over them (a common table expression both halves read):

    - (start day, minutes from that day's midnight UTC to drafted, notes): the caller
      moves each day's midnight to the practice's zone;
    - (minutes from drafted to sent, notes), for the sent notes whose sending time the
      sync recorded.
    """
    if not notes.rules:
        return [], []
    note = aliased(FollowUp)
    made = (
        sa.select(
            notes.start_column.label("day"),
            _drafted_at(note, notes).label("drafted"),
            note.state,
            note.reason,
        )
        .select_from(note)
        .join(Referral, _of_referral(note))
        .where(
            note.rule.in_(notes.rules),
            note.state.in_(DRAFTED),
            notes.start_column.between(span.since, span.until),
        )
        .cte("made")
    )
    to_draft = minutes_between(made.c.day, made.c.drafted).label("minutes")
    to_send = minutes_between(made.c.drafted, sent_time(made.c.reason)).label("minutes")
    query = sa.union_all(
        sa.select(sa.literal("draft"), made.c.day, to_draft, sa.func.count()).group_by(
            made.c.day, to_draft
        ),
        sa.select(sa.literal("send"), sa.cast(sa.null(), sa.Date), to_send, sa.func.count())
        .where(made.c.state == State.sent, made.c.reason.like(SENT_REASON))
        .group_by(to_send),
    )
    to_draft, to_send = [], []
    for which, day, minutes, count in session.execute(query):
        if which == "draft":
            to_draft.append((day, minutes, count))
        else:
            to_send.append((minutes, count))
    return to_draft, to_send


# --- needs attention ----------------------------------------------------------------------------


def _note_lines(
    session: Session,
    state: str,
    kind: str | None,
    limit: int | None,
    rules: Sequence[str] | None = None,
):
    """Follow-ups in `state` (of `kind`), longest due first, with their referral's ref, its
    physician and prescriber, their visit's practice, or the physician a note to a physician
    (a thank-you) is about; and how many there are."""
    prescriber, addressed = aliased(Physician), aliased(Physician)
    visit_practice = aliased(Practice)
    conditions = [FollowUp.state == state]
    if rules is not None:  # these rules' rows, by their index (see `unindexed`)
        conditions = [FollowUp.rule.in_(rules), unindexed(FollowUp.state) == state]
    if kind is not None:
        conditions.append(FollowUp.kind == kind)
    query = (
        sa.select(
            FollowUp.id,
            FollowUp.rule,
            FollowUp.subject_type,
            FollowUp.due_at,
            FollowUp.reason,
            Referral.ref,
            Physician.name.label("physician"),
            prescriber.name.label("prescriber"),
            visit_practice.name.label("practice"),
            addressed.name.label("addressed"),
        )
        .select_from(FollowUp)
        .outerjoin(
            Referral,
            sa.and_(FollowUp.subject_type == "referral", Referral.id == FollowUp.subject_id),
        )
        .outerjoin(Physician, Physician.id == Referral.physician_id)
        .outerjoin(prescriber, prescriber.id == Referral.prescriber_id)
        .outerjoin(
            Visit, sa.and_(FollowUp.subject_type == "visit", Visit.id == FollowUp.subject_id)
        )
        .outerjoin(visit_practice, visit_practice.id == Visit.practice_id)
        .outerjoin(
            addressed,
            sa.and_(FollowUp.subject_type == "physician", addressed.id == FollowUp.subject_id),
        )
        .where(*conditions)
        .order_by(FollowUp.due_at, FollowUp.id)
        .limit(limit)
    )
    total = sa.select(sa.func.count()).select_from(FollowUp).where(*conditions)
    return session.execute(query).all(), session.execute(total).scalar_one()


def unsent_drafts(
    session: Session, rules: Sequence[str], limit: int | None
) -> tuple[Sequence[sa.Row], int]:
    """Drafts of these rules (the configuration's draft rules) made and still in Drafts
    (`done`), the longest waiting first; and how many."""
    return _note_lines(session, State.done, "draft", limit, rules)


def held_notes(session: Session, limit: int | None) -> tuple[Sequence[sa.Row], int]:
    """Notes held, with the reason that says what releases them, the oldest first."""
    return _note_lines(session, State.held, None, limit)


NAMED = ("named_practice", "named_physician", "named_specialty")


def records_prospects() -> bool:
    """Whether this version's visits record the answer to "who do you refer to?"."""
    return all(name in Visit.__table__.c for name in NAMED)


def prospects(
    session: Session, until: date
) -> tuple[Sequence[sa.Row], Sequence[sa.Row], Sequence[sa.Row]]:
    """The prospects visits named (practice, physician, specialty, first named on, named at
    which practice); the last visit to each practice (by key) and the last meeting with each
    physician (by name), up to `until`. The caller matches them case- and
    space-insensitively, as keys are made."""
    columns = Visit.__table__.c
    named_practice, named_physician = columns.named_practice, columns.named_physician
    named = (
        sa.select(
            named_practice.label("practice"),
            named_physician.label("physician"),
            columns.named_specialty.label("specialty"),
            sa.func.min(Visit.visited_on).label("named_on"),
            sa.func.min(Practice.name).label("named_at"),
        )
        .select_from(Visit)
        .join(Practice, Practice.id == Visit.practice_id)
        .where(
            sa.or_(named_practice.is_not(None), named_physician.is_not(None)),
            Visit.visited_on <= until,
        )
        .group_by(named_practice, named_physician, columns.named_specialty)
    )
    by_practice = (
        sa.select(Practice.key, sa.func.max(Visit.visited_on).label("last"))
        .select_from(Visit)
        .join(Practice, Practice.id == Visit.practice_id)
        .where(Visit.visited_on <= until)
        .group_by(Practice.key)
    )
    by_physician = (
        sa.select(Physician.name, sa.func.max(Visit.visited_on).label("last"))
        .select_from(Visit)
        .join(Physician, Physician.id == Visit.physician_id)
        .where(Visit.visited_on <= until)
        .group_by(Physician.name)
    )
    return (
        session.execute(named).all(),
        session.execute(by_practice).all(),
        session.execute(by_physician).all(),
    )
