"""Templates to deliverables: a draft as an RFC 5322 `EmailMessage`, a reminder as plain fields.

A template's first line is `Subject: ...` (drafts) or `Title: ...` (reminders); the rest is
the body. Patient details are reachable only as `client.*`, and `client` is in the context
only for a draft with a release on file, so a template that uses it is known to need one, and
a reminder can never show one. Every header value is checked: a line break or a second
address fails that one follow-up instead of reaching a header.
"""

from __future__ import annotations

import base64
import hashlib
import re
import traceback
from datetime import date, datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from followupd.config import Rule, Settings
from followupd.delivery import Draft, Reminder
from followupd.models import Physician, Practice
from followupd.resources import default_templates_dir
from followupd.store import Bundle

REMINDER_MINUTES = 30  # length of a reminder's calendar slot
PATIENT_ROOT = "client"


class RenderError(Exception):
    """A follow-up cannot be rendered; the message names template and variable, no values."""


def long_date(value: date | datetime | None) -> str:
    if value is None:
        return "[date]"
    return f"{value:%B} {value.day}, {value.year}"


def salutation(name: str) -> str:
    """ "Dr. Miriam Okafor" and "Miriam Okafor, MD" are both "Dr. Okafor"."""
    bare = re.split(r",", name, maxsplit=1)[0].strip()
    parts = [p for p in bare.split() if p.rstrip(".").casefold() not in ("dr", "doctor")]
    return f"Dr. {parts[-1]}" if parts else bare


def message_id(installation: str, follow_up_id: int, domain: str) -> str:
    """The draft's fixed identity: how a later tick finds it instead of making another."""
    return f"<followupd.{follow_up_id}.{installation[:16]}@{domain}>"


def event_id(installation: str, follow_up_id: int) -> str:
    """A Calendar event id (base32hex, lower case) that only this follow-up can have."""
    digest = hashlib.sha256(f"{installation}:{follow_up_id}".encode()).digest()[:20]
    return base64.b32hexencode(digest).decode().lower()


class Templates:
    """The home's templates/ over the shipped defaults, strict about undefined variables."""

    def __init__(self, home_templates: Path | None = None):
        paths = [str(p) for p in (home_templates, default_templates_dir()) if p and p.is_dir()]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text mail and calendar text, not HTML
            keep_trailing_newline=False,
            trim_blocks=False,
        )
        self.env.filters["longdate"] = long_date
        self._patient: dict[str, bool] = {}

    def uses_patient_fields(self, name: str) -> bool:
        """Does the template (or anything it includes) refer to `client`?"""
        if name not in self._patient:
            self._patient[name] = self._references(name, set())
        return self._patient[name]

    def _references(self, name: str, seen: set[str]) -> bool:
        seen.add(name)
        source = self.env.loader.get_source(self.env, name)[0]
        tree = self.env.parse(source)
        if PATIENT_ROOT in jinja2.meta.find_undeclared_variables(tree):
            return True
        return any(self._references(child, seen)
                   for child in jinja2.meta.find_referenced_templates(tree)
                   if child and child not in seen)

    def problems(self, rules: list[Rule]) -> list[str]:
        """What is wrong with the templates the rules use (for `check` and start-up)."""
        out = []
        for rule in rules:
            try:
                self.env.get_template(rule.template)
                patient = self.uses_patient_fields(rule.template)
            except jinja2.TemplateNotFound as exc:
                out.append(f"rules: {rule.name}: template {exc.name} not found "
                           f"(in {', '.join(self.env.loader.searchpath)})")
                continue
            except jinja2.TemplateSyntaxError as exc:
                out.append(f"{exc.filename or rule.template}:{exc.lineno}: {exc.message}")
                continue
            if patient and rule.make == "reminder":
                out.append(f"rules: {rule.name}: reminder template {rule.template} uses "
                           f"client fields; calendar reminders may not carry patient details")
        return out

    def render_text(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        """(first-line value, body) of a rendered template."""
        try:
            text = self.env.get_template(name).render(context)
        except jinja2.UndefinedError as exc:
            line = _template_line(exc, name)
            where = f"{name}:{line}" if line else name
            raise RenderError(f"template {where}: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template {exc.name} not found") from None
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"template {exc.filename or name}:{exc.lineno}: {exc.message}") \
                from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"template {name}: {type(exc).__name__}") from None
        first, _, body = text.lstrip("\n").partition("\n")
        return first, body.strip("\n") + "\n"


def _template_line(exc: BaseException, name: str) -> int | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename and frame.filename.endswith(name):
            return frame.lineno
    return None


def one_line(value: str | None, what: str) -> str:
    """A value bound for a header: refused if it could start a new header line."""
    value = value or ""
    if any(ch in value for ch in "\r\n\x00\u2028\u2029\x85"):
        raise RenderError(f"{what} contains a line break; refusing to put it in a header")
    return value.strip()


def mailbox(name: str | None, address: str | None, what: str) -> Address:
    """One mailbox for From or To: exactly one address, no line breaks."""
    display = one_line(name, f"{what} name")
    addr = one_line(address, f"{what} email")
    if not addr:
        raise RenderError(f"no email address for the {what}")
    try:
        return Address(display_name=display, addr_spec=addr)
    except (ValueError, IndexError, TypeError, HeaderParseError):  # found by tests/test_fuzz
        raise RenderError(f"the {what} email is not a single valid address") from None


def build_draft(templates: Templates, rule: Rule, context: dict[str, Any], *, follow_up_id: int,
                settings: Settings, installation: str, now: datetime) -> Draft:
    """Render a draft rule into an RFC 5322 message with a fixed Message-ID."""
    practice = settings.config.practice
    first, body = templates.render_text(rule.template, context)
    if not first.startswith("Subject:"):
        raise RenderError(f"template {rule.template}: the first line must be 'Subject: ...'")
    subject = one_line(first.removeprefix("Subject:"), "subject")
    recipient = context["recipient"]
    sender_name = practice.therapist + (f", {practice.credentials}" if practice.credentials
                                        else "")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = mailbox(sender_name, practice.email, "therapist")
    msg["To"] = mailbox(recipient["name"], recipient["email"], rule.to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    mid = message_id(installation, follow_up_id, practice.message_domain)
    msg["Message-ID"] = mid
    tag = f"{installation[:16]}.{follow_up_id}"
    msg["X-Followupd-Id"] = tag
    msg.set_content(body)
    return Draft(follow_up_id, mid, msg, tag=tag)


def build_reminder(templates: Templates, rule: Rule, context: dict[str, Any], *,
                   follow_up_id: int, settings: Settings, installation: str,
                   remind_at: datetime) -> Reminder:
    """Render a reminder rule: title and description, dated in the practice's zone."""
    if PATIENT_ROOT in context:
        raise RenderError("reminders never carry client details")
    practice = settings.config.practice
    first, body = templates.render_text(rule.template, context)
    if not first.startswith("Title:"):
        raise RenderError(f"template {rule.template}: the first line must be 'Title: ...'")
    start = remind_at.astimezone(practice.zone)
    return Reminder(
        follow_up_id=follow_up_id,
        uid=f"followupd-{installation[:16]}-{follow_up_id}@{practice.message_domain}",
        event_id=event_id(installation, follow_up_id),
        title=one_line(first.removeprefix("Title:"), "title"),
        description=body,
        start=start,
        end=start + timedelta(minutes=REMINDER_MINUTES),
        timezone=practice.timezone,
    )


def _person(physician: Physician | None, practice: Practice | None = None) -> dict | None:
    if physician is None:
        return None
    return {"name": physician.name, "salutation": salutation(physician.name),
            "email": physician.email, "fax": physician.fax, "specialty": physician.specialty,
            "practice": practice.name if practice else None}


def context_for(settings: Settings, rule: Rule, bundle: Bundle, *, release: bool) -> dict:
    """What a template may use. `client` (patient details) only for a draft with a release."""
    config = settings.config
    practice = config.practice
    context: dict[str, Any] = {
        "therapist": {"name": practice.therapist, "credentials": practice.credentials,
                      "practice_name": practice.practice_name, "phone": practice.phone,
                      "email": practice.email, "address": practice.address},
        "follow_up": {"id": bundle.follow_up.id, "rule": rule.name},
        "physician": _person(bundle.physician, bundle.practice),
        "practice": {"name": bundle.practice.name} if bundle.practice else None,
    }
    specialty = None
    if bundle.referral is not None:
        referral = bundle.referral
        context["referral"] = {"ref": referral.ref, "received_on": referral.received_on,
                               "closed_on": referral.closed_on, "release_on": referral.release_on}
        context["prescriber"] = _person(bundle.prescriber)
        specialty = bundle.physician.specialty if bundle.physician else None
        if release and rule.make == "draft":
            context[PATIENT_ROOT] = {
                "name": referral.client_name,
                "first_name": referral.client_name.split()[0],
                "dob": referral.client_dob,
                "problem": referral.presenting_problem,
                "focus": referral.treatment_focus,
                "closing_summary": referral.closing_summary,
            }
    if bundle.visit is not None:
        visit = bundle.visit
        context["visit"] = {"visited_on": visit.visited_on,
                            "business_manager": visit.business_manager,
                            "cards_left": visit.cards_left, "handouts_left": visit.handouts_left,
                            "specialty": visit.specialty}
        specialty = visit.specialty or (bundle.physician.specialty if bundle.physician else None)
    context["next_specialty"] = config.next_specialty(specialty)
    if rule.make == "draft":
        context["recipient"] = context.get(rule.to)
    return context
