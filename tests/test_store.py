"""The database: private SQLite files, WAL, migrations, and refusing a newer schema."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from followupd.models import FollowUp, Physician, Referral
from followupd.store import Store, StoreError


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "db" / "followupd.sqlite3"
    store = Store(f"sqlite:///{path}")
    with store.session() as session:
        session.add(Physician(key="a|", name="A"))
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() >= 5000
        for suffix in ("", "-wal", "-shm"):
            file = path.with_name(path.name + suffix)
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, suffix
    store.close()


def test_an_existing_world_readable_database_is_made_private(tmp_path):
    path = tmp_path / "followupd.sqlite3"
    path.touch()
    os.chmod(path, 0o644)
    Store(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_migrations_create_every_table_and_rerun_as_no_ops(db_url):
    Store(db_url).close()
    store = Store(db_url)  # second open: already at head
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"practice", "physician", "referral", "visit", "follow_up", "alembic_version"} <= tables
    store.close()


def _columns(engine: sa.Engine, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns(table)}


def test_a_migration_that_fails_halfway_leaves_the_schema_as_it_was(db_url):
    """A migration stopped between two statements (here: its last index cannot be made)
    must leave no column added under the old revision: else every later start fails on a
    duplicate column, and the database needs a person with sqlite3 to mend it."""
    from alembic import command

    from followupd.store.database import SCHEMA_HEAD, _alembic_config

    Store(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:  # one revision back, and a name the last step wants
        alembic = _alembic_config()
        alembic.attributes["connection"] = connection
        command.downgrade(alembic, "-1")
        connection.exec_driver_sql("CREATE INDEX ix_physician_updated ON physician (name)")
    before = _columns(engine, "follow_up")
    with pytest.raises(StoreError):
        Store(db_url)
    assert _columns(engine, "follow_up") == before  # nothing of the migration stayed
    with engine.begin() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() != (
            SCHEMA_HEAD
        )
        connection.exec_driver_sql("DROP INDEX ix_physician_updated")
    engine.dispose()
    store = Store(db_url)  # the obstacle gone, the same migration goes through
    assert "basis_id" in _columns(store.engine, "follow_up")
    store.close()


def test_an_upgrade_over_a_reference_that_already_dangled_goes_through(tmp_path):
    """A row whose parent was deleted by hand (the sqlite3 shell has foreign keys off) is
    not the upgrade's doing: the upgrade must not refuse the database for it."""
    import sqlite3

    path = tmp_path / "followupd.sqlite3"
    url = f"sqlite:///{path}"
    _one_revision_back(url)
    with sqlite3.connect(path) as connection:  # a release of a referral that is not there
        connection.execute(ORPHAN_RELEASE)
    connection.close()
    Store(url).close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM release").fetchone() == (1,)
    connection.close()


def test_an_upgrade_that_would_leave_a_reference_dangling_is_refused(tmp_path):
    """Migrations run with foreign keys off (SQLite's way to rebuild a table without its
    cascades firing), so what a migration made point at nothing is refused before the
    commit: here, a row made dangling between the two looks."""
    from followupd.store.database import _dangling, _no_new_dangling

    path = tmp_path / "followupd.sqlite3"
    Store(f"sqlite:///{path}").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        before = _dangling(connection)
        connection.exec_driver_sql(ORPHAN_RELEASE)
        with pytest.raises(StoreError, match="would leave 1 row of release pointing"):
            _no_new_dangling(connection, before)
        _no_new_dangling(connection, _dangling(connection))  # the same ones again: fine
    engine.dispose()


ORPHAN_RELEASE = (
    "INSERT INTO release (referral_id, recipient, granted_on, granted_by, created_at, "
    "updated_at) VALUES (999, 'physician', '2026-01-01', 'cli', '2026-01-01', '2026-01-01')"
)


def _one_revision_back(url: str) -> None:
    from alembic import command

    from followupd.store.database import _alembic_config

    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        alembic = _alembic_config()
        alembic.attributes["connection"] = connection
        command.downgrade(alembic, "-1")
    engine.dispose()


def test_a_migration_lock_held_too_long_is_said_not_waited_for_ever(tmp_path, monkeypatch):
    """A process stuck while it migrates held every later command, silently, for ever."""
    import fcntl

    from followupd.store import database

    path = tmp_path / "followupd.sqlite3"
    Store(f"sqlite:///{path}").close()
    monkeypatch.setattr(database, "MIGRATION_WAIT", 0.3)
    held = os.open(f"{path}.migrate.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(StoreError, match=r"waited 0 s for .*migrate\.lock: .*fuser"):
            Store(f"sqlite:///{path}")
    finally:
        os.close(held)
    Store(f"sqlite:///{path}").close()  # let go of, it is taken at once


@pytest.mark.filterwarnings("ignore:Selection of the SingletonThreadPool")  # SQLAlchemy's
@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:kept?mode=memory&cache=shared&uri=true"],
)
def test_an_in_memory_database_is_migrated_too(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(url)
    assert list(tmp_path.iterdir()) == []  # no file named after it
    try:
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"referral", "follow_up", "alembic_version"} <= tables
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore:Query string argument")  # SQLAlchemy: mode without uri
@pytest.mark.filterwarnings("ignore:Selection of the SingletonThreadPool")
@pytest.mark.parametrize(
    ("url", "made"),
    [
        ("sqlite:///file:kept?mode=memory", "file:kept"),  # no uri=true: a file by that name
        ("sqlite:///file:real.sqlite3?uri=true", "real.sqlite3"),  # the file the URI names
    ],
)
def test_a_sqlite_file_named_in_uri_form_is_the_one_made_private(url, made, tmp_path, monkeypatch):
    """`mode=memory` is memory only as a URI; a URI names a file by its path: that file is
    the database, made 0600 with its migration lock beside it, and no decoy is left."""
    from followupd.store import sqlite_file

    monkeypatch.chdir(tmp_path)
    Store(url).close()
    assert stat.S_IMODE((tmp_path / made).stat().st_mode) == 0o600
    assert sqlite_file(url) == Path(made)  # what a backup copies
    assert (tmp_path / f"{made}.migrate.lock").exists()
    assert not (tmp_path / "file:real.sqlite3").exists()


def test_schema_head_constant_names_the_newest_migration():
    """The fast "already migrated" check compares against SCHEMA_HEAD: a new migration must
    move it, or databases would never be upgraded."""
    from alembic.script import ScriptDirectory

    from followupd.store import SCHEMA_HEAD, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == SCHEMA_HEAD


def test_a_database_from_a_newer_followupd_is_refused(db_url):
    store = Store(db_url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    with pytest.raises(StoreError, match="newer followupd"):
        Store(db_url)


def test_times_come_back_as_utc(db_url):
    store = Store(db_url)
    due = datetime(2026, 3, 8, 8, 30, tzinfo=UTC) + timedelta(hours=5)
    with store.session() as session:
        session.add(
            FollowUp(
                rule="r",
                subject_type="referral",
                subject_id=1,
                kind="draft",
                due_at=due.astimezone(datetime.now().astimezone().tzinfo),
            )
        )
    with store.session() as session:
        row = session.execute(sa.select(FollowUp)).scalar_one()
    assert row.due_at == due and row.due_at.tzinfo == UTC
    store.close()


def test_ledger_is_unique_per_rule_and_subject(db_url):
    store = Store(db_url)
    due = datetime.now(UTC)
    with store.session() as session:
        session.add(
            FollowUp(rule="r", subject_type="referral", subject_id=1, kind="draft", due_at=due)
        )
    with pytest.raises(sa.exc.IntegrityError), store.session() as session:
        session.add(
            FollowUp(rule="r", subject_type="referral", subject_id=1, kind="draft", due_at=due)
        )
    store.close()


def test_status_json_is_valid_and_has_no_patient_fields(cli, db_url):
    store = Store(db_url)
    with store.session() as session:
        physician = Physician(key="dr x|", name="Dr X")
        session.add(physician)
        session.flush()
        referral = Referral(
            ref="R-1",
            received_on=date(2026, 11, 2),
            physician_id=physician.id,
            client_name="Philippa Strand",
            presenting_problem="Bulimia",
        )
        session.add(referral)
        session.flush()
        session.add(
            FollowUp(
                rule="referral-acknowledgement",
                subject_type="referral",
                subject_id=referral.id,
                kind="draft",
                state="held",
                reason="no release of information on file for referral R-1",
                due_at=datetime(2026, 11, 3, 14, tzinfo=UTC),
            )
        )
    store.close()
    ran = cli("status", "--json")
    assert ran.code == 0
    [line] = ran.stdout.strip().splitlines()
    record = json.loads(line)
    assert set(record) == {
        "id",
        "rule",
        "kind",
        "state",
        "due_at",
        "external_id",
        "attempts",
        "reason",
    }
    assert record["state"] == "held" and record["due_at"] == "2026-11-03T14:00:00+00:00"
    table = cli("status")
    assert "held" in table.stdout
    for value in ("Philippa", "Strand", "Bulimia"):
        assert value not in ran.stdout + table.stdout
