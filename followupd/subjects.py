"""Planning's view of referrals and visits: typed rows in, `Subject`s out, no patient values.

The store's page reads give rows with the attributes of `ReferralFacts` / `VisitFacts`;
delivery, which decides again on freshly loaded models, builds those from a `Bundle`. Either way
planning sees dates, flags, recipients and the reasons a note must wait, never a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from followupd.models import Bundle, State
from followupd.planning import DIGEST, Calendar, Subject
from followupd.timing import shift


@dataclass(frozen=True)
class ReferralFacts:
    """What planning reads of a referral and its physicians. The store's page reads yield
    rows with these attributes; delivery, deciding again on fresh models, builds one."""

    id: int
    ref: str
    received_on: date
    closed_on: date | None
    release_on_file: bool
    release_on: date | None
    prescriber_release_on_file: bool
    prescriber_release_on: date | None
    specialty: str | None
    physician_id: int | None
    physician_email: str | None
    physician_email_check: str | None
    prescriber_id: int | None
    prescriber_email: str | None
    prescriber_email_check: str | None
    created_at: datetime | None = None  # when it entered followupd: history is older
    gone: str | None = None  # it left the watched source it was read from: why notes wait
    updated_at: datetime | None = None  # when it last changed (a close, a release)


@dataclass(frozen=True)
class VisitFacts:
    """What planning reads of a visit (as for `ReferralFacts`)."""

    id: int
    visited_on: date
    specialty: str | None
    physician_id: int | None
    physician_email: str | None
    physician_email_check: str | None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    named_practice: str | None = None  # the answer to the ask: a prospect (prospect.named)
    named_physician: str | None = None


@dataclass(frozen=True)
class PhysicianFacts:
    """What planning reads of a physician who has referred: their address, and their first
    and last referral (`store.reads.physician_facts` yields rows with these attributes)."""

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


@dataclass(frozen=True)
class DraftFacts:
    """What planning reads of a delivered draft: whether it is still in Drafts, and since."""

    id: int
    state: str
    made_at: datetime | None


def _address(
    email: str | None, check: str | None, who: int | None, role: str, label: str
) -> str | None:
    """None if notes to this recipient may be addressed, else why not (a hold reason)."""
    if not email:
        return f"no email address for the {role} of {label}"
    if check:
        return (
            f"the {role}'s email address for {label} waits for confirmation ({check}): "
            f"check it, then run `followupd physician confirm {who}`"
        )
    return None


def referral_subject(row: ReferralFacts) -> Subject:
    """Planning's view of a referral: dates and flags, no patient values."""
    label = f"referral {row.ref}"
    events = {"referral.received": row.received_on}
    if row.closed_on:
        events["referral.closed"] = row.closed_on
    releases = {
        "physician": bool(row.release_on_file),
        "prescriber": bool(row.prescriber_id and row.prescriber_release_on_file),
    }
    dates = {
        role: on
        for role, on in (("physician", row.release_on), ("prescriber", row.prescriber_release_on))
        if on
    }
    recipients = {
        "physician": _address(
            row.physician_email, row.physician_email_check, row.physician_id, "physician", label
        )
    }
    if row.prescriber_id:
        recipients["prescriber"] = _address(
            row.prescriber_email, row.prescriber_email_check, row.prescriber_id, "prescriber", label
        )
    return Subject(
        "referral",
        row.id,
        label,
        row.specialty,
        releases,
        recipients,
        events,
        dates,
        closed=bool(row.closed_on),
        entered=row.created_at,
        changed=row.updated_at,
        gone=getattr(row, "gone", None),
    )


def visit_subject(row: VisitFacts) -> Subject:
    label = f"visit {row.id}"
    recipients = {}
    if row.physician_id:
        recipients["physician"] = _address(
            row.physician_email, row.physician_email_check, row.physician_id, "physician", label
        )
    events = {"visit.logged": row.visited_on}
    if getattr(row, "named_practice", None) or getattr(row, "named_physician", None):
        events["prospect.named"] = row.visited_on
    return Subject(
        "visit",
        row.id,
        label,
        row.specialty,
        None,
        recipients,
        events,
        entered=row.created_at,
        changed=row.updated_at,
    )


def physician_subject(row: PhysicianFacts) -> Subject:
    """A physician who has referred: their first referral is their thank-you's event (or,
    once it is made, the referral it was made about: `first_*` are then that one's). A note
    that names the client needs the client's release of that referral."""
    first = f"referral {row.first_ref}"
    return Subject(
        "physician",
        row.id,
        f"physician {row.id}",
        row.specialty,
        {"physician": bool(row.first_release_on_file)},
        {"physician": _address(row.email, row.email_check, row.id, "physician", first)},
        {"physician.first_referral": row.first_received_on},
        {"physician": row.first_release_on} if row.first_release_on else {},
        entered=row.first_created_at,
        changed=row.first_updated_at,
        gone=row.first_gone,
        release_label=first,
        basis_id=row.first_id,
    )


def quiet_subject(row: PhysicianFacts, calendar: Calendar, last_id: int | None = None) -> Subject:
    """The quiet spell after a physician's last referral (named by that referral's id): it
    begins `quiet_after` later. For `last_id` (a spell planned earlier) that is no longer
    the last referral, the spell is over: a subject without the event."""
    last_id = row.last_id if last_id is None else last_id
    events = {}
    if last_id == row.last_id:
        events["physician.quiet"] = shift(
            row.last_received_on, calendar.quiet_after, calendar.holidays
        )
    return Subject(
        "quiet",
        last_id,
        f"the quiet spell of physician {row.id}",
        row.specialty,
        None,
        {},
        events,
        entered=row.last_created_at,
    )


def draft_subject(row: DraftFacts, calendar: Calendar) -> Subject:
    """A delivered draft: still in Drafts (`done`) `unsent_after` after it was made, it is
    unsent. Once sync sees it sent or deleted (or it is withdrawn), it has no event."""
    events = {}
    if row.state == State.done and row.made_at is not None:
        made = row.made_at.astimezone(calendar.zone).date()
        events["note.unsent"] = shift(made, calendar.unsent_after, calendar.holidays)
    return Subject(
        "draft",
        row.id,
        f"note {row.id}",
        None,
        None,
        {},
        events,
        entered=row.made_at,
        basis_id=made_minute(row.made_at),  # a draft made anew: a new reminder
    )


def made_minute(made_at: datetime | None) -> int | None:
    """When a draft was made, as minutes since the epoch (an unsent reminder's basis: an
    instant, so a change of the practice's zone makes no second reminder)."""
    return None if made_at is None else int(made_at.timestamp() // 60)


def digest_subject(day: date) -> Subject:
    """The digest of a day, to the therapist's own mailbox: no patient details, no release."""
    return Subject(
        DIGEST,
        day.toordinal(),
        f"the digest of {day.isoformat()}",
        None,
        None,
        {"me": None},
        {DIGEST: day},
    )


def bundle_subject(bundle: Bundle, calendar: Calendar) -> Subject | None:
    """The same view, built from the rows loaded for delivery (None: the subject is gone)."""
    follow_up = bundle.follow_up
    kind = follow_up.subject_type
    if kind == "physician":
        return physician_subject(bundle.facts) if bundle.facts is not None else None
    if kind == "quiet":
        if bundle.facts is None:
            return None
        return quiet_subject(bundle.facts, calendar, follow_up.subject_id)
    if kind == "draft":
        note = bundle.note
        if note is None:
            return None
        return draft_subject(DraftFacts(note.id, note.state, note.made_at), calendar)
    if kind == DIGEST:
        return digest_subject(date.fromordinal(follow_up.subject_id))
    return _referral_or_visit(bundle)


def _referral_or_visit(bundle: Bundle) -> Subject | None:
    doctor = bundle.physician
    if bundle.referral is not None:
        referral, prescriber = bundle.referral, bundle.prescriber
        return referral_subject(
            ReferralFacts(
                id=referral.id,
                ref=referral.ref,
                received_on=referral.received_on,
                closed_on=referral.closed_on,
                release_on_file=referral.release_on_file,
                release_on=referral.release_on,
                prescriber_release_on_file=referral.prescriber_release_on_file,
                prescriber_release_on=referral.prescriber_release_on,
                specialty=doctor.specialty if doctor else None,
                physician_id=referral.physician_id,
                physician_email=doctor.email if doctor else None,
                physician_email_check=doctor.email_check if doctor else None,
                prescriber_id=referral.prescriber_id,
                prescriber_email=prescriber.email if prescriber else None,
                prescriber_email_check=prescriber.email_check if prescriber else None,
                gone=referral.gone,
            )
        )
    if bundle.visit is not None:
        visit = bundle.visit
        return visit_subject(
            VisitFacts(
                id=visit.id,
                visited_on=visit.visited_on,
                specialty=visit.specialty or (doctor.specialty if doctor else None),
                physician_id=visit.physician_id,
                physician_email=doctor.email if doctor else None,
                physician_email_check=doctor.email_check if doctor else None,
                named_practice=visit.named_practice,
                named_physician=visit.named_physician,
            )
        )
    return None
