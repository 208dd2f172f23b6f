"""Delivery backends: one interface, one adapter per destination.

A backend takes a rendered `Draft` or `Reminder` and returns the external id of what now
exists. It must be safe to call again for the same follow-up after a crash: it finds what
already exists instead of making a second one. The same goes for taking a draft back
(`withdraw`, when a release of information is revoked) and for asking what became of a
draft (`draft_states`, the sync): both find the draft by its fixed identity, not only by
the id it was given, because the therapist may have edited it since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

ALARM_MINUTES = 30  # a reminder's popup comes this long before it


@dataclass(frozen=True)
class Draft:
    follow_up_id: int
    message_id: str
    message: EmailMessage
    attempt: int = 1
    tag: str = ""  # X-Followupd-Id: found by reading headers if Google rewrote the Message-ID
    raw: bytes = b""  # the message's bytes, made (and checked) when it was rendered

    def as_bytes(self) -> bytes:
        return self.raw or self.message.as_bytes()


@dataclass(frozen=True)
class Reminder:
    follow_up_id: int
    uid: str  # iCalendar UID
    event_id: str  # Google Calendar event id: base32hex, derived like the UID
    title: str
    description: str
    start: datetime  # aware, in the practice's zone
    end: datetime
    timezone: str
    alarm_minutes: int = ALARM_MINUTES
    attempt: int = 1


@dataclass(frozen=True)
class DraftRef:
    """How a delivered draft is found again: by the id it was given, and, since a therapist's
    edit may save it anew, by its Message-ID, its X-Followupd-Id header and its thread."""

    follow_up_id: int
    draft_id: str | None  # the id recorded at delivery (None: never recorded)
    message_id: str
    tag: str  # X-Followupd-Id
    thread_id: str | None = None
    attempt: int = 1  # above 1: an earlier withdrawal's answer may have been lost


class DeliveryError(Exception):
    """Delivery did not happen. `permanent` errors fail the follow-up; others are retried on
    a later tick. `systemic` ones (credentials revoked) stop the tick: every call would fail.
    `maybe_done`: the call may have taken effect at the far end (its answer was lost)."""

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        systemic: bool = False,
        maybe_done: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        self.systemic = systemic
        self.maybe_done = maybe_done


@dataclass(frozen=True)
class Delivered:
    """What exists now: `done`, or `deleted` when the therapist already removed it."""

    external_id: str
    state: str = "done"
    thread_id: str | None = None  # a Gmail draft's thread


@dataclass(frozen=True)
class DraftState:
    """What became of a delivered draft.

    state: "present" (still a draft; `draft_id` is set when it was saved anew under another
    id), "sent" (a sent message carries its Message-ID or sits in its thread), "deleted"
    (gone, and not sent), or "gone" (no longer a draft; sent or deleted cannot be told
    without the read scope).
    """

    state: str
    sent_at: datetime | None = None
    draft_id: str | None = None
    thread_id: str | None = None


@dataclass(frozen=True)
class Withdrawn:
    """The outcome of taking a draft back.

    state: "withdrawn" (deleted now, or it was never made / no longer exists and was not
    sent), "sent" (the therapist had sent it: disclosed before the revoke), or "gone" (no
    longer a draft; whether it was sent cannot be told without the read scope).
    """

    state: str
    sent_at: datetime | None = None


Item = Draft | Reminder
Outcome = Delivered | DeliveryError
Withdrawal = Withdrawn | DeliveryError  # what became of one draft that was to be taken back


class Backend(Protocol):
    name: str

    def begin(self) -> None:
        """A round of deliveries starts: forget what was learned about the destination in
        the last one (it may have changed since)."""

    def deliver(self, items: Sequence[Item]) -> list[Outcome]:
        """Put drafts where the therapist reviews them and reminders on the calendar.

        One outcome per item, in order. An item whose `attempt` is above 1 may already exist
        (an earlier try's answer was lost): find it rather than make a second one.
        """

    def draft_states(self, refs: Sequence[DraftRef]) -> dict[int, DraftState | None]:
        """What became of these drafts, by follow-up id (None: could not tell this time)."""

    def withdraw(self, refs: Sequence[DraftRef]) -> list[Withdrawal]:
        """Take these drafts back (a release was revoked): delete each one still a draft,
        exactly once, found the way a lost create is found. One outcome per ref, in order."""

    def close(self) -> None:
        """Release connections and files."""
