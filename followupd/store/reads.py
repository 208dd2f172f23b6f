"""Planning's reads: the referrals and visits changed since a cursor, a page at a time.

They run on every tick: their statements are built once, with bind parameters, so a tick
reuses SQLAlchemy's compiled SQL instead of building a query (aliases, joins) each time.
That was most of an idle tick's cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from functools import cache
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import (
    FollowUp,
    Physician,
    Recipient,
    Referral,
    Release,
    State,
    UTCDateTime,
    Visit,
)

NOT_MADE = (State.planned, State.held, State.cancelled, State.skipped, State.failed)


def _changed(model, columns, has_since: bool, has_after: bool):
    query = (
        sa.select(*columns)
        .order_by(model.updated_at, model.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if has_since:
        query = query.where(model.updated_at > sa.bindparam("since", type_=UTCDateTime))
    if has_after:
        query = query.where(
            sa.tuple_(model.updated_at, model.id)
            > sa.tuple_(
                sa.bindparam("after_at", type_=UTCDateTime),
                sa.bindparam("after_id", type_=sa.Integer),
            )
        )
    return query


def _page_params(since: datetime | None, after: tuple[datetime, int] | None, limit: int) -> dict:
    params: dict = {"limit": limit}
    if since is not None:
        params["since"] = since
    if after is not None:
        params["after_at"], params["after_id"] = after
    return params


@cache
def _changed_referrals_query(has_since: bool, has_after: bool):
    doctor = sa.orm.aliased(Physician)
    prescriber = sa.orm.aliased(Physician)
    query = _changed(
        Referral,
        (
            Referral.id,
            Referral.ref,
            Referral.updated_at,
            Referral.created_at,
            Referral.received_on,
            Referral.closed_on,
            Referral.release_on_file,
            Referral.release_on,
            Referral.prescriber_release_on_file,
            Referral.prescriber_release_on,
            Referral.gone,
            doctor.specialty,
            Referral.physician_id,
            doctor.email.label("physician_email"),
            doctor.email_check.label("physician_email_check"),
            Referral.prescriber_id,
            prescriber.email.label("prescriber_email"),
            prescriber.email_check.label("prescriber_email_check"),
        ),
        has_since,
        has_after,
    )
    return query.join(doctor, doctor.id == Referral.physician_id).outerjoin(
        prescriber, prescriber.id == Referral.prescriber_id
    )


def changed_referrals(
    session: Session, since: datetime | None, after: tuple[datetime, int] | None, limit: int
) -> Sequence[sa.Row]:
    """Referrals changed since a time, with what planning needs of their physicians.

    Keyset-paged on (updated_at, id), so each page costs the same however large the table.
    """
    query = _changed_referrals_query(since is not None, after is not None)
    return session.execute(query, _page_params(since, after, limit)).all()


def referrals_by_id(session: Session, ids: Sequence[int]) -> Sequence[sa.Row]:
    """The same rows as `changed_referrals`, for chosen referrals (planned again at once)."""
    query = _changed_referrals_query(False, False).where(Referral.id.in_(ids))
    return session.execute(query, {"limit": len(ids)}).all()


@cache
def _changed_visits_query(has_since: bool, has_after: bool):
    query = _changed(
        Visit,
        (
            Visit.id,
            Visit.updated_at,
            Visit.created_at,
            Visit.visited_on,
            sa.func.coalesce(Visit.specialty, Physician.specialty).label("specialty"),
            Visit.physician_id,
            Physician.email.label("physician_email"),
            Physician.email_check.label("physician_email_check"),
            Visit.named_practice,
            Visit.named_physician,
        ),
        has_since,
        has_after,
    )
    return query.outerjoin(Physician, Physician.id == Visit.physician_id)


def changed_visits(
    session: Session, since: datetime | None, after: tuple[datetime, int] | None, limit: int
) -> Sequence[sa.Row]:
    """Visits changed since a time, with their physician's address; paged as referrals are."""
    query = _changed_visits_query(since is not None, after is not None)
    return session.execute(query, _page_params(since, after, limit)).all()


def _edge_referral(first: bool):
    """A physician's first (or last) referral, by date then id: one step of the index
    (physician_id, received_on, id)."""
    order = (
        (Referral.received_on, Referral.id)
        if first
        else (Referral.received_on.desc(), Referral.id.desc())
    )
    return (
        sa.select(Referral.id)
        .where(Referral.physician_id == Physician.id)
        .order_by(*order)
        .limit(1)
        .correlate(Physician)
        .scalar_subquery()
    )


@cache
def _physician_facts_query():
    ends = (
        sa.select(
            Physician.id,
            Physician.specialty,
            Physician.email,
            Physician.email_check,
            _edge_referral(True).label("first_id"),
            _edge_referral(False).label("last_id"),
        )
        .where(Physician.id.in_(sa.bindparam("ids", expanding=True)))
        .subquery()
    )
    first = sa.orm.aliased(Referral)
    last = sa.orm.aliased(Referral)
    return (
        sa.select(
            ends.c.id,
            ends.c.specialty,
            ends.c.email,
            ends.c.email_check,
            first.id.label("first_id"),
            first.ref.label("first_ref"),
            first.received_on.label("first_received_on"),
            first.created_at.label("first_created_at"),
            first.updated_at.label("first_updated_at"),
            first.release_on_file.label("first_release_on_file"),
            first.release_on.label("first_release_on"),
            first.gone.label("first_gone"),
            last.id.label("last_id"),
            last.received_on.label("last_received_on"),
            last.created_at.label("last_created_at"),
        )
        .join(first, first.id == ends.c.first_id)
        .join(last, last.id == ends.c.last_id)
        .order_by(ends.c.id)
    )


def physician_facts(session: Session, ids: Sequence[int]) -> Sequence[sa.Row]:
    """What planning reads of these physicians (those who have referred): their address and
    their first and last referral (`subjects.PhysicianFacts`). No patient field."""
    if not ids:
        return []
    return session.execute(_physician_facts_query(), {"ids": list(ids)}).all()


class ThankYouFacts(NamedTuple):
    """`physician_facts` for a thank-you already made: the referral it was made about
    stands as the physician's first (and last) one, wherever that referral is now."""

    id: int
    specialty: str | None
    email: str | None
    email_check: str | None
    first_id: int
    first_ref: str
    first_received_on: date
    first_created_at: datetime | None
    first_updated_at: datetime | None
    first_release_on_file: bool
    first_release_on: date | None
    first_gone: str | None
    last_id: int
    last_received_on: date
    last_created_at: datetime | None


def thank_you_facts(
    session: Session, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], ThankYouFacts]:
    """For (physician, referral) pairs, a thank-you to that physician about that referral:
    what planning and delivery read of it. Its release is one of that referral naming that
    physician: if the referral has since moved to another physician, theirs does not count.
    A thank-you kept as history after a merge (a negative physician id) is addressed as the
    referral's physician now is. A pair whose physician or referral is gone is left out."""
    pairs = set(pairs)
    if not pairs:
        return {}
    referrals = {
        row.id: row
        for row in session.execute(
            sa.select(
                Referral.id,
                Referral.physician_id,
                Referral.ref,
                Referral.received_on,
                Referral.created_at,
                Referral.updated_at,
                Referral.release_on_file,
                Referral.release_on,
                Referral.gone,
            ).where(Referral.id.in_({b for _, b in pairs}))
        )
    }
    named = {p if p > 0 else getattr(referrals.get(b), "physician_id", None) for p, b in pairs}
    doctors = {
        row.id: row
        for row in session.execute(
            sa.select(
                Physician.id, Physician.specialty, Physician.email, Physician.email_check
            ).where(Physician.id.in_({n for n in named if n is not None}))
        )
    }
    moved = [
        (p, b) for p, b in pairs if p > 0 and b in referrals and referrals[b].physician_id != p
    ]
    grants = _grants_naming(session, moved)
    out = {}
    for physician_id, referral_id in pairs:
        ref = referrals.get(referral_id)
        doctor = doctors.get(
            physician_id if physician_id > 0 else getattr(ref, "physician_id", None)
        )
        if ref is None or doctor is None:
            continue
        released, released_on = ref.release_on_file, ref.release_on
        if physician_id > 0 and ref.physician_id != physician_id:  # moved to another
            released_on = grants.get((physician_id, referral_id))
            released = released_on is not None
        out[(physician_id, referral_id)] = ThankYouFacts(
            physician_id,
            doctor.specialty,
            doctor.email,
            doctor.email_check,
            ref.id,
            ref.ref,
            ref.received_on,
            ref.created_at,
            ref.updated_at,
            released,
            released_on,
            ref.gone,
            ref.id,
            ref.received_on,
            ref.created_at,
        )
    return out


def _grants_naming(
    session: Session, pairs: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], date]:
    """{(physician, referral): signed} for releases in force of these referrals naming these
    physicians (a referral that moved on: the release its old physician had)."""
    if not pairs:
        return {}
    rows = session.execute(
        sa.select(Release.physician_id, Release.referral_id, sa.func.max(Release.granted_on))
        .where(
            Release.referral_id.in_({b for _, b in pairs}),
            Release.recipient == Recipient.physician,
            Release.revoked_on.is_(None),
        )
        .group_by(Release.physician_id, Release.referral_id)
    )
    wanted = set(pairs)
    return {(p, b): on for p, b, on in rows if (p, b) in wanted}


def made_thank_yous(session: Session, physician_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{physician: {rule: referral}} for the thank-yous already made and not taken back (a
    draft or an event exists, or went out): each stays about the referral it was made of."""
    if not physician_ids:
        return {}
    rows = session.execute(
        sa.select(FollowUp.subject_id, FollowUp.rule, FollowUp.basis_id).where(
            FollowUp.subject_type == "physician",
            FollowUp.subject_id.in_(list(physician_ids)),
            FollowUp.basis_id.is_not(None),
            sa.or_(FollowUp.external_id.is_not(None), FollowUp.state.not_in(NOT_MADE)),
            FollowUp.state != State.withdrawn,  # taken back: made anew about the first
        )
    )
    made: dict[int, dict[str, int]] = {}
    for physician_id, rule, basis_id in rows:
        made.setdefault(physician_id, {})[rule] = basis_id
    return made


def thanked_about(session: Session, referral_ids: Sequence[int]) -> set[int]:
    """The physicians whose thank-you is about one of these referrals (a change to one, say
    a revoked release or a move to another physician, is theirs to plan again)."""
    if not referral_ids:
        return set()
    return set(
        session.execute(
            sa.select(FollowUp.subject_id).where(
                FollowUp.basis_id.in_(list(referral_ids)), FollowUp.subject_type == "physician"
            )
        ).scalars()
    )


def changed_physicians(
    session: Session, since: datetime | None, after: tuple[datetime, int] | None, limit: int
) -> Sequence[sa.Row]:
    """Physicians changed since a time (one whose referral moved away or was deleted is
    stamped so): their thank-you and quiet spell are planned again. Paged as referrals."""
    query = _changed(
        Physician, (Physician.id, Physician.updated_at), since is not None, after is not None
    )
    return session.execute(query, _page_params(since, after, limit)).all()


def quiet_candidates(session: Session, after: date | None, upto: date) -> list[int]:
    """The physicians whose last referral was received after `after` (None: ever) and on or
    before `upto`: those whose quiet spell began in that window of days."""
    later = sa.orm.aliased(Referral)
    query = sa.select(Referral.physician_id).where(
        Referral.received_on <= upto,
        ~sa.exists().where(
            later.physician_id == Referral.physician_id,
            sa.tuple_(later.received_on, later.id) > sa.tuple_(Referral.received_on, Referral.id),
        ),
    )
    if after is not None:
        query = query.where(Referral.received_on > after)
    return sorted(set(session.execute(query).scalars()))


def drafts_made(
    session: Session,
    since: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
    *,
    until: datetime,
) -> Sequence[sa.Row]:
    """Drafts still `done` (in Drafts, as far as the sync knows) that were made after the
    cursor and before `until`, keyset-paged on (made_at, id); digests are left out."""
    query = sa.select(FollowUp.id, FollowUp.state, FollowUp.made_at).where(
        FollowUp.kind == "draft",
        FollowUp.state == State.done,
        FollowUp.subject_type != "digest",
        FollowUp.made_at < until,
    )
    if since is not None:
        query = query.where(FollowUp.made_at > since)
    if after is not None:
        query = query.where(
            sa.tuple_(FollowUp.made_at, FollowUp.id)
            > sa.tuple_(
                sa.bindparam("after_at", after[0], type_=UTCDateTime),
                sa.bindparam("after_id", after[1], type_=sa.Integer),
            )
        )
    query = query.order_by(FollowUp.made_at, FollowUp.id).limit(limit)
    return session.execute(query).all()


def ledger_rows(session: Session, subject_type: str, ids: Sequence[int]) -> Sequence[FollowUp]:
    """The ledger rows of these subjects (what planning compares its wishes with)."""
    return (
        session.execute(
            sa.select(FollowUp).where(
                FollowUp.subject_type == subject_type, FollowUp.subject_id.in_(ids)
            )
        )
        .scalars()
        .all()
    )
