"""The tables: physicians and their practices, referrals, office visits, and the follow-up ledger.

Times are stored as UTC (naive in the database, aware in Python) and shown in the practice's
zone. Patient fields live only on `Referral`; the ledger refers to subjects by id, so anything
printed from it (status, logs, metrics) carries no patient detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelConfig


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _stamp(**kw) -> Field:  # type: ignore[valid-type]
    return Field(default_factory=now_utc, sa_type=UTCDateTime, **kw)


class TableModel(SQLModel):
    """The base of the tables. Rows come from the database and from followupd's own code,
    never from pydantic validation, so their pydantic validators are built only if ever
    asked for (`defer_build`): a tenth of the time importing this module took."""

    model_config = SQLModelConfig(defer_build=True)


class Practice(TableModel, table=True):
    """A physician's office (the places the therapist visits and refers with)."""

    __tablename__ = "practice"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)  # case-folded name: one row per office
    name: str = Field(max_length=200)
    created_at: datetime = _stamp()


class Physician(TableModel, table=True):
    __tablename__ = "physician"
    # planning reads the physicians changed since its cursor (their thank-you, quiet spell)
    __table_args__ = (sa.Index("ix_physician_updated", "updated_at", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=420, unique=True)  # case-folded "name|practice"
    name: str = Field(max_length=200)
    specialty: str | None = Field(default=None, max_length=120)
    email: str | None = Field(default=None, max_length=254)
    fax: str | None = Field(default=None, max_length=40)
    practice_id: int | None = Field(default=None, foreign_key="practice.id", index=True)
    # None: the address is one a person entered or confirmed. Otherwise why notes to it wait
    # for `followupd physician confirm` (it changed in an import, or looks like another's).
    email_check: str | None = Field(default=None, max_length=300)
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp()


class Referral(TableModel, table=True):
    """One referral; the only table with patient details.

    `release_on_file` and `prescriber_release_on_file` say whether a release of information
    naming that recipient is in force now; they are kept from the `release` history, which
    is the record (who granted or revoked it, when, through what).
    """

    __tablename__ = "referral"
    # a physician's first and last referral, read in one step each (physician.first_referral,
    # physician.quiet)
    __table_args__ = (
        sa.Index("ix_referral_physician_received", "physician_id", "received_on", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(max_length=64, unique=True)  # the practice's own id, e.g. R-12
    received_on: date
    physician_id: int = Field(foreign_key="physician.id", index=True)
    client_name: str = Field(max_length=200)
    client_dob: date | None = None
    presenting_problem: str | None = None
    treatment_focus: str | None = None
    release_on_file: bool = False
    release_on: date | None = None
    prescriber_id: int | None = Field(default=None, foreign_key="physician.id")
    prescriber_release_on_file: bool = False
    prescriber_release_on: date | None = None
    closed_on: date | None = None
    closing_summary: str | None = None
    therapist: str | None = Field(default=None, max_length=64)  # a key from `therapists:`
    # The watched source it was last read from, and why its notes wait if it left it.
    source: str | None = Field(default=None, max_length=64)
    gone: str | None = Field(default=None, max_length=200)
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp(index=True)


class Recipient(StrEnum):
    """Whom a note is addressed to, and so whom a release of information must name."""

    physician = "physician"  # the referring physician
    prescriber = "prescriber"  # the client's prescriber


class Release(TableModel, table=True):
    """One grant of a release of information for one recipient of one referral's notes.

    A release names its recipient (`physician_id` at the time it was granted); revoking it
    fills in `revoked_on`. Rows are never deleted: they are the history an import consults
    before granting again.
    """

    __tablename__ = "release"
    id: int | None = Field(default=None, primary_key=True)
    referral_id: int = Field(foreign_key="referral.id", index=True, ondelete="CASCADE")
    recipient: str = Field(max_length=16)  # Recipient
    physician_id: int | None = Field(default=None, foreign_key="physician.id")
    granted_on: date
    granted_by: str = Field(max_length=32)  # cli | import | demo | migration
    revoked_on: date | None = None
    revoked_by: str | None = Field(default=None, max_length=32)
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp()


class Visit(TableModel, table=True):
    """An outreach visit to a physician's office."""

    __tablename__ = "visit"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=460, unique=True)  # "date|practice|physician", case-folded
    visited_on: date
    practice_id: int = Field(foreign_key="practice.id", index=True)
    physician_id: int | None = Field(default=None, foreign_key="physician.id")
    specialty: str | None = Field(default=None, max_length=120)
    business_manager: str | None = Field(default=None, max_length=200)
    cards_left: int = 0
    handouts_left: int = 0
    notes: str | None = None
    therapist: str | None = Field(default=None, max_length=64)
    # The answer to "Who is your favorite practice to refer to?", as it was given: a
    # prospect (the physician is also entered as a physician, with no address yet).
    named_practice: str | None = Field(default=None, max_length=200)
    named_physician: str | None = Field(default=None, max_length=200)
    named_specialty: str | None = Field(default=None, max_length=120)
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp(index=True)


class Kind(StrEnum):
    draft = "draft"
    reminder = "reminder"


class State(StrEnum):
    planned = "planned"  # waiting for its due time
    held = "held"  # cannot go out yet (e.g. no release of information); reason says why
    claimed = "claimed"  # a tick is delivering it; intent recorded before any external call
    waiting = "waiting"  # a transient failure; tried again at next_attempt_at
    done = "done"  # the draft or event exists; external_id says which
    sent = "sent"  # the therapist sent the draft
    deleted = "deleted"  # the therapist deleted the draft or event
    gone = "gone"  # the draft left Drafts: sent or deleted (google.read_scope tells which)
    withdraw = "withdraw"  # a release was revoked: this unsent note must be taken back
    withdrawing = "withdrawing"  # a tick is taking it back (claimed, like `claimed`)
    withdrawn = "withdrawn"  # taken back (deleted), or it never existed; reason says which
    cancelled = "cancelled"  # no longer applies (rule disabled, release revoked, ...)
    skipped = "skipped"  # history: its event was older than history.cutoff when first planned
    failed = "failed"  # a permanent error; reason says which


class FollowUp(TableModel, table=True):
    """The ledger: one row per rule and subject, the source of truth for what was made."""

    __tablename__ = "follow_up"
    __table_args__ = (
        sa.UniqueConstraint("rule", "subject_type", "subject_id", name="uq_follow_up_subject"),
        sa.Index("ix_follow_up_state_due", "state", "due_at"),
        # planning reads a page of subjects' follow-ups; the unique key starts with rule
        sa.Index("ix_follow_up_subject", "subject_type", "subject_id"),
        # note.unsent reads the drafts made since its cursor
        sa.Index("ix_follow_up_made", "made_at"),
        # a changed referral finds the thank-you made about it
        sa.Index("ix_follow_up_basis", "basis_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    rule: str = Field(max_length=64)
    # What subject_id names: referral, visit, physician (its first referral's thank-you),
    # quiet (a quiet spell, by the referral before it), draft (a follow-up: its unsent
    # reminder), digest (the digest of a day: the date's ordinal)
    subject_type: str = Field(max_length=16)
    subject_id: int
    kind: str = Field(max_length=16)  # Kind
    state: str = Field(default=State.planned, max_length=16)  # State
    due_at: datetime = Field(sa_type=UTCDateTime)  # when to deliver
    remind_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # a reminder's time
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    external_id: str | None = Field(default=None, max_length=256)
    attempts: int = 0
    reason: str | None = None
    claimed_by: str | None = Field(default=None, max_length=120)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    fence: int = 0
    therapist: str | None = Field(default=None, max_length=64)  # whose mailbox holds it
    thread_id: str | None = Field(default=None, max_length=256)  # a Gmail draft's thread
    made_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # when delivered
    # A physician's thank-you: the referral it is about (their first, until it is made)
    basis_id: int | None = None
    created_at: datetime = _stamp()
    updated_at: datetime = _stamp()


class Meta(TableModel, table=True):
    """Facts about this database, such as the installation id that makes external ids unique."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class QuotaBucket(TableModel, table=True):
    """A token bucket shared by every replica: one per mailbox and calendar."""

    __tablename__ = "quota"
    name: str = Field(primary_key=True, max_length=200)
    tokens: float
    refilled_at: float  # seconds since the epoch


class SourceState(TableModel, table=True):
    """What the last reads of a configured source found (`followupd sources`): counts,
    row errors by row and column (never a value), the last error. One JSON object a source."""

    __tablename__ = "source_state"
    name: str = Field(primary_key=True, max_length=64)
    state: str = Field(sa_type=sa.Text)
    updated_at: datetime = _stamp()


class ImportedFile(TableModel, table=True):
    """A file a folder source took in, by its identity (name, size, time and SHA-256): kept
    before its first row is written and again once its last is, so that after a crash a file
    whose rows are all in is moved, never imported again, and one cut short is imported again
    whole. Its report waits here until the file is beside it in imported/. Names, never a value.
    """

    __tablename__ = "imported_file"
    __table_args__ = (sa.Index("ix_imported_file_pending", "source", "moved_at"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    name: str = Field(max_length=255)
    size: int = Field(sa_type=sa.BigInteger)
    mtime_ns: int = Field(sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64)
    state: str = Field(max_length=16)  # importing, imported, refused
    stamp: str = Field(max_length=32)  # its name's prefix in imported/ or rejected/
    report: str | None = Field(default=None, sa_type=sa.Text)  # JSON: what its report says
    started_at: datetime = _stamp()
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    moved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Cursor(TableModel, table=True):
    """Bookkeeping for incremental work: how far planning has read each table."""

    __tablename__ = "cursor"
    name: str = Field(primary_key=True, max_length=64)
    position: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_id: int = 0
    updated_at: datetime = _stamp()


@dataclass
class Bundle:
    """A follow-up with the rows its template may draw on (loaded by the store for delivery
    and preview; read by planning's gate and by rendering)."""

    follow_up: FollowUp
    # a referral's note: the referral, its physician and the client's prescriber
    referral: Referral | None = None
    physician: Physician | None = None
    prescriber: Physician | None = None
    # a visit's reminder: the visit and the office (the physician met, if any, above)
    visit: Visit | None = None
    practice: Practice | None = None
    # a physician's thank-you or quiet spell: what planning knows of their referrals
    # (first and last; a `store.reads.physician_facts` row) and, for a reminder, their history
    facts: Any = None
    history: dict[str, Any] | None = None
    # an unsent reminder: the draft it is about (its referral and physicians above)
    note: FollowUp | None = None
    # a digest: what it lists (refs and physician names only), gathered when it is made
    digest: dict[str, Any] | None = None
