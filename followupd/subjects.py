"""Planning's view of referrals and visits: typed rows in, `Subject`s out, no patient values.

The store's page reads give rows with the attributes of `ReferralFacts` / `VisitFacts`;
delivery, which decides again on freshly loaded models, builds those from a `Bundle`. Either way
planning sees dates, flags, recipients and the reasons a note must wait, never a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from followupd.models import Bundle
from followupd.planning import Subject


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
    return Subject(
        "visit",
        row.id,
        label,
        row.specialty,
        None,
        recipients,
        {"visit.logged": row.visited_on},
        entered=row.created_at,
        changed=row.updated_at,
    )


def bundle_subject(bundle: Bundle) -> Subject | None:
    """The same view, built from the rows loaded for delivery (None: the subject is gone)."""
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
            )
        )
    return None
