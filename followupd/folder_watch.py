"""Folder sources: when a CSV file saved into a watched folder is complete, and that it is
taken in exactly once, whatever stops the daemon on the way.

**Complete.** inotify (through watchdog) reports a file closed after writing, or renamed or
moved into the folder: unchanged since that event and last written QUIET_NS ago (at once for
a file renamed into place), it is complete and is imported (`FolderWatch` wakes its source's
read, which looks again after QUIET_NS while the file settles). A file seen being written
(created or changed, not closed yet) waits for its close, or for HOLD_NS without a change;
it holds back no other file (once written, it is the newest). Without an event (no inotify,
polling on purpose, a file already there when the daemon started, a network share whose
writes inotify never sees), a file is complete once it looked the same at two looks and was
untouched for SETTLE_NS. Files go oldest first, and a newer file waits while an older one is
not judged complete yet, so a later export's rows win.

**Exactly once.** A file's identity (name, size, time and SHA-256) is written to
`imported_file` before its first row is, and its report once its last row is in; a file is
moved to `imported/` (or `rejected/`) under a name fixed at the start, its report first. So
after a crash at any point the next read knows what it finds: a file recorded whole is moved
(with the report kept for it) and never imported again; a file whose import was cut short is
imported again whole, at once (the upsert leaves rows already written unchanged); a record
whose file has gone (moved before the crash, or taken away) is closed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.config import Settings, Source
from followupd.logs import Log
from followupd.models import ImportedFile, now_utc
from followupd.store import Store, read_source_states, write_source_state

log = Log()

Look = dict[str, tuple[int, int]]  # file name -> (size, modification time in ns)
Seen = tuple[int, int]

SETTLE_NS = 2_000_000_000  # a file untouched this long (and the same at two looks) is whole
HOLD_NS = 600_000_000_000  # a file being written, unchanged this long: judged by looks
# A file closed after writing is complete once untouched this long: an export written in
# several steps (a header, then rows appended: each step a close) is not read after its first.
QUIET_NS = 1_000_000_000
FORGET_NS = 60_000_000_000  # what inotify said about a file no longer there, kept this long
DUE_SECONDS = 30.0  # a wake-up whose read never started (skipped) is sent again after this
MODE_VARIABLE = "FOLLOWUPD_FOLDER_WATCH"  # "poll": no inotify, folders are looked at only
INOTIFY = "inotify"

# Of a folder source's states: recorded before the first row, then whole or refused.
IMPORTING, IMPORTED, REFUSED = "importing", "imported", "refused"


def folder_of(settings: Settings, source: Source) -> Path:
    """The folder a folder source watches (relative to the home)."""
    return settings.path(source.path or "")


def wanted(name: str) -> bool:
    """A CSV file to import: not hidden, not a partial file, not an Excel lock file, and a
    name that can be recorded (one that is not UTF-8 waits, as `followupd sources` says)."""
    return not name.startswith((".", "~$")) and name.lower().endswith(".csv") and _utf8(name)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system gave that are not UTF-8
        return False
    return True


def look(folder: Path) -> Look:
    """The CSV files waiting in the folder (hidden and partial files left out)."""
    found: Look = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not wanted(entry.name):
            continue  # hidden or partial files, and Excel's lock files
        if entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            found[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def is_settled(seen: Seen, before: Seen | None, at_ns: int) -> bool:
    """The same as at the look before and untouched for SETTLE_NS: complete, however it was
    written, even where no event says so."""
    return before == seen and at_ns - seen[1] >= SETTLE_NS


def settled(now: Look, before: Look, at_ns: int | None = None) -> list[str]:
    """Files unchanged since the look before and untouched for SETTLE_NS: complete, however
    they were written. Oldest first: a later export's rows win over an earlier one's."""
    at_ns = time.time_ns() if at_ns is None else at_ns
    ready = [name for name, seen in now.items() if is_settled(seen, before.get(name), at_ns)]
    return sorted(ready, key=lambda name: (now[name][1], name))


# --- what inotify says --------------------------------------------------------------------

CLOSED, WRITING, UNKNOWN, SETTLING = "closed", "writing", "unknown", "settling"


class Arrivals:
    """What inotify said about each file of one folder: closed after writing (or moved in),
    as it was then, or being written. Written by the observer's thread, read by the read's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[str, Seen | None, int]] = {}  # name -> (what, seen, when)
        self.lost = False  # the folder itself went away: its watch is gone, looks only

    def closed(self, name: str, seen: Seen) -> None:
        """Closed after writing, or moved in: complete while it stays as `seen`."""
        with self._lock:
            self._marks[name] = (CLOSED, seen, time.time_ns())

    def writing(self, name: str) -> None:
        """Created or written to: not complete before it is closed."""
        with self._lock:
            self._marks[name] = (WRITING, None, time.time_ns())

    def touched(self, name: str, seen: Seen) -> None:
        """Its times or mode changed (not its content): a closed file stays complete."""
        with self._lock:
            mark = self._marks.get(name)
            if mark is not None and mark[0] == CLOSED:
                self._marks[name] = (CLOSED, seen, mark[2])

    def gone(self, name: str) -> None:
        with self._lock:
            self._marks.pop(name, None)

    def verdict(self, name: str, seen: Seen, at_ns: int) -> str:
        """CLOSED: complete now; SETTLING: closed, but written less than QUIET_NS ago (look
        again soon); WRITING: wait for its close; UNKNOWN: judge it by looks."""
        with self._lock:
            mark = self._marks.get(name)
        if mark is None:
            return UNKNOWN
        if mark[0] == CLOSED:
            if mark[1] != seen:
                return UNKNOWN
            return CLOSED if at_ns - seen[1] >= QUIET_NS else SETTLING
        return WRITING if at_ns - seen[1] < HOLD_NS else UNKNOWN

    def forget_missing(self, present: Iterable[str], at_ns: int) -> None:
        """Drop old marks of files no longer there (a move out that was never reported)."""
        keep = set(present)
        with self._lock:
            for name in [n for n, m in self._marks.items() if n not in keep]:
                if at_ns - self._marks[name][2] > FORGET_NS:
                    del self._marks[name]


class _Events:
    """Turns watchdog's events for one folder into marks, and wakes the source's read when a
    file is complete. Only files directly in the folder count (not imported/, rejected/)."""

    def __init__(self, folder: str, arrivals: Arrivals, poke: Callable[[], None]):
        self.folder = folder
        self.arrivals = arrivals
        self.poke = poke

    def dispatch(self, event) -> None:
        """Called by the observer's thread for each event (watchdog's handler protocol)."""
        try:
            self._on(event)
        except Exception as exc:  # noqa: BLE001 -- the watch goes on; a look still finds it
            log.warning("folder event not handled", error=type(exc).__name__)

    def _on(self, event) -> None:
        kind = event.event_type
        if event.is_directory:
            if kind in ("deleted", "moved") and os.fsdecode(event.src_path) == self.folder:
                self.arrivals.lost = True
                log.warning("folder watch lost: the folder went away; looking only")
            return
        source = self._name(event.src_path)
        if kind == "moved":
            if source:
                self.arrivals.gone(source)
            self._arrived(self._name(event.dest_path))
        elif kind == "closed":
            self._arrived(source)
        elif kind in ("created", "modified") and source:
            self.arrivals.writing(source)
        elif kind == "attrib" and source:
            seen = self._seen(source)
            if seen:
                self.arrivals.touched(source, seen)
        elif kind == "deleted" and source:
            self.arrivals.gone(source)

    def _arrived(self, name: str | None) -> None:
        """A file closed after writing or moved in: complete as it is now; read at once."""
        seen = self._seen(name) if name else None
        if name and seen:
            self.arrivals.closed(name, seen)
            self.poke()

    def _seen(self, name: str) -> Seen | None:
        try:
            stat = os.stat(os.path.join(self.folder, name), follow_symlinks=False)
        except OSError:
            return None  # already gone (imported and moved, or deleted)
        return (stat.st_size, stat.st_mtime_ns)

    def _name(self, path: bytes | str) -> str | None:
        """The file's name if it is one to import, directly in the folder; else None."""
        if not path:
            return None
        text = os.fsdecode(path)
        if os.path.dirname(text) != self.folder:
            return None
        name = os.path.basename(text)
        return name if wanted(name) else None


def _event_kinds() -> list[type]:
    """The events a folder's watch asks the kernel for: not opens, nor closes without a
    write (followupd's own reads of the file would wake it)."""
    from watchdog import events

    return [
        events.FileCreatedEvent,
        events.FileModifiedEvent,
        events.FileAttribEvent,
        events.FileClosedEvent,
        events.FileMovedEvent,
        events.FileDeletedEvent,
        events.DirDeletedEvent,
        events.DirMovedEvent,
    ]


def _observer():
    """watchdog's inotify observer, reporting a file moved in from elsewhere as a move (not
    as a creation, which would look like a file still being written). Imported here: a
    daemon without folder sources never loads it."""
    from watchdog.observers.inotify import InotifyObserver

    return InotifyObserver(generate_full_events=True)


def _why(exc: BaseException) -> str:
    """Why inotify cannot be used, in words without values (no path)."""
    if isinstance(exc, ImportError):
        return "watchdog is not installed"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the inotify watch limit is reached (fs.inotify.max_user_watches)"
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        return "the inotify instance limit is reached (fs.inotify.max_user_instances)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


@dataclass
class FolderWatch:
    """One inotify observer for the daemon's folder sources. An event that completes a file
    wakes that source's read at once (`wake(name)`); a source whose folder cannot be watched
    is looked at every `every`, as without inotify. Thread-safe."""

    wake: Callable[[str], None]
    observer: Any = None  # watchdog's InotifyObserver, once started
    arrivals: dict[str, Arrivals] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # source -> inotify | polling: why
    folders: tuple[tuple[str, str], ...] = ()
    _due: dict[str, float] = field(default_factory=dict)  # woken at (monotonic), not read yet
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, settings: Settings, store: Store | None = None) -> None:
        """Watch each folder source's folder (made 0700 if missing); say how, once."""
        self.folders = _folders(settings)
        if not self.folders:
            return
        if settings.environ.get(MODE_VARIABLE, "").strip().lower() == "poll":
            self._poll_all(f"polling ({MODE_VARIABLE}=poll)")
        else:
            try:
                observer = _observer()
                observer.start()
            except Exception as exc:  # noqa: BLE001 -- whatever stops inotify, polling works
                log.warning("folders are polled: inotify cannot be used", why=_why(exc))
                self._poll_all(f"polling: {_why(exc)}")
            else:
                self.observer = observer
                for name, folder in self.folders:
                    self._watch(name, folder)
        for name, _ in self.folders:
            log.info("folder watch", source=name, mode=self.modes[name])
        if store is not None:
            _keep_modes(store, self.modes)

    def _watch(self, name: str, folder: str) -> None:
        arrivals = Arrivals()
        try:
            Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
            self.observer.schedule(
                _Events(folder, arrivals, lambda: self.poke(name)),
                folder,
                recursive=False,
                event_filter=_event_kinds(),
                follow_symlink=True,  # a folder that is a link: watch where it points
            )
        except Exception as exc:  # noqa: BLE001 -- that folder is looked at, the rest watched
            log.warning("folder is polled: it cannot be watched", source=name, why=_why(exc))
            self.modes[name] = f"polling: {_why(exc)}"
            return
        self.arrivals[name] = arrivals
        self.modes[name] = INOTIFY

    def _poll_all(self, why: str) -> None:
        for name, _ in self.folders:
            self.modes[name] = why

    def restart(self, settings: Settings, store: Store | None = None) -> None:
        """After a reload: watch again if the folder sources changed."""
        if _folders(settings) == self.folders:
            return
        self.stop()
        self.start(settings, store)

    def stop(self) -> None:
        """Stop watching (the daemon stops, or its folders changed); reads only look."""
        observer, self.observer = self.observer, None
        self.arrivals, self.modes = {}, {}
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def events_for(self, name: str) -> Arrivals | None:
        """What inotify says about this source's files; None when it is looked at only."""
        arrivals = self.arrivals.get(name)
        return None if arrivals is None or arrivals.lost else arrivals

    def poke(self, name: str) -> None:
        """Wake the source's read, unless a wake-up it has not started on is pending (a
        burst of files wakes it once; an event during a read wakes it once more after)."""
        now = time.monotonic()
        with self._lock:
            if now - self._due.get(name, -DUE_SECONDS) < DUE_SECONDS:
                return
            self._due[name] = now
        try:
            self.wake(name)
        except Exception as exc:  # noqa: BLE001 -- the scheduler is stopping: the look finds it
            with self._lock:
                self._due.pop(name, None)
            log.debug("folder wake-up not scheduled", source=name, error=type(exc).__name__)

    def reading(self, name: str) -> None:
        """The source's read starts: a file completed from now on wakes it again."""
        with self._lock:
            self._due.pop(name, None)


def _folders(settings: Settings) -> tuple[tuple[str, str], ...]:
    """(source name, absolute folder) of each folder source."""
    return tuple(
        (source.name, os.path.abspath(folder_of(settings, source)))
        for source in settings.config.sources
        if source.kind == "folder"
    )


def _keep_modes(store: Store, modes: Mapping[str, str]) -> None:
    """Keep how each folder's new files are noticed, for `followupd sources`."""
    try:
        with store.session() as session:
            states = read_source_states(session)
            for name, mode in modes.items():
                state = states.get(name, {})
                state["watch"] = mode
                write_source_state(session, name, state)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("folder watch mode not kept", error=type(exc).__name__)


# --- exactly once -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    """A file as it is now: the same name, size, time and content is the same file."""

    name: str
    size: int
    mtime_ns: int
    sha256: str


def identify(path: Path) -> FileIdentity:
    """The file's identity, its content hashed as it is now."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return FileIdentity(path.name, stat.st_size, stat.st_mtime_ns, digest.hexdigest())


def same_file(record: ImportedFile, identity: FileIdentity) -> bool:
    return (record.name, record.size, record.mtime_ns, record.sha256) == (
        identity.name,
        identity.size,
        identity.mtime_ns,
        identity.sha256,
    )


def new_stamp() -> str:
    """The prefix of an imported file's new name: never over an earlier one."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def target_of(folder: Path, record: ImportedFile) -> Path:
    """Where a recorded file goes: imported/ or rejected/, under the name fixed when its
    import began (a move tried again after a crash lands on the same name)."""
    into = "rejected" if record.state == REFUSED else "imported"
    return folder / into / f"{record.stamp}-{record.name}"


def pending_imports(session: Session, source: str) -> list[ImportedFile]:
    """This source's files not yet known to be out of the folder, oldest first."""
    return list(
        session.execute(
            sa.select(ImportedFile)
            .where(ImportedFile.source == source, ImportedFile.moved_at.is_(None))
            .order_by(ImportedFile.id)
        ).scalars()
    )


def begin_import(session: Session, source: str, identity: FileIdentity) -> ImportedFile:
    """Record a file before its first row is written."""
    record = ImportedFile(
        source=source,
        name=identity.name,
        size=identity.size,
        mtime_ns=identity.mtime_ns,
        sha256=identity.sha256,
        state=IMPORTING,
        stamp=new_stamp(),
    )
    session.add(record)
    session.flush()
    return record


def finish_import(session: Session, record: ImportedFile, state: str, report: str) -> None:
    """Record a file whole (its last row in) or refused, with what its report says."""
    session.execute(
        sa.update(ImportedFile)
        .where(ImportedFile.id == record.id)
        .values(state=state, report=report, finished_at=now_utc())
    )
    record.state, record.report = state, report


def close_imports(session: Session, ids: Iterable[int]) -> None:
    """These files are out of the folder (moved, or taken away): nothing more to do."""
    chosen = list(ids)
    if chosen:
        session.execute(
            sa.update(ImportedFile).where(ImportedFile.id.in_(chosen)).values(moved_at=now_utc())
        )


# --- a read's plan ------------------------------------------------------------------------


@dataclass
class Step:
    """A file to import now; `record`: an import of this very file that was cut short."""

    name: str
    seen: Seen
    record: ImportedFile | None = None


@dataclass
class FolderPlan:
    """What one read of a folder does, in order: close records whose file is gone, move
    files recorded whole (or refused), import the complete files; and how many wait."""

    close: list[int] = field(default_factory=list)
    moves: list[ImportedFile] = field(default_factory=list)
    imports: list[Step] = field(default_factory=list)
    waiting: int = 0


def plan_read(
    folder: Path,
    now: Look,
    before: Look,
    records: list[ImportedFile],
    events: Arrivals | None,
    at_ns: int | None = None,
) -> FolderPlan:
    """Which files to move, import or leave waiting, from the look, the look before, what
    inotify said, and the records of files an earlier read took in."""
    at_ns = time.time_ns() if at_ns is None else at_ns
    plan = FolderPlan()
    resumed: dict[str, ImportedFile] = {}
    for record in records:
        seen = now.get(record.name)
        if seen == (record.size, record.mtime_ns) and _same_content(folder, record):
            if record.state == IMPORTING:
                resumed[record.name] = record
            else:
                plan.moves.append(record)
        else:  # moved before a crash, taken away, or changed since (then a new file)
            plan.close.append(record.id)  # type: ignore[arg-type]
    moving = {record.name for record in plan.moves}
    waiting = sorted(
        (name for name in now if name not in moving), key=lambda name: (now[name][1], name)
    )
    for index, name in enumerate(waiting):
        seen = now[name]
        if name in resumed:
            plan.imports.append(Step(name, seen, resumed[name]))
            continue
        verdict = events.verdict(name, seen, at_ns) if events else UNKNOWN
        if verdict == CLOSED or (verdict == UNKNOWN and is_settled(seen, before.get(name), at_ns)):
            plan.imports.append(Step(name, seen))
        elif verdict in (UNKNOWN, SETTLING):  # not judged yet: it and the newer ones wait
            plan.waiting = len(waiting) - index
            break
        # WRITING: its close wakes the read; once written it is newer than these, so they go
    if events is not None:
        events.forget_missing(now, at_ns)
    return plan


def _same_content(folder: Path, record: ImportedFile) -> bool:
    """The file in the folder is the one recorded (hashed again: the same size and time
    could hide an edit)."""
    with contextlib.suppress(OSError):
        return identify(folder / record.name).sha256 == record.sha256
    return False
