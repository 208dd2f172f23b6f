"""Validating what a person enters: one referral or visit as text, from a CSV row or the CLI.

Pure: text in, a typed record or a `RowError` out. An error names the column and what is
wrong and never repeats the value, because the value may be a patient's name or diagnosis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

from email_validator import EmailNotValidError, validate_email

REFERRAL_COLUMNS = (
    "ref",
    "received_on",
    "physician",
    "physician_email",
    "physician_fax",
    "specialty",
    "practice",
    "client_name",
    "client_dob",
    "presenting_problem",
    "treatment_focus",
    "release_on_file",
    "closed_on",
    "closing_summary",
    # Optional, beyond the columns every practice has: the date the release was signed, and
    # the client's prescriber when that is not the referring physician, with the client's
    # release for the prescriber (a release names its recipient: the referring physician's
    # does not cover the prescriber).
    "release_on",
    "prescriber",
    "prescriber_email",
    "prescriber_release_on_file",
    "prescriber_release_on",
    # A group practice: whose referral it is (a key from `therapists:` in followupd.yaml).
    "therapist",
)
REFERRAL_REQUIRED = ("ref", "received_on", "physician", "client_name")
VISIT_COLUMNS = (
    "visited_on",
    "practice",
    "physician",
    "specialty",
    "business_manager",
    "cards_left",
    "handouts_left",
    "notes",
    "therapist",
    # The answer to "Who is your favorite practice to refer to?": a prospect to introduce
    # yourself to (prospect.named), and who named it.
    "named_practice",
    "named_physician",
    "named_specialty",
)
VISIT_REQUIRED = ("visited_on", "practice")
NAMED_COLUMNS = ("named_practice", "named_physician", "named_specialty")
# The columns read as dates (a sheet's are turned from its locale's spelling first).
DATE_COLUMNS = frozenset(
    {"received_on", "client_dob", "closed_on", "release_on", "prescriber_release_on", "visited_on"}
)

# Free text may run over several lines; everything else is one line.
MULTILINE = {"presenting_problem", "treatment_focus", "closing_summary", "notes"}
MAX_LENGTH = {
    "ref": 64,
    "physician_fax": 40,
    "physician_email": 254,
    "prescriber_email": 254,
    "specialty": 120,
    "named_specialty": 120,
}
DEFAULT_MAX_LENGTH = 200
# Values that go into a note's headers (Subject, To): "=?" opens an RFC 2047 encoded word,
# which a mail program decodes (a hidden line break, a Bcc), so rendering refuses it. Refused
# here too, when it is typed or imported, rather than failing the note later.
HEADER_COLUMNS = {"ref", "physician", "prescriber", "named_physician"}
MULTILINE_MAX_LENGTH = 10_000

YES = {"yes", "y", "true", "1", "x", "on file"}
NO = {"no", "n", "false", "0", ""}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FAX_RE = re.compile(r"^[0-9+().\- ]{4,40}$")


class RowError(ValueError):
    """One field is wrong; `column` names it and the message says how, without its value."""

    def __init__(self, column: str, message: str):
        super().__init__(f"{column}: {message}")
        self.column = column
        self.message = message


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\t"


def clean_text(column: str, raw: Any) -> str | None:
    """Trimmed text, or None when empty; refuses control characters and overlong values."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    multiline = column in MULTILINE
    if column in HEADER_COLUMNS and "=?" in text:
        raise RowError(column, 'contains "=?", which mail programs read as an encoded word')
    if text.isprintable():  # the common case: no line breaks or control characters at all
        limit = MULTILINE_MAX_LENGTH if multiline else MAX_LENGTH.get(column, DEFAULT_MAX_LENGTH)
        if len(text) > limit:
            raise RowError(column, f"is longer than {limit} characters")
        return text
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if any(_is_control(ch) and ch != "\n" for ch in text):
            raise RowError(column, "contains control characters")
        limit = MULTILINE_MAX_LENGTH
    else:
        if any(ch in "\r\n\u2028\u2029\x85" for ch in text):
            raise RowError(column, "contains a line break where a single line belongs")
        if any(_is_control(ch) for ch in text):
            raise RowError(column, "contains control characters")
        limit = MAX_LENGTH.get(column, DEFAULT_MAX_LENGTH)
    if len(text) > limit:
        raise RowError(column, f"is longer than {limit} characters")
    return text


def parse_date(column: str, raw: Any, *, required: bool = False) -> date | None:
    text = clean_text(column, raw)
    if text is None:
        if required:
            raise RowError(column, "is empty (a date like 2026-11-23 is required)")
        return None
    if not _DATE_RE.match(text):
        raise RowError(column, "is not a date (write it as YYYY-MM-DD, e.g. 2026-11-23)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RowError(column, "is not a calendar date (check the month and day)") from None


def parse_yes_no(column: str, raw: Any) -> bool:
    text = (clean_text(column, raw) or "").casefold()
    if text in YES:
        return True
    if text in NO:
        return False
    raise RowError(column, "must be yes or no")


def parse_count(column: str, raw: Any) -> int:
    text = clean_text(column, raw)
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 6:  # "²" is a digit too
        raise RowError(column, "must be a whole number (0 or more)")
    return int(text)


@lru_cache(maxsize=4096)
def _normalized_email(text: str) -> str | None:
    """A spreadsheet repeats the same few physicians' addresses on many rows."""
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def parse_email(column: str, raw: Any) -> str | None:
    text = clean_text(column, raw)
    if text is None:
        return None
    normalized = _normalized_email(text)
    if normalized is None:
        raise RowError(column, "is not an email address (e.g. dr.lee@clinic.example)")
    return normalized


def parse_fax(column: str, raw: Any) -> str | None:
    text = clean_text(column, raw)
    if text is not None and not _FAX_RE.match(text):
        raise RowError(column, "is not a fax number (digits, spaces, + ( ) - .)")
    return text


def required_text(column: str, raw: Any) -> str:
    text = clean_text(column, raw)
    if text is None:
        raise RowError(column, "is empty (required)")
    return text


@dataclass(frozen=True)
class Therapists:
    """The therapist keys a row may name, and whose a row naming none is."""

    keys: frozenset[str] = frozenset()
    default: str | None = None

    def parse(self, raw: Any) -> str | None:
        text = clean_text("therapist", raw)
        if text is None:
            if self.default is None and self.keys:
                raise RowError("therapist", f"is empty (one of: {self._known()})")
            return self.default
        key = text.casefold()
        if key not in self.keys:
            if not self.keys:
                raise RowError(
                    "therapist",
                    "is set but followupd.yaml lists no therapists (add them under `therapists:`)",
                )
            raise RowError(
                "therapist", f"is not a therapist in followupd.yaml (one of: {self._known()})"
            )
        return key

    def _known(self) -> str:
        return ", ".join(sorted(self.keys))


NO_THERAPISTS = Therapists()


def fold(text: str | None) -> str:
    return " ".join((text or "").casefold().split())


def practice_key(name: str) -> str:
    return fold(name)


def physician_key(name: str, practice: str | None) -> str:
    return f"{fold(name)}|{fold(practice)}"


def visit_key(
    visited_on: date, practice: str, physician: str | None, therapist: str | None = None
) -> str:
    """A visit is one per day, office and physician (and therapist, in a group practice)."""
    key = f"{visited_on.isoformat()}|{fold(practice)}|{fold(physician)}"
    return f"{key}|{therapist}" if therapist else key


@dataclass(frozen=True)
class PhysicianRecord:
    name: str
    practice: str | None = None
    specialty: str | None = None
    email: str | None = None
    fax: str | None = None


@dataclass(frozen=True)
class ReferralRecord:
    """A validated referral. `fields` holds only the columns the source had, so a CSV
    without a column leaves that field as it is on re-import instead of blanking it."""

    ref: str
    physician: PhysicianRecord
    fields: Mapping[str, Any]
    prescriber: PhysicianRecord | None = None
    has_prescriber: bool = False  # the source had a prescriber column

    def referral_values(self, physician_id: int) -> dict[str, Any]:
        return {"ref": self.ref, "physician_id": physician_id, **self.fields}


@dataclass(frozen=True)
class VisitRecord:
    visited_on: date
    practice: str
    physician_name: str | None
    specialty: str | None
    fields: Mapping[str, Any]

    def physician_record(self) -> PhysicianRecord:
        assert self.physician_name
        return PhysicianRecord(self.physician_name, self.practice, self.specialty)

    def prospect_record(self) -> PhysicianRecord | None:
        """The physician named in answer to the ask, entered as a physician (a prospect)."""
        name = self.fields.get("named_physician")
        if not name:
            return None
        return PhysicianRecord(
            name, self.fields.get("named_practice"), self.fields.get("named_specialty")
        )

    def visit_values(self, practice_id: int, physician_id: int | None) -> dict[str, Any]:
        return {
            "visited_on": self.visited_on,
            "practice_id": practice_id,
            "physician_id": physician_id,
            "specialty": self.specialty,
            **self.fields,
        }


def _therapist(row: Mapping[str, Any], therapists: Therapists, fields: dict[str, Any]) -> None:
    if "therapist" in row or therapists.keys:
        fields["therapist"] = therapists.parse(row.get("therapist"))


def _release(
    row: Mapping[str, Any], present: set[str], fields: dict[str, Any], flag: str, signed_column: str
) -> None:
    """A release's columns: on file (yes/no) and, optionally, the date it was signed."""
    if flag in present:
        fields[flag] = parse_yes_no(flag, row[flag])
    signed = parse_date(signed_column, row.get(signed_column))
    if signed:  # empty: the date the release was first recorded here stands
        if not fields.get(flag, True):
            raise RowError(signed_column, f"is set but {flag} is no")
        fields.update({signed_column: signed, flag: True})


def parse_referral(
    row: Mapping[str, Any], therapists: Therapists = NO_THERAPISTS
) -> ReferralRecord:
    """Validate one referral; only the columns present in `row` are set."""
    present = set(row)
    fields: dict[str, Any] = {}
    _therapist(row, therapists, fields)
    ref = required_text("ref", row.get("ref"))
    fields["received_on"] = parse_date("received_on", row.get("received_on"), required=True)
    fields["client_name"] = required_text("client_name", row.get("client_name"))
    if "client_dob" in present:
        fields["client_dob"] = parse_date("client_dob", row["client_dob"])
        if fields["client_dob"] and (
            fields["client_dob"] > fields["received_on"] or fields["client_dob"].year < 1900
        ):
            raise RowError("client_dob", "is not a plausible birth date")
    for column in ("presenting_problem", "treatment_focus", "closing_summary"):
        if column in present:
            fields[column] = clean_text(column, row[column])
    for flag, signed_column in (
        ("release_on_file", "release_on"),
        ("prescriber_release_on_file", "prescriber_release_on"),
    ):
        _release(row, present, fields, flag, signed_column)
    if "closed_on" in present:
        fields["closed_on"] = parse_date("closed_on", row["closed_on"])
        if fields["closed_on"] and fields["closed_on"] < fields["received_on"]:
            raise RowError("closed_on", "is before received_on")
    physician = PhysicianRecord(
        name=required_text("physician", row.get("physician")),
        practice=clean_text("practice", row.get("practice")),
        specialty=clean_text("specialty", row.get("specialty")),
        email=parse_email("physician_email", row.get("physician_email")),
        fax=parse_fax("physician_fax", row.get("physician_fax")),
    )
    prescriber_name = clean_text("prescriber", row.get("prescriber"))
    prescriber = (
        PhysicianRecord(
            name=prescriber_name,
            email=parse_email("prescriber_email", row.get("prescriber_email")),
        )
        if prescriber_name
        else None
    )
    return ReferralRecord(
        ref=ref,
        physician=physician,
        fields=fields,
        prescriber=prescriber,
        has_prescriber="prescriber" in present,
    )


def parse_visit(row: Mapping[str, Any], therapists: Therapists = NO_THERAPISTS) -> VisitRecord:
    """Validate one office visit."""
    present = set(row)
    fields: dict[str, Any] = {}
    _therapist(row, therapists, fields)
    for column in ("cards_left", "handouts_left"):
        if column in present:
            fields[column] = parse_count(column, row[column])
    for column in ("business_manager", "notes", *NAMED_COLUMNS):
        if column in present:
            fields[column] = clean_text(column, row[column])
    if fields.get("named_specialty") and not (
        fields.get("named_practice") or fields.get("named_physician")
    ):
        raise RowError("named_specialty", "is set but named_practice and named_physician are empty")
    return VisitRecord(
        visited_on=parse_date("visited_on", row.get("visited_on"), required=True),
        practice=required_text("practice", row.get("practice")),
        physician_name=clean_text("physician", row.get("physician")),
        specialty=clean_text("specialty", row.get("specialty")),
        fields=fields,
    )
