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
VISIT_FIELDS = (
    "visited_on",
    "business_manager",
    "cards_left",
    "handouts_left",
    "specialty",
    "named_practice",
    "named_physician",
    "named_specialty",
)


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
        context["prospect"] = _prospect(bundle)
    context["next_specialty"] = config.next_specialty(specialty)
    _outreach(context, settings, bundle)
    if rule.make == "draft":
        context["recipient"] = context.get(rule.to)
    if rule.digest:
        context["recipient"] = {"name": practice.therapist, "email": practice.email}
    return context


def _prospect(bundle: Bundle) -> dict[str, Any] | None:
    """The practice or physician named on a visit in answer to the ask, or None."""
    visit = bundle.visit
    if visit is None or not (visit.named_practice or visit.named_physician):
        return None
    name = visit.named_physician
    return {
        "name": name,
        "salutation": salutation(name) if name else None,
        "practice": visit.named_practice,
        "specialty": visit.named_specialty,
    }


def _outreach(context: dict[str, Any], settings: Settings, bundle: Bundle) -> None:
    """A quiet physician's history, the note an unsent reminder is about, a digest's lists:
    counts, dates, refs and physician names."""
    if bundle.history is not None:
        context["history"] = dict(bundle.history)
    if bundle.note is not None:
        context["note"] = _note(settings, bundle)
    if bundle.digest is not None:
        context["digest"] = _digest(settings, bundle.digest)


def _note(settings: Settings, bundle: Bundle) -> dict[str, Any]:
    note = bundle.note
    zone = settings.config.practice.zone
    rules = {r.name: r for r in settings.config.rules}
    to = rules[note.rule].to if note.rule in rules else "physician"
    recipient = bundle.prescriber if to == "prescriber" else bundle.physician
    return {
        "id": note.id,
        "rule": note.rule,
        "made_on": note.made_at.astimezone(zone).date() if note.made_at else None,
        "ref": bundle.referral.ref if bundle.referral is not None else None,
        "recipient": recipient.name if recipient is not None else None,
    }


def _digest(settings: Settings, facts: dict[str, Any]) -> dict[str, Any]:
    """A digest's lists for the template: each a dict of items, total and more; a waiting
    draft names its recipient by its rule's `to`, a held note what would release it."""
    zone = settings.config.practice.zone
    rules = {r.name: r for r in settings.config.rules}
    drafts = dict(facts["drafts"])
    drafts["items"] = [
        {
            **item,
            "made_on": item["made_at"].astimezone(zone).date() if item["made_at"] else None,
            "recipient": item["prescriber"]
            if item["rule"] in rules and rules[item["rule"]].to == "prescriber"
            else item["physician"],
        }
        for item in facts["drafts"]["items"]
    ]
    held = dict(facts["held"])
    held["items"] = [{**item, "fix": release_hint(item)} for item in facts["held"]["items"]]
    return {**facts, "drafts": drafts, "held": held}


def release_hint(held: dict[str, Any]) -> str | None:
    """What would let a held note go, when its reason does not say so itself."""
    reason, ref = held.get("reason") or "", held.get("ref")
    if reason.startswith("no release of information on file for the prescriber") and ref:
        return f"followupd referral release {ref} --prescriber"
    if reason.startswith("no release of information on file") and ref:
        return f"followupd referral release {ref}"
    if reason.startswith("no release of information on file for referral "):
        return f"followupd referral release {reason.rsplit(' ', 1)[-1]}"
    if reason.startswith("no email address"):
        whom = held.get("prescriber_id" if "for the prescriber" in reason else "physician_id")
        return f"followupd physician edit {whom or 'ID'} --email ADDRESS"
    return None
