"""Header values and the check of a draft's bytes: no user text reaches a header unchecked.

Each value bound for a header is refused if it holds a line break, a control character or an
RFC 2047 encoded word (which a decoder may turn into a line break); addresses are validated
and written in ASCII (IDNA). Then the draft's serialized bytes are parsed back and compared
with what was meant (the `Envelope`): our headers, each once, one To address, the subject as
set. Whatever fails, fails that one follow-up with a reason naming the header or the step,
never the value.
"""

from __future__ import annotations

import email.policy
import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from email.headerregistry import Address, HeaderRegistry
from email.policy import SMTP

from email_validator import EmailNotValidError, validate_email

from followupd.render.errors import RenderError

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


def idna_domain(domain: str) -> str:
    """An ASCII domain as written (a Message-ID must not change under an installation);
    a non-ASCII one in IDNA (xn--...), or as it is when it has no IDNA form."""
    if domain.isascii():
        return domain
    try:
        return validate_email(f"postmaster@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return domain


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
    # ValueError, IndexError, HeaderParseError: found by tests/test_fuzz
    except Exception:  # noqa: BLE001 -- whatever the parser trips on, refused
        raise RenderError(f"the {what} email is not a single valid address") from None


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


# CRLF and 7-bit headers, as SMTP wants; lines up to RFC 5322's 998 characters, so that a
# subject a little over 78 is not folded right after "Subject:" (some readers then keep the
# fold's leading space) and the text needs no quoted-printable.
POLICY = SMTP.clone(header_factory=_HeaderClasses(), max_line_length=998)
READER = email.policy.default.clone(header_factory=_HeaderClasses())  # how a reader parses


def _read(name: str, value: str):
    """A header value as a mail reader reads it (policy.default's parser for that header)."""
    return READER.header_factory(name, value)


def _one_mailbox(value: str, header: str, meant: Address) -> bool:
    return _reads_as_one(value, header, meant.display_name, meant.addr_spec)


@functools.lru_cache(maxsize=1024)  # every draft has the same From: a fifth of the check
def _reads_as_one(value: str, header: str, display_name: str, addr_spec: str) -> bool:
    """Does this address header, as written, read back as exactly this one mailbox?"""
    addresses = _read(header, value).addresses
    return (
        len(addresses) == 1
        and addresses[0].addr_spec == addr_spec
        and addresses[0].display_name == display_name
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
