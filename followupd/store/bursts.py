"""Bursts: notes due at once that no person has said yes to.

A first import, a sheet read for the first time or a daemon back after weeks can make
hundreds of notes due in one tick. Delivery counts the planned rows due now that are newer
than the last confirmation (`confirmed_through` in meta: the highest follow-up id a person
confirmed); over `history.confirm_over`, it waits for `followupd run --once --confirm`.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, State
from followupd.store.meta import read_meta, write_meta

CONFIRMED = "confirmed_through"


def _due_unconfirmed(session: Session, now: datetime):
    mark = int(read_meta(session, CONFIRMED) or 0)
    return (
        FollowUp.state == State.planned,
        FollowUp.due_at <= now,
        FollowUp.external_id.is_(None),
        FollowUp.id > mark,
    )


def unconfirmed_due(session: Session, now: datetime) -> int:
    """How many planned follow-ups are due now and newer than the last confirmation."""
    query = sa.select(sa.func.count()).select_from(FollowUp).where(*_due_unconfirmed(session, now))
    return session.execute(query).scalar_one()


def confirm_due(session: Session, now: datetime) -> int:
    """A person said yes to what is due now: it may go out, over several ticks if the
    quota needs them. Returns how many follow-ups that covers."""
    found = session.execute(
        sa.select(sa.func.count(), sa.func.max(FollowUp.id)).where(*_due_unconfirmed(session, now))
    ).one()
    if found[1] is not None:
        write_meta(session, CONFIRMED, str(found[1]))
    return found[0]


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
