"""The database: opening it safely and migrating it.

SQLite (the default) runs in WAL mode with a busy timeout, in a file only its owner can read.
Any other SQLAlchemy URL works; PostgreSQL through psycopg 3 is the scale-out path. The schema
is Alembic's, shipped inside the package and applied when the store opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATION_WAIT = 300.0  # seconds a command waits for another one's migration of a SQLite file
_MIGRATION_LOCK = 0x466F6C6C  # PostgreSQL advisory lock id: one migrator at a time
SCHEMA_HEAD = "0009"  # the newest migration; tests/test_store.py checks it against Alembic


class StoreError(Exception):
    """The database cannot be used as it is; the message says what to do."""


def _alembic_config():
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("followupd") / "migrations"))
    return cfg


def sqlite_path(url: sa.URL) -> Path | None:
    """The file behind a SQLite URL; None for another database or one in memory. With
    `uri=true` the name is a `file:` URI (sqlite:///file:name.db?mode=ro&uri=true), whose
    `mode=memory` is no file at all."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    name = url.database
    if str(url.query.get("uri", "")).lower() in ("true", "1") and name.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        name = unquote(urlsplit(name).path)
        if name in ("", ":memory:"):
            return None
    return Path(name)


def _private_file(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite's -wal/-shm follow it).

    An existing file is never opened here: SQLite's locks are POSIX locks, which a process
    loses on closing *any* descriptor of the file, so an open and close beside a live
    connection (a second engine, as a dry run makes) would drop that connection's locks."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: private
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it just now
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def mask_url(url: str) -> str:
    """A database URL fit to print: its password replaced (also one passed as a query
    parameter, `?password=`), even when the URL is malformed."""
    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        shown = _PASSWORD.sub(r"\1***@", url)
    return _SECRET_PARAMETER.sub(r"\1***", shown)


# A query parameter that carries a secret: ?password=..., &sslpassword=..., &token=...
_SECRET_PARAMETER = re.compile(
    r"((?:^|[?&;])[^=&;?]*(?:pass|pwd|secret|token|key)[^=&;]*=)[^&;]*", re.I
)


_PASSWORD = re.compile(r"^((?:[^:/@\s]*://)?[^:/@\s]*:)[^@\s]*@")  # [scheme://]user:PASSWORD@


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite files are created private and tuned for a daemon.

    Statement parameters are hidden from every error SQLAlchemy raises: they are referral
    values, and an error's text reaches tracebacks and logs.
    """
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise StoreError(
            f"database url {mask_url(url)!r} is not a SQLAlchemy URL "
            "(e.g. sqlite:///followupd.sqlite3 or postgresql+psycopg://host/db)"
        ) from None
    path = sqlite_path(parsed)
    if path is not None:
        _private_file(path)
        return _sqlite_engine(parsed)
    try:
        return sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"no driver for {parsed.drivername} ({exc.name} is not installed; "
            "for PostgreSQL: pip install 'followupd[postgres]')"
        ) from None


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    """A SQLite file's engine: parameters hidden, the busy timeout, WAL, foreign keys on."""
    engine = sa.create_engine(
        url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )
    sa.event.listen(engine, "connect", _on_sqlite_connect)
    return engine


def _explicit_sqlite_transactions(engine: sa.Engine) -> None:
    """SQLAlchemy's recipe for savepoints on pysqlite: the driver must not begin or end
    transactions itself. BEGIN IMMEDIATE takes the write lock at once (waiting the busy
    timeout), so a rehearsal never fails halfway because another process wrote."""

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _current_revision(connection: sa.Connection) -> str | None:
    """The revision in alembic_version, read without importing Alembic (None: no table)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def schema_state(connection: sa.Connection) -> tuple[str | None, str]:
    """(revision the database is at, revision this followupd ships)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    script = ScriptDirectory.from_config(_alembic_config())
    current = MigrationContext.configure(connection).get_current_revision()
    head = script.get_current_head()
    if current is not None:
        try:
            known = script.get_revision(current)
        except CommandError:
            known = None
        if known is None:
            raise StoreError(
                f"the database is at schema revision {current}, written by a newer followupd; "
                "upgrade followupd (pip install -U followupd) before using this database"
            )
    return current, head


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to this version's head; refuse a database from a newer version.

    One migrator at a time: on PostgreSQL an advisory lock, on SQLite a lock file beside the
    database (six first commands at once on a new home must not all create the tables).
    A migration is one transaction on either: stopped or killed halfway, it leaves the
    schema as it was, never a column added under the old revision.
    """
    with _sqlite_migration_lock(engine):
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK}
                )
            if _current_revision(connection) == SCHEMA_HEAD:
                return  # the usual case, and Alembic's import (0.2 s a command) is skipped
            if sqlite_path(engine.url) is None:  # PostgreSQL (transactional DDL), others,
                _upgrade(connection)  # and SQLite in memory: no file another engine could open
                return
        _upgrade_sqlite(engine.url)


def _upgrade_sqlite(url: sa.URL) -> None:
    """Upgrade a SQLite file in one explicit transaction: pysqlite would commit each
    ALTER TABLE on its own, and a kill between two of them leaves a half-made schema."""
    engine = _sqlite_engine(url)
    sa.event.listen(engine, "connect", _foreign_keys_off)  # after the one that turns them on
    _explicit_sqlite_transactions(engine)  # BEGIN IMMEDIATE: the write lock before reading
    try:
        with engine.begin() as connection:
            before = _dangling(connection)
            _upgrade(connection)
            _no_new_dangling(connection, before)
    finally:
        engine.dispose()


def _foreign_keys_off(dbapi_connection, _record) -> None:
    """SQLite's own way to change a schema: foreign keys off (it cannot be turned off inside
    the transaction), so a table rebuilt in batch mode does not cascade-delete the rows that
    point at it when its old copy is dropped; checked before the commit instead."""
    dbapi_connection.execute("PRAGMA foreign_keys = OFF")


def _dangling(connection: sa.Connection) -> Counter[tuple[str, str]]:
    """How many rows of each table point at rows of each parent that are not there (by
    table and parent only: a batch rebuild may renumber rowids and foreign keys)."""
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return Counter((str(row[0]), str(row[2])) for row in rows)


def _no_new_dangling(connection: sa.Connection, before: Counter[tuple[str, str]]) -> None:
    """Refuse an upgrade that left references dangling; ones the database already had (a
    row deleted by hand in the sqlite3 shell, where foreign keys are off) are not its doing."""
    new = _dangling(connection) - before
    if new:
        count = sum(new.values())
        tables = ", ".join(sorted({table for table, _ in new}))
        raise StoreError(
            f"the schema upgrade was not made: it would leave {count} "
            f"{'row' if count == 1 else 'rows'} of {tables} pointing at rows that are not "
            "there, most likely made from rows that already do (a row deleted by hand); "
            "`sqlite3 DATABASE 'PRAGMA foreign_key_check'` lists those: mend or delete them, "
            "then start followupd again"
        )


def _upgrade(connection: sa.Connection) -> None:
    current, head = schema_state(connection)
    if current == head:
        return
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


@contextmanager
def _sqlite_migration_lock(engine: sa.Engine) -> Iterator[None]:
    """Hold `<database>.migrate.lock` while checking and migrating a SQLite file."""
    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    lock = f"{path}.migrate.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _wait_for_lock(fd, lock)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _wait_for_lock(fd: int, lock: str) -> None:
    """Take the migration lock, waiting up to MIGRATION_WAIT for another process's
    migration to end; a lock held longer than that is a process stuck, said so."""
    deadline = time.monotonic() + MIGRATION_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"waited {MIGRATION_WAIT:.0f} s for {lock}: another followupd process "
                    f"holds it (a migration still running, or stuck); find it with `fuser "
                    f"{lock}`, let it finish or stop it, then try again"
                ) from None
            time.sleep(0.05)


class Store:
    """An open, migrated database."""

    def __init__(self, url: str, *, migrate_schema: bool = True):
        self.url = url
        self.engine = create_engine(url)
        self._rehearsal: sa.Connection | None = None  # set during `rehearsal()`
        try:
            if migrate_schema:
                migrate(self.engine)
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database ({_short(exc)})") from None
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database ({type(exc).__name__})") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises (in a
        rehearsal, a savepoint of the rehearsal's one transaction)."""
        rehearsal = self._rehearsal
        if rehearsal is None:
            session = Session(self.engine, expire_on_commit=False)
        else:
            session = Session(
                rehearsal, expire_on_commit=False, join_transaction_mode="create_savepoint"
            )
        with session, session.begin():
            yield session

    @contextmanager
    def rehearsal(self) -> Iterator[None]:
        """Inside the block every transaction of this store is a savepoint of one that is
        rolled back at the end: a dry run runs the very code of a real run and writes
        nothing. On SQLite it holds the write lock meanwhile (others wait, as for an import).
        """
        engine = create_engine(self.url)
        if engine.dialect.name == "sqlite":
            _explicit_sqlite_transactions(engine)
        connection = engine.connect()
        outer = connection.begin()
        self._rehearsal = connection
        try:
            yield
        finally:
            self._rehearsal = None
            outer.rollback()
            connection.close()
            engine.dispose()

    def close(self) -> None:
        self.engine.dispose()


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
