"""The local outbox: drafts as RFC 5322 `.eml` files, reminders as RFC 5545 `.ics` files.

Each file is named by its follow-up id and written atomically (a private temporary file in
the same folder, flushed, then renamed), so a reader never sees half a file and a rerun after
a crash finds the file instead of writing a second copy. Drafts hold patient details: every
file is created readable by its owner only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from followupd.delivery import (
    Delivered,
    DeliveryError,
    Draft,
    DraftRef,
    DraftState,
    Item,
    Outcome,
    Reminder,
    Withdrawn,
)
from followupd.permissions import make_private_dir

if TYPE_CHECKING:
    from icalendar import Calendar

# Mail programs (Outlook, Apple Mail, Thunderbird) open a file with this header as a draft to
# edit and send, not as a message received: the therapist's review, then Send.
UNSENT = b"X-Unsent: 1\r\n"


def write_atomically(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it exists; True if this call wrote it."""
    if path.exists():
        return False
    if not path.parent.is_dir():  # the outbox and its folders are private, whatever the umask
        make_private_dir(path.parent.parent)
        make_private_dir(path.parent)
    fd, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if another writer got there first: no overwrite
        except FileExistsError:
            return False
        _sync_folder(path.parent)
        return True
    finally:
        os.unlink(temporary)


def reminder_calendar(reminder: Reminder, stamp: datetime | None = None) -> Calendar:
    """An iCalendar with one event, its VTIMEZONE and a display alarm (icalendar is imported
    here, when a reminder is written: an idle daemon never loads it)."""
    from icalendar import Alarm, Calendar, Event, Timezone

    calendar = Calendar()
    calendar.add("prodid", "-//followupd//followupd//EN")
    calendar.add("version", "2.0")
    calendar.add_component(
        Timezone.from_tzinfo(
            reminder.start.tzinfo,
            tzid=reminder.timezone,
            first_date=reminder.start.date() - timedelta(days=366),
            last_date=reminder.start.date() + timedelta(days=366),
        )
    )
    event = Event()
    event.add("uid", reminder.uid)
    event.add("dtstamp", stamp or datetime.now(UTC))
    event.add("dtstart", reminder.start)
    event.add("dtend", reminder.end)
    event.add("summary", reminder.title)
    event.add("description", reminder.description)
    event.add("transp", "TRANSPARENT")
    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", reminder.title)
    alarm.add("trigger", timedelta(minutes=-reminder.alarm_minutes))
    event.add_component(alarm)
    calendar.add_component(event)
    return calendar


def remove_orphaned_temporaries(folder: Path) -> int:
    """Delete temporary files whose writer died mid-write (they may hold patient details)."""
    removed = 0
    for temporary in folder.glob("*/.*.tmp"):
        pid = temporary.name.split(".")[-3] if temporary.name.count(".") >= 4 else ""
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutboxBackend:
    name = "outbox"

    def __init__(self, folder: Path):
        self.folder = folder
        if folder.is_dir():
            remove_orphaned_temporaries(folder)

    def draft_path(self, follow_up_id: int) -> Path:
        return self.folder / "drafts" / f"{follow_up_id}.eml"

    def reminder_path(self, follow_up_id: int) -> Path:
        return self.folder / "reminders" / f"{follow_up_id}.ics"

    def _write(self, path: Path, data: bytes, identity: bytes) -> Outcome:
        """Write the file, or find it there already: ours only if it carries our identity
        (another installation's outbox may use the same numbers)."""
        try:
            if not write_atomically(path, data) and not _carries(path, identity):
                return DeliveryError(
                    f"{path.relative_to(self.folder)} in the outbox is another note (another "
                    "followupd installation's?); move it away or give this one its own "
                    "delivery.outbox folder",
                    permanent=True,
                )
        except OSError as exc:
            return DeliveryError(f"cannot write to the outbox ({exc.strerror})")
        return Delivered(f"outbox:{path.relative_to(self.folder)}")

    def begin(self) -> None:
        """Nothing is cached between rounds: each write checks the files themselves."""

    def deliver(self, items: Sequence[Item]) -> list[Outcome]:
        return [self._deliver_one(item) for item in items]

    def _deliver_one(self, item: Item) -> Outcome:
        """One file; whatever goes wrong with it stays with it."""
        try:
            if isinstance(item, Draft):
                return self._write(
                    self.draft_path(item.follow_up_id),
                    UNSENT + item.as_bytes(),
                    _header_line("X-Followupd-Id", item.tag),
                )
            return self._write(
                self.reminder_path(item.follow_up_id),
                reminder_calendar(item).to_ical(),
                _ical_uid(item.uid),
            )
        except Exception as exc:  # noqa: BLE001 -- one bad note must not fail the rest
            return DeliveryError(f"cannot write this note ({type(exc).__name__})", permanent=True)

    def draft_states(self, refs: Sequence[DraftRef]) -> dict[int, DraftState | None]:
        """An outbox cannot tell whether a file was sent: nothing to report."""
        return dict.fromkeys((ref.follow_up_id for ref in refs), None)

    def withdraw(self, refs: Sequence[DraftRef]) -> list[Withdrawn | DeliveryError]:
        """Delete each draft file that is ours; one that is not there was never made or is
        already gone."""
        return [self._withdraw_one(ref) for ref in refs]

    def _withdraw_one(self, ref: DraftRef) -> Withdrawn | DeliveryError:
        path = self.draft_path(ref.follow_up_id)
        try:
            if _carries(path, _header_line("X-Followupd-Id", ref.tag)):
                path.unlink()
                _sync_folder(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return DeliveryError(f"cannot delete from the outbox ({exc.strerror})")
        return Withdrawn("withdrawn")

    def close(self) -> None:
        pass


def _header_line(name: str, value: str) -> bytes:
    return f"\n{name}: {value}\r".encode()


def _ical_uid(uid: str) -> bytes:
    return f"\nUID:{uid}\r".encode()


def _carries(path: Path, identity: bytes) -> bool:
    """Does the file at `path` carry this identity line (its header block is enough)?"""
    try:
        with path.open("rb") as handle:
            head = b"\n" + handle.read(64 * 1024)
    except FileNotFoundError:
        return False
    unfolded = head.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")  # long lines fold
    return identity in unfolded


def _sync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
