"""Templates to deliverables: a draft as checked RFC 5322 bytes, a reminder as plain fields.

A template's first line is `Subject: ...` (drafts) or `Title: ...` (reminders); the rest is
the body. Patient details are reachable only as `client.*`, and `client` is in the context
only for a draft with a release on file, so a template that uses it is known to need one, and
a reminder can never show one.

Templates are code the practice writes: they run in Jinja2's sandbox, and an error in one is
reported by template, line and a name written in the template, never by a value from the data.

User text never reaches a mail header unchecked. Each value bound for a header is refused if
it holds a line break, a control character or an RFC 2047 encoded word (which a decoder may
turn into a line break); addresses are validated and written in ASCII (IDNA). Then the draft
is serialized once, at render time, and its bytes are parsed back and compared with what was
meant: our headers, each once, one To address, the subject as set. Whatever fails, fails that
one follow-up with a reason naming the header or the step, never the value.
"""

from __future__ import annotations

import base64
import email.policy
import functools
import hashlib
import os
import re
import traceback
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
from email_validator import EmailNotValidError, validate_email
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from followupd.config import Rule, Settings
from followupd.delivery import Draft, Reminder
from followupd.models import Bundle, Physician, Practice
from followupd.resources import default_templates_dir

REMINDER_MINUTES = 30  # length of a reminder's calendar slot
PATIENT_ROOT = "client"

# "=?charset?encoding?text?=": a decoder may turn the text into anything, a CRLF included.
# Refused in every value bound for a header, whether or not this interpreter decodes it.
ENCODED_WORD = re.compile(r"=\?.*\?=", re.DOTALL)
LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines()
HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z",
    re.IGNORECASE,
)
# The headers a draft has, each exactly once: what build_draft writes and set_content adds.
DRAFT_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Followupd-Id",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
HEADER_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 ftext


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
    """The draft's fixed identity: how a later tick finds it instead of making another.

    A non-ASCII domain is written in IDNA here, so that every caller (build_draft, and the
    engine looking for a draft it made) computes the same identity.
    """
    return f"<followupd.{follow_up_id}.{installation[:16]}@{idna_domain(domain)}>"


def idna_domain(domain: str) -> str:
    """An ASCII domain as written (a Message-ID must not change under an installation);
    a non-ASCII one in IDNA (xn--...), or as it is when it has no IDNA form."""
    if domain.isascii():
        return domain
    try:
        return validate_email(f"postmaster@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return domain


def draft_tag(installation: str, follow_up_id: int) -> str:
    """A draft's X-Followupd-Id: found among recent drafts' headers if Google rewrote the
    Message-ID."""
    return f"{installation[:16]}.{follow_up_id}"


def event_id(installation: str, follow_up_id: int) -> str:
    """A Calendar event id (base32hex, lower case) that only this follow-up can have."""
    digest = hashlib.sha256(f"{installation}:{follow_up_id}".encode()).digest()[:20]
    return base64.b32hexencode(digest).decode().lower()


@contextmanager
def step(what: str) -> Iterator[None]:
    """Any exception but a RenderError, raised while doing `what`, fails the follow-up as a
    RenderError naming the step and the exception's type. Never its text: an exception's
    text may quote the value that caused it (a name, a subject)."""
    try:
        yield
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(f"{what} failed ({type(exc).__name__})") from None


# --- templates -----------------------------------------------------------------------------


class UndefinedValue(jinja2.UndefinedError):
    """A value a template asked for is missing.

    Jinja's own message names the missing key, and a key may be data: in
    `focus_names[client.focus]` it is the client's treatment focus. So the message here is
    generic, and the key travels as an attribute for `Templates` to name only if the
    template itself wrote it.
    """

    def __init__(self, message: str | None = None, *, name: Any = None, top_level: bool = False):
        super().__init__("a value the template uses is missing")
        self.name = name if isinstance(name, str) else None
        self.top_level = top_level  # a variable (`{{ x }}`), not an attribute or a key


class MissingValue(jinja2.StrictUndefined):
    """StrictUndefined whose error carries the missing name instead of quoting it.

    Other errors an undefined stands for (the sandbox's SecurityError) are kept as they are.
    """

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: Any = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        if exc is jinja2.UndefinedError:
            exc = functools.partial(UndefinedValue, name=name, top_level=obj is missing)
        super().__init__(hint, obj, name, exc)


@dataclass(frozen=True)
class Written:
    """What a template (with everything it includes) spells out in its own source: the only
    names an error message may repeat, since anything else came from the data."""

    templates: frozenset[str]  # itself and the templates it includes, imports or extends
    variables: frozenset[str]  # {{ name }}
    # {{ x.attr }} and {{ x["key"] }}. Not every string constant: in
    # `{"cbt": "CBT"}[client.focus]`, a focus of "CBT" is missing, and naming it would name
    # the client's focus.
    keys: frozenset[str]
    patient: bool  # refers to `client`


class Templates:
    """The home's templates/ over the shipped defaults, sandboxed and strict about undefined
    variables."""

    def __init__(self, home_templates: Path | None = None):
        paths = [str(p) for p in (home_templates, default_templates_dir()) if p and p.is_dir()]
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=MissingValue,
            autoescape=False,  # plain-text mail and calendar text, not HTML
            keep_trailing_newline=False,
            trim_blocks=False,
        )
        self.env.filters["longdate"] = long_date
        self._written: dict[str, Written] = {}

    def written(self, name: str) -> Written:
        """What `name` and the templates it refers to write in their source (cached)."""
        if name not in self._written:
            self._written[name] = self._collect(name)
        return self._written[name]

    def _collect(self, root: str) -> Written:
        """Walk `root` and what it refers to. A missing or broken one raises: `problems`
        reports it at start-up."""
        templates, variables, keys, patient = set(), set(), set(), False
        pending = [root]
        while pending:
            name = pending.pop()
            if name in templates:
                continue
            templates.add(name)
            tree = self.env.parse(self.env.loader.get_source(self.env, name)[0])
            patient = patient or PATIENT_ROOT in jinja2.meta.find_undeclared_variables(tree)
            variables.update(node.name for node in tree.find_all(jinja2.nodes.Name))
            keys.update(node.attr for node in tree.find_all(jinja2.nodes.Getattr))
            keys.update(
                node.arg.value
                for node in tree.find_all(jinja2.nodes.Getitem)
                if isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, str)
            )
            pending.extend(child for child in jinja2.meta.find_referenced_templates(tree) if child)
        return Written(frozenset(templates), frozenset(variables), frozenset(keys), patient)

    def uses_patient_fields(self, name: str) -> bool:
        """Does the template (or anything it includes) refer to `client`?"""
        return self.written(name).patient

    def problems(self, rules: list[Rule]) -> list[str]:
        """What is wrong with the templates the rules use (for `check` and start-up)."""
        out = []
        for rule in rules:
            try:
                self.env.get_template(rule.template)
                patient = self.uses_patient_fields(rule.template)
            except jinja2.TemplateNotFound as exc:
                out.append(
                    f"rules: {rule.name}: template {exc.name} not found "
                    f"(in {', '.join(self.env.loader.searchpath)})"
                )
                continue
            except jinja2.TemplateSyntaxError as exc:
                out.append(f"{exc.filename or rule.template}:{exc.lineno}: {exc.message}")
                continue
            if patient and rule.make == "reminder":
                out.append(
                    f"rules: {rule.name}: reminder template {rule.template} uses "
                    f"client fields; calendar reminders may not carry patient details"
                )
        return out

    def render_text(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        """(first-line value, body) of a rendered template.

        Errors name the template, the line and at most a name the template wrote; never the
        text of the exception, which may quote a value (Jinja's "'dict object' has no
        attribute ..." names the key it was given, and that key may be a client's data).
        """
        try:
            text = self.env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template {self._shown(name, exc.name)} not found") from None
        except jinja2.TemplateSyntaxError as exc:
            where = f"{self._shown(name, exc.name or name)}:{exc.lineno}"
            raise RenderError(f"template {where}: {exc.message}") from None
        except SecurityError as exc:
            raise RenderError(
                f"template {self._where(exc, name)}: the template tried an unsafe operation"
            ) from None
        except UndefinedValue as exc:
            raise RenderError(
                f"template {self._where(exc, name)}: {self._missing(exc, name)}"
            ) from None
        except Exception as exc:  # TypeError, ZeroDivisionError...: their text may quote data
            raise RenderError(f"template {self._where(exc, name)}: {type(exc).__name__}") from None
        first, _, body = text.lstrip("\n").partition("\n")
        return first, body.strip("\n") + "\n"

    def _known(self, root: str) -> Written:
        """What `root` writes, for an error message; nothing if that cannot be read (an
        included template missing or broken): then nothing is named."""
        try:
            return self.written(root)
        except Exception:
            return Written(frozenset({root}), frozenset(), frozenset(), False)

    def _shown(self, root: str, template: str | None) -> str:
        """A template's name if `root` names it in its source; else it came from the data."""
        if template == root or template in self._known(root).templates:
            return template
        return "(a template named by the data)"

    def _missing(self, exc: UndefinedValue, root: str) -> str:
        written = self._known(root)
        if exc.name is None:
            return "a value the template uses is undefined"
        if exc.top_level and exc.name in written.variables:
            return f"{exc.name!r} is undefined"
        if not exc.top_level and exc.name in written.keys:
            return f"no attribute or key {exc.name!r}"
        return "a key or attribute taken from the data is missing"

    def _where(self, exc: BaseException, root: str) -> str:
        """template:line of the innermost template frame (Jinja rewrites the traceback so
        template code shows as its file and line); the root's name if none is found."""
        known = self._known(root).templates
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            template = self._template_of(frame.filename)
            if template in known:
                return f"{template}:{frame.lineno}"
        return root

    def _template_of(self, filename: str | None) -> str | None:
        """The template name of a file under one of the loader's folders."""
        path = Path(os.path.normpath(os.path.abspath(filename or "")))
        for folder in self.env.loader.searchpath:
            try:
                return path.relative_to(os.path.normpath(os.path.abspath(folder))).as_posix()
            except ValueError:
                continue
        return None


# --- header values -------------------------------------------------------------------------


def one_line(value: str | None, what: str) -> str:
    """A single line of text: refused if it could start a new line where one line belongs
    (a header, a calendar title), or holds another control character."""
    value = value or ""
    if any(ch in LINE_BREAKS for ch in value):
        raise RenderError(f"{what} contains a line break; refusing to put it in a header")
    kinds = {unicodedata.category(ch) for ch in value if ch != "\t"}  # a tab is white space
    if "Cc" in kinds:
        raise RenderError(f"{what} contains a control character; refusing to put it in a header")
    if "Cs" in kinds:  # a lone surrogate: not text, and the email package trips over it
        raise RenderError(f"{what} is not valid Unicode text; refusing to put it in a header")
    return value.strip()


def header_text(value: str | None, what: str) -> str:
    """A value bound for a mail header: one line, and no RFC 2047 encoded word in it. A
    decoder turns `=?utf-8?q?=0D=0ABcc:...?=` into a line break; some Python versions then
    write that break out as a real header line."""
    value = one_line(value, what)
    if ENCODED_WORD.search(value):
        raise RenderError(
            f"{what} contains what reads as an RFC 2047 encoded word; refusing "
            "to put it in a header"
        )
    return value


@functools.lru_cache(maxsize=4096)  # a practice writes to the same few addresses again and again
def ascii_address(address: str | None, what: str) -> str:
    """One valid address, in ASCII: a non-ASCII domain in IDNA (xn--...). A non-ASCII local
    part has no ASCII form (it needs SMTPUTF8, which a draft cannot count on): refused."""
    text = header_text(address, f"{what} email")
    if not text:
        raise RenderError(f"no email address for the {what}")
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        raise RenderError(f"the {what} email is not a single valid address") from None
    if valid.ascii_email is None:
        raise RenderError(
            f"the {what} email has a non-ASCII part before the @, which a draft cannot carry"
        )
    return valid.ascii_email


def ascii_domain(domain: str | None, what: str = "message domain") -> str:
    """The Message-ID's domain as a valid ASCII host name (see idna_domain), or refused."""
    domain = idna_domain(one_line(domain, what))
    if not HOSTNAME.match(domain):
        raise RenderError(
            f"the {what} (practice.mail_domain, or the domain of "
            "practice.email) is not a valid domain name"
        )
    return domain


def mailbox(name: str | None, address: str | None, what: str) -> Address:
    """One mailbox for From or To: exactly one ASCII address, a checked display name."""
    display = header_text(name, f"{what} name")
    addr = ascii_address(address, what)
    try:
        return Address(display_name=display, addr_spec=addr)
    except Exception:  # ValueError, IndexError, HeaderParseError: found by tests/test_fuzz
        raise RenderError(f"the {what} email is not a single valid address") from None


# --- drafts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The headers a draft is meant to have: what its bytes are checked against."""

    sender: Address
    to: Address
    to_what: str  # physician, prescriber: names the To header in reasons
    subject: str
    date: str
    message_id: str
    tag: str


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


def check_header_block(raw: bytes) -> dict[str, str]:
    """The raw header block holds exactly our header lines, each once; returns each header's
    value as written (unfolded).

    Split the strict way: at CRLF, and a line that does not start with white space is a
    header of its own. A bare CR or LF, or 8-bit bytes, may be read as a line break (or
    anything) by some reader: refused too.
    """
    head, blank, _ = raw.partition(b"\r\n\r\n")
    if not blank:
        raise RenderError("the message has no header block; refusing the draft")
    if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
        raise RenderError("a header holds a bare line break; refusing the draft")
    if not head.isascii():
        raise RenderError("a header is not plain ASCII; refusing the draft")
    headers: list[list[str]] = []
    for line in head.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1] += line  # a folded header goes on (unfolding drops only the CRLF)
            continue
        name, colon, value = line.partition(":")
        if not colon or not HEADER_NAME.fullmatch(name.encode()):
            raise RenderError("a header line of the message is not a header; refusing the draft")
        headers.append([name, value])
    if Counter(name.lower() for name, _ in headers) != Counter(h.lower() for h in DRAFT_HEADERS):
        raise RenderError(
            "the message's header lines did not read back as the ones written; refusing the draft"
        )
    return {name.lower(): value for name, value in headers}


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, keeping the class it makes for each header name
    (it makes a new one with `type()` on every lookup: a fifth of a draft's CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


POLICY = SMTP.clone(header_factory=_HeaderClasses())  # CRLF, 7-bit headers, as SMTP wants
READER = email.policy.default.clone(header_factory=_HeaderClasses())  # how a reader parses


def _read(name: str, value: str):
    """A header value as a mail reader reads it (policy.default's parser for that header)."""
    return READER.header_factory(name, value)


def _one_mailbox(value: str, header: str, meant: Address) -> bool:
    addresses = _read(header, value).addresses
    return (
        len(addresses) == 1
        and addresses[0].addr_spec == meant.addr_spec
        and addresses[0].display_name == meant.display_name
    )


def check_parsed(written: dict[str, str], envelope: Envelope) -> None:
    """Read the headers back as a mail reader would: one To address (the one meant), From
    the therapist, the subject and identities as set, plain text."""
    if not _one_mailbox(written["to"], "To", envelope.to):
        raise RenderError(
            f"the To header did not read back as the one {envelope.to_what} "
            "address written; refusing the draft"
        )
    if not _one_mailbox(written["from"], "From", envelope.sender):
        raise RenderError("the From header did not read back as the therapist; refusing the draft")
    expected = {
        "Subject": envelope.subject,
        "Date": envelope.date,
        "Message-ID": envelope.message_id,
        "X-Followupd-Id": envelope.tag,
    }
    for header, value in expected.items():
        # A value folded onto the next line reads back with the fold's white space in front
        if str(_read(header, written[header.lower()])).strip() != value:
            raise RenderError(
                f"the {header} header did not read back as written; refusing the draft"
            )
    if _read("Content-Type", written["content-type"]).content_type != "text/plain":
        raise RenderError("the message did not read back as plain text; refusing the draft")


def _subject(first_line: str, template: str) -> str:
    """The template's first line, `Subject: ...`, as a checked header value."""
    if not first_line.startswith("Subject:"):
        raise RenderError(f"template {template}: the first line must be 'Subject: ...'")
    return header_text(first_line.removeprefix("Subject:"), "subject")


def _envelope(
    rule: Rule,
    context: dict[str, Any],
    subject: str,
    *,
    follow_up_id: int,
    settings: Settings,
    installation: str,
    now: datetime,
) -> Envelope:
    """Every header value, checked, before any of them reaches the email package."""
    practice = settings.config.practice
    recipient = context.get("recipient")
    if not recipient:
        raise RenderError(f"no {rule.to} to address the draft to")
    sender_name = practice.therapist + (f", {practice.credentials}" if practice.credentials else "")
    return Envelope(
        sender=mailbox(sender_name, practice.email, "therapist"),
        to=mailbox(recipient.get("name"), recipient.get("email"), rule.to),
        to_what=rule.to,
        subject=subject,
        date=format_datetime(now),
        message_id=message_id(installation, follow_up_id, ascii_domain(practice.message_domain)),
        tag=draft_tag(installation, follow_up_id),
    )


def build_draft(
    templates: Templates,
    rule: Rule,
    context: dict[str, Any],
    *,
    follow_up_id: int,
    settings: Settings,
    installation: str,
    now: datetime,
) -> Draft:
    """Render a draft rule into checked RFC 5322 bytes with a fixed Message-ID.

    The bytes are made here, not at delivery: a value the serializer cannot write then fails
    this one follow-up instead of the whole batch it would be delivered with, and what is
    delivered is exactly what was checked.
    """
    first, body = templates.render_text(rule.template, context)
    subject = _subject(first, rule.template)
    with step("building the headers"):
        envelope = _envelope(
            rule,
            context,
            subject,
            follow_up_id=follow_up_id,
            settings=settings,
            installation=installation,
            now=now,
        )
    with step("building the message"):
        msg = compose(envelope, body)
    with step("serializing the message"):
        raw = msg.as_bytes()
    with step("checking the message"):
        check_parsed(check_header_block(raw), envelope)
    return Draft(follow_up_id, envelope.message_id, msg, tag=envelope.tag, raw=raw)


# --- reminders -----------------------------------------------------------------------------


def build_reminder(
    templates: Templates,
    rule: Rule,
    context: dict[str, Any],
    *,
    follow_up_id: int,
    settings: Settings,
    installation: str,
    remind_at: datetime,
) -> Reminder:
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


# --- contexts ------------------------------------------------------------------------------


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
        referral = bundle.referral
        context["referral"] = {
            "ref": referral.ref,
            "received_on": referral.received_on,
            "closed_on": referral.closed_on,
            "release_on": referral.release_on,
        }
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
        context["visit"] = {
            "visited_on": visit.visited_on,
            "business_manager": visit.business_manager,
            "cards_left": visit.cards_left,
            "handouts_left": visit.handouts_left,
            "specialty": visit.specialty,
        }
        specialty = visit.specialty or (bundle.physician.specialty if bundle.physician else None)
    context["next_specialty"] = config.next_specialty(specialty)
    if rule.make == "draft":
        context["recipient"] = context.get(rule.to)
    return context
