"""What a person lists: the ledger (`status`), physicians, referrals and visits.

Each list filters, orders and limits in SQL, and counts with GROUP BY, so a page of a
20,000-row ledger costs a page, not the ledger. A referral's patient fields are read only
when the caller asks for its client's name (`names=True`), and never its other ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, Physician, Practice, Referral, Visit

# --- the ledger --------------------------------------------------------------------------------

# What `status` shows in its "when" column, and so what it is ordered by: a reminder's time,
# else when a draft is due.
shown_time = sa.func.coalesce(FollowUp.remind_at, FollowUp.due_at)


@dataclass(frozen=True)
class LedgerFilter:
    """Which follow-ups `status` shows; an empty field does not filter."""

    states: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    ref: str | None = None  # the follow-ups of this referral
    since: datetime | None = None  # shown time (reminder's, else due) on or after this

    @property
    def narrowed(self) -> bool:
        return bool(self.states or self.rules or self.ref is not None or self.since)


def _ledger_conditions(where: LedgerFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if where.states:
        conditions.append(FollowUp.state.in_(where.states))
    if where.rules:
        conditions.append(FollowUp.rule.in_(where.rules))
    if where.ref is not None:
        referral = sa.select(Referral.id).where(Referral.ref == where.ref).scalar_subquery()
        conditions += [FollowUp.subject_type == "referral", FollowUp.subject_id == referral]
    if where.since is not None:
        conditions.append(shown_time >= where.since)
    return conditions


def ledger_page(session: Session, where: LedgerFilter, limit: int | None) -> Sequence[FollowUp]:
    """The follow-ups `status` shows, in the order of its "when" column (all if no limit)."""
    query = (
        sa.select(FollowUp)
        .where(*_ledger_conditions(where))
        .order_by(shown_time, FollowUp.id)
        .limit(limit)
    )
    return session.execute(query).scalars().all()


def ledger_counts(session: Session, where: LedgerFilter) -> dict[str, int]:
    """How many follow-ups of each state match, counted by the database."""
    query = (
        sa.select(FollowUp.state, sa.func.count())
        .where(*_ledger_conditions(where))
        .group_by(FollowUp.state)
    )
    return {state: count for state, count in session.execute(query).all()}


def ledger_size(session: Session) -> int:
    """How many follow-ups the ledger holds, whatever a filter says."""
    return session.execute(sa.select(sa.func.count()).select_from(FollowUp)).scalar_one()


def ledger_rules(session: Session) -> set[str]:
    """The rules the ledger has rows for (a rule since removed from the configuration too)."""
    return set(session.execute(sa.select(FollowUp.rule).distinct()).scalars())


# --- physicians --------------------------------------------------------------------------------


def physician_page(session: Session, unconfirmed: bool, limit: int | None) -> Sequence[sa.Row]:
    """Physicians by name, with their practice and how many referrals each sent."""
    sent = (
        sa.select(Referral.physician_id, sa.func.count().label("referrals"))
        .group_by(Referral.physician_id)
        .subquery()
    )
    query = (
        sa.select(
            Physician.id,
            Physician.name,
            Practice.name.label("practice"),
            Physician.specialty,
            Physician.email,
            Physician.email_check,
            sa.func.coalesce(sent.c.referrals, 0).label("referrals"),
        )
        .outerjoin(Practice, Practice.id == Physician.practice_id)
        .outerjoin(sent, sent.c.physician_id == Physician.id)
        .where(*_physician_conditions(unconfirmed))
        .order_by(Physician.name, Physician.id)
        .limit(limit)
    )
    return session.execute(query).all()


def _physician_conditions(unconfirmed: bool) -> list[sa.ColumnElement[bool]]:
    return [Physician.email_check.is_not(None)] if unconfirmed else []


def physician_count(session: Session, unconfirmed: bool) -> int:
    """How many physicians `physician_page` would list with no limit."""
    query = sa.select(sa.func.count()).select_from(Physician)
    return session.execute(query.where(*_physician_conditions(unconfirmed))).scalar_one()


# --- referrals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferralFilter:
    """Which referrals `referral list` shows; an empty field does not filter."""

    closed: bool | None = None  # True: closed only; False: open only
    physician: str | None = None  # a physician whose name contains this (any case)
    since: date | None = None  # received on or after


@dataclass
class ReferralLine:
    """One referral as a list shows it: ids, dates, releases and its follow-ups' states;
    `client_name` only when asked for."""

    id: int
    ref: str
    physician: str
    received_on: date
    closed_on: date | None
    release_on_file: bool
    has_prescriber: bool
    prescriber_release_on_file: bool
    therapist: str | None
    client_name: str | None = None
    follow_ups: dict[str, int] = field(default_factory=dict)


def _contains(column: sa.ColumnElement[str], text: str) -> sa.ColumnElement[bool]:
    """Case-insensitive "contains", with the user's % and _ taken literally."""
    return sa.func.lower(column).contains(text.strip().lower(), autoescape=True)


def _referral_conditions(where: ReferralFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if where.closed is not None:
        closed = Referral.closed_on.is_not(None)
        conditions.append(closed if where.closed else sa.not_(closed))
    if where.physician:
        conditions.append(_contains(Physician.name, where.physician))
    if where.since is not None:
        conditions.append(Referral.received_on >= where.since)
    return conditions


def referral_page(
    session: Session, where: ReferralFilter, limit: int | None, *, names: bool = False
) -> list[ReferralLine]:
    """Referrals, newest first, with the states of their follow-ups; the client's name only
    with `names` (and no other patient field ever)."""
    columns = [
        Referral.id,
        Referral.ref,
        Physician.name.label("physician"),
        Referral.received_on,
        Referral.closed_on,
        Referral.release_on_file,
        Referral.prescriber_id.is_not(None).label("has_prescriber"),
        Referral.prescriber_release_on_file,
        Referral.therapist,
        *([Referral.client_name] if names else []),
    ]
    query = (
        sa.select(*columns)
        .join(Physician, Physician.id == Referral.physician_id)
        .where(*_referral_conditions(where))
        .order_by(Referral.received_on.desc(), Referral.id.desc())
        .limit(limit)
    )
    lines = [ReferralLine(**row._asdict()) for row in session.execute(query)]
    _add_follow_up_states(session, lines)
    return lines


def _add_follow_up_states(session: Session, lines: list[ReferralLine]) -> None:
    """Each referral's follow-ups counted by state, for this page's referrals only."""
    by_id = {line.id: line for line in lines}
    for chunk in _chunks(list(by_id), 500):
        query = (
            sa.select(FollowUp.subject_id, FollowUp.state, sa.func.count())
            .where(FollowUp.subject_type == "referral", FollowUp.subject_id.in_(chunk))
            .group_by(FollowUp.subject_id, FollowUp.state)
        )
        for subject_id, state, count in session.execute(query):
            by_id[subject_id].follow_ups[state] = count


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def referral_count(session: Session, where: ReferralFilter) -> int:
    """How many referrals `referral_page` would list with no limit."""
    query = (
        sa.select(sa.func.count())
        .select_from(Referral)
        .join(Physician, Physician.id == Referral.physician_id)
        .where(*_referral_conditions(where))
    )
    return session.execute(query).scalar_one()


# --- visits ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisitFilter:
    """Which visits `visit list` shows; an empty field does not filter."""

    practice: str | None = None  # a practice whose name contains this (any case)
    since: date | None = None  # visited on or after


def _visit_conditions(where: VisitFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if where.practice:
        conditions.append(_contains(Practice.name, where.practice))
    if where.since is not None:
        conditions.append(Visit.visited_on >= where.since)
    return conditions


def visit_page(session: Session, where: VisitFilter, limit: int | None) -> Sequence[sa.Row]:
    """Outreach visits, newest first, with the practice and the physician met."""
    query = (
        sa.select(
            Visit.id,
            Visit.visited_on,
            Practice.name.label("practice"),
            Physician.name.label("physician"),
            Visit.cards_left,
            Visit.handouts_left,
            Visit.therapist,
            Visit.named_practice,
            Visit.named_physician,
        )
        .join(Practice, Practice.id == Visit.practice_id)
        .outerjoin(Physician, Physician.id == Visit.physician_id)
        .where(*_visit_conditions(where))
        .order_by(Visit.visited_on.desc(), Visit.id.desc())
        .limit(limit)
    )
    return session.execute(query).all()


def visit_count(session: Session, where: VisitFilter) -> int:
    """How many visits `visit_page` would list with no limit."""
    query = (
        sa.select(sa.func.count())
        .select_from(Visit)
        .join(Practice, Practice.id == Visit.practice_id)
        .where(*_visit_conditions(where))
    )
    return session.execute(query).scalar_one()
