"""The database: opening it safely, migrating it, and writing rows in batches.

SQLite (the default) runs in WAL mode with a busy timeout, in a file only its owner can read.
Any other SQLAlchemy URL works; PostgreSQL through psycopg 3 is the scale-out path. The schema
is Alembic's, shipped inside the package and applied when the store opens.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd import releases
from followupd.models import (
    Bundle,
    Cursor,
    FollowUp,
    Meta,
    Physician,
    Practice,
    QuotaBucket,
    Recipient,
    Referral,
    State,
    UTCDateTime,
    Visit,
    now_utc,
)
from followupd.pacing import TokenBucket
from followupd.records import (
    PhysicianRecord,
    ReferralRecord,
    VisitRecord,
    physician_key,
    practice_key,
    visit_key,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_MIGRATION_LOCK = 0x466F6C6C  # PostgreSQL advisory lock id: one migrator at a time
SCHEMA_HEAD = "0004"  # the newest migration; tests/test_store.py checks it against Alembic


class StoreError(Exception):
    """The database cannot be used as it is; the message says what to do."""


def _alembic_config():
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("followupd") / "migrations"))
    return cfg


def _sqlite_path(url: sa.URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _private_file(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite's -wal/-shm follow it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
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
    """A database URL fit to print: its password replaced, even when the URL is malformed."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)


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
    path = _sqlite_path(parsed)
    if path is not None:
        _private_file(path)
        engine = sa.create_engine(
            parsed, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    try:
        return sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"no driver for {parsed.drivername} ({exc.name} is not installed; "
            "for PostgreSQL: pip install 'followupd[postgres]')"
        ) from None


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
    """
    with _sqlite_migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK}
            )
        if _current_revision(connection) == SCHEMA_HEAD:
            return  # the usual case, and Alembic's import (0.2 s a command) is skipped
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
    path = _sqlite_path(engine.url)
    if path is None:
        yield
        return
    fd = os.open(f"{path}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Store:
    """An open, migrated database."""

    def __init__(self, url: str, *, migrate_schema: bool = True):
        self.url = url
        self.engine = create_engine(url)
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
        """One transaction: committed when the block ends, rolled back if it raises."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


class ChangeListener:
    """Wakes a daemon when referrals or visits change, through PostgreSQL LISTEN/NOTIFY.

    Migration 0003's trigger notifies channel `followupd` after every statement that writes
    either table, whoever wrote it (the CLI, an import, the practice's own system). A thread
    holds one connection of its own and reconnects after an outage; the poll still runs, so
    a lost notification only delays a follow-up until the next one.
    """

    CHANNEL = "followupd"

    def __init__(self, url: str, on_change: Callable[[], None], name: str = "followupd"):
        self.name = name[:63]  # its application_name in pg_stat_activity
        self.conninfo = (
            sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.on_change = on_change
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self.listening = threading.Event()  # for tests: LISTEN is in place

    def start(self) -> ChangeListener:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        import psycopg

        delay = 1.0
        while not self.stopped.is_set():
            try:
                with psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=10, application_name=self.name
                ) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    self.listening.set()
                    delay = 1.0
                    while not self.stopped.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.on_change()
            except psycopg.Error:
                self.listening.clear()
                self.stopped.wait(delay)
                delay = min(delay * 2, 30.0)


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


# --- writing records -----------------------------------------------------------------------


@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def __str__(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}"
        )


@dataclass
class _KnownPhysician:
    id: int
    specialty: str | None
    email: str | None
    fax: str | None
    name: str = ""


class Directory:
    """Practice and physician ids by key, cached for the length of an import.

    Holds plain values, not ORM objects, so it stays valid from one transaction to the next;
    call `forget()` after a rollback.

    `trusted`: a person typed this (the command line). An import is not trusted with
    addresses: an address that replaces a physician's known one, or a new one that looks like
    another physician's (`c1inic` for `clinic`), would send other patients' notes elsewhere,
    so notes to it wait for `followupd physician confirm`. `flagged` lists those physicians.
    """

    def __init__(self, trusted: bool = False) -> None:
        self.trusted = trusted
        self.flagged: dict[int, str] = {}  # physician id -> why its address waits
        self.forget()

    def forget(self) -> None:
        self.practices: dict[str, int] = {}
        self.physicians: dict[str, _KnownPhysician] = {}
        self._lookalikes: dict[str, tuple[int, str]] | None = None

    def practice_id(self, session: Session, name: str | None) -> int | None:
        if not name:
            return None
        key = practice_key(name)
        if key not in self.practices:
            found = session.execute(sa.select(Practice.id).where(Practice.key == key)).scalar()
            if found is None:
                practice = Practice(key=key, name=name)
                session.add(practice)
                session.flush()
                found = practice.id
            self.practices[key] = found
        return self.practices[key]

    def physician(self, session: Session, record: PhysicianRecord) -> tuple[int, bool]:
        """The id of the physician for `record`, created or brought up to date; True if
        anything about the physician changed."""
        key = physician_key(record.name, record.practice)
        known = self.physicians.get(key)
        if known is None:
            row = session.execute(
                sa.select(
                    Physician.id,
                    Physician.specialty,
                    Physician.email,
                    Physician.fax,
                    Physician.name,
                ).where(Physician.key == key)
            ).first()
            if row is None:
                return self._add_physician(session, key, record), True
            known = self.physicians[key] = _KnownPhysician(*row)
        changes = {
            name: value
            for name in ("specialty", "email", "fax")
            if (value := getattr(record, name)) is not None and getattr(known, name) != value
        }
        if changes:
            stamp = change_stamp(session, Referral)
            if "email" in changes:
                changes["email_check"] = self._address_check(
                    session, known.id, known.email, changes["email"]
                )
            session.execute(
                sa.update(Physician)
                .where(Physician.id == known.id)
                .values(**changes, updated_at=stamp)
            )
            if "email" in changes:  # held notes waiting for an address are planned again
                session.execute(
                    sa.update(Referral)
                    .where(
                        sa.or_(
                            Referral.physician_id == known.id, Referral.prescriber_id == known.id
                        )
                    )
                    .values(updated_at=stamp)
                )
            for name in ("specialty", "email", "fax"):
                if name in changes:
                    setattr(known, name, changes[name])
        return known.id, bool(changes)

    def _add_physician(self, session: Session, key: str, record: PhysicianRecord) -> int:
        check = self._address_check(session, None, None, record.email)
        physician = Physician(
            key=key,
            name=record.name,
            specialty=record.specialty,
            email=record.email,
            fax=record.fax,
            practice_id=self.practice_id(session, record.practice),
            email_check=check,
        )
        session.add(physician)
        session.flush()
        if check:
            self.flagged[physician.id] = check
        self.physicians[key] = _KnownPhysician(
            physician.id, record.specialty, record.email, record.fax, record.name
        )
        return physician.id

    def _address_check(
        self, session: Session, physician_id: int | None, old: str | None, new: str | None
    ) -> str | None:
        """Why notes to `new` must wait for a confirmation, or None."""
        if self.trusted or not new:
            return None
        index = self._lookalike_index(session)
        check = None
        if old and old != new:
            check = f"changed in an import from {old}"
        else:
            near = index.get(address_skeleton(new))
            if near is not None and near[0] != physician_id and near[1] != new:
                check = f"new in an import and looks like {near[1]} (physician {near[0]})"
        if physician_id is not None and check:
            self.flagged[physician_id] = check
        return check

    def _lookalike_index(self, session: Session) -> dict[str, tuple[int, str]]:
        """{skeleton of an address: (physician id, address)} of every known address."""
        if self._lookalikes is None:
            self._lookalikes = {}
            for physician_id, email in session.execute(
                sa.select(Physician.id, Physician.email).where(Physician.email.is_not(None))
            ):
                self._lookalikes.setdefault(address_skeleton(email), (physician_id, email))
        return self._lookalikes


_CONFUSABLE = str.maketrans(
    {
        "0": "o",
        "1": "l",
        "i": "l",
        "|": "l",
        "!": "l",
        "5": "s",
        "$": "s",
        "3": "e",
        ".": None,
        "-": None,
        "_": None,
    }
)


def address_skeleton(address: str) -> str:
    """An address with look-alike characters folded together: two different addresses with
    one skeleton ("dr.lee@c1inic.example", "drlee@clinic.example") are easy to mistake."""
    folded = unicodedata.normalize("NFKC", address).casefold()
    for pair, single in (("rn", "m"), ("vv", "w"), ("cl", "d")):
        folded = folded.replace(pair, single)
    return folded.translate(_CONFUSABLE)


def confirm_address(session: Session, physician_id: int) -> tuple[str, str | None] | None:
    """A person confirms a physician's address: notes held for it may go out. Returns the
    physician's (name, address), or None if there is no such physician."""
    found = session.execute(
        sa.select(Physician.name, Physician.email).where(Physician.id == physician_id)
    ).first()
    if found is None:
        return None
    stamp = change_stamp(session, Referral)
    session.execute(
        sa.update(Physician)
        .where(Physician.id == physician_id)
        .values(email_check=None, updated_at=stamp)
    )
    session.execute(
        sa.update(Referral)
        .where(
            sa.or_(  # their held notes are planned again
                Referral.physician_id == physician_id, Referral.prescriber_id == physician_id
            )
        )
        .values(updated_at=stamp)
    )
    return found.name, found.email


def record_release(
    session: Session, ref: str, recipient: Recipient, *, grant: bool, on: date, by: str
) -> bool | None:
    """A person grants or revokes a referral's release for one recipient; the next plan
    sees the change. None: no such referral; False: it names no such recipient."""
    row = session.execute(
        sa.select(Referral.id, Referral.prescriber_id).where(Referral.ref == ref)
    ).first()
    if row is None:
        return None
    if recipient == Recipient.prescriber and row.prescriber_id is None:
        return False
    stamp = change_stamp(session, Referral)
    releases.record(session, row.id, recipient, grant=grant, on=on, by=by, stamp=stamp)
    session.execute(sa.update(Referral).where(Referral.id == row.id).values(updated_at=stamp))
    return True


def disclosed_notes(session: Session, ref: str) -> Sequence[FollowUp]:
    """A referral's notes that left Drafts before its release was revoked."""
    return (
        session.execute(
            sa.select(FollowUp)
            .join(
                Referral,
                sa.and_(FollowUp.subject_type == "referral", FollowUp.subject_id == Referral.id),
            )
            .where(
                Referral.ref == ref,
                FollowUp.state.in_((State.sent, State.gone)),
                sa.or_(
                    FollowUp.reason.startswith("disclosed"),
                    FollowUp.reason.startswith("may have been disclosed"),
                ),
            )
            .order_by(FollowUp.id)
        )
        .scalars()
        .all()
    )


def change_stamp(session: Session, table: sa.Table | type) -> datetime:
    """The updated_at for a change to `table` (referral, visit): now, or just after its
    newest stamp if the clock has gone back (an NTP step, a VM resumed), because the
    planner reads changes after a cursor and would never see a row stamped behind it."""
    column = sa.inspect(table).c.updated_at if isinstance(table, type) else table.c.updated_at
    newest = session.execute(sa.select(sa.func.max(column))).scalar()
    now = now_utc()
    if newest is not None:
        newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
        if newest >= now:
            return newest + timedelta(microseconds=1)
    return now


REFERRAL_DEFAULTS = {
    "client_dob": None,
    "presenting_problem": None,
    "treatment_focus": None,
    "release_on_file": False,
    "release_on": None,
    "prescriber_release_on_file": False,
    "prescriber_release_on": None,
    "prescriber_id": None,
    "closed_on": None,
    "closing_summary": None,
}
VISIT_DEFAULTS = {
    "physician_id": None,
    "specialty": None,
    "business_manager": None,
    "cards_left": 0,
    "handouts_left": 0,
    "notes": None,
}


def _upsert(
    session: Session,
    table: sa.Table,
    key_column: str,
    items: Sequence[tuple[str, dict]],
    defaults: dict,
) -> list[bool | None]:
    """Insert or update rows by a natural key with one statement per kind of change.

    Returns, for each item: None if added, else whether it changed. Core statements rather
    than ORM objects: an import of a year of referrals is mostly this function.
    """
    stamp = change_stamp(session, table)
    key = table.c[key_column]
    existing = {
        row[key_column]: dict(row)
        for row in session.execute(
            sa.select(table).where(key.in_({k for k, _ in items}))
        ).mappings()
    }
    inserts: dict[str, dict] = {}
    updates: dict[int, dict] = {}
    outcomes: list[bool | None] = []
    for item_key, given in items:
        values = dict(given)
        if item_key in inserts:  # the same key twice in one batch: the later row wins
            merged = {**inserts[item_key], **values}
            outcomes.append(merged != inserts[item_key])
            inserts[item_key] = merged
            continue
        old = existing.get(item_key)
        if old is None:
            inserts[item_key] = {
                **defaults,
                **values,
                key_column: item_key,
                "created_at": stamp,
                "updated_at": stamp,
            }
            outcomes.append(None)
            continue
        changed = {column: value for column, value in values.items() if old[column] != value}
        if changed:
            old.update(changed)
            updates.setdefault(old["id"], {}).update(changed, updated_at=stamp)
        outcomes.append(bool(changed))
    if inserts:
        session.execute(sa.insert(table), list(inserts.values()))
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for row_id, changed in updates.items():
        by_columns.setdefault(tuple(sorted(changed)), []).append({"_id": row_id, **changed})
    for columns, rows in by_columns.items():
        session.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("_id"))
            .values({c: sa.bindparam(c) for c in columns}),
            rows,
        )
    return outcomes


def _outcome(changed: bool | None, related_changed: bool) -> str:
    if changed is None:
        return "added"
    return "updated" if changed or related_changed else "unchanged"


def upsert_referrals(
    session: Session,
    records: Iterable[ReferralRecord],
    directory: Directory,
    *,
    by: str = "import",
    today: date | None = None,
    notices: list[tuple[int, str]] | None = None,
) -> list[str]:
    """Insert or update referrals by `ref`; returns added/updated/unchanged for each.

    Release columns go into the release history (see `releases`); what an import could not
    do with them (a revoke it may not undo) is appended to `notices` as (index, text).
    """
    records = list(records)
    items, physician_changes, claims = [], [], []
    for record in records:
        physician_id, physician_changed = directory.physician(session, record.physician)
        values = record.referral_values(physician_id)
        if record.has_prescriber:
            values["prescriber_id"] = (
                directory.physician(session, record.prescriber)[0] if record.prescriber else None
            )
        values.pop("ref")
        claims.append(releases.claims_of(values))
        items.append((record.ref, values))
        physician_changes.append(physician_changed)
    outcomes = _upsert(session, Referral.__table__, "ref", items, REFERRAL_DEFAULTS)
    changed = _apply_releases(
        session,
        [r.ref for r in records],
        claims,
        by=by,
        today=today or date.today(),
        notices=notices,
    )
    return [
        _outcome(o, p or ref in changed)
        for o, p, ref in zip(outcomes, physician_changes, (r.ref for r in records), strict=True)
    ]


def _apply_releases(
    session: Session,
    refs: list[str],
    claims: list[dict],
    *,
    by: str,
    today: date,
    notices: list[tuple[int, str]] | None,
) -> set[str]:
    """Bring the batch's release columns into the release history, then set each
    referral's in-force flags from it; returns the refs whose flags changed."""
    rows = {
        row.ref: row
        for row in session.execute(
            sa.select(Referral.ref, *releases.REFERRAL_ROW).where(Referral.ref.in_(set(refs)))
        )
    }
    history = releases.History.read(session, [row.id for row in rows.values()])
    for index, (ref, claimed) in enumerate(zip(refs, claims, strict=True)):
        for recipient, claim in claimed.items():
            notice = releases.decide(history, rows[ref], recipient, claim, by=by, today=today)
            if notice and notices is not None:
                notices.append((index, notice))
    history.write(session)
    changed = releases.refresh(
        session, history, {row.id: row for row in rows.values()}, change_stamp(session, Referral)
    )
    by_id = {row.id: ref for ref, row in rows.items()}
    return {by_id[referral_id] for referral_id in changed}


def _adopt_legacy_visits(session: Session, legacy: dict[str, str]) -> None:
    """A visit logged before the practice listed therapists has no therapist in its key;
    the same visit entered again with one is that visit, not a second (and no second
    revisit reminder): give the old row the new key."""
    if not legacy:
        return
    known = set(session.execute(sa.select(Visit.key).where(Visit.key.in_(list(legacy)))).scalars())
    for key, old in legacy.items():
        if key not in known:
            session.execute(
                sa.update(Visit).where(Visit.key == old, Visit.therapist.is_(None)).values(key=key)
            )


def upsert_visits(
    session: Session, records: Iterable[VisitRecord], directory: Directory
) -> list[str]:
    """Insert or update visits by (date, practice, physician[, therapist])."""
    items, physician_changes = [], []
    legacy: dict[str, str] = {}  # key with the therapist -> the key the visit had without
    for record in records:
        practice_id = directory.practice_id(session, record.practice)
        physician_id, physician_changed = None, False
        if record.physician_name:
            physician_id, physician_changed = directory.physician(
                session, record.physician_record()
            )
        key = visit_key(
            record.visited_on,
            record.practice,
            record.physician_name,
            record.fields.get("therapist"),
        )
        items.append((key, record.visit_values(practice_id, physician_id)))
        physician_changes.append(physician_changed)
        if record.fields.get("therapist"):
            legacy[key] = visit_key(record.visited_on, record.practice, record.physician_name)
    _adopt_legacy_visits(session, legacy)
    outcomes = _upsert(session, Visit.__table__, "key", items, VISIT_DEFAULTS)
    return [_outcome(o, p) for o, p in zip(outcomes, physician_changes, strict=True)]


# --- the ledger ------------------------------------------------------------------------------


def installation_id(session: Session) -> str:
    """This database's random id; external ids derive from it so two homes never collide."""
    return session.execute(sa.select(Meta.value).where(Meta.key == "installation_id")).scalar_one()


def read_meta(session: Session, key: str) -> str | None:
    return session.execute(sa.select(Meta.value).where(Meta.key == key)).scalar()


def read_meta_prefix(session: Session, prefix: str) -> dict[str, str]:
    """Facts whose key starts with `prefix` (one mailbox's credentials state each)."""
    return dict(
        session.execute(sa.select(Meta.key, Meta.value).where(Meta.key.startswith(prefix))).all()
    )


def write_meta(session: Session, key: str, value: str) -> None:
    """Set a fact about this database (a heartbeat, the state of the credentials)."""
    _put(session, Meta, {"key": key}, {"value": value})


class SharedTokenBucket(TokenBucket):
    """A token bucket every replica draws on, kept in the database: one mailbox's quota
    holds however many processes deliver for it. A take's reservation is made under the
    row's lock, so the next taker, in any replica, waits behind it.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        per_minute: float,
        burst: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(per_minute, burst, clock, sleep)
        self.store, self.name = store, name

    def _reserve(self, step: float) -> float:
        """Spend `step` units now; returns how far the bucket went below empty."""
        with self.store.session() as session:
            insert = _dialect_insert(session, QuotaBucket)
            now = self.clock()
            if insert is not None:
                session.execute(
                    insert.values(
                        name=self.name, tokens=self.capacity, refilled_at=now
                    ).on_conflict_do_nothing()
                )
            row = session.execute(
                sa.select(QuotaBucket.tokens, QuotaBucket.refilled_at)
                .where(QuotaBucket.name == self.name)
                .with_for_update()
            ).one()
            now = self.clock()
            tokens = (
                min(self.capacity, row.tokens + max(0.0, now - row.refilled_at) * self.rate) - step
            )
            session.execute(
                sa.update(QuotaBucket)
                .where(QuotaBucket.name == self.name)
                .values(tokens=tokens, refilled_at=max(now, row.refilled_at))
            )
        return -tokens


def expire_dead_claims(
    session: Session,
    host: str,
    alive: Callable[[int], bool],
    now: datetime,
    settle: timedelta = timedelta(0),
) -> int:
    """End the leases of processes on this host that no longer exist (killed, crashed).

    Their follow-ups are due again `settle` from now instead of after the whole lease: a
    call the dead process made may still be finishing at Google, and a look for its draft
    before then could miss it. The attempt was counted at the claim, so the next try looks
    before it creates.
    """
    held = FollowUp.state.in_((State.claimed, State.withdrawing))
    owners = session.execute(
        sa.select(FollowUp.claimed_by).where(held, FollowUp.lease_until > now + settle).distinct()
    ).scalars()
    dead = []
    for owner in owners:
        name, _, pid = (owner or "").rpartition(":")
        if name == host and pid.isdigit() and not alive(int(pid)):
            dead.append(owner)
    if not dead:
        return 0
    return session.execute(
        sa.update(FollowUp)
        .where(held, FollowUp.claimed_by.in_(dead), FollowUp.lease_until > now + settle)
        .values(lease_until=now + settle)
    ).rowcount


def release_claim(session: Session, follow_up_id: int, fence: int, state: str) -> None:
    """Give back a claim that was not worked on (shutting down): no attempt was made."""
    record_result(session, follow_up_id, fence, state=state, attempts=FollowUp.attempts - 1)


def due_backlog(session: Session, now: datetime) -> int:
    """Follow-ups due now and not yet delivered (or, revoked, not yet taken back)."""
    return session.execute(
        sa.select(sa.func.count())
        .select_from(FollowUp)
        .where(
            sa.or_(
                sa.and_(FollowUp.state == State.planned, FollowUp.due_at <= now),
                sa.and_(FollowUp.state == State.waiting, FollowUp.next_attempt_at <= now),
                sa.and_(
                    FollowUp.state == State.withdraw,
                    sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= now),
                ),
            )
        )
    ).scalar_one()


def recent_failures(session: Session, since: datetime) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(FollowUp)
        .where(FollowUp.state == State.failed, FollowUp.updated_at >= since)
    ).scalar_one()


def read_cursor(session: Session, name: str) -> datetime | None:
    return session.execute(sa.select(Cursor.position).where(Cursor.name == name)).scalar()


def write_cursor(session: Session, name: str, position: datetime, *, prefix: str) -> None:
    """Move a planning cursor; cursors for other rule sets of the same table are dropped."""
    session.execute(sa.delete(Cursor).where(Cursor.name.startswith(prefix), Cursor.name != name))
    _put(
        session,
        Cursor,
        {"name": name},
        {"position": position, "last_id": 0, "updated_at": now_utc()},
    )


# Planning's reads and the claim run on every tick: their statements are built once, with
# bind parameters, so a tick reuses SQLAlchemy's compiled SQL instead of building a query
# (aliases, joins) each time. That was most of an idle tick's cost.


def _changed(model, columns, has_since: bool, has_after: bool):
    query = (
        sa.select(*columns)
        .order_by(model.updated_at, model.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if has_since:
        query = query.where(model.updated_at > sa.bindparam("since", type_=UTCDateTime))
    if has_after:
        query = query.where(
            sa.tuple_(model.updated_at, model.id)
            > sa.tuple_(
                sa.bindparam("after_at", type_=UTCDateTime),
                sa.bindparam("after_id", type_=sa.Integer),
            )
        )
    return query


def _page_params(since: datetime | None, after: tuple[datetime, int] | None, limit: int) -> dict:
    params: dict = {"limit": limit}
    if since is not None:
        params["since"] = since
    if after is not None:
        params["after_at"], params["after_id"] = after
    return params


@cache
def _changed_referrals_query(has_since: bool, has_after: bool):
    doctor = sa.orm.aliased(Physician)
    prescriber = sa.orm.aliased(Physician)
    query = _changed(
        Referral,
        (
            Referral.id,
            Referral.ref,
            Referral.updated_at,
            Referral.received_on,
            Referral.closed_on,
            Referral.release_on_file,
            Referral.release_on,
            Referral.prescriber_release_on_file,
            Referral.prescriber_release_on,
            doctor.specialty,
            Referral.physician_id,
            doctor.email.label("physician_email"),
            doctor.email_check.label("physician_email_check"),
            Referral.prescriber_id,
            prescriber.email.label("prescriber_email"),
            prescriber.email_check.label("prescriber_email_check"),
        ),
        has_since,
        has_after,
    )
    return query.join(doctor, doctor.id == Referral.physician_id).outerjoin(
        prescriber, prescriber.id == Referral.prescriber_id
    )


def changed_referrals(
    session: Session, since: datetime | None, after: tuple[datetime, int] | None, limit: int
) -> Sequence[sa.Row]:
    """Referrals changed since a time, with what planning needs of their physicians.

    Keyset-paged on (updated_at, id), so each page costs the same however large the table.
    """
    query = _changed_referrals_query(since is not None, after is not None)
    return session.execute(query, _page_params(since, after, limit)).all()


def referrals_by_id(session: Session, ids: Sequence[int]) -> Sequence[sa.Row]:
    """The same rows as `changed_referrals`, for chosen referrals (planned again at once)."""
    query = _changed_referrals_query(False, False).where(Referral.id.in_(ids))
    return session.execute(query, {"limit": len(ids)}).all()


@cache
def _changed_visits_query(has_since: bool, has_after: bool):
    query = _changed(
        Visit,
        (
            Visit.id,
            Visit.updated_at,
            Visit.visited_on,
            sa.func.coalesce(Visit.specialty, Physician.specialty).label("specialty"),
            Visit.physician_id,
            Physician.email.label("physician_email"),
            Physician.email_check.label("physician_email_check"),
        ),
        has_since,
        has_after,
    )
    return query.outerjoin(Physician, Physician.id == Visit.physician_id)


def changed_visits(
    session: Session, since: datetime | None, after: tuple[datetime, int] | None, limit: int
) -> Sequence[sa.Row]:
    query = _changed_visits_query(since is not None, after is not None)
    return session.execute(query, _page_params(since, after, limit)).all()


def follow_ups_by_id(session: Session, ids: Sequence[int]) -> Sequence[FollowUp]:
    return (
        session.execute(sa.select(FollowUp).where(FollowUp.id.in_(ids)).order_by(FollowUp.id))
        .scalars()
        .all()
    )


def ledger_rows(session: Session, subject_type: str, ids: Sequence[int]) -> Sequence[FollowUp]:
    return (
        session.execute(
            sa.select(FollowUp).where(
                FollowUp.subject_type == subject_type, FollowUp.subject_id.in_(ids)
            )
        )
        .scalars()
        .all()
    )


def _dialect_insert(session: Session, model):
    """The dialect's INSERT, which knows ON CONFLICT (replicas may race to insert a row)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other databases: a plain insert, conflicts raise
        return None
    return insert(model)


def _insert(session: Session):
    """INSERT ... ON CONFLICT DO NOTHING for the ledger's unique key (planners may race)."""
    insert = _dialect_insert(session, FollowUp)
    if insert is None:  # pragma: no cover
        return sa.insert(FollowUp)
    return insert.on_conflict_do_nothing(index_elements=["rule", "subject_type", "subject_id"])


def _put(session: Session, model, key: dict, values: dict) -> None:
    """Insert or update one row by its primary key, in one statement where the dialect can."""
    insert = _dialect_insert(session, model)
    if insert is None:  # pragma: no cover
        if not session.execute(sa.update(model).filter_by(**key).values(**values)).rowcount:
            session.execute(sa.insert(model).values(**key, **values))
        return
    session.execute(
        insert.values(**key, **values).on_conflict_do_update(index_elements=list(key), set_=values)
    )


def insert_follow_ups(session: Session, rows: Sequence[dict]) -> None:
    if rows:
        stamp = now_utc()
        session.execute(
            _insert(session),
            [
                {
                    "next_attempt_at": None,
                    "external_id": None,
                    "attempts": 0,
                    "claimed_by": None,
                    "lease_until": None,
                    "fence": 0,
                    "created_at": stamp,
                    "updated_at": stamp,
                    **row,
                }
                for row in rows
            ],
        )


def update_follow_ups(session: Session, updates: Sequence[tuple[int, dict]]) -> None:
    """Apply planning's updates, only to rows that have not been claimed meanwhile."""
    stamp = now_utc()
    for follow_up_id, values in updates:
        session.execute(
            sa.update(FollowUp)
            .where(
                FollowUp.id == follow_up_id,
                FollowUp.state.not_in((State.claimed, State.withdrawing)),
            )
            .values(**values, updated_at=stamp)
        )


def cancel_orphans(session: Session, enabled_rules: Sequence[str]) -> int:
    """Cancel pending follow-ups whose rule is gone or disabled, or whose subject is gone."""
    pending = FollowUp.state.in_((State.planned, State.held))
    count = session.execute(
        sa.update(FollowUp)
        .where(pending, FollowUp.rule.not_in(enabled_rules) if enabled_rules else sa.true())
        .values(
            state=State.cancelled, reason="its rule was disabled or removed", updated_at=now_utc()
        )
    ).rowcount
    for subject_type, model in (("referral", Referral), ("visit", Visit)):
        missing = ~sa.exists().where(model.id == FollowUp.subject_id)
        count += session.execute(
            sa.update(FollowUp)
            .where(pending, FollowUp.subject_type == subject_type, missing)
            .values(
                state=State.cancelled,
                reason=f"the {subject_type} was removed",
                updated_at=now_utc(),
            )
        ).rowcount
    return count


_NOW = sa.bindparam("now", type_=UTCDateTime)


def _claiming(due, order, state: str, dialect: str):
    """One statement that claims the first `limit` rows matching `due`: the new state, a
    lease and a fence, the attempt counted; it returns (id, fence) of each."""
    pick = (
        sa.select(FollowUp.id)
        .where(due)
        .order_by(*order)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    return (
        sa.update(FollowUp)
        .where(FollowUp.id.in_(pick.scalar_subquery()))
        .values(
            state=state,
            claimed_by=sa.bindparam("owner"),
            lease_until=sa.bindparam("lease_until", type_=UTCDateTime),
            fence=FollowUp.fence + 1,
            attempts=FollowUp.attempts + 1,
            updated_at=_NOW,
        )
        .returning(FollowUp.id, FollowUp.fence)
        .execution_options(synchronize_session=False)
    )


@cache
def _claim_statement(dialect: str):
    due = sa.or_(
        sa.and_(FollowUp.state == State.planned, FollowUp.due_at <= _NOW),
        sa.and_(FollowUp.state == State.waiting, FollowUp.next_attempt_at <= _NOW),
        sa.and_(FollowUp.state == State.claimed, FollowUp.lease_until < _NOW),
    )
    return _claiming(due, (FollowUp.due_at, FollowUp.id), State.claimed, dialect)


def claim_due(
    session: Session, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[tuple[int, int]]:
    """Claim due follow-ups in one statement; returns (id, fence) for each.

    A claim is a lease: if its holder dies, the row is due again once the lease expires. The
    fence goes up with every claim, so a late holder cannot record over newer work. The
    attempt is counted here, before any call, so that after a crash the next try knows an
    earlier one may have reached Google and looks before creating. On PostgreSQL the rows
    are picked `FOR UPDATE SKIP LOCKED`: replicas claiming at once take different rows.
    """
    statement = _claim_statement(session.get_bind().dialect.name)
    claimed = session.execute(
        statement, {"now": now, "owner": owner, "lease_until": now + lease, "limit": limit}
    ).all()
    return sorted((row.id, row.fence) for row in claimed)


@cache
def _withdraw_statement(dialect: str):
    due = sa.or_(
        sa.and_(
            FollowUp.state == State.withdraw,
            sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= _NOW),
        ),
        sa.and_(FollowUp.state == State.withdrawing, FollowUp.lease_until < _NOW),
    )
    return _claiming(due, (FollowUp.id,), State.withdrawing, dialect)


def claim_withdrawals(
    session: Session, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[tuple[int, int]]:
    """Claim notes to take back (a release was revoked), as `claim_due` claims deliveries:
    a lease, a fence, and the attempt counted before any call."""
    statement = _withdraw_statement(session.get_bind().dialect.name)
    claimed = session.execute(
        statement, {"now": now, "owner": owner, "lease_until": now + lease, "limit": limit}
    ).all()
    return sorted((row.id, row.fence) for row in claimed)


def record_result(session: Session, follow_up_id: int, fence: int, **values) -> bool:
    """Store a delivery's (or a withdrawal's) outcome if the claim is still ours (the fence
    matches)."""
    done = session.execute(
        sa.update(FollowUp)
        .where(
            FollowUp.id == follow_up_id,
            FollowUp.fence == fence,
            FollowUp.state.in_((State.claimed, State.withdrawing)),
        )
        .values(**values, claimed_by=None, lease_until=None, updated_at=now_utc())
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def load_bundle(session: Session, follow_up_id: int) -> Bundle | None:
    follow_up = session.get(FollowUp, follow_up_id)
    if follow_up is None:
        return None
    bundle = Bundle(follow_up)
    if follow_up.subject_type == "referral":
        bundle.referral = session.get(Referral, follow_up.subject_id)
        if bundle.referral is not None:
            bundle.physician = session.get(Physician, bundle.referral.physician_id)
            if bundle.referral.prescriber_id:
                bundle.prescriber = session.get(Physician, bundle.referral.prescriber_id)
    else:
        bundle.visit = session.get(Visit, follow_up.subject_id)
        if bundle.visit is not None:
            bundle.practice = session.get(Practice, bundle.visit.practice_id)
            if bundle.visit.physician_id:
                bundle.physician = session.get(Physician, bundle.visit.physician_id)
    if bundle.physician is not None and bundle.practice is None and bundle.physician.practice_id:
        bundle.practice = session.get(Practice, bundle.physician.practice_id)
    return bundle


def drafts_to_sync(session: Session, now: datetime, limit: int) -> Sequence[FollowUp]:
    """Delivered Gmail drafts whose next check is due, those never checked first."""
    return (
        session.execute(
            sa.select(FollowUp)
            .where(
                FollowUp.state == State.done,
                FollowUp.kind == "draft",
                FollowUp.external_id.startswith("gmail:"),
                sa.or_(FollowUp.next_attempt_at.is_(None), FollowUp.next_attempt_at <= now),
            )
            .order_by(FollowUp.next_attempt_at.is_not(None), FollowUp.next_attempt_at, FollowUp.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )


def record_sync(session: Session, follow_up_id: int, **values) -> None:
    """Store what sync learned about a delivered draft (only while it is still `done`)."""
    session.execute(
        sa.update(FollowUp)
        .where(FollowUp.id == follow_up_id, FollowUp.state == State.done)
        .values(**values, updated_at=now_utc())
    )
