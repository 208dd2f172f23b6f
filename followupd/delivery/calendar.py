"""Google Calendar reminders, exactly once: each event is inserted under its own id.

A reminder's event id is client-chosen (base32hex, derived from the ledger row like its
iCalendar UID), so a second insert of the same reminder, after a crash or a lost answer,
gets 409 instead of making a second event. The 409 is answered by reading the event: it is
recorded as delivered, or, when its status is `cancelled` (the therapist deleted it), as
deleted and never made again. Because a repeated insert is harmless, a call that got no
answer is simply tried again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from followupd.delivery import Delivered, Outcome, Reminder
from followupd.delivery.googleapi import CallError, Calls, per_item
from followupd.delivery.retry import Attempts

CALENDAR_COST = {"events.insert": 1, "events.get": 1}  # the Calendar budget counts requests


def event_body(reminder: Reminder) -> dict[str, Any]:
    """The Calendar event: no patient data (reminder templates cannot reach any)."""
    return {
        "id": reminder.event_id,
        "summary": reminder.title,
        "description": reminder.description,
        "start": {"dateTime": reminder.start.isoformat(), "timeZone": reminder.timezone},
        "end": {"dateTime": reminder.end.isoformat(), "timeZone": reminder.timezone},
        "transparency": "transparent",
        "reminders": {
            "useDefault": False,
            "overrides": [
                {"method": "popup", "minutes": reminder.alarm_minutes},
                {"method": "email", "minutes": 24 * 60},
            ],
        },
        "extendedProperties": {"private": {"followupd": reminder.uid}},
    }


@dataclass
class CalendarReminders:
    """Reminders as events on the practice's calendar."""

    calls: Calls  # paced by the calendar's bucket, in batches
    events_api: Any
    calendar_id: str
    attempts: Attempts

    def insert(self, reminders: Sequence[Reminder]) -> dict[int, Outcome]:
        """Insert each event under its own id; a 409 means it is there already."""
        return self.attempts.run({r.follow_up_id: r for r in reminders}, self._attempt)

    def _attempt(self, pending: Sequence[Reminder]) -> dict[int, Outcome | CallError]:
        results = per_item(
            self.calls,
            "events.insert",
            pending,
            lambda r: self.events_api.insert(
                calendarId=self.calendar_id, body=event_body(r), sendUpdates="none"
            ),
        )
        answers: dict[int, Outcome | CallError] = {}
        by_id = {r.follow_up_id: r for r in pending}
        conflicts = []
        for follow_up_id, result in results.items():
            if isinstance(result, CallError) and result.status == 409:
                conflicts.append(by_id[follow_up_id])
            elif isinstance(result, CallError):
                answers[follow_up_id] = result
            else:
                answers[follow_up_id] = Delivered(f"calendar:{result['id']}")
        answers.update(self._existing(conflicts))
        return answers

    def _existing(self, conflicts: Sequence[Reminder]) -> dict[int, Outcome | CallError]:
        """The events that were there already (409): delivered, or deleted by the therapist.

        The event exists, so a failed read of it is only a reason to read it again, never
        to fail the reminder or stop the others.
        """
        results = per_item(
            self.calls,
            "events.get",
            conflicts,
            lambda r: self.events_api.get(calendarId=self.calendar_id, eventId=r.event_id),
        )
        answers: dict[int, Outcome | CallError] = {}
        for follow_up_id, result in results.items():
            if isinstance(result, CallError):
                answers[follow_up_id] = replace(result, retryable=True, systemic=False)
                continue
            state = "deleted" if result.get("status") == "cancelled" else "done"
            answers[follow_up_id] = Delivered(f"calendar:{result['id']}", state)
        return answers
