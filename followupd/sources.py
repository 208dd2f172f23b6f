"""Watched sources: the referral and visit tables a practice already keeps, read on a
schedule through the same validation and upsert as `followupd import`.

Three kinds. A `google_sheet`'s range is read through the Sheets API (its first row the
header, values as the sheet shows them); an `sql` query's rows in a read-only transaction;
both are imported as a file's rows are. A CSV file saved, copied or renamed into a `folder`
is imported once it is complete (closed after writing, or the same at two looks: see
`folder_watch`), exactly once, then moved to `imported/` with a short report beside it
(counts and row errors by line and column, never a value); a file that cannot be read at all
goes to `rejected/` with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.config import Settings, Source
from followupd.config.schema import ENV_REFERENCE
from followupd.folder_watch import (
    IMPORTED,
    REFUSED,
    Arrivals,
    FileIdentity,
    FolderWatch,
    Look,
    Step,
    begin_import,
    close_imports,
    finish_import,
    folder_of,
    identify,
    look,
    pending_imports,
    plan_read,
    target_of,
)
from followupd.folder_watch import (  # where callers have found them
    SETTLE_NS as SETTLE_NS,
)
from followupd.folder_watch import settled as settled
from followupd.intake import (
    ImportRefused,
    ImportReport,
    header_problem,
    import_csv,
    import_rows,
    normalize_header,
)
from followupd.models import ImportedFile
from followupd.pacing import TokenBucket
from followupd.permissions import make_private_dir, write_private
from followupd.records import Therapists
from followupd.sheet_dates import SheetDates, read_as
from followupd.store import (
    Counts,
    Store,
    mark_gone,
    mask_url,
    read_source_states,
    write_source_state,
)

SHOWN_PROBLEMS = 20  # row errors kept in a source's state (the report file has them all)

RETRY_CAP = 15 * 60.0  # seconds: the longest a failing source waits between tries


def retry_delay(every: float, failures: int) -> float:
    """Seconds before the next try of a source whose last `failures` reads failed: its
    `every`, doubled with each failure after the first, never past RETRY_CAP (or `every`)."""
    return min(every * 2 ** max(failures - 1, 0), max(every, RETRY_CAP))


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
    waiting: int = 0  # a folder's files not complete yet: look again soon

    @property
    def changed(self) -> bool:
        return any(
            f.report and (f.report.counts.added or f.report.counts.updated) for f in self.files
        )


CUT_SHORT = (
    "an earlier import of this file was cut short (followupd stopped); it was imported again "
    "whole, so rows written then count as unchanged"
)


def read_folder(
    settings: Settings,
    store: Store,
    source: Source,
    now: Look,
    before: Look,
    events: Arrivals | None = None,
    stuck: set[int] | None = None,
) -> SourceRead:
    """One read of a folder source (`folder_watch` says which files are complete): files an
    earlier read took in whole are moved, never imported again; each complete file, oldest
    first, is imported and moved beside its report."""
    folder = folder_of(settings, source)
    with store.session() as session:
        records = pending_imports(session, source.name)
    plan = plan_read(folder, now, before, records, events)
    if plan.close:
        with store.session() as session:
            close_imports(session, plan.close)
    done = SourceRead(source.name, waiting=plan.waiting)
    stuck = set() if stuck is None else stuck
    for record in plan.moves:
        _move_again(store, source, folder, record, done, stuck)
    for step in plan.imports:
        _import_one(settings, store, source, folder, step, done, stuck)
    return done


def _therapists(settings: Settings) -> Therapists:
    config = settings.config
    return Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())


def _import_one(
    settings: Settings,
    store: Store,
    source: Source,
    folder: Path,
    step: Step,
    done: SourceRead,
    stuck: set[int],
) -> None:
    """Import one complete file: its identity recorded before its first row, its report with
    its last (one transaction, the source's totals too), then moved beside the report."""
    path = folder / step.name
    record = step.record
    if record is None:
        try:
            identity = identify(path)
        except FileNotFoundError:
            return  # gone since the look: nothing was written
        except OSError:  # unreadable: the import says why, and it goes to rejected/
            identity = FileIdentity(step.name, *step.seen, sha256="")
        with store.session() as session:
            record = begin_import(session, source.name, identity)
    outcome = FileOutcome(step.name, None)
    try:
        report = import_csv(
            store,
            str(path),
            source.table,
            therapists=_therapists(settings),
            today=datetime.now(settings.config.practice.zone).date(),
            columns=source.columns,
        )
    except ImportRefused as exc:
        outcome.refused = str(exc).replace(str(path), path.name)
        state, kept = REFUSED, json.dumps({"refused": outcome.refused})
    else:
        if step.record is not None:
            report.notices.append(CUT_SHORT)
        outcome.report = report
        state, kept = IMPORTED, _report_json(report)
    done.files.append(outcome)
    with store.session() as session:
        finish_import(session, record, state, kept)
        _keep(session, source, done, [outcome])
    if _written_since(path, record):  # more rows came while it was read: all of it again
        if outcome.report is not None:
            outcome.report.notices.append(WRITTEN_SINCE)
        with store.session() as session:
            close_imports(session, [record.id])  # type: ignore[list-item]
        done.waiting += 1
        return
    _place(store, source, folder, record, outcome, done, stuck)


WRITTEN_SINCE = (
    "the file was written to while it was read: it stays in the folder and is read again "
    "whole (rows already in are left unchanged)"
)


def _written_since(path: Path, record: ImportedFile) -> bool:
    """Whether the file is no longer as it was when its import began (a writer still at it:
    moving it now would take rows away unread)."""
    try:
        now = path.stat()
    except OSError:
        return False
    return (now.st_size, now.st_mtime_ns) != (record.size, record.mtime_ns)


def _move_again(
    store: Store,
    source: Source,
    folder: Path,
    record: ImportedFile,
    done: SourceRead,
    stuck: set[int],
) -> None:
    """Move a file an earlier read took in whole (cut short before its move, or the move
    failed): never imported again. A move that fails again is reported once."""
    kept = json.loads(record.report or "{}")
    outcome = FileOutcome(
        record.name,
        None,
        report=None if "refused" in kept else _report_from(kept),
        refused=kept.get("refused"),
    )
    if record.id in stuck:
        try:
            outcome.moved_to = _move(
                folder / record.name,
                target_of(folder, record),
                _report_for(source, record),
                tidy=True,
            )
        except OSError:
            return  # still cannot be moved: said already
        done.files.append(outcome)
        with store.session() as session:
            close_imports(session, [record.id])  # type: ignore[list-item]
            _keep(session, source, done, [])
        return
    done.files.append(outcome)
    _place(store, source, folder, record, outcome, done, stuck, tidy=True)


def _place(
    store: Store,
    source: Source,
    folder: Path,
    record: ImportedFile,
    outcome: FileOutcome,
    done: SourceRead,
    stuck: set[int],
    tidy: bool = False,
) -> None:
    """Move a recorded file beside its report and record it moved; if it cannot be moved,
    say why (it is never imported again: its record stays until it is moved). `tidy`: a
    crash may have left its report half-written."""
    try:
        outcome.moved_to = _move(
            folder / record.name, target_of(folder, record), _report_for(source, record), tidy
        )
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if record.state == REFUSED:
            outcome.refused = f"{outcome.refused} (and it could not be moved to rejected/: {why})"
        else:
            outcome.refused = (
                f"imported, but it could not be moved to imported/ ({why}): move it out of "
                "the folder yourself"
            )
        stuck.add(record.id)  # type: ignore[arg-type]
        with store.session() as session:
            _keep(session, source, done, [])
        return
    with store.session() as session:
        close_imports(session, [record.id])  # type: ignore[list-item]


def _report_json(report: ImportReport) -> str:
    """What a file's report says, kept with its record until the report is beside it."""
    return json.dumps(
        {
            "counts": asdict(report.counts),
            "ignored_columns": report.ignored_columns,
            "notices": report.notices,
            "problems": report.problems,
            "flagged": {str(pid): why for pid, why in report.flagged.items()},
        }
    )


def _report_from(kept: dict) -> ImportReport:
    return ImportReport(
        counts=Counts(**kept.get("counts", {})),
        problems=kept.get("problems", []),
        ignored_columns=kept.get("ignored_columns", []),
        notices=kept.get("notices", []),
        flagged={int(pid): why for pid, why in kept.get("flagged", {}).items()},
    )


def _report_for(source: Source, record: ImportedFile) -> str:
    """The text of a recorded file's report: its counts and row errors, or why it was
    refused."""
    kept = json.loads(record.report or "{}")
    if "refused" in kept:
        return f"refused: {kept['refused']}\n"
    return _report_text(source, _report_from(kept))


def _report_text(source: Source, report: ImportReport) -> str:
    lines = [f"{source.table}: {report.counts}"]
    if report.ignored_columns:
        lines.append(f"ignored columns (not followupd's): {', '.join(report.ignored_columns)}")
    lines += [f"note: {line}" for line in report.notices]
    lines += [f"rejected: {line}" for line in report.problems]
    lines += [f"address held: physician {pid}: {why}" for pid, why in report.flagged.items()]
    return "\n".join(lines) + "\n"


def _move(path: Path, target: Path, report: str, tidy: bool = False) -> Path:
    """Move a file to `target` (a name fixed when its import began, so a move tried again
    after a crash lands on the same name), its report written first; `tidy`: remove a
    report a crash left half-written."""
    make_private_dir(target.parent)
    beside = target.with_name(target.name + ".report.txt")
    if tidy:
        _remove_partial(beside)
    write_private(beside, report)
    os.replace(path, target)
    return target


def _remove_partial(report: Path) -> None:
    """A report's temporary file left by a crash in the middle of writing it."""
    prefix = f".{report.name}."
    with os.scandir(report.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)


def _record(store: Store, source: Source, done: SourceRead, **more) -> None:
    """Keep what this read found, with the totals so far, for `followupd sources`."""
    with store.session() as session:
        _keep(session, source, done, done.files, **more)


def _keep(
    session: Session, source: Source, done: SourceRead, counted: list[FileOutcome], **more
) -> None:
    """What `_record` keeps, in the caller's transaction; only `counted` adds to the totals
    (a folder's file is counted in the transaction that records it whole: once)."""
    state = read_source_states(session).get(source.name, {})
    totals = state.get("totals", {})
    for outcome in counted:
        counts = outcome.report.counts if outcome.report else None
        totals["files"] = totals.get("files", 0) + 1
        totals["refused"] = totals.get("refused", 0) + (outcome.refused is not None)
        for key in ("added", "updated", "unchanged", "rejected"):
            totals[key] = totals.get(key, 0) + (getattr(counts, key) if counts else 0)
    last = [p for f in done.files if f.report for p in f.report.problems]
    last += [f"{f.name}: refused: {f.refused}" for f in done.files if f.refused]
    notes = [note for f in done.files if f.report for note in f.report.notices]
    state.update(
        last_read=datetime.now(UTC).isoformat(timespec="seconds"),
        totals=totals,
        last_files=len(done.files),
        problems=last[-SHOWN_PROBLEMS:] if done.files else state.get("problems", []),
        notes=notes[-SHOWN_PROBLEMS:] if done.files else state.get("notes", []),
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
    that same moment are read again: the upsert leaves them unchanged), and rows without a
    value there (never stamped: read each time, and left unchanged)."""
    text = (source.query or "").strip().rstrip(";")
    wrapped = f"SELECT * FROM ({text}) AS followupd_source WHERE :one = 1"
    if source.changed_column and since is not None:
        column = dialect.identifier_preparer.quote(source.changed_column)
        return sa.text(f"{wrapped} AND ({column} >= :since OR {column} IS NULL)").bindparams(
            one=1, since=since
        )
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
    dates: SheetDates | None = None,
    **state,
) -> SourceRead:
    """Import a query's or a sheet's rows through the one intake path; `dates`: how a
    sheet's date cells are read; `state`: what the next read needs (an incremental read's
    newest value)."""
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
            convert=dates.row if dates else None,
        )
    except ImportRefused as exc:  # e.g. a column renamed at their end: this source only
        done.error = str(exc)
        _record(store, source, done)
        return done
    if dates and dates.read_with:
        report.notices.append(read_as(dates.read_with, dates.locale))
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


SHEETS_PER_MINUTE = 50  # Google allows a user about 60 reads (and 60 writes) a minute
_paces: dict[tuple[str, str], TokenBucket] = {}


def sheets_pace(settings: Settings, kind: str = "read") -> TokenBucket:
    """The pace of one home's Sheets requests (its Google user's quota), reads and writes
    apart as Google counts them: however many sheet sources, never a 429 of our making."""
    key = (str(settings.home), kind)
    if key not in _paces:
        _paces[key] = TokenBucket(SHEETS_PER_MINUTE, burst=10)
    return _paces[key]


class SheetsApi:
    """One signed-in session with the Sheets API: each request paced, and Google's answer
    turned into what the person who keeps the sheet can do about it."""

    def __init__(self, settings: Settings, spreadsheets):
        self.settings = settings
        self.spreadsheets = spreadsheets

    def execute(self, request, range_: str = "", kind: str = "read") -> dict:
        """Run one request (a SourceProblem when it fails, naming no value)."""
        from googleapiclient.errors import HttpError

        from followupd.delivery.googleapi import CLASSIFIED, UNREACHABLE, classify, unreachable

        sheets_pace(self.settings, kind).take(1)
        try:
            return request.execute()
        except HttpError as exc:
            status = exc.resp.status
            why = SHEET_ANSWERS.get(status, "Google answered {status}; read again at the next turn")
            raise SourceProblem(why.format(range=range_, status=status)) from None
        except CLASSIFIED as exc:  # the sign-in refused, a timeout, a connection dropped
            cause = unreachable(exc)
            if cause is not None:
                why = f"{UNREACHABLE} ({cause})"
            else:
                why = classify(exc).reason.removesuffix("; tried again later")
            raise SourceProblem(f"{why}; read again at the next turn") from None

    def locale(self, spreadsheet: str) -> str | None:
        """The spreadsheet's locale (en_US, en_GB, ...): how it shows and reads dates; None
        when it cannot be learned now."""
        request = self.spreadsheets.get(spreadsheetId=spreadsheet, fields="properties.locale")
        try:
            return self.execute(request).get("properties", {}).get("locale") or None
        except SourceProblem:
            return None


@contextmanager
def sheets_api(settings: Settings) -> Iterator[SheetsApi]:
    """The Sheets API on the therapist's credentials and transport (SourceProblem when
    there is no usable sign-in); a refreshed token is saved at the end."""
    from followupd.delivery.googleapi import (
        SCOPE_SHEETS_READ,
        CredentialsProblem,
        Transport,
        build_service,
        load_credentials,
        missing_scopes,
    )

    google = settings.config.google
    try:
        credentials, token = load_credentials(settings)
    except CredentialsProblem as exc:
        raise SourceProblem(str(exc)) from None
    if token is not None and missing_scopes([SCOPE_SHEETS_READ], token.granted):
        raise SourceProblem(
            "the Google sign-in does not allow reading spreadsheets yet: run `followupd "
            "auth` again (it asks for that now that a google_sheet source is configured)"
        )
    transport = Transport(credentials, google.timeout)
    try:
        service = build_service("sheets", "v4", transport, google.api_endpoint)
        yield SheetsApi(settings, service.spreadsheets())
    finally:
        if token is not None:
            token.save_if_refreshed()
        transport.close()


def sheet_values(api: SheetsApi, source: Source) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sheet's range, as the sheet shows them (formatted values)."""
    request = api.spreadsheets.values().get(
        spreadsheetId=source.spreadsheet,
        range=source.range,
        majorDimension="ROWS",
        valueRenderOption="FORMATTED_VALUE",
    )
    grid = api.execute(request, source.range or "").get("values", [])
    if not grid:
        raise SourceProblem(f"the range {source.range} is empty (its first row must be a header)")
    return [str(cell) for cell in grid[0]], [[str(cell) for cell in row] for row in grid[1:]]


def fetch_sheet(settings: Settings, source: Source) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sheet's range, read in a session of its own."""
    with sheets_api(settings) as api:
        return sheet_values(api, source)


def read_sheet(settings: Settings, store: Store, source: Source) -> SourceRead:
    """Read the sheet's range and import its rows as a file's rows are imported; its date
    cells are read as the spreadsheet's locale writes them."""
    done = SourceRead(source.name)
    try:
        with sheets_api(settings) as api:
            header, rows = sheet_values(api, source)
            dates = SheetDates(lambda: api.locale(source.spreadsheet or ""))
            _import_table(settings, store, source, done, header, rows, full=True, dates=dates)
    except SourceProblem as exc:
        done.error = str(exc)
        _record(store, source, done)
        return done
    if source.write_status:  # the status tab: a failure is recorded, never raised
        from followupd.sheet_status import write_status

        write_status(settings, store, source)
    return done


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
    """Reads the sources on their schedule. A folder's file is imported once it is complete
    (`folder_watch`: closed after writing, or the same at two looks), so a copy in progress
    is never read half-written, and exactly once, whatever stops followupd on the way."""

    def __init__(self, settings: Settings, store: Store, watch: FolderWatch | None = None):
        self.settings = settings
        self.store = store
        self.watch = watch  # the daemon's inotify observer; None: folders are looked at
        self.looks: dict[str, Look] = {}
        # Records of files imported whole that could not be moved, already reported: each
        # read tries the move again, quietly (never the import: its record says it is in).
        self.stuck: set[int] = set()

    def look_only(self, source: Source) -> None:
        """Remember what a folder holds now: the next read imports what stayed the same."""
        self.looks[source.name] = look(folder_of(self.settings, source))

    def read(self, source: Source) -> SourceRead:
        """One read of the source: a folder's complete files, or a query's rows."""
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
        before = self.looks.get(source.name, {})
        self.looks[source.name] = now
        events = self.watch.events_for(source.name) if self.watch else None
        return read_folder(self.settings, self.store, source, now, before, events, self.stuck)
