"""Reminders: a rendered template as a calendar event's fields, never with patient details.

A reminder's title and description go to a calendar, where patient details never go: its
context holds no `client` (and one that does is refused). The event's id is derived from the
ledger row, so that a second insert of the same reminder is refused (409) instead of making
another.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta

from followupd.delivery import Reminder
from followupd.render.errors import RenderError
from followupd.render.headers import one_line
from followupd.render.templates import PATIENT_ROOT, Rendering

REMINDER_MINUTES = 30  # length of a reminder's calendar slot


def event_id(installation: str, follow_up_id: int) -> str:
    """A Calendar event id (base32hex, lower case) that only this follow-up can have."""
    digest = hashlib.sha256(f"{installation}:{follow_up_id}".encode()).digest()[:20]
    return base64.b32hexencode(digest).decode().lower()


def build_reminder(job: Rendering, *, remind_at: datetime) -> Reminder:
    """Render a reminder rule: title and description, dated in the practice's zone."""
    if PATIENT_ROOT in job.context:
        raise RenderError("reminders never carry client details")
    rule, follow_up_id, installation = job.rule, job.follow_up_id, job.installation
    practice = job.settings.config.practice
    first, body = job.templates.render_text(rule.template, job.context)
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
