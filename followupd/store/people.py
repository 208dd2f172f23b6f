"""Fixing what was entered by mistake: a physician corrected, two made one, a referral removed.

A person at the command line does these, so they are trusted (an address typed here is not
held for confirmation). Each stamps what it changes, so the next plan brings the pending
follow-ups in line; finished ledger rows stay as the history of what was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import (
    FollowUp,
    Physician,
    Practice,
    Recipient,
    Referral,
    Release,
    State,
    Visit,
    now_utc,
)
from followupd.records import physician_key
from followupd.store.directory import Directory, _replan_referrals_of, touch_physicians
from followupd.store.entry import record_release
from followupd.store.reads import NOT_MADE
from followupd.store.stamps import change_stamp

# A note in one of these states may still be at Google or on its way back: the referral
# stays until the daemon has finished with it.
UNFINISHED = (State.withdraw, State.withdrawing, State.claimed, State.waiting)


class NoPhysician(LookupError):
    """No physician has this id."""

    def __init__(self, physician_id: int):
        super().__init__(f"no physician {physician_id}")
        self.physician_id = physician_id


class PhysicianConflict(ValueError):
    """Another physician already has the name and practice asked for."""

    def __init__(self, other_id: int, name: str, practice: str | None):
        super().__init__(f"physician {other_id} is {name} ({practice or 'no practice'})")
        self.other_id, self.name, self.practice = other_id, name, practice


@dataclass(frozen=True)
class PhysicianShown:
    """A physician as a message names it: id, name and practice (never a patient)."""

    id: int
    name: str
    practice: str | None

    def __str__(self) -> str:
        return f"physician {self.id} ({self.name}, {self.practice or 'no practice'})"


@dataclass
class Merged:
    """What a merge moved, for the command to say."""

    kept: PhysicianShown
    referrals: int = 0
    prescribed: int = 0
    visits: int = 0
    took: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deleted:
    """What `delete_referral` did: deleted, or kept while `unfinished` notes are settled."""

    deleted: bool
    unfinished: int = 0
    cancelled: int = 0


def _practice_name(session: Session, practice_id: int | None) -> str | None:
    if practice_id is None:
        return None
    return session.execute(sa.select(Practice.name).where(Practice.id == practice_id)).scalar()


def _physician(session: Session, physician_id: int) -> Physician:
    found = session.get(Physician, physician_id)
    if found is None:
        raise NoPhysician(physician_id)
    return found


def _free_key(session: Session, key: str, *, besides: tuple[int, ...]) -> None:
    """Refuse a key another physician has: two rows would be one person, or a mix-up."""
    other = session.execute(
        sa.select(Physician.id, Physician.name, Physician.practice_id).where(
            Physician.key == key, Physician.id.not_in(besides)
        )
    ).first()
    if other is not None:
        raise PhysicianConflict(other.id, other.name, _practice_name(session, other.practice_id))


def edit_physician(
    session: Session, physician_id: int, changes: Mapping[str, str | None]
) -> PhysicianShown:
    """A person corrects a physician: the key follows the name and practice, an address
    typed here needs no confirmation, and their referrals are planned again."""
    physician = _physician(session, physician_id)
    name = changes.get("name") or physician.name
    practice = (
        changes["practice"]
        if "practice" in changes
        else _practice_name(session, physician.practice_id)
    )
    key = physician_key(name, practice)
    if key != physician.key:
        _free_key(session, key, besides=(physician_id,))
    values: dict = {c: changes[c] for c in ("email", "fax", "specialty") if c in changes}
    if "email" in changes:
        values["email_check"] = None  # typed by a person: trusted
    stamp = change_stamp(session, Referral)
    session.execute(
        sa.update(Physician)
        .where(Physician.id == physician_id)
        .values(
            **values,
            name=name,
            key=key,
            practice_id=Directory(trusted=True).practice_id(session, practice),
            updated_at=stamp,
        )
    )
    _replan_referrals_of(session, physician_id, stamp)
    return PhysicianShown(physician_id, name, practice)


def _move(session: Session, model: type, column: str, gone: int, kept: int, **values) -> int:
    """Point `column` at the kept physician instead of the merged one; rows moved."""
    return session.execute(
        sa.update(model)
        .where(getattr(model, column) == gone)
        .values({column: kept, **values})
        .execution_options(synchronize_session=False)
    ).rowcount


def _missing_fields(session: Session, kept: Physician, gone: Physician) -> dict:
    """The merged physician's email, fax, specialty and practice the kept one lacks."""
    took = {
        name: getattr(gone, name)
        for name in ("email", "fax", "specialty", "practice_id")
        if getattr(kept, name) is None and getattr(gone, name) is not None
    }
    if "email" in took:
        took["email_check"] = gone.email_check  # an unconfirmed address stays unconfirmed
    if "practice_id" in took:
        key = physician_key(kept.name, _practice_name(session, took["practice_id"]))
        try:
            _free_key(session, key, besides=(kept.id, gone.id))
        except PhysicianConflict:  # a third physician is that name there: keep none
            del took["practice_id"]
        else:
            took["key"] = key
    return took


def merge_physicians(session: Session, keep_id: int, merge_id: int) -> Merged:
    """Two rows that are one physician become the first (`keep_id`): the second's
    referrals, releases and visits move to it, it takes the fields it lacks, and the
    second is deleted; what moved is stamped, so pending follow-ups are planned again."""
    kept, gone = _physician(session, keep_id), _physician(session, merge_id)
    took = _missing_fields(session, kept, gone)
    stamp = change_stamp(session, Referral)
    merged = Merged(PhysicianShown(keep_id, kept.name, None))
    merged.referrals = _move(session, Referral, "physician_id", merge_id, keep_id, updated_at=stamp)
    merged.prescribed = _move(
        session, Referral, "prescriber_id", merge_id, keep_id, updated_at=stamp
    )
    _move(session, Release, "physician_id", merge_id, keep_id)  # a release names its physician
    visit_stamp = change_stamp(session, Visit)
    merged.visits = _move(session, Visit, "physician_id", merge_id, keep_id, updated_at=visit_stamp)
    _move_physician_notes(session, keep_id, merge_id)
    session.execute(sa.delete(Physician).where(Physician.id == merge_id))
    if took:
        session.execute(
            sa.update(Physician).where(Physician.id == keep_id).values(**took, updated_at=stamp)
        )
    _replan_referrals_of(session, keep_id, stamp)  # an address it took may free held notes
    merged.took = [
        n.removesuffix("_id") for n in ("email", "fax", "specialty", "practice_id") if n in took
    ]
    practice_id = took.get("practice_id", kept.practice_id)
    merged.kept = PhysicianShown(keep_id, kept.name, _practice_name(session, practice_id))
    return merged


def _move_physician_notes(session: Session, keep_id: int, merge_id: int) -> None:
    """The merged physician's own follow-ups (their first referral's thank-you) become the
    kept one's, so a merge never thanks anyone a second time: a rule the kept physician has
    no follow-up of takes the merged one's. Where both have one, the one made stays theirs
    (the kept physician's, unless only the merged one's was made) and the other is cancelled
    if pending and kept as history under no physician's id."""
    rows = session.execute(
        sa.select(
            FollowUp.id, FollowUp.rule, FollowUp.subject_id, FollowUp.state, FollowUp.external_id
        ).where(FollowUp.subject_type == "physician", FollowUp.subject_id.in_((keep_id, merge_id)))
    ).all()
    kept = {r.rule: r for r in rows if r.subject_id == keep_id}
    retire, move = [], []
    for row in rows:
        if row.subject_id != merge_id:
            continue
        other = kept.get(row.rule)
        if other is None:
            move.append(row.id)
        elif _made(row) and not _made(other):  # only the merged one's was made: it stays
            retire.append(other.id)
            move.append(row.id)
        else:
            retire.append(row.id)
    if retire:
        session.execute(
            sa.update(FollowUp)
            .where(FollowUp.id.in_(retire), FollowUp.state.in_((State.planned, State.held)))
            .values(
                state=State.cancelled,
                reason=f"physician {merge_id} was merged into physician {keep_id}",
                updated_at=now_utc(),
            )
        )
        session.execute(
            sa.update(FollowUp)
            .where(FollowUp.id.in_(retire))
            .values(subject_id=-FollowUp.id)
            .execution_options(synchronize_session=False)
        )
    if move:
        session.execute(
            sa.update(FollowUp)
            .where(FollowUp.id.in_(move))
            .values(subject_id=keep_id, updated_at=now_utc())
            .execution_options(synchronize_session=False)
        )


def _made(row) -> bool:
    """Has this follow-up been delivered and not taken back (as `planning.Existing.made`)?"""
    if row.state == State.withdrawn:
        return False
    return row.external_id is not None or row.state not in NOT_MADE


def revoke_releases(session: Session, ref: str, *, on: date, by: str) -> bool:
    """Revoke every release a referral has (both recipients), so the next plan takes back
    its unsent notes with patient details; False if there is no such referral."""
    found = record_release(session, ref, Recipient.physician, grant=False, on=on, by=by)
    if found is None:
        return False
    record_release(session, ref, Recipient.prescriber, grant=False, on=on, by=by)
    return True


def delete_referral(session: Session, ref: str) -> Deleted | None:
    """Remove a referral entered by mistake, with its patient values, once none of its notes
    is still being taken back or delivered; its pending follow-ups are cancelled and the
    finished ones kept as history. None: there is no such referral."""
    found = session.execute(
        sa.select(Referral.id, Referral.physician_id).where(Referral.ref == ref)
    ).first()
    if found is None:
        return None
    referral_id = found.id
    # its notes, the quiet spell named by it (a physician's last referral), and a thank-you
    # made about it (a physician's first)
    mine = sa.or_(
        sa.and_(
            FollowUp.subject_type.in_(("referral", "quiet")), FollowUp.subject_id == referral_id
        ),
        sa.and_(FollowUp.subject_type == "physician", FollowUp.basis_id == referral_id),
    )
    unfinished = session.execute(
        sa.select(sa.func.count()).where(mine, FollowUp.state.in_(UNFINISHED))
    ).scalar_one()
    if unfinished:
        return Deleted(False, unfinished=unfinished)
    cancelled = session.execute(
        sa.update(FollowUp)
        .where(
            mine,
            FollowUp.subject_type != "physician",  # planned again about their next first
            FollowUp.state.in_((State.planned, State.held)),
        )
        .values(state=State.cancelled, reason="the referral was deleted", updated_at=now_utc())
    ).rowcount
    # The ledger rows stay as history, but no longer point at the id: SQLite gives the
    # highest id again to the next referral, which would inherit them (a "sent" note, and
    # no acknowledgement of its own). A negative subject id is no referral's; a thank-you
    # made about it keeps its physician and is about no referral any more.
    session.execute(
        sa.update(FollowUp)
        .where(mine, FollowUp.subject_type != "physician")
        .values(subject_id=-FollowUp.id)
    )
    session.execute(
        sa.update(FollowUp)
        .where(FollowUp.subject_type == "physician", FollowUp.basis_id == referral_id)
        .values(basis_id=-FollowUp.id)
    )
    touch_physicians(session, {found.physician_id})  # their first or last may be another now
    session.execute(sa.delete(Release).where(Release.referral_id == referral_id))
    session.execute(sa.delete(Referral).where(Referral.id == referral_id))
    return Deleted(True, cancelled=cancelled)
