"""Drafts: a rendered template as checked RFC 5322 bytes with a fixed identity.

The draft is serialized once, at render time, and its bytes are checked (see `headers`)
before it exists: what is delivered is exactly what was checked. Its Message-ID and
X-Followupd-Id are derived from the ledger row, so a later tick finds the draft instead of
making another.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from followupd.config import Practice, Rule
from followupd.delivery import Draft
from followupd.render.errors import RenderError, step
from followupd.render.headers import (
    POLICY,
    Envelope,
    ascii_domain,
    check_header_block,
    check_parsed,
    header_text,
    idna_domain,
    mailbox,
)
from followupd.render.templates import Rendering


def message_id(installation: str, follow_up_id: int, domain: str) -> str:
    """The draft's fixed identity: how a later tick finds it instead of making another.

    A non-ASCII domain is written in IDNA here, so that every caller (build_draft, and the
    engine looking for a draft it made) computes the same identity.
    """
    return f"<followupd.{follow_up_id}.{installation[:16]}@{idna_domain(domain)}>"


def draft_tag(installation: str, follow_up_id: int) -> str:
    """A draft's X-Followupd-Id: found among recent drafts' headers if Google rewrote the
    Message-ID."""
    return f"{installation[:16]}.{follow_up_id}"


def compose(envelope: Envelope, body: str) -> EmailMessage:
    """The message as the email package builds it (policy SMTP: CRLF, 7-bit headers)."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = envelope.sender
    msg["To"] = envelope.to
    msg["Subject"] = envelope.subject
    msg["Date"] = envelope.date
    msg["Message-ID"] = envelope.message_id
    msg["X-Followupd-Id"] = envelope.tag
    msg.set_content(body)
    return msg


def _subject(first_line: str, template: str) -> str:
    """The template's first line, `Subject: ...`, as a checked header value."""
    if not first_line.startswith("Subject:"):
        raise RenderError(f"template {template}: the first line must be 'Subject: ...'")
    return header_text(first_line.removeprefix("Subject:"), "subject")


def _mailboxes(rule: Rule, context: dict[str, Any], practice: Practice) -> tuple[Address, Address]:
    """From (the therapist, signed with credentials) and To (the rule's recipient), checked."""
    recipient = context.get("recipient")
    if not recipient:
        raise RenderError(f"no {rule.to} to address the draft to")
    sender_name = practice.therapist + (f", {practice.credentials}" if practice.credentials else "")
    sender = mailbox(sender_name, practice.email, "therapist")
    return sender, mailbox(recipient.get("name"), recipient.get("email"), rule.to)


def build_draft(job: Rendering, *, now: datetime) -> Draft:
    """Render a draft rule into checked RFC 5322 bytes with a fixed Message-ID.

    The bytes are made here, not at delivery: a value the serializer cannot write then fails
    this one follow-up instead of the whole batch it would be delivered with, and what is
    delivered is exactly what was checked.
    """
    rule, follow_up_id, installation = job.rule, job.follow_up_id, job.installation
    first, body = job.templates.render_text(rule.template, job.context)
    subject = _subject(first, rule.template)
    with step("building the headers"):  # each value checked before the email package sees it
        practice = job.settings.config.practice
        sender, to = _mailboxes(rule, job.context, practice)
        envelope = Envelope(
            sender=sender,
            to=to,
            to_what=rule.to,
            subject=subject,
            date=format_datetime(now),
            message_id=message_id(
                installation, follow_up_id, ascii_domain(practice.message_domain)
            ),
            tag=draft_tag(installation, follow_up_id),
        )
    with step("building the message"):
        msg = compose(envelope, body)
    with step("serializing the message"):
        raw = msg.as_bytes()
    with step("checking the message"):
        check_parsed(check_header_block(raw), envelope)
    return Draft(follow_up_id, envelope.message_id, msg, tag=envelope.tag, raw=raw)
