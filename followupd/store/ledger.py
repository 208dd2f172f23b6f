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
from followupd.store.outreach import physician_history
from followupd.store.reads import physician_facts, thank_you_facts


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
    """Apply planning's updates, only to rows that have not been claimed meanwhile. What a
    note is about (`basis_id`) changes only while it has not been made: another replica may
    have made it since planning read it."""
    stamp = now_utc()
    for follow_up_id, values in updates:
        if "basis_id" in values:
            values = dict(values)
            session.execute(
                sa.update(FollowUp)
                .where(
                    FollowUp.id == follow_up_id,
                    sa.or_(
                        sa.and_(
                            FollowUp.external_id.is_(None),
                            FollowUp.state.in_(
                                (State.planned, State.held, State.cancelled, State.skipped)
                            ),
                        ),
                        FollowUp.state == State.withdrawn,  # taken back: made anew, if at all
                    ),
                )
                .values(basis_id=values.pop("basis_id"))
            )
            if not values:
                continue
        session.execute(
            sa.update(FollowUp)
            .where(
                FollowUp.id == follow_up_id,
                FollowUp.state.not_in((State.claimed, State.withdrawing)),
            )
            .values(**values, updated_at=stamp)
        )


# What each kind of subject names, and what it is called when it is gone.
SUBJECT_ROWS = {
    "referral": (Referral, "the referral"),
    "visit": (Visit, "the visit"),
    "physician": (Physician, "the physician"),
    "quiet": (Referral, "the referral before the quiet spell"),
    "draft": (sa.orm.aliased(FollowUp), "the note"),
}


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
    for subject_type, (model, noun) in SUBJECT_ROWS.items():
        missing = ~sa.exists().where(model.id == FollowUp.subject_id)
        count += session.execute(
            sa.update(FollowUp)
            .where(pending, FollowUp.subject_type == subject_type, missing)
            .values(state=State.cancelled, reason=f"{noun} was removed", updated_at=now_utc())
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
    return load_bundles(session, [follow_up_id]).get(follow_up_id)


def load_bundles(session: Session, follow_up_ids: Sequence[int]) -> dict[int, Bundle]:
    """{id: bundle} of these follow-ups: a batch's rows in a few queries, not a few each."""
    follow_ups = _by_id(session, FollowUp, follow_up_ids)
    subjects = list(follow_ups.values())
    referrals = _by_id(session, Referral, _subjects(subjects, "referral"))
    visits = _by_id(session, Visit, _subjects(subjects, "visit"))
    physicians = _by_id(
        session,
        Physician,
        _ids(
            [r.physician_id for r in referrals.values()]
            + [r.prescriber_id for r in referrals.values()]
            + [v.physician_id for v in visits.values()]
        ),
    )
    practices = _by_id(
        session,
        Practice,
        _ids(
            [v.practice_id for v in visits.values()] + [p.practice_id for p in physicians.values()]
        ),
    )
    bundles = {}
    for follow_up_id, follow_up in follow_ups.items():
        bundle = Bundle(follow_up)
        if follow_up.subject_type == "referral":
            bundle.referral = referrals.get(follow_up.subject_id)
            if bundle.referral is not None:
                bundle.physician = physicians.get(bundle.referral.physician_id)
                bundle.prescriber = physicians.get(bundle.referral.prescriber_id)
        elif follow_up.subject_type == "visit":
            bundle.visit = visits.get(follow_up.subject_id)
            if bundle.visit is not None:
                bundle.practice = practices.get(bundle.visit.practice_id)
                bundle.physician = physicians.get(bundle.visit.physician_id)
        if bundle.physician is not None and bundle.practice is None:
            bundle.practice = practices.get(bundle.physician.practice_id)
        bundles[follow_up_id] = bundle
    _load_outreach(session, bundles.values())
    return bundles


def _load_outreach(session: Session, bundles) -> None:
    """The subjects of the outreach events, one by one (they are few): a physician's
    thank-you or quiet spell, and the draft an unsent reminder is about."""
    for bundle in bundles:
        if bundle.follow_up.subject_type in ("physician", "quiet"):
            _load_physician(session, bundle)
        elif bundle.follow_up.subject_type == "draft":
            _load_note(session, bundle)
        doctor = bundle.physician
        if doctor is not None and bundle.practice is None and doctor.practice_id is not None:
            bundle.practice = session.get(Practice, doctor.practice_id)


def _load_physician(session: Session, bundle: Bundle) -> None:
    """A physician's thank-you (their first referral) or quiet spell (after the referral it
    is named by): the physician, what planning knows of their referrals, and that referral;
    a quiet reminder also gets their history (counts and dates, no patient field)."""
    follow_up = bundle.follow_up
    if follow_up.subject_type == "physician":
        physician_id = follow_up.subject_id
    else:
        physician_id = session.execute(
            sa.select(Referral.physician_id).where(Referral.id == follow_up.subject_id)
        ).scalar()
    if physician_id is None:
        return
    bundle.physician = session.get(Physician, physician_id)
    found = physician_facts(session, [physician_id])
    if (
        follow_up.subject_type == "physician"
        and follow_up.external_id is not None  # it may exist: about what it was made of
        and follow_up.basis_id is not None
        and not (found and found[0].first_id == follow_up.basis_id)
    ):
        pair = (physician_id, follow_up.basis_id)
        found = list(thank_you_facts(session, [pair]).values())
    bundle.facts = found[0] if found else None
    if bundle.facts is None:
        return
    if follow_up.subject_type == "physician":
        bundle.referral = session.get(Referral, bundle.facts.first_id)
    else:
        bundle.referral = session.get(Referral, follow_up.subject_id)
        bundle.history = physician_history(session, physician_id)


def _load_note(session: Session, bundle: Bundle) -> None:
    """An unsent reminder: the draft it is about, with that draft's referral (or visit) and
    physicians, so the reminder can name its ref and recipient."""
    note = session.get(FollowUp, bundle.follow_up.subject_id)
    bundle.note = note
    if note is None or note.subject_type not in ("referral", "visit", "physician"):
        return
    about = load_bundle(session, note.id)
    if about is not None:
        bundle.referral, bundle.visit = about.referral, about.visit
        bundle.physician, bundle.prescriber = about.physician, about.prescriber
        bundle.practice = about.practice


def _subjects(follow_ups: list[FollowUp], kind: str) -> list[int]:
    return _ids(f.subject_id for f in follow_ups if f.subject_type == kind)


def _ids(values) -> list[int]:
    return sorted({value for value in values if value is not None})


def _by_id(session: Session, model, ids: Sequence[int]) -> dict:
    """{id: row} of a table's rows with these ids, 500 ids a query."""
    found = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in session.execute(sa.select(model).where(model.id.in_(chunk))).scalars():
            found[row.id] = row
    return found


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
