"""Bursts: notes due at once that no person has said yes to.

A first import, a sheet read for the first time or a daemon back after weeks can make
hundreds of notes due in one tick. Delivery counts the planned rows due now that no
confirmation covers; over `history.confirm_over`, it waits for `followupd run --once
--confirm`. A confirmation (`confirmed_at` in meta) covers the rows that were planned and due
when it was given: a row planned again later (held until an address was fixed, skipped until
the cut-off moved) or due only later is counted anew, whatever its id.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, State, UTCDateTime
from followupd.store.meta import read_meta, write_meta

CONFIRMED = "confirmed_at"


def _due_unconfirmed(session: Session, now: datetime) -> list:
    conditions = [
        FollowUp.state == State.planned,
        FollowUp.due_at <= now,
        FollowUp.external_id.is_(None),
    ]
    mark = read_meta(session, CONFIRMED)
    if mark is not None:
        confirmed = datetime.fromisoformat(mark)
        conditions.append(sa.or_(FollowUp.updated_at > confirmed, FollowUp.due_at > confirmed))
    return conditions


@cache
def _due_count() -> sa.Select:
    """Planned notes due now: built once, with a bound `now` (it runs on every tick)."""
    return sa.select(sa.func.count()).where(
        FollowUp.state == State.planned,
        FollowUp.due_at <= sa.bindparam("now", type_=UTCDateTime),
        FollowUp.external_id.is_(None),
    )


def unconfirmed_due(session: Session, now: datetime, over: int = 0) -> int:
    """How many planned follow-ups are due now that no confirmation covers; 0 when no more
    than `over` are due at all (an idle tick's case: one indexed count, no meta read)."""
    if session.execute(_due_count(), {"now": now}).scalar_one() <= over:
        return 0
    query = sa.select(sa.func.count()).select_from(FollowUp).where(*_due_unconfirmed(session, now))
    return session.execute(query).scalar_one()


def confirm_due(session: Session, now: datetime) -> int:
    """A person said yes to what is due now: it may go out, over several ticks if the
    quota needs them. Returns how many follow-ups that covers."""
    count = unconfirmed_due(session, now)
    newest = session.execute(sa.select(sa.func.max(FollowUp.updated_at))).scalar()
    # a row stamped by a clock a little ahead of ours is covered too
    mark = max(now, newest) if newest is not None else now
    write_meta(session, CONFIRMED, mark.isoformat())
    return count


def newest_follow_up(session: Session) -> int:
    """The highest follow-up id (0: none): what a dry run's plan adds comes after it."""
    return session.execute(sa.select(sa.func.max(FollowUp.id))).scalar() or 0


def plan_summary(session: Session, now: datetime, after_id: int) -> list[sa.Row]:
    """(rule, kind, state, due now?, count) of the planned follow-ups and of every one added
    after `after_id`: what a run would make now, later, hold or skip."""
    due_now = sa.case((FollowUp.due_at <= now, True), else_=False).label("now")
    query = (
        sa.select(FollowUp.rule, FollowUp.kind, FollowUp.state, due_now, sa.func.count())
        .where(sa.or_(FollowUp.id > after_id, FollowUp.state == State.planned))
        .group_by(FollowUp.rule, FollowUp.kind, FollowUp.state, due_now)
    )
    return list(session.execute(query).all())
