"""Watched sources: the referral and visit tables a practice already keeps, read on a
schedule through the same validation and upsert as `followupd import`.

This version reads `folder` sources: a CSV file saved, copied or renamed into the folder is
imported once it is complete (its size and time have stopped changing between two looks),
then moved to `imported/` with a short report beside it (counts and row errors by line and
column, never a value); a file that cannot be read at all goes to `rejected/` with the reason.
`google_sheet` and `sql` sources are refused by the configuration until they are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from followupd.config import Settings, Source
from followupd.intake import ImportRefused, ImportReport, import_csv
from followupd.permissions import make_private_dir, write_private
from followupd.records import Therapists
from followupd.store import Store, read_source_states, write_source_state

SHOWN_PROBLEMS = 20  # row errors kept in a source's state (the report file has them all)

Look = dict[str, tuple[int, int]]  # file name -> (size, modification time in ns)


def folder_of(settings: Settings, source: Source) -> Path:
    return settings.path(source.path or "")


def look(folder: Path) -> Look:
    """The CSV files waiting in the folder (hidden and partial files left out)."""
    found: Look = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().endswith(".csv"):
            continue
        if entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            found[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def settled(now: Look, before: Look) -> list[str]:
    """Files unchanged since the look before: complete, however they were written."""
    return sorted(name for name, seen in now.items() if before.get(name) == seen)


@dataclass
class FileOutcome:
    name: str
    moved_to: Path
    report: ImportReport | None = None  # None: refused whole
    refused: str | None = None


@dataclass
class SourceRead:
    """One read of a source: the files imported or refused, and the counts."""

    source: str
    files: list[FileOutcome] = field(default_factory=list)
    error: str | None = None

    @property
    def changed(self) -> bool:
        return any(
            f.report and (f.report.counts.added or f.report.counts.updated) for f in self.files
        )


def read_folder(settings: Settings, store: Store, source: Source, ready: list[str]) -> SourceRead:
    """Import each settled file of a folder source, then move it out of the way."""
    folder = folder_of(settings, source)
    done = SourceRead(source.name)
    for name in ready:
        done.files.append(_import_one(settings, store, source, folder / name))
    if done.files:
        _record(store, source, done)
    return done


def _import_one(settings: Settings, store: Store, source: Source, path: Path) -> FileOutcome:
    config = settings.config
    therapists = Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())
    try:
        report = import_csv(
            store,
            str(path),
            source.table,
            therapists=therapists,
            today=datetime.now(config.practice.zone).date(),
            columns=source.columns,
        )
    except ImportRefused as exc:
        reason = str(exc).replace(str(path), path.name)
        moved = _move(path, "rejected", f"refused: {reason}\n")
        return FileOutcome(path.name, moved, refused=reason)
    moved = _move(path, "imported", _report_text(source, report))
    return FileOutcome(path.name, moved, report=report)


def _report_text(source: Source, report: ImportReport) -> str:
    lines = [f"{source.table}: {report.counts}"]
    lines += [f"note: {line}" for line in report.notices]
    lines += [f"rejected: {line}" for line in report.problems]
    lines += [f"address held: physician {pid}: {why}" for pid, why in report.flagged.items()]
    return "\n".join(lines) + "\n"


def _move(path: Path, into: str, report: str) -> Path:
    """Move an imported (or refused) file beside its report; never over an earlier one."""
    folder = path.parent / into
    make_private_dir(folder)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"{stamp}-{path.name}"
    write_private(target.with_name(target.name + ".report.txt"), report)
    os.replace(path, target)
    return target


def _record(store: Store, source: Source, done: SourceRead) -> None:
    """Keep what this read found, with the totals so far, for `followupd sources`."""
    with store.session() as session:
        state = read_source_states(session).get(source.name, {})
        totals = state.get("totals", {})
        for outcome in done.files:
            counts = outcome.report.counts if outcome.report else None
            totals["files"] = totals.get("files", 0) + 1
            totals["refused"] = totals.get("refused", 0) + (outcome.refused is not None)
            for key in ("added", "updated", "unchanged", "rejected"):
                totals[key] = totals.get(key, 0) + (getattr(counts, key) if counts else 0)
        last = [p for f in done.files if f.report for p in f.report.problems]
        last += [f"{f.name}: refused: {f.refused}" for f in done.files if f.refused]
        state.update(
            last_read=datetime.now(UTC).isoformat(timespec="seconds"),
            totals=totals,
            last_files=len(done.files),
            problems=last[-SHOWN_PROBLEMS:] if done.files else state.get("problems", []),
            last_error=done.error,
        )
        write_source_state(session, source.name, state)


class Watcher:
    """Reads the folder sources on their schedule: a file must look the same twice before
    it is imported, so a copy in progress is never read half-written."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.looks: dict[str, Look] = {}

    def read(self, source: Source) -> SourceRead:
        """One look at the source; imports what has settled since the last look."""
        folder = folder_of(self.settings, source)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            now = look(folder)
        except OSError as exc:
            done = SourceRead(source.name, error=f"{folder}: {exc.strerror or type(exc).__name__}")
            _record(self.store, source, done)
            return done
        ready = settled(now, self.looks.get(source.name, {}))
        self.looks[source.name] = now
        return read_folder(self.settings, self.store, source, ready)
