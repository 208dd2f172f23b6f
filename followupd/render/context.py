"""What a template may use: the therapist, the follow-up, the physician, the referral or
visit, and `client` (patient details) only for a draft with a release on file.
"""

from __future__ import annotations

import re
from typing import Any

from followupd.config import Rule, Settings
from followupd.models import Bundle, Physician, Practice, Referral
from followupd.render.templates import PATIENT_ROOT


def salutation(name: str) -> str:
    """ "Dr. Miriam Okafor" and "Miriam Okafor, MD" are both "Dr. Okafor"."""
    bare = re.split(r",", name, maxsplit=1)[0].strip()
    parts = [p for p in bare.split() if p.rstrip(".").casefold() not in ("dr", "doctor")]
    return f"Dr. {parts[-1]}" if parts else bare


# A template's view of a referral or a visit row: these attributes, under their own names.
REFERRAL_FIELDS = ("ref", "received_on", "closed_on", "release_on")
VISIT_FIELDS = ("visited_on", "business_manager", "cards_left", "handouts_left", "specialty")


def _fields(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def _person(physician: Physician | None, practice: Practice | None = None) -> dict | None:
    if physician is None:
        return None
    return {
        "name": physician.name,
        "salutation": salutation(physician.name),
        "email": physician.email,
        "fax": physician.fax,
        "specialty": physician.specialty,
        "practice": practice.name if practice else None,
    }


def _client(referral: Referral) -> dict[str, Any]:
    """Patient details: only ever in the context of a draft with a release on file."""
    return {
        "name": referral.client_name,
        "first_name": referral.client_name.split()[0],
        "dob": referral.client_dob,
        "problem": referral.presenting_problem,
        "focus": referral.treatment_focus,
        "closing_summary": referral.closing_summary,
    }


def context_for(settings: Settings, rule: Rule, bundle: Bundle, *, release: bool) -> dict:
    """What a template may use. `client` (patient details) only for a draft with a release."""
    config = settings.config
    practice = config.practice
    context: dict[str, Any] = {
        "therapist": {
            "name": practice.therapist,
            "credentials": practice.credentials,
            "practice_name": practice.practice_name,
            "phone": practice.phone,
            "email": practice.email,
            "address": practice.address,
        },
        "follow_up": {"id": bundle.follow_up.id, "rule": rule.name},
        "physician": _person(bundle.physician, bundle.practice),
        "practice": {"name": bundle.practice.name} if bundle.practice else None,
    }
    specialty = None
    if bundle.referral is not None:
        context["referral"] = _fields(bundle.referral, REFERRAL_FIELDS)
        context["prescriber"] = _person(bundle.prescriber)
        specialty = bundle.physician.specialty if bundle.physician else None
        if release and rule.make == "draft":
            context[PATIENT_ROOT] = _client(bundle.referral)
    if bundle.visit is not None:
        context["visit"] = _fields(bundle.visit, VISIT_FIELDS)
        specialty = bundle.visit.specialty or (
            bundle.physician.specialty if bundle.physician else None
        )
    context["next_specialty"] = config.next_specialty(specialty)
    if rule.make == "draft":
        context["recipient"] = context.get(rule.to)
    return context
