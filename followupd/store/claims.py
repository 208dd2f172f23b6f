"""Claims on the ledger: deliveries and withdrawals taken by one process at a time.

A claim is a lease with a fence (see `claim_due`): `record_result` stores an outcome only
while the fence still matches, `release_claim` gives back a claim not worked on, and
`expire_dead_claims` ends the leases of processes that died.

Claiming runs on every tick: its statements are built once per dialect, with bind
parameters, so a tick reuses SQLAlchemy's compiled SQL instead of building them again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, State, UTCDateTime, now_utc

_NOW = sa.bindparam("now", type_=UTCDateTime)


def _claiming(due, order, state: str, dialect: str):
    """One statement that claims the first `limit` rows matching `due`: the new state, a
    lease and a fence, the attempt counted; it returns (id, fence) of each."""
    pick = (
        sa.select(FollowUp.id)
        .where(due)
        .order_by(*order)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    return (
        sa.update(FollowUp)
        .where(FollowUp.id.in_(pick.scalar_subquery()))
        .values(
            state=state,
            claimed_by=sa.bindparam("owner"),
            lease_until=sa.bindparam("lease_until", type_=UTCDateTime),
            fence=FollowUp.fence + 1,
            attempts=FollowUp.attempts + 1,
            updated_at=_NOW,
        )
        .returning(FollowUp.id, FollowUp.fence)
        .execution_options(synchronize_session=False)
    )


def _claim(
    session: Session,
    statement_for: Callable[[str], sa.Update],
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
) -> list[tuple[int, int]]:
    """Run the dialect's claiming statement; (id, fence) of each row claimed, by id."""
    statement = statement_for(session.get_bind().dialect.name)
    claimed = session.execute(
        statement, {"now": now, "owner": owner, "lease_until": now + lease, "limit": limit}
    ).all()
    return sorted((row.id, row.fence) for row in claimed)


@cache
def _claim_statement(dialect: str):
    due = sa.or_(
        sa.and_(FollowUp.state == State.planned, FollowUp.due_at <= _NOW),
        sa.and_(FollowUp.state == State.waiting, FollowUp.next_attempt_at <= _NOW),
        sa.and_(FollowUp.state == State.claimed, FollowUp.lease_until < _NOW),
    )
    return _claiming(due, (FollowUp.due_at, FollowUp.id), State.claimed, dialect)


def claim_due(
    session: Session, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[tuple[int, int]]:
    """Claim due follow-ups in one statement; returns (id, fence) for each.

    A claim is a lease: if its holder dies, the row is due again once the lease expires. The
    fence goes up with every claim, so a late holder cannot record over newer work. The
    attempt is counted here, before any call, so that after a crash the next try knows an
    earlier one may have reached Google and looks before creating. On PostgreSQL the rows
    are picked `FOR UPDATE SKIP LOCKED`: replicas claiming at once take different rows.
    """
    return _claim(session, _claim_statement, now, owner, lease, limit)


@cache
def _withdraw_statement(dialect: str):
    due = sa.or_(
        sa.and_(
            FollowUp.state == State.withdraw,
            sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= _NOW),
        ),
        sa.and_(FollowUp.state == State.withdrawing, FollowUp.lease_until < _NOW),
    )
    return _claiming(due, (FollowUp.id,), State.withdrawing, dialect)


def claim_withdrawals(
    session: Session, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[tuple[int, int]]:
    """Claim notes to take back (a release was revoked), as `claim_due` claims deliveries:
    a lease, a fence, and the attempt counted before any call."""
    return _claim(session, _withdraw_statement, now, owner, lease, limit)


def record_result(session: Session, follow_up_id: int, fence: int, **values) -> bool:
    """Store a delivery's (or a withdrawal's) outcome if the claim is still ours (the fence
    matches)."""
    values.update(claimed_by=None, lease_until=None, updated_at=now_utc())
    plain = {k: v for k, v in values.items() if not isinstance(v, sa.ColumnElement)}
    computed = {k: v for k, v in values.items() if k not in plain}  # attempts - 1
    statement = _record_statement(tuple(sorted(plain)), tuple(sorted(computed.items(), key=str)))
    done = session.execute(statement, {"record_id": follow_up_id, "record_fence": fence, **plain})
    return done.rowcount == 1


@functools.lru_cache(maxsize=64)
def _record_statement(columns: tuple[str, ...], computed: tuple) -> sa.Update:
    """The UPDATE that records an outcome, built once for each set of columns it sets (a
    Core statement with bound values: once a delivered note, building it cost more than
    running it)."""
    table = FollowUp.__table__
    return (
        table.update()
        .where(
            table.c.id == sa.bindparam("record_id"),
            table.c.fence == sa.bindparam("record_fence"),
            table.c.state.in_((State.claimed, State.withdrawing)),
        )
        .values({**{c: sa.bindparam(c) for c in columns}, **dict(computed)})
    )


def release_claim(session: Session, follow_up_id: int, fence: int, state: str) -> None:
    """Give back a claim that was not worked on (shutting down): no attempt was made."""
    record_result(session, follow_up_id, fence, state=state, attempts=FollowUp.attempts - 1)


def expire_dead_claims(
    session: Session,
    host: str,
    alive: Callable[[int], bool],
    now: datetime,
    settle: timedelta = timedelta(0),
) -> int:
    """End the leases of processes on this host that no longer exist (killed, crashed).

    Their follow-ups are due again `settle` from now instead of after the whole lease: a
    call the dead process made may still be finishing at Google, and a look for its draft
    before then could miss it. The attempt was counted at the claim, so the next try looks
    before it creates.
    """
    held = FollowUp.state.in_((State.claimed, State.withdrawing))
    owners = session.execute(
        sa.select(FollowUp.claimed_by).where(held, FollowUp.lease_until > now + settle).distinct()
    ).scalars()
    dead = []
    for owner in owners:
        name, _, pid = (owner or "").rpartition(":")
        if name == host and pid.isdigit() and not alive(int(pid)):
            dead.append(owner)
    if not dead:
        return 0
    return session.execute(
        sa.update(FollowUp)
        .where(held, FollowUp.claimed_by.in_(dead), FollowUp.lease_until > now + settle)
        .values(lease_until=now + settle)
    ).rowcount
