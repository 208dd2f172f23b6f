"""Backups of a SQLite database, and putting one back: the mechanics, without printing.

A backup is SQLite's online backup API, copying from one read transaction (a snapshot: WAL
lets the daemon go on writing meanwhile, and the copy never restarts) into a temporary file
beside the target, created 0600, in steps with a short pause between them. The copy is
switched out of WAL (one self-contained file), checked with `PRAGMA integrity_check`,
fsynced, and only then renamed onto its name with `os.replace`. So a kill at any moment
leaves earlier backups whole and never a partial file under a backup's name; the next backup
into that folder removes what a killed one left (a temporary file nobody holds a lock on).

A restore checks the copy first (a SQLite file, intact, at a schema revision this followupd
knows), stages it beside the database, folds the current database's WAL into it (a WAL left
beside the restored file would be read into it, and corrupt it) and keeps it aside as
`<name>.before-restore-<stamp>`, then renames the staged copy into place. The caller keeps
daemons away meanwhile (the daemon's lock).

PostgreSQL is backed up with its own tools (pg_dump / pg_restore; docs/operations.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from followupd.store.database import SQLITE_BUSY_TIMEOUT_MS, _alembic_config, sqlite_path

STEP_PAGES = 256  # pages copied per step (1 MiB at SQLite's 4 KiB pages)
STEP_PAUSE = 0.005  # seconds between steps: the disk and the GIL go to the daemon's ticks
IN_USE_TIMEOUT = 5.0  # seconds a restore waits for other connections to the database to end
STAMP = "%Y%m%dT%H%M%SZ"
# Our own backup files' names: `followupd-20261201T031500Z.sqlite3`, with `-2`, `-3` for a
# second and third in the same second (ASCII digits only, and a time that exists). Rotation
# deletes nothing else, and of those only the copies of the same home's database.
BACKUP_NAME = re.compile(r"followupd-([0-9]{8}T[0-9]{6}Z)(?:-([1-9][0-9]{0,3}))?\.sqlite3")
BACKUP_TEMP = ".followupd-backup-"  # + random + ".tmp": a backup being written
RESTORE_TEMP = ".followupd-restore-"  # + random + ".tmp": a copy staged for a restore
SIDECARS = ("-journal", "-wal", "-shm")
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_HEADER = b"\x02\x02"  # header bytes 18-19 of a database in WAL mode (a backup: 1, 1)
PLAIN_TABLE = re.compile(r"\s*CREATE\s+TABLE\s", re.IGNORECASE)  # not VIRTUAL, not a view
LIVE_BESIDE = (".lock", ".migrate.lock", "-wal")  # beside a database followupd has opened
# Reading the home id of a file in the backups folder, which anyone may have put there:
# only from a plain `meta` table (a view, a virtual table or a generated column could run
# for ever or fill the memory), and abandoned past a time and a value size no real one nears.
PROBE_STEPS = 1000  # SQLite virtual machine steps between two looks at the clock
PROBE_SECONDS = 0.5  # a real meta table is read in well under a millisecond; a forged
# schema of 2,000 statements was cut off after 0.9 s and 230 MiB
PROBE_LENGTH = 1 << 20  # bytes in any one value (an installation id is 32)
# SQLite parses a file's whole schema before reading anything: followupd's longest
# statement is under 1 KB; forged ones of 1 MiB each took 24 s and 4 GiB to parse.
PROBE_SQL_LENGTH = 20_000
# Ledger states a follow-up may leave for `done` after a backup was taken.
UNFINISHED = ("planned", "held", "claimed", "waiting")


class BackupError(Exception):
    """A backup or restore cannot be done as asked; the message says what to do."""


class NotSQLite(BackupError):
    """The database is not a SQLite file: PostgreSQL has pg_dump and pg_restore."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # the URL's backend name: postgresql, mysql, ...


class CopyRefused(BackupError):
    """A copy that must not be restored: not SQLite, damaged, or from a newer followupd."""


class _Stopped(Exception):
    """Raised inside SQLite's progress callback to abandon a copy when asked to stop."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int  # bytes
    revision: str | None  # the schema revision it holds
    seconds: float
    installation: str | None = None  # the home it is a copy of (rotation keeps to those)


@dataclass(frozen=True)
class CopyInfo:
    path: Path
    revision: str
    head: str  # the revision this followupd ships: an older copy is upgraded on next open
    size: int

    @property
    def older(self) -> bool:
        return self.revision != self.head


@dataclass(frozen=True)
class Restored:
    database: Path
    aside: Path | None  # the database it replaced (None: there was none)
    copy: CopyInfo


# --- names and paths ---------------------------------------------------------------------


def sqlite_file(url: str) -> Path:
    """The SQLite file behind `url`; any other database is refused (pg_dump is its tool)."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise BackupError("the database URL is not a SQLAlchemy URL") from None
    kind = parsed.get_backend_name()
    if kind != "sqlite":
        tools = (
            "pg_dump and put it back with pg_restore (docs/operations.md, Backups)"
            if kind in ("postgresql", "postgres")
            else "that database's own tools"
        )
        raise NotSQLite(f"the database is {kind}, not a SQLite file: back it up with {tools}", kind)
    path = sqlite_path(parsed)
    if path is None:
        raise BackupError("the database is in memory: there is no file to back up")
    return path


def backup_name(now: datetime, serial: int = 1) -> str:
    """`followupd-<UTC stamp>.sqlite3`: the names rotation recognizes as its own."""
    stamp = now.astimezone(UTC).strftime(STAMP)
    return f"followupd-{stamp}{'' if serial == 1 else f'-{serial}'}.sqlite3"


def default_target(folder: Path, now: datetime | None = None) -> Path:
    """A backup name in `folder` that is not taken (a second backup in one second gets
    `-2`), so a new backup never replaces an earlier one. Two backups racing for the name
    are kept apart when the copy is put in place (`make_backup(..., new=True)`)."""
    now = now or datetime.now(UTC)
    for serial in range(1, 10_000):
        target = folder / backup_name(now, serial)
        if not target.exists():
            return target
    raise BackupError(f"{folder}: too many backups in one second")


def _when(name: str) -> tuple[datetime, int] | None:
    """(time, serial) of one of our backup names; None for any other name, one that only
    looks like ours (a month 13) included."""
    match = BACKUP_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        made = datetime.strptime(match.group(1), STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return made, int(match.group(2) or 1)


def backups_in(folder: Path, now: datetime | None = None) -> list[Path]:
    """followupd's own backup files in `folder`, oldest first by the time in the name. A
    name dated after `now` (a clock that was wrong) comes first: the file was made before
    now whatever its name says, and it must not hold a place among the newest for years."""
    if not folder.is_dir():
        return []
    now = now or datetime.now(UTC)
    found = [
        (when[0] <= now, when, path)
        for path in folder.iterdir()
        if (when := _when(path.name)) is not None and _regular(path)
    ]
    return [path for *_, path in sorted(found)]


def newest_backup_time(
    folder: Path, url: str | None = None, now: datetime | None = None
) -> datetime | None:
    """When the newest of our backups in `folder` was made, from its name (names dated
    after `now` do not count: they would put off the next backup); with `url`, of backups
    of that database only (another home's in a shared folder do not count)."""
    now = now or datetime.now(UTC)
    home = _installation(sqlite_file(url), live=True) if url else None
    for path in reversed(backups_in(folder, now)):
        when = _when(path.name)
        if when is None or when[0] > now:
            continue
        if url is None or (home is not None and _backup_of(path, home)):
            return when[0]
    return None


def rotate(folder: Path, keep: int, made: Backup, now: datetime | None = None) -> list[Path]:
    """Delete our own backups of the same home as `made` in `folder` beyond the `keep`
    newest, oldest first (a name dated in the future first of all), and never `made`
    itself. A newer backup made meanwhile is among the newest (two rotations at once keep
    it); another home's backups in a shared folder, a database in use and any other file
    are never touched. Returns what was deleted."""
    if keep < 1:
        raise ValueError("keep at least one backup")
    if made.installation is None:
        return []  # a copy of no followupd home: nothing is known to be its older backups
    kept = made.path.resolve()
    found = [
        path
        for path in backups_in(folder, now)
        if path.resolve() == kept or _backup_of(path, made.installation)
    ]
    removed = []
    for path in found[: max(0, len(found) - keep)]:
        if path.resolve() == kept:
            continue  # older than `keep` others made meanwhile: theirs to rotate, not ours
        with contextlib.suppress(FileNotFoundError):  # another rotation took it first
            path.unlink()
            removed.append(path)
        for sidecar in SIDECARS:  # a journal left beside it belongs to nothing now
            beside = Path(f"{path}{sidecar}")
            if _regular(beside):
                with contextlib.suppress(OSError):
                    beside.unlink()
    return removed


def _backup_of(path: Path, installation: str) -> bool:
    """`path` is a backup (not a database in use) of the home with that installation id."""
    return not _looks_live(path) and _installation(path) == installation


def _looks_live(path: Path) -> bool:
    """A database followupd opens is in WAL mode, with its lock files beside it; a backup is
    one file in rollback-journal mode. So a home restored from another's copy (the same
    installation id) is still never taken for a backup of it, nor written over."""
    if any(_regular(Path(f"{path}{suffix}")) for suffix in LIVE_BESIDE):
        return True
    return _header(path)[18:20] == WAL_HEADER


def _installation(path: Path, *, live: bool = False) -> str | None:
    """The installation id a database file holds (the home it is a copy of), read without
    writing anything beside a backup (`live`: the database itself, its WAL read too); None
    for a file that is not a readable followupd database."""
    if not live and not _header(path).startswith(SQLITE_MAGIC):
        return None
    mode = "ro" if live else "ro&immutable=1"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
    except sqlite3.Error:
        return None
    try:
        return _installation_of(connection)
    finally:
        connection.close()


def _installation_of(connection: sqlite3.Connection) -> str | None:
    """The id in `meta`, read from a plain table of stored values, in bounded time and
    memory; None for anything else."""
    deadline = time.monotonic() + PROBE_SECONDS
    connection.set_progress_handler(lambda: time.monotonic() > deadline, PROBE_STEPS)
    limits = {
        sqlite3.SQLITE_LIMIT_LENGTH: PROBE_LENGTH,
        sqlite3.SQLITE_LIMIT_SQL_LENGTH: PROBE_SQL_LENGTH,
    }
    before = {limit: connection.setlimit(limit, value) for limit, value in limits.items()}
    try:
        if not _plain_meta(connection):
            return None
        row = connection.execute("SELECT value FROM meta WHERE key = 'installation_id'").fetchone()
    except sqlite3.Error:  # not SQLite, damaged, too long or too large to read
        return None
    finally:
        connection.set_progress_handler(None, 0)
        for limit, value in before.items():
            connection.setlimit(limit, value)
    return str(row[0]) if row and row[0] is not None else None


def _plain_meta(connection: sqlite3.Connection) -> bool:
    """`meta` is an ordinary table of two stored columns, key and value, as followupd makes
    it: reading it computes nothing."""
    made = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if made is None or not PLAIN_TABLE.match(str(made[0] or "")):
        return False
    columns = connection.execute("PRAGMA table_xinfo(meta)").fetchall()
    return sorted((column[1], column[6]) for column in columns) == [("key", 0), ("value", 0)]


def _regular(path: Path) -> bool:
    """A regular file under that very name (not a link, a folder or a FIFO)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _header(path: Path) -> bytes:
    """The first 100 bytes of a regular file, opened without following a link nor waiting
    on a FIFO put there meanwhile; b"" for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        return os.read(fd, 100) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


# --- making a backup ---------------------------------------------------------------------


def make_backup(
    url: str,
    target: Path,
    *,
    new: bool = False,
    stop: Callable[[], bool] | None = None,
    pages: int = STEP_PAGES,
    pause: float = STEP_PAUSE,
) -> Backup:
    """Copy the live database at `url` to `target` consistently, while others write.

    `new`: `target` is a dated name (`default_target`) that must not replace a file another
    backup put there meanwhile: the next free `-2`, `-3` is taken instead. `stop` is asked
    between steps: true abandons the copy (the daemon is stopping)."""
    started = time.monotonic()
    source = sqlite_file(url)
    if not source.is_file():
        raise BackupError(f"no database at {source} yet: nothing to back up")
    _not_the_database(source, target)
    folder = target.parent
    if not folder.exists():
        _private_dirs(folder)
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder; name another place for backups")
    _remove_leftovers(folder, BACKUP_TEMP)
    with _temporary(folder, BACKUP_TEMP) as (fd, temporary):
        try:
            revision, installation = _copy(source, temporary, stop, pages, pause)
        except _Stopped:
            raise BackupError("stopped before the copy was complete") from None
        except sqlite3.Error as exc:
            raise BackupError(f"the copy failed ({_first_line(exc)})") from None
        os.fsync(fd)
        target = _put_in_place(temporary, target, new)
        _fsync_dir(folder)
        size = os.fstat(fd).st_size
    return Backup(target, size, revision, time.monotonic() - started, installation)


def _put_in_place(temporary: Path, target: Path, new: bool) -> Path:
    """Rename the finished copy onto `target`; with `new`, onto the first of its dated
    names that nobody took meanwhile (a hard link never replaces a file, a rename would)."""
    when = _when(target.name) if new else None
    if when is None:
        os.replace(temporary, target)
        return target
    made, first = when
    for serial in range(first, 10_000):
        candidate = target.with_name(backup_name(made, serial))
        try:
            os.link(temporary, candidate)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: the name was free a moment ago
            os.replace(temporary, candidate)
            return candidate
        temporary.unlink()
        return candidate
    raise BackupError(f"{target.parent}: too many backups in one second")


def _copy(
    source: Path, temporary: Path, stop: Callable[[], bool] | None, pages: int, pause: float
) -> tuple[str | None, str | None]:
    """The backup API from one read transaction on `source` into `temporary`, which ends up
    one self-contained file (no WAL) that passed integrity_check; returns its revision and
    installation id."""
    live = sqlite3.connect(
        f"{source.resolve().as_uri()}?mode=rw",
        uri=True,
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
    )
    copy = sqlite3.connect(temporary, isolation_level=None)
    try:
        live.execute("PRAGMA query_only = 1")
        live.execute("BEGIN")  # one snapshot for every step: a write between steps is
        live.execute("SELECT count(*) FROM sqlite_master").fetchone()  # not a restart
        copy.execute("PRAGMA journal_mode = OFF")  # a temporary file: no journal of its own
        copy.execute("PRAGMA synchronous = OFF")  # one fsync at the end instead

        def progress(_status: int, remaining: int, _total: int) -> None:
            if stop is not None and stop():
                raise _Stopped
            if remaining and pause:
                time.sleep(pause)  # the pause between steps (sqlite3's `sleep` is for BUSY)

        live.backup(copy, pages=pages, progress=progress)
        live.execute("COMMIT")
        copy.execute("PRAGMA journal_mode = DELETE")  # the copy is one file, no -wal
        problems = copy.execute("PRAGMA integrity_check").fetchall()
        if [row[0] for row in problems] != ["ok"]:
            raise BackupError(f"the copy failed its integrity check ({problems[0][0][:200]})")
        return _revision(copy), _installation_of(copy)
    finally:
        copy.close()
        live.close()


def _not_the_database(source: Path, target: Path) -> None:
    """A backup written over the database (or its -wal, -shm, its locks) would destroy it,
    and one written over any file but an earlier backup of this same database (followupd.yaml,
    another program's or another home's database, a typo) would lose that file."""
    live = source.resolve()
    names = {live, *(Path(f"{live}{s}") for s in (*SIDECARS, ".lock", ".migrate.lock"))}
    if target.resolve() in names or (target.exists() and os.path.samefile(source, target)):
        raise BackupError(f"{target} is the database itself; write the backup elsewhere")
    if not os.path.lexists(target):
        return
    if target.is_symlink():
        raise BackupError(f"{target} is a symbolic link; name the file itself, or a new one")
    if not _header(target).startswith(SQLITE_MAGIC):
        raise BackupError(
            f"{target} exists and is not a SQLite backup; name a new file (or a folder)"
        )
    home = _installation(source, live=True)
    if home is None or not _backup_of(target, home):
        raise BackupError(
            f"{target} exists and is not a backup of this database; name a new file (or a folder)"
        )


# --- checking a copy ---------------------------------------------------------------------


def check_copy(path: Path, *, shown: Path | None = None) -> CopyInfo:
    """Whether `path` may be restored: a SQLite file that passes integrity_check and holds
    a schema revision this followupd knows (an older one is upgraded on next open).

    It is opened read-only and immutable: nothing is written beside it, and a -wal next to
    it is not read (a restore puts back this one file). Messages name `shown` (the file a
    person named) rather than `path` (a staged copy of it)."""
    name = shown or path
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise CopyRefused(
                f"{name} is not a SQLite database; restore a file made by followupd backup"
            )
    size = path.stat().st_size
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise CopyRefused(f"{name} cannot be opened ({_first_line(exc)})") from None
    try:
        revision = _checked_revision(connection, name)
    finally:
        connection.close()
    return CopyInfo(name, revision, _known_revisions()[1], size)


def _checked_revision(connection: sqlite3.Connection, path: Path) -> str:
    """The copy's schema revision, once it is known to be intact and followupd's own."""
    try:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        revision = _revision(connection)
    except sqlite3.DatabaseError as exc:
        raise CopyRefused(
            f"{path} is damaged ({_first_line(exc)}); restore another backup"
        ) from None
    if problems != ["ok"]:
        raise CopyRefused(
            f"{path} is damaged (integrity check: {problems[0][:160]}); restore another backup"
        )
    if revision is None:
        raise CopyRefused(
            f"{path} is not a followupd database (no schema revision); restore a file made "
            "by followupd backup"
        )
    known, _ = _known_revisions()
    if revision not in known:
        raise CopyRefused(
            f"{path} is at schema revision {revision}, written by a newer followupd; upgrade "
            "followupd (pip install -U followupd), then restore it"
        )
    return revision


def _revision(connection: sqlite3.Connection) -> str | None:
    """alembic_version's revision, or None when the table is not there."""
    has = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone()
    if not has:
        return None
    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


@functools.cache
def _known_revisions() -> tuple[frozenset[str], str]:
    """Every schema revision this followupd ships, and its head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    known = frozenset(rev.revision for rev in script.walk_revisions())
    return known, script.get_current_head()


# --- restoring ---------------------------------------------------------------------------


class Staged:
    """A checked copy, staged beside the database (same filesystem: the rename is atomic)."""

    def __init__(self, database: Path, path: Path, fd: int, info: CopyInfo):
        self.database = database
        self.path = path
        self.fd = fd
        self.info = info
        self.installed = False

    def install(self, now: datetime | None = None) -> Restored:
        """Keep the current database aside, WAL folded in, and put the copy in its place."""
        _possibly_made(self.path)
        os.fsync(self.fd)
        aside = _set_aside(self.database, now or datetime.now(UTC))
        try:
            os.replace(self.path, self.database)
        except OSError:
            if aside is not None:
                os.replace(aside, self.database)
            raise
        self.installed = True
        _fsync_dir(self.database.parent)
        return Restored(self.database, aside, self.info)


@contextmanager
def staged_restore(url: str, copy: Path) -> Iterator[Staged]:
    """The copy, copied next to the database and checked there (what is checked is what
    goes in); removed at the end unless `install()` put it in place."""
    database = sqlite_file(url)
    if database.is_symlink():  # the file it names is restored, where it is; the link stays
        database = database.resolve()
    if database.exists() and copy.exists() and os.path.samefile(database, copy):
        raise BackupError(f"{copy} is the database itself; name a backup to restore")
    folder = database.parent
    if not folder.exists():
        _private_dirs(folder)
    _remove_leftovers(folder, RESTORE_TEMP)
    with open(copy, "rb") as source, _temporary(folder, RESTORE_TEMP) as (fd, temporary):
        with os.fdopen(fd, "wb", closefd=False) as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        os.fsync(fd)
        yield Staged(database, temporary, fd, check_copy(temporary, shown=copy))


def restore(url: str, copy: Path) -> Restored:
    """Check `copy`, keep the current database aside and put the copy in its place (the
    caller holds the daemon's lock, so no daemon starts meanwhile)."""
    with staged_restore(url, copy) as staged:
        return staged.install()


def _possibly_made(path: Path) -> None:
    """What the copy has not seen made may have been made after the backup was taken: a
    try is counted for each such follow-up never tried, so that its first delivery after
    the restore looks for its draft before making it, as after any try (no duplicates)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        if not connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'follow_up'"
        ).fetchone():
            return
        marks = ", ".join("?" for _ in UNFINISHED)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            f"UPDATE follow_up SET attempts = 1 WHERE attempts = 0 AND state IN ({marks})",
            UNFINISHED,
        )
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise BackupError(f"the staged copy cannot be prepared ({_first_line(exc)})") from None
    finally:
        connection.close()


def _set_aside(database: Path, now: datetime) -> Path | None:
    """Move the database to `<name>.before-restore-<stamp>` (0600) as one whole file: its
    WAL checkpointed into it; a database too damaged to open goes with its -wal as is.
    A -shm is only an index of the WAL: removed. Nothing is left beside the database."""
    if not database.exists():
        for suffix in ("-wal", "-shm"):  # orphans of no database: they would be read into
            with contextlib.suppress(FileNotFoundError):  # the restored one
                Path(f"{database}{suffix}").unlink()
        return None
    stamp = now.astimezone(UTC).strftime(STAMP)
    aside = database.with_name(f"{database.name}.before-restore-{stamp}")
    serial = 1
    while aside.exists():
        serial += 1
        aside = database.with_name(f"{database.name}.before-restore-{stamp}-{serial}")
    _fold_wal(database)
    os.replace(database, aside)
    os.chmod(aside, 0o600)
    wal = Path(f"{database}-wal")
    if wal.exists():  # not folded (a damaged database), or written since: it is the old one's
        os.replace(wal, Path(f"{aside}-wal"))
        os.chmod(Path(f"{aside}-wal"), 0o600)
    with contextlib.suppress(FileNotFoundError):
        Path(f"{database}-shm").unlink()
    return aside


def _fold_wal(database: Path) -> bool:
    """Checkpoint the WAL into the database and leave WAL mode, so the file alone is the
    whole database. False: too damaged to open (it is moved as it is). Refused while another
    process has the database open: renaming a file under an open connection corrupts."""
    try:
        connection = sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=IN_USE_TIMEOUT,
            isolation_level=None,
        )
    except sqlite3.Error:
        return False
    try:
        busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        mode = connection.execute("PRAGMA journal_mode = DELETE").fetchone()
    except sqlite3.OperationalError as exc:
        if _in_use(exc):
            raise BackupError(_IN_USE) from None
        return False
    except sqlite3.DatabaseError:
        return False  # damaged: this is what a restore is for
    finally:
        connection.close()
    if (busy and busy[0]) or (mode and str(mode[0]).lower() != "delete"):
        raise BackupError(_IN_USE)
    return True


_IN_USE = (
    "the database is in use by another followupd command (an import?); let it finish, then "
    "restore again"
)


def _in_use(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# --- files ---------------------------------------------------------------------------------


@contextmanager
def _temporary(folder: Path, prefix: str) -> Iterator[tuple[int, Path]]:
    """A new file in `folder`, 0600 from its creation, locked (flock) while it is in use so
    that no later cleanup takes it for a leftover; removed unless renamed away."""
    for _ in range(3):
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
        path = Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                break
        except BlockingIOError:
            pass
        os.close(fd)  # a cleanup took it between its creation and the lock: again
    else:
        raise BackupError(f"{folder}: cannot keep a temporary file there")
    os.fchmod(fd, 0o600)
    try:
        yield fd, path
    finally:
        for leftover in (path, *(Path(f"{path}{s}") for s in SIDECARS)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        os.close(fd)  # closing releases the lock


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove what a killed backup (or restore) left in `folder`: temporary files no live
    process holds a lock on, with their journals."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"{prefix}*.tmp"):
        try:  # a FIFO or a folder under such a name is not ours: opening one could block
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a backup in progress
            continue
        try:
            if _same_file(fd, path):
                path.unlink()
        finally:
            os.close(fd)
    for sidecar in folder.glob(f"{prefix}*.tmp-*"):
        base = Path(str(sidecar).rsplit("-", 1)[0])
        if not base.exists() and sidecar.is_file() and not sidecar.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                sidecar.unlink()


def _same_file(fd: int, path: Path) -> bool:
    try:
        info = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)


def _private_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents, each 0700 whatever the umask."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        os.chmod(path, 0o700)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
