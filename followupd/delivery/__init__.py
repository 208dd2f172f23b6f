"""Delivery backends: one interface, one adapter per destination.

A backend takes a rendered `Draft` or `Reminder` and returns the external id of what now
exists. It must be safe to call again for the same follow-up after a crash: it finds what
already exists instead of making a second one.
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

    def as_bytes(self) -> bytes:
        return self.message.as_bytes()


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


class DeliveryError(Exception):
    """Delivery did not happen. `permanent` errors fail the follow-up; others are retried on
    a later tick. `systemic` ones (credentials revoked) stop the tick: every call would fail."""

    def __init__(self, reason: str, *, permanent: bool = False,
                 retry_after: float | None = None, systemic: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        self.systemic = systemic


@dataclass(frozen=True)
class Delivered:
    """What exists now: `done`, or `deleted` when the therapist already removed it."""

    external_id: str
    state: str = "done"


Item = Draft | Reminder
Outcome = Delivered | DeliveryError


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

    def close(self) -> None:
        """Release connections and files."""
