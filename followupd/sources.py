"""Watched sources: the referral and visit tables a practice already keeps, read on a
schedule through the same validation and upsert as `followupd import`.

Three kinds. A `google_sheet`'s range is read through the Sheets API (its first row the
header, values as the sheet shows them); an `sql` query's rows in a read-only transaction;
both are imported as a file's rows are. A CSV file saved, copied or renamed into a `folder`
is imported once it is complete (its size and time have stopped changing between two
looks), then moved to `imported/` with a short report beside it (counts and row errors by
line and column, never a value); a file that cannot be read at all goes to `rejected/` with
the reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from followupd.config import Settings, Source
from followupd.config.schema import ENV_REFERENCE
from followupd.intake import (
    ImportRefused,
    ImportReport,
    header_problem,
    import_csv,
    import_rows,
    normalize_header,
)
from followupd.permissions import make_private_dir, write_private
from followupd.records import Therapists
from followupd.store import (
    Store,
    mark_gone,
    mask_url,
    read_source_states,
    write_source_state,
)

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
        if entry.name.startswith((".", "~$")) or not entry.name.lower().endswith(".csv"):
            continue  # hidden or partial files, and Excel's lock files
        if entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            found[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return found


SETTLE_NS = 2_000_000_000  # a file untouched this long (and the same at two looks) is whole


def settled(now: Look, before: Look, at_ns: int | None = None) -> list[str]:
    """Files unchanged since the look before and untouched for SETTLE_NS: complete, however
    they were written. Oldest first: a later export's rows win over an earlier one's."""
    at_ns = time.time_ns() if at_ns is None else at_ns
    ready = [
        name
        for name, seen in now.items()
        if before.get(name) == seen and at_ns - seen[1] >= SETTLE_NS
    ]
    return sorted(ready, key=lambda name: (now[name][1], name))


@dataclass
class FileOutcome:
    name: str
    moved_to: Path | None  # a file's new place (None: rows of a query)
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


def _therapists(settings: Settings) -> Therapists:
    config = settings.config
    return Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())


def _import_one(settings: Settings, store: Store, source: Source, path: Path) -> FileOutcome:
    config = settings.config
    therapists = _therapists(settings)
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
        try:
            moved = _move(path, "rejected", f"refused: {reason}\n")
        except OSError as move:
            reason += f" (and it could not be moved to rejected/: {move.strerror})"
            moved = None
        return FileOutcome(path.name, moved, refused=reason)
    try:
        moved = _move(path, "imported", _report_text(source, report))
    except OSError as exc:
        return FileOutcome(
            path.name,
            None,
            report=report,
            refused=f"imported, but it could not be moved to imported/ "
            f"({exc.strerror or type(exc).__name__}): move it out of the folder yourself",
        )
    return FileOutcome(path.name, moved, report=report)


def _report_text(source: Source, report: ImportReport) -> str:
    lines = [f"{source.table}: {report.counts}"]
    if report.ignored_columns:
        lines.append(f"ignored columns (not followupd's): {', '.join(report.ignored_columns)}")
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


def _record(store: Store, source: Source, done: SourceRead, **more) -> None:
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
            **more,
        )
        write_source_state(session, source.name, state)


# --- sql -----------------------------------------------------------------------------------


class SourceProblem(Exception):
    """A source cannot be read now; the message names no value and no password."""


def source_url(settings: Settings, source: Source) -> str:
    """The source's database URL, read from the environment when written as ${NAME}."""
    found = ENV_REFERENCE.match(source.url or "")
    if found is None:
        return source.url or ""
    name = found.group(1)
    if not settings.environ.get(name):
        raise SourceProblem(f"{name} is not set (put the database URL in .env as {name})")
    return settings.environ[name]


def _text(value: object) -> str:
    """A database value as the text a CSV cell would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _query(source: Source, since: object | None, dialect: sa.Dialect) -> sa.TextClause:
    """The source's query as one statement with a bound parameter: wrapped, so a second
    statement after a `;` cannot run (the extended protocol refuses it too); with a
    `changed_column`, only rows changed at or after the newest one read last time (rows of
    that same moment are read again: the upsert leaves them unchanged)."""
    text = (source.query or "").strip().rstrip(";")
    wrapped = f"SELECT * FROM ({text}) AS followupd_source WHERE :one = 1"
    if source.changed_column and since is not None:
        column = dialect.identifier_preparer.quote(source.changed_column)
        return sa.text(f"{wrapped} AND {column} >= :since").bindparams(one=1, since=since)
    return sa.text(wrapped).bindparams(one=1)


def _read_only(connection: sa.Connection) -> None:
    """Ask the database to refuse any write in this session and transaction, where it can."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    elif dialect in ("mysql", "mariadb"):
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    elif dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")


def fetch_rows(
    url: str, source: Source, since: object | None, header_only: bool = False
) -> tuple[list[str], list[list]]:
    """(header, rows) of the source's query, read in a read-only transaction that is then
    rolled back; errors name the database masked and the error's kind, never a value."""
    shown = mask_url(url)
    try:
        engine = sa.create_engine(url, hide_parameters=True, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, ValueError, ModuleNotFoundError) as exc:
        raise SourceProblem(f"{shown}: not a usable database URL ({type(exc).__name__})") from None
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            _read_only(connection)
            result = connection.execute(_query(source, since, connection.dialect))
            header = list(result.keys())
            rows = [] if header_only else [list(row) for row in result.fetchall()]
            transaction.rollback()
            return header, rows
    except sa.exc.SQLAlchemyError as exc:
        kind = type(getattr(exc, "orig", None) or exc).__name__
        raise SourceProblem(f"{shown}: the query failed ({kind})") from None
    finally:
        engine.dispose()


def read_sql(settings: Settings, store: Store, source: Source) -> SourceRead:
    """Run the source's query and import its rows as a file's rows are imported."""
    done = SourceRead(source.name)
    with store.session() as session:
        state = read_source_states(session).get(source.name, {})
    since = _since(state)
    try:
        header, rows = fetch_rows(source_url(settings, source), source, since)
    except SourceProblem as exc:
        done.error = str(exc)
        _record(store, source, done)
        return done
    newest = _latest(header, rows, source) or {
        key: state[key] for key in ("changed_through", "changed_type") if key in state
    }
    full = not source.changed_column  # an incremental read does not show every row
    return _import_table(settings, store, source, done, header, rows, full=full, **newest)


def _import_table(
    settings: Settings,
    store: Store,
    source: Source,
    done: SourceRead,
    header: list[str],
    rows: list[list],
    full: bool = False,
    **state,
) -> SourceRead:
    """Import a query's or a sheet's rows through the one intake path; `state`: what the
    next read needs (an incremental read's newest value)."""
    try:
        report = import_rows(
            store,
            header,
            ([_text(v) for v in row] for row in rows),
            source.table,
            source.name,
            _therapists(settings),
            datetime.now(settings.config.practice.zone).date(),
            source.columns,
            source=source.name if source.table == "referrals" else None,
        )
    except ImportRefused as exc:  # e.g. a column renamed at their end: this source only
        done.error = str(exc)
        _record(store, source, done)
        return done
    done.files.append(
        FileOutcome(f"{len(rows)} row{'' if len(rows) == 1 else 's'}", None, report=report)
    )
    if full and source.table == "referrals":
        _mark_gone(settings, store, source, header, rows)
    _record(store, source, done, **state)
    return done


def _mark_gone(
    settings: Settings, store: Store, source: Source, header: list[str], rows: list[list]
) -> None:
    """Referrals read from this source before whose rows are not in it now: their pending
    notes wait, saying why, until the row returns or the therapist closes the referral."""
    theirs = normalize_header(source.columns.get("ref", "ref"))
    names = [normalize_header(str(name)) for name in header]
    if theirs not in names:
        return
    index = names.index(theirs)
    present = {_text(row[index]).strip() for row in rows if index < len(row)}
    day = datetime.now(settings.config.practice.zone).date().isoformat()
    reason = (
        f"gone from source {source.name} since {day}: its row is no longer there (its notes "
        "go once the row is back)"
    )
    with store.session() as session:
        mark_gone(session, source.name, present, reason)


def _latest(header: list[str], rows: list[list], source: Source) -> dict:
    """The newest value of the changed column, with its type: the next read starts after
    it, compared as the database compares that column."""
    column = source.changed_column
    if not column or column not in header:
        return {}
    index = header.index(column)
    values = [row[index] for row in rows if row[index] is not None]
    if not values:
        return {}
    newest = max(values)
    return {"changed_through": _text(newest), "changed_type": type(newest).__name__}


_TYPES = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "int": int,
    "float": float,
    "Decimal": Decimal,
}


def _since(state: dict) -> object | None:
    """The value after which the next incremental read starts (None: read everything)."""
    text = state.get("changed_through")
    if text is None:
        return None
    return _TYPES.get(state.get("changed_type", ""), str)(text)


# --- google_sheet ----------------------------------------------------------------------------

# What Google's answer means for the person who keeps the sheet (by HTTP status).
SHEET_ANSWERS = {
    400: "the range {range} cannot be read (a renamed or deleted tab?)",
    403: "no access: share the spreadsheet with the Google account followupd signs in as, "
    "or run `followupd auth` again (the sign-in must allow reading spreadsheets)",
    404: "no such spreadsheet: check the id in followupd.yaml, and that it is shared with "
    "the Google account followupd signs in as",
    429: "Google asked to slow down; read again at the next turn",
}


def fetch_sheet(settings: Settings, source: Source) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sheet's range, as the sheet shows them (formatted values)."""
    from googleapiclient.errors import HttpError

    from followupd.delivery.googleapi import (
        UNREACHABLE,
        CredentialsProblem,
        Transport,
        build_service,
        load_credentials,
        unreachable,
    )

    google = settings.config.google
    try:
        credentials, token = load_credentials(settings)
    except CredentialsProblem as exc:
        raise SourceProblem(str(exc)) from None
    transport = Transport(credentials, google.timeout)
    try:
        values = build_service("sheets", "v4", transport, google.api_endpoint).spreadsheets()
        answer = (
            values.values()
            .get(
                spreadsheetId=source.spreadsheet,
                range=source.range,
                majorDimension="ROWS",
                valueRenderOption="FORMATTED_VALUE",
            )
            .execute()
        )
    except HttpError as exc:
        status = exc.resp.status
        why = SHEET_ANSWERS.get(status, "Google answered {status}; read again at the next turn")
        raise SourceProblem(why.format(range=source.range, status=status)) from None
    except Exception as exc:
        cause = unreachable(exc)
        if cause is None:
            raise
        raise SourceProblem(f"{UNREACHABLE} ({cause}); read again at the next turn") from None
    finally:
        if token is not None:
            token.save_if_refreshed()
        transport.close()
    grid = answer.get("values", [])
    if not grid:
        raise SourceProblem(f"the range {source.range} is empty (its first row must be a header)")
    return [str(cell) for cell in grid[0]], [[str(cell) for cell in row] for row in grid[1:]]


def read_sheet(settings: Settings, store: Store, source: Source) -> SourceRead:
    """Read the sheet's range and import its rows as a file's rows are imported."""
    done = SourceRead(source.name)
    try:
        header, rows = fetch_sheet(settings, source)
    except SourceProblem as exc:
        done.error = str(exc)
        _record(store, source, done)
        return done
    return _import_table(settings, store, source, done, header, rows, full=True)


# --- followupd check ---------------------------------------------------------------------


def probe(settings: Settings, source: Source) -> str:
    """Can the source be read, and does its header name every column followupd needs?
    A line saying so, or a SourceProblem saying what to fix."""
    if source.kind == "folder":
        folder = folder_of(settings, source)
        if not folder.exists():
            return f"{folder} does not exist yet; it is made on the first read"
        if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            raise SourceProblem(f"{folder} cannot be read and written by this user")
        return f"{folder}: {len(look(folder))} CSV files waiting"
    if source.kind == "sql":
        header, _ = fetch_rows(source_url(settings, source), source, None, header_only=True)
        size = ""
    else:
        header, rows = fetch_sheet(settings, source)
        size = f" ({len(rows)} rows now)"
    problem = header_problem(header, source.table, source.name, source.columns)
    if problem:
        raise SourceProblem(problem)
    return f"can be read; its header names followupd's columns{size}"


class Watcher:
    """Reads the folder sources on their schedule: a file must look the same twice before
    it is imported, so a copy in progress is never read half-written."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.looks: dict[str, Look] = {}
        # Files that could not be moved after their import, as they were then: reading one
        # again would apply its rows again (a revoke over a later grant), so it waits for
        # a person to move it (or to change it).
        self.stuck: dict[str, set[tuple[str, tuple[int, int]]]] = {}

    def look_only(self, source: Source) -> None:
        """Remember what a folder holds now: the next read imports what stayed the same."""
        self.looks[source.name] = look(folder_of(self.settings, source))

    def read(self, source: Source) -> SourceRead:
        """One read of the source: a folder's files settled since the last look, or a
        query's rows."""
        if source.kind == "sql":
            return read_sql(self.settings, self.store, source)
        if source.kind == "google_sheet":
            return read_sheet(self.settings, self.store, source)
        folder = folder_of(self.settings, source)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            now = look(folder)
        except OSError as exc:
            done = SourceRead(source.name, error=f"{folder}: {exc.strerror or type(exc).__name__}")
            _record(self.store, source, done)
            return done
        stuck = self.stuck.setdefault(source.name, set())
        ready = [
            name
            for name in settled(now, self.looks.get(source.name, {}))
            if (name, now[name]) not in stuck
        ]
        self.looks[source.name] = now
        done = read_folder(self.settings, self.store, source, ready)
        for outcome in done.files:  # imported but not moved: never imported again as is
            if outcome.moved_to is None and outcome.name in now:
                stuck.add((outcome.name, now[outcome.name]))
        return done
