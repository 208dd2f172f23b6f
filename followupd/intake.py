"""Bringing in the spreadsheets a practice already keeps: referrals and visits from CSV.

Streams the file (memory stays flat whatever its size), validates each row on its own,
writes a batch of rows per transaction, and reports a bad row by line number and column
only, never by its values. Re-importing the same file changes nothing.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Literal

import sqlalchemy as sa

from followupd.records import (
    NO_THERAPISTS,
    REFERRAL_COLUMNS,
    REFERRAL_REQUIRED,
    VISIT_COLUMNS,
    VISIT_REQUIRED,
    RowError,
    Therapists,
    parse_referral,
    parse_visit,
)
from followupd.store import Counts, Directory, Store, upsert_referrals, upsert_visits

Kind = Literal["referrals", "visits"]
BATCH_ROWS = 1000
_CHUNK = 1 << 20
FIELD_LIMIT = 1 << 20  # characters; a longer field is refused, and the file read no further
csv.field_size_limit(FIELD_LIMIT)

_SPEC = {
    "referrals": (REFERRAL_COLUMNS, REFERRAL_REQUIRED, parse_referral, upsert_referrals),
    "visits": (VISIT_COLUMNS, VISIT_REQUIRED, parse_visit, upsert_visits),
}


class ImportRefused(Exception):
    """The whole file cannot be imported; nothing from it was written."""


@dataclass
class ImportReport:
    counts: Counts = field(default_factory=Counts)
    problems: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what was done differently, and why
    flagged: dict[int, str] = field(default_factory=dict)  # physician id -> address to confirm

    @property
    def ok(self) -> bool:
        return self.counts.rejected == 0


def normalize_header(name: str) -> str:
    return "_".join(name.strip().lstrip("\ufeff").casefold().replace("-", " ").split())


def check_utf8(binary: IO[bytes], shown: str) -> int:
    """Refuse a file that is not UTF-8 before importing any of it; returns its size."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    line = 1
    while chunk := binary.read(_CHUNK):
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            line += chunk[: exc.start].count(b"\n")
            raise ImportRefused(
                f"{shown}: not UTF-8 text (first bad byte on line {line}); "
                'in Excel use Save As > "CSV UTF-8", in LibreOffice choose UTF-8'
            ) from None
        line += chunk.count(b"\n")
        size += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ImportRefused(f"{shown}: not UTF-8 text (it ends mid-character)") from None
    binary.seek(0)
    return size


def _open_source(path: str) -> tuple[IO[bytes], str]:
    """The file as seekable bytes; standard input is spooled to a private temporary file."""
    if path == "-":
        spool = tempfile.TemporaryFile()  # noqa: SIM115 -- mode 0600, closed by the caller
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        return spool, "standard input"
    if not path:
        raise ImportRefused("no file named: give a CSV file, or - to read standard input")
    shown = path if len(path) <= 120 else f"{path[:60]}…{path[-60:]}"
    try:
        return open(path, "rb"), path
    except FileNotFoundError:
        raise ImportRefused(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ImportRefused(f"{shown}: is a folder, not a CSV file") from None
    except PermissionError:
        raise ImportRefused(f"{shown}: not readable (check its permissions)") from None
    except OSError as exc:  # a name too long, a folder in the path that is a file
        raise ImportRefused(f"{shown}: cannot be opened ({exc.strerror})") from None


# What spreadsheets put between columns: Excel writes ';' where a comma is the decimal mark.
SEPARATORS = {",": "commas", ";": "';'", "\t": "tabs"}


def detect_separator(binary: IO[bytes], kind: Kind) -> str:
    """The separator under which the header row names the most of followupd's columns; a
    comma unless another names more (a header is read whole, never echoed)."""
    first = binary.readline(_CHUNK).decode("utf-8-sig", "replace")
    binary.seek(0)
    known = set(_SPEC[kind][0])

    def named(separator: str) -> int:
        try:
            row = next(csv.reader([first], delimiter=separator), [])
        except csv.Error:
            return 0
        return len({normalize_header(name) for name in row} & known)

    return max(SEPARATORS, key=named)  # the first of equals: a comma on a tie


def read_header(reader: Iterator[list[str]], kind: Kind, shown: str) -> tuple[list[str], list[str]]:
    """The normalized header and the columns that will be ignored; refuses a bad header."""
    known, required, _, _ = _SPEC[kind]
    try:
        raw = next(reader)
    except StopIteration:
        raise ImportRefused(
            f"{shown}: the file is empty (expected a header row: {', '.join(required)}, ...)"
        ) from None
    except csv.Error as exc:
        raise ImportRefused(f"{shown}: line 1: not a CSV header ({exc})") from None
    header = [normalize_header(name) for name in raw]
    ours = [name for name in header if name in known]
    if not ours:  # the first line is data: never repeat it (it may be a client's row)
        raise ImportRefused(
            f"{shown}: line 1 is not a header row (it names none of followupd's columns, "
            "whether separated by commas, ';' or tabs); "
            f"add a first line naming the columns, e.g. {','.join(required)}"
        )
    duplicates = sorted({name for name in ours if header.count(name) > 1})
    if duplicates:
        raise ImportRefused(f"{shown}: column {', '.join(duplicates)} appears twice in the header")
    missing = [name for name in required if name not in header]
    if missing:
        plural = "columns" if len(missing) > 1 else "column"
        others = len([name for name in header if name and name not in known])
        raise ImportRefused(
            f"{shown}: required {plural} {', '.join(missing)} missing from the header "
            f"(it has {', '.join(ours)}" + (f" and {others} other columns)" if others else ")")
        )
    ignored = [name for name in header if name and name not in known]
    return header, ignored


class _renamed:
    """A CSV reader whose header row names our columns where `columns` maps their headers
    to ours ({ours: theirs}); its rows and line numbers are the reader's own."""

    def __init__(self, reader, columns: Mapping[str, str]):
        self.reader = reader
        self.ours = {normalize_header(theirs): ours for ours, theirs in columns.items()}
        self.first = True

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        row = next(self.reader)
        if self.first:
            self.first = False
            return [self.ours.get(normalize_header(name), name) for name in row]
        return row


def _rows(reader, header: list[str], report: ImportReport, shown: str):
    """(line number, {column: text}) for each data row; malformed rows go to the report."""
    wanted = [(i, name) for i, name in enumerate(header) if name]
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.counts.rejected += 1
            if "field larger than field limit" in str(exc):
                # The reader cannot find where that field ends: what follows is unreadable.
                report.problems.append(
                    f"line {line}: a field is longer than {FIELD_LIMIT:,} characters; the "
                    f"file cannot be read reliably past it, so nothing from line {line} on "
                    "was imported"
                )
                return
            report.problems.append(f"line {line}: not valid CSV ({exc})")
            continue
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) > len(header):
            report.counts.rejected += 1
            report.problems.append(
                f"line {line}: {len(values)} values but the header has {len(header)} columns"
            )
            continue
        yield line, {name: values[i] for i, name in wanted if i < len(values)}


def import_csv(
    store: Store,
    path: str,
    kind: Kind,
    progress: Callable[[int, int | None], None] | None = None,
    batch_rows: int = BATCH_ROWS,
    therapists: Therapists = NO_THERAPISTS,
    today: date | None = None,
    columns: Mapping[str, str] | None = None,
) -> ImportReport:
    """Import a referrals or visits CSV; a bad row is rejected, the rest go in.

    `therapists` are the keys a group practice's rows may name in a `therapist` column;
    `today` (the practice's) dates the releases the file grants or revokes; `columns` maps
    our column names to the file's own headers (a watched source's `columns:`).
    """
    binary, shown = _open_source(path)
    with binary:
        total = check_utf8(binary, shown)
        separator = detect_separator(binary, kind)
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=separator)
        report = ImportReport()
        if separator != ",":
            report.notices.append(
                f"the file separates columns with {SEPARATORS[separator]}; read that way"
            )

        def advance(done: int | None) -> None:
            if progress:
                progress(binary.tell() if done is not None else total, total)

        _import_reader(
            store, reader, kind, shown, report, advance, batch_rows, therapists, today, columns
        )
    return report


class _Table:
    """Rows of text from anywhere but a file (an SQL query), read as the CSV reader's are:
    the header first, and the line numbers a row error names."""

    def __init__(self, header: list[str], rows: Iterable[list[str]]):
        self.rows = itertools.chain([header], rows)
        self.line_num = 0

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        row = next(self.rows)
        self.line_num += 1
        return row


def header_problem(header: list[str], kind: Kind, shown: str, columns=None) -> str | None:
    """Why rows under this header could not be imported (a required column missing, none
    of ours), or None: what `followupd check` asks of a watched source."""
    reader = _Table(header, [])
    try:
        read_header(_renamed(reader, columns) if columns else reader, kind, shown)
    except ImportRefused as exc:
        return str(exc)
    return None


def import_rows(
    store: Store,
    header: list[str],
    rows: Iterable[list[str]],
    kind: Kind,
    shown: str,
    therapists: Therapists = NO_THERAPISTS,
    today: date | None = None,
    columns: Mapping[str, str] | None = None,
    source: str | None = None,
    convert: Callable[[dict[str, str]], dict[str, str]] | None = None,
) -> ImportReport:
    """Import rows of text that did not come from a file (a query's), exactly as a CSV
    file's: the same header checks, row errors (by row number and column) and upsert.
    `source`: the watched source they come from (recorded on each referral); `convert`:
    what a row's cells need first (a sheet's dates), raising RowError for a bad one."""
    report = ImportReport()
    _import_reader(
        store, _Table(header, rows), kind, shown, report, None, BATCH_ROWS, therapists, today,
        columns, source, convert,
    )  # fmt: skip
    return report


def _import_reader(
    store: Store,
    reader,
    kind: Kind,
    shown: str,
    report: ImportReport,
    advance: Callable[[int | None], None] | None,
    batch_rows: int,
    therapists: Therapists,
    today: date | None,
    columns: Mapping[str, str] | None,
    source: str | None = None,
    convert: Callable[[dict[str, str]], dict[str, str]] | None = None,
) -> None:
    """The one intake path: header, rows, validation, upsert in batches."""
    if columns:
        reader = _renamed(reader, columns)
    header, report.ignored_columns = read_header(reader, kind, shown)
    _, _, parse, upsert = _SPEC[kind]
    directory = Directory()
    batch: list[tuple[int, object]] = []
    for line, row in _rows(reader, header, report, shown):
        try:
            batch.append((line, parse(convert(row) if convert else row, therapists)))
        except RowError as exc:
            report.counts.rejected += 1
            report.problems.append(f"line {line}, column {exc.column}: {exc.message}")
        if len(batch) >= batch_rows:
            _write(store, batch, upsert, directory, report, today, source)
            batch = []
            if advance:
                advance(0)
    if batch:
        _write(store, batch, upsert, directory, report, today, source)
    if advance:
        advance(None)


def _write(
    store: Store,
    batch,
    upsert,
    directory: Directory,
    report: ImportReport,
    today: date | None,
    source: str | None = None,
) -> None:
    """One transaction per batch; if the database refuses it, find the row row by row."""
    try:
        with store.session() as session:
            outcomes = _upsert(session, upsert, batch, directory, report, today, source)
    except (sa.exc.DBAPIError, RowError):  # a row the database or the directory refused
        directory.forget()  # cached ids may belong to the rolled-back transaction
        outcomes = []
        for one in batch:
            try:
                with store.session() as session:
                    outcomes += _upsert(session, upsert, [one], directory, report, today, source)
            except RowError as exc:  # e.g. a physician's name that is several physicians
                directory.forget()
                report.counts.rejected += 1
                report.problems.append(f"line {one[0]}, column {exc.column}: {exc.message}")
            except sa.exc.DBAPIError as exc:
                directory.forget()
                report.counts.rejected += 1
                reason = type(getattr(exc, "orig", exc)).__name__
                report.problems.append(f"line {one[0]}: the database refused this row ({reason})")
    for outcome in outcomes:
        report.counts.add(outcome)
    report.flagged.update(directory.flagged)


def _upsert(
    session,
    upsert,
    batch,
    directory: Directory,
    report: ImportReport,
    today: date | None,
    source: str | None = None,
) -> list[str]:
    if upsert is not upsert_referrals:
        return upsert(session, [record for _, record in batch], directory)
    notices: list[tuple[int, str]] = []
    outcomes = upsert(
        session,
        [record for _, record in batch],
        directory,
        by="import",
        today=today,
        notices=notices,
        source=source,
    )
    report.notices += [f"line {batch[index][0]}: {text}" for index, text in notices]
    return outcomes
