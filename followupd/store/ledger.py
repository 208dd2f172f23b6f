"""The follow-up ledger: one row per rule and subject, the source of truth for what is owed.

Planning inserts and updates rows (never one that is claimed: see `claims`); delivery loads
a row with its subject; sync reads back the drafts delivered. Intent is written here before
any call to Google.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import (
    Bundle,
    FollowUp,
    Physician,
    Practice,
    Referral,
    State,
    Visit,
    now_utc,
)
from followupd.store.dialect import dialect_insert


def _insert(session: Session):
    """INSERT ... ON CONFLICT DO NOTHING for the ledger's unique key (planners may race)."""
    insert = dialect_insert(session, FollowUp)
    if insert is None:  # pragma: no cover
        return sa.insert(FollowUp)
    return insert.on_conflict_do_nothing(index_elements=["rule", "subject_type", "subject_id"])


def insert_follow_ups(session: Session, rows: Sequence[dict]) -> None:
    """Insert planning's new rows; one another planner inserted first is left as it is."""
    if rows:
        stamp = now_utc()
        session.execute(
            _insert(session),
            [
                {
                    "next_attempt_at": None,
                    "external_id": None,
                    "attempts": 0,
                    "claimed_by": None,
                    "lease_until": None,
                    "fence": 0,
                    "created_at": stamp,
                    "updated_at": stamp,
                    **row,
                }
                for row in rows
            ],
        )


def update_follow_ups(session: Session, updates: Sequence[tuple[int, dict]]) -> None:
    """Apply planning's updates, only to rows that have not been claimed meanwhile."""
    stamp = now_utc()
    for follow_up_id, values in updates:
        session.execute(
            sa.update(FollowUp)
            .where(
                FollowUp.id == follow_up_id,
                FollowUp.state.not_in((State.claimed, State.withdrawing)),
            )
            .values(**values, updated_at=stamp)
        )


def cancel_orphans(session: Session, enabled_rules: Sequence[str]) -> int:
    """Cancel pending follow-ups whose rule is gone or disabled, or whose subject is gone."""
    pending = FollowUp.state.in_((State.planned, State.held))
    count = session.execute(
        sa.update(FollowUp)
        .where(pending, FollowUp.rule.not_in(enabled_rules) if enabled_rules else sa.true())
        .values(
            state=State.cancelled, reason="its rule was disabled or removed", updated_at=now_utc()
        )
    ).rowcount
    for subject_type, model in (("referral", Referral), ("visit", Visit)):
        missing = ~sa.exists().where(model.id == FollowUp.subject_id)
        count += session.execute(
            sa.update(FollowUp)
            .where(pending, FollowUp.subject_type == subject_type, missing)
            .values(
                state=State.cancelled,
                reason=f"the {subject_type} was removed",
                updated_at=now_utc(),
            )
        ).rowcount
    return count


def follow_ups_by_id(session: Session, ids: Sequence[int]) -> Sequence[FollowUp]:
    """These ledger rows, by id."""
    return (
        session.execute(sa.select(FollowUp).where(FollowUp.id.in_(ids)).order_by(FollowUp.id))
        .scalars()
        .all()
    )


def load_bundle(session: Session, follow_up_id: int) -> Bundle | None:
    """A follow-up with its referral or visit, physicians and practice (None: no such row)."""
    follow_up = session.get(FollowUp, follow_up_id)
    if follow_up is None:
        return None
    bundle = Bundle(follow_up)
    if follow_up.subject_type == "referral":
        bundle.referral = session.get(Referral, follow_up.subject_id)
        if bundle.referral is not None:
            bundle.physician = session.get(Physician, bundle.referral.physician_id)
            if bundle.referral.prescriber_id:
                bundle.prescriber = session.get(Physician, bundle.referral.prescriber_id)
    elif follow_up.subject_type == "visit":
        bundle.visit = session.get(Visit, follow_up.subject_id)
        if bundle.visit is not None:
            bundle.practice = session.get(Practice, bundle.visit.practice_id)
            if bundle.visit.physician_id:
                bundle.physician = session.get(Physician, bundle.visit.physician_id)
    if bundle.physician is not None and bundle.practice is None and bundle.physician.practice_id:
        bundle.practice = session.get(Practice, bundle.physician.practice_id)
    return bundle


def drafts_to_sync(session: Session, now: datetime, limit: int) -> Sequence[FollowUp]:
    """Delivered Gmail drafts whose next check is due, those never checked first."""
    return (
        session.execute(
            sa.select(FollowUp)
            .where(
                FollowUp.state == State.done,
                FollowUp.kind == "draft",
                FollowUp.external_id.startswith("gmail:"),
                sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= now),
            )
            .order_by(FollowUp.next_attempt_at.is_not(None), FollowUp.next_attempt_at, FollowUp.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )


def record_sync(session: Session, follow_up_id: int, **values) -> None:
    """Store what sync learned about a delivered draft (only while it is still `done`)."""
    session.execute(
        sa.update(FollowUp)
        .where(FollowUp.id == follow_up_id, FollowUp.state == State.done)
        .values(**values, updated_at=now_utc())
    )


def disclosed_notes(session: Session, ref: str) -> Sequence[FollowUp]:
    """A referral's notes that left Drafts before its release was revoked."""
    return (
        session.execute(
            sa.select(FollowUp)
            .join(
                Referral,
                sa.and_(FollowUp.subject_type == "referral", FollowUp.subject_id == Referral.id),
            )
            .where(
                Referral.ref == ref,
                FollowUp.state.in_((State.sent, State.gone)),
                sa.or_(
                    FollowUp.reason.startswith("disclosed"),
                    FollowUp.reason.startswith("may have been disclosed"),
                ),
            )
            .order_by(FollowUp.id)
        )
        .scalars()
        .all()
    )


def due_backlog(session: Session, now: datetime) -> int:
    """Follow-ups due now and not yet delivered (or, revoked, not yet taken back)."""
    return session.execute(
        sa.select(sa.func.count())
        .select_from(FollowUp)
        .where(
            sa.or_(
                sa.and_(FollowUp.state == State.planned, FollowUp.due_at <= now),
                sa.and_(FollowUp.state == State.waiting, FollowUp.next_attempt_at <= now),
                sa.and_(
                    FollowUp.state == State.withdraw,
                    sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= now),
                ),
            )
        )
    ).scalar_one()


def recent_failures(session: Session, since: datetime) -> int:
    """Follow-ups that failed since `since`."""
    return session.execute(
        sa.select(sa.func.count())
        .select_from(FollowUp)
        .where(FollowUp.state == State.failed, FollowUp.updated_at >= since)
    ).scalar_one()
