"""Backups and restore: `followupd backup` copies the SQLite database consistently while the
daemon writes, a SIGKILL mid-copy never leaves a half file under a backup's name, rotation
touches only followupd's own files, and `followupd restore` refuses a damaged, foreign or
newer copy and a home a daemon holds, and keeps the database it replaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import keep_output, run_cli, wait_for
from followupd import config as configuration
from followupd.cli import app
from followupd.config import ConfigError
from followupd.store import (
    BackupError,
    CopyRefused,
    Store,
    backups_in,
    check_copy,
    default_target,
    make_backup,
    newest_backup_time,
    rotate,
)
from followupd.store.backup import backup_name

RECEIVED = (date.today() - timedelta(days=10)).isoformat()
OURS = re.compile(r"followupd-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?\.sqlite3")


# --- helpers ------------------------------------------------------------------------------


def followupd(home: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """A command in this process, on the home's own SQLite file (the default database)."""
    result = CliRunner().invoke(app, ["--home", str(home), *args], input=input)
    keep_output(home.parent, result.stderr, result.stdout)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"]}


def database(home: Path) -> Path:
    return home / "followupd.sqlite3"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count(path: Path, sql: str) -> int:
    """One number read from a database file as it is on disk, changing nothing."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True) as connection:
        return connection.execute(sql).fetchone()[0]


def add_referrals(home: Path, refs: list[str]) -> None:
    for ref in refs:
        code, _, err = followupd(
            home,
            "referral",
            "add",
            "--ref",
            ref,
            "--physician",
            "Dr. Lena Brook",
            "--physician-email",
            "brook@harbor.example",
            "--client-name",
            f"Client {ref}",
            "--received-on",
            RECEIVED,
        )
        assert code == 0, err


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".followupd-backup-*")) if folder.exists() else []


def ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if OURS.fullmatch(p.name))


def bulk_referrals(path: Path, how_many: int) -> None:
    """Many referrals through SQL: a database large enough that a copy takes a while."""
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO physician (key, name, created_at, updated_at) "
            "VALUES ('dr. bulk|', 'Dr. Bulk', '2026-01-01', '2026-01-01')"
        )
        connection.executemany(
            "INSERT INTO referral (ref, received_on, physician_id, client_name, "
            "presenting_problem, release_on_file, prescriber_release_on_file, created_at, "
            "updated_at) VALUES (?, '2025-01-01', (SELECT id FROM physician WHERE key = "
            "'dr. bulk|'), ?, ?, 0, 0, '2025-01-01', '2025-01-01')",
            ((f"B-{i}", f"Bulk Client {i}", "x" * 300) for i in range(how_many)),
        )
    connection.close()


def start_daemon(home: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "followupd", "--home", str(home), "run"],
        stdout=handle,
        stderr=handle,
        env=env(),
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def edit_config(home: Path, *changes: tuple[str, str]) -> None:
    path = home / "followupd.yaml"
    text = path.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def with_backup(home: Path, section: str, *changes: tuple[str, str]) -> None:
    """The home's configuration with its `backup:` section replaced by `section`."""
    path = home / "followupd.yaml"
    kept, inside = [], False
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("backup:"):
            inside = True
            continue
        if inside and line.strip() and not line[0].isspace() and not line.startswith("#"):
            inside = False
        if not inside:
            kept.append(line)
    text = "".join(kept) + "\n" + section
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def drafts(home: Path) -> int:
    folder = home / "outbox" / "drafts"
    return len(list(folder.glob("*.eml"))) if folder.exists() else 0


@pytest.fixture
def filled(home: Path) -> Path:
    """A home with a few referrals in its default SQLite database."""
    add_referrals(home, ["R-1", "R-2", "R-3"])
    return home


# --- a backup while the daemon delivers ---------------------------------------------------


@pytest.mark.slow  # a daemon drafting 1,500 referrals, and backups as it goes: 10-30 s
def test_a_backup_taken_while_the_daemon_drafts_is_consistent(home, tmp_path):
    edit_config(
        home, ("poll: 5 minutes", "poll: 1 second"), ("confirm_over: 50", "confirm_over: null")
    )
    total = 1500
    csv_path = tmp_path / "referrals.csv"
    csv_path.write_text(
        "ref,received_on,physician,physician_email,client_name,release_on_file\n"
        + "".join(
            f"R-{i},{RECEIVED},Dr. P{i % 7},p{i % 7}@clinic.example,Client {i},yes\n"
            for i in range(total)
        )
    )
    code, _, err = followupd(home, "import", "referrals", str(csv_path))
    assert code == 0, err
    log = home / "daemon.log"
    daemon = start_daemon(home, log)
    try:
        assert wait_for(lambda: drafts(home) >= 20, 60), log.read_text()[-2000:]
        overlapped = 0
        for n in range(3):
            done_before = count(database(home), "SELECT count(*) FROM follow_up")  # a floor
            drafted_before = drafts(home)
            target = tmp_path / f"while-{n}.sqlite3"
            ran = run_cli("--home", str(home), "backup", str(target), log_to=tmp_path, env=env())
            drafted_after = drafts(home)
            assert ran.returncode == 0, ran.stderr
            assert str(target) in ran.stdout and "MB" in ran.stdout
            overlapped += drafted_after > drafted_before
            copy = check_copy(target)
            assert copy.revision
            assert count(target, "PRAGMA integrity_check") == "ok"
            assert count(target, "SELECT count(*) FROM referral") == total
            made = count(target, "SELECT count(*) FROM follow_up WHERE state = 'done'")
            assert made <= drafted_after  # recorded only after its file was written
            assert count(target, "SELECT count(*) FROM follow_up") >= min(done_before, total)
            assert count(target, "SELECT count(*) FROM physician") == 7
        assert overlapped, "no backup was taken while drafts were being made"
        assert daemon.poll() is None
    finally:
        stop(daemon)


# --- a SIGKILL mid-backup ---------------------------------------------------------------


def kill_backup_once(home: Path, threshold: int) -> None:
    """Start `followupd backup` and SIGKILL it once its temporary file holds more than
    `threshold` bytes."""
    folder = home / "backups"
    proc = subprocess.Popen(
        [sys.executable, "-m", "followupd", "--home", str(home), "backup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )

    def copying() -> bool:
        files = [p for p in temporaries(folder) if p.name.endswith(".tmp")]
        return proc.poll() is not None or any(
            p.exists() and p.stat().st_size > threshold for p in files
        )

    try:
        assert wait_for(copying, 60, step=0.001)
        assert proc.poll() is None, "the backup finished before it could be killed"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # 100,000 referrals, then three backups and two kills: 10-30 s
def test_a_kill_mid_backup_leaves_the_previous_backup_whole(home):
    bulk_referrals(database(home), 100_000)
    folder = home / "backups"
    ran = run_cli("--home", str(home), "backup", log_to=home.parent, env=env())
    assert ran.returncode == 0, ran.stderr
    [previous] = ours(folder)
    whole = digest(folder / previous)
    size = (folder / previous).stat().st_size
    for threshold in (0, size // 2):  # at once, and halfway through the copy
        kill_backup_once(home, threshold)
        assert digest(folder / previous) == whole  # the previous backup is byte-identical
        assert ours(folder) == [previous]  # and no partial file carries a backup's name
        assert temporaries(folder)  # the killed copy's own file, under its temporary name
    ran = run_cli("--home", str(home), "backup", log_to=home.parent, env=env())
    assert ran.returncode == 0, ran.stderr
    assert temporaries(folder) == []  # the next backup removed what the kills left
    names = ours(folder)
    assert len(names) == 2 and previous in names
    for name in names:
        assert check_copy(folder / name).revision
        assert count(folder / name, "SELECT count(*) FROM referral") == 100_000


# --- restore refuses ---------------------------------------------------------------------


def _refused(home: Path, copy: Path, *words: str) -> None:
    """`restore` exits 2 with one line saying what to do, and leaves the database as it was."""
    before = digest(database(home))
    code, _, err = followupd(home, "restore", str(copy), "--yes")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert digest(database(home)) == before
    assert not list(home.glob("followupd.sqlite3.before-restore-*"))
    assert not list(home.glob(".followupd-restore-*"))


def test_restore_refuses_a_damaged_copy(filled, tmp_path):
    bulk_referrals(database(filled), 2000)  # pages enough that the middle is a table's
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    data = bytearray(copy.read_bytes())
    middle = (len(data) // 2) // 4096 * 4096
    data[middle : middle + 3 * 4096] = b"\x5a" * (3 * 4096)  # three pages overwritten
    copy.write_bytes(bytes(data))
    with pytest.raises(CopyRefused, match="damaged"):
        check_copy(copy)
    _refused(filled, copy, "damaged", "another backup")


def test_restore_refuses_a_copy_from_a_newer_followupd(filled, tmp_path):
    copy = tmp_path / "newer.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    with sqlite3.connect(copy) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.close()
    _refused(filled, copy, "9999", "newer followupd", "upgrade followupd")


def test_restore_refuses_a_file_that_is_not_a_database(filled, tmp_path):
    copy = tmp_path / "notes.sqlite3"
    copy.write_text("referral notes, not a database\n" * 200)
    _refused(filled, copy, "not a SQLite database")
    empty = tmp_path / "other.sqlite3"
    with sqlite3.connect(empty) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    _refused(filled, empty, "not a followupd database")
    code, _, err = followupd(filled, "restore", str(tmp_path / "missing.sqlite3"), "--yes")
    assert code == 2 and "missing.sqlite3" in err and "Traceback" not in err


def test_restore_off_a_terminal_needs_yes(filled, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    before = digest(database(filled))
    code, _, err = followupd(filled, "restore", str(copy))
    assert code == 2 and "--yes" in err
    assert digest(database(filled)) == before


def test_restore_refuses_a_home_a_daemon_holds(filled, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    log = filled / "daemon.log"
    daemon = start_daemon(filled, log)
    try:
        assert wait_for(lambda: "event=started" in log.read_text(), 30), log.read_text()
        code, _, err = followupd(filled, "restore", str(copy), "--yes")
        assert code == 2, err
        assert f"pid {daemon.pid}" in err and "stop it first" in err, err
        assert not list(filled.glob("followupd.sqlite3.before-restore-*"))
        assert daemon.poll() is None
    finally:
        stop(daemon)
    assert count(database(filled), "SELECT count(*) FROM referral") == 3


def test_backup_and_restore_of_postgresql_point_to_pg_dump(home):
    url = {"FOLLOWUPD_DATABASE_URL": "postgresql+psycopg://followupd@127.0.0.1:9/practice"}
    for args, tool in ((["backup"], "pg_dump"), (["restore", "x.dump", "--yes"], "pg_restore")):
        result = CliRunner().invoke(app, ["--home", str(home), *args], env=url)
        assert result.exit_code == 2, result.stderr
        assert tool in result.stderr and "operations.md" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# --- restore -----------------------------------------------------------------------------


UNTRIED = "SELECT count(*) FROM follow_up WHERE attempts = 0 AND state IN ('planned', 'held')"


def test_a_restore_round_trip_keeps_the_old_database_aside(filled, tmp_path):
    code, _, err = followupd(filled, "run", "--once")  # plans (held: no release on file)
    assert code == 0, err
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    assert count(copy, UNTRIED) > 0
    add_referrals(filled, ["R-after"])
    code, out, err = followupd(filled, "restore", str(copy), "--yes")
    assert code == 0, err
    # what the copy has not seen made may have been made since: its first delivery looks
    # for the draft before making it, as after any try
    assert count(database(filled), UNTRIED) == 0
    [aside] = filled.glob("followupd.sqlite3.before-restore-*")
    assert str(aside) in out
    code, listed, _ = followupd(filled, "referral", "list")
    assert code == 0 and "R-1" in listed and "R-after" not in listed  # the change is gone
    assert count(aside, "SELECT count(*) FROM referral WHERE ref = 'R-after'") == 1
    assert os.stat(aside).st_mode & 0o777 == 0o600
    add_referrals(filled, ["R-new"])  # the restored database is a working one
    assert count(database(filled), "PRAGMA integrity_check") == "ok"


def test_restore_folds_a_dead_writers_wal_into_the_database_it_sets_aside(filled, tmp_path):
    """A process that died left committed rows in the -wal: they go aside with the old
    database, and the restored file never reads a WAL that is not its own."""
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"UPDATE referral SET ref = 'R-wal' WHERE ref = 'R-2'\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(database(filled))], check=True)
    wal = Path(f"{database(filled)}-wal")
    assert wal.exists() and wal.stat().st_size > 0
    code, _, err = followupd(filled, "restore", str(copy), "--yes")
    assert code == 0, err
    [aside] = filled.glob("followupd.sqlite3.before-restore-*")
    assert count(aside, "SELECT count(*) FROM referral WHERE ref = 'R-wal'") == 1  # kept
    assert not list(filled.glob("followupd.sqlite3.before-restore-*-wal"))  # folded in
    assert count(database(filled), "SELECT count(*) FROM referral WHERE ref = 'R-wal'") == 0
    with sqlite3.connect(database(filled)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        refs = {row[0] for row in connection.execute("SELECT ref FROM referral")}
    connection.close()
    assert refs == {"R-1", "R-2", "R-3"}


def test_restore_refuses_a_database_another_command_has_open(filled, tmp_path, monkeypatch):
    """A file renamed under an open connection would take that connection's writes (and
    its WAL) with it: while another process holds the database open, nothing is moved."""
    from followupd.store import backup as mechanics

    monkeypatch.setattr(mechanics, "IN_USE_TIMEOUT", 0.2)
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM referral').fetchone(); print('open', flush=True); "
            "sys.stdin.read()",
            str(database(filled)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(BackupError, match="in use"):
            mechanics.restore(f"sqlite:///{database(filled)}", copy)
    finally:
        holder.communicate("")
    assert not list(filled.glob("followupd.sqlite3.before-restore-*"))
    assert not list(filled.glob(".followupd-restore-*"))
    assert count(database(filled), "SELECT count(*) FROM referral") == 3


def test_an_older_schema_is_restored_and_upgraded_on_open(filled, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    with sqlite3.connect(copy) as connection:  # as if made by the followupd before
        connection.execute("UPDATE alembic_version SET version_num = '0006'")
    connection.close()
    assert check_copy(copy).revision == "0006"
    code, out, err = followupd(filled, "restore", str(copy), "--yes")
    assert code == 0, err
    assert "0006" in out


# --- rotation, modes, names --------------------------------------------------------------


def test_keep_leaves_the_newest_of_ours_and_nothing_else_is_touched(filled, tmp_path):
    folder = filled / "backups"
    folder.mkdir(mode=0o700)
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0  # a backup of this home, to name
    old = [f"followupd-2020010{d}T030000Z.sqlite3" for d in range(1, 5)]
    for name in old:
        (folder / name).write_bytes(copy.read_bytes())
    Path(f"{folder / old[0]}-journal").write_text("its journal")
    strangers = [
        "notes.txt",
        "followupd-manual.sqlite3",
        "followupd-20200101T030000Z.sqlite3.bak",
        "Followupd-20200101T030000Z.sqlite3",
        "followupd-2020-01-01.sqlite3",
        "followupd-20201301T030000Z.sqlite3",  # month 13: only looks like ours
        "followupd-\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661T030000Z.sqlite3",  # not ASCII
    ]
    for name in strangers:
        (folder / name).write_text("x")
    (folder / "followupd-19990101T000000Z.sqlite3").mkdir()  # a folder: never ours
    code, out, err = followupd(filled, "backup", "--keep", "3")
    assert code == 0, err
    assert not (folder / old[0]).exists() and not (folder / old[1]).exists()
    assert (folder / old[2]).exists() and (folder / old[3]).exists()
    assert (folder / "followupd-19990101T000000Z.sqlite3").is_dir()
    for name in strangers:
        assert (folder / name).read_text() == "x"
    assert "removed 2" in out and len(backups_in(folder)) == 3
    assert not Path(f"{folder / old[0]}-journal").exists()
    with pytest.raises(ValueError):
        rotate(folder, 0, make_backup(f"sqlite:///{database(filled)}", tmp_path / "b.sqlite3"))
    code, _, err = followupd(filled, "backup", "--keep", "0")
    assert code == 2 and "--keep" in err


def test_keep_never_removes_the_backup_it_just_made(filled):
    """A name dated in the future (a clock that was wrong once) must not push out the new
    backup: --keep 1 keeps the one just written."""
    folder = filled / "backups"
    assert followupd(filled, "backup", str(folder / "followupd-20991231T000000Z.sqlite3"))[0] == 0
    code, out, err = followupd(filled, "backup", "--keep", "1")
    assert code == 0, err
    made = re.search(r"wrote (\S+)", out).group(1)
    assert Path(made).exists() and ours(folder) == [Path(made).name]
    assert "removed 1" in out and "20991231" in out


def test_keep_leaves_another_homes_backups_in_a_shared_folder(filled, tmp_path):
    other = tmp_path / "other"
    assert run_cli("init", str(other), log_to=tmp_path).returncode == 0
    add_referrals(other, ["O-1"])
    vault = tmp_path / "vault"
    for _ in range(2):
        assert followupd(other, "backup", f"{vault}/")[0] == 0
    theirs = ours(vault)
    code, out, err = followupd(filled, "backup", str(vault), "--keep", "1")
    assert code == 0, err
    assert "removed" not in out
    assert set(theirs) < set(ours(vault)) and len(ours(vault)) == 3


def test_a_folder_named_with_a_slash_is_made_and_gets_a_dated_name(filled, tmp_path):
    code, _, err = followupd(filled, "backup", f"{tmp_path / 'vault'}/")
    assert code == 0, err
    assert (tmp_path / "vault").is_dir() and len(ours(tmp_path / "vault")) == 1
    assert os.stat(tmp_path / "vault").st_mode & 0o777 == 0o700


def test_a_backup_replaces_only_an_earlier_backup_of_the_same_database(filled, tmp_path):
    target = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(target))[0] == 0
    assert followupd(filled, "backup", str(target))[0] == 0  # its own earlier copy: replaced
    other = tmp_path / "other"
    assert run_cli("init", str(other), log_to=tmp_path).returncode == 0
    add_referrals(other, ["O-1"])
    foreign = [database(other), tmp_path / "app.sqlite3"]
    sqlite3.connect(foreign[1]).execute("CREATE TABLE t (x)").connection.close()
    for path in foreign:
        before = digest(path)
        code, _, err = followupd(filled, "backup", str(path))
        assert code == 2 and "not a backup of this database" in err, err
        assert digest(path) == before
    lock = Path(f"{database(filled)}.lock")
    lock.unlink(missing_ok=True)
    code, _, err = followupd(filled, "backup", str(lock))
    assert code == 2 and "database itself" in err, err


def test_a_name_that_only_looks_like_a_backup_does_not_upset_the_schedule(tmp_path):
    """The daemon dates its first backup from the newest name in the folder: a month 13
    there once stopped it from starting."""
    (tmp_path / "followupd-20261301T000000Z.sqlite3").write_text("x")
    assert newest_backup_time(tmp_path) is None
    (tmp_path / "followupd-20261130T030000Z.sqlite3").write_text("x")
    assert newest_backup_time(tmp_path) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


HOSTILE_META = """
CREATE VIEW meta AS WITH RECURSIVE r(key, value) AS (
    SELECT 'x', 1 UNION ALL SELECT key, value + 1 FROM r
) SELECT key, value FROM r
"""


def test_a_backup_named_file_with_a_view_that_never_ends_is_passed_over(filled, tmp_path):
    """Anyone who can write to the backups folder can put a file there under our name:
    reading its home id once ran for ever (a recursive `meta` view), and the backup, the
    daemon's rotation with it, never finished."""
    folder = filled / "backups"
    folder.mkdir(mode=0o700)
    hostile = folder / "followupd-20200101T000000Z.sqlite3"
    with sqlite3.connect(hostile) as connection:
        connection.execute(HOSTILE_META)
    connection.close()
    ran = run_cli("--home", str(filled), "backup", "--keep", "1", log_to=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert hostile.exists() and len(ours(folder)) == 2  # not ours to remove, nor a hang


def test_two_rotations_at_once_keep_the_newest_backup(filled):
    """Two backups made before either rotated (the daemon's and a cron job's): each spared
    only its own, so between them --keep 1 deleted both."""
    url = f"sqlite:///{database(filled)}"
    folder = filled / "backups"
    first = make_backup(url, default_target(folder), new=True)
    second = make_backup(url, default_target(folder), new=True)
    rotate(folder, 1, first)
    rotate(folder, 1, second)
    assert backups_in(folder) == [second.path]


def home_id(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        row = connection.execute("SELECT value FROM meta WHERE key = 'installation_id'")
        found = row.fetchone()[0]
    connection.close()
    return found


def test_a_meta_that_computes_its_value_is_never_taken_for_ours(filled):
    """A generated column passes for a table, and may compute anything (seconds, gigabytes,
    or this home's very id): only stored values are read, so such a file is not ours and
    rotation leaves it."""
    folder = filled / "backups"
    folder.mkdir(mode=0o700)
    forged = folder / "followupd-20200101T000000Z.sqlite3"
    with sqlite3.connect(forged) as connection:
        connection.execute(
            f"CREATE TABLE meta (key TEXT, value TEXT AS ('{home_id(database(filled))}'))"
        )
        connection.execute("INSERT INTO meta (key) VALUES ('installation_id')")
    connection.close()
    code, _, err = followupd(filled, "backup", "--keep", "1")
    assert code == 0, err
    assert forged.exists() and len(ours(folder)) == 2


def test_a_schema_larger_than_any_of_ours_is_not_parsed(filled):
    """SQLite parses a file's whole schema before reading anything: a forged one (100 views
    of 480,000 columns, 1 MiB each), beside a real meta table with this home's id, cost 24 s
    and 4 GiB to parse. A statement longer than any of ours makes the file no backup."""
    from followupd.store import backup

    made = make_backup(f"sqlite:///{database(filled)}", filled / "copy.sqlite3")
    assert backup._installation(made.path) == home_id(database(filled))
    with sqlite3.connect(made.path) as connection:
        connection.execute("CREATE VIEW wide AS SELECT " + ",".join(["1"] * 12_000))
    connection.close()
    assert backup._installation(made.path) is None


def test_reading_a_home_id_past_its_time_gives_up(filled, monkeypatch):
    """The clock is looked at as SQLite reads: past the budget the read is abandoned, and
    the file counts as no backup of ours (never an error, never a wait)."""
    from followupd.store import backup

    url = f"sqlite:///{database(filled)}"
    made = make_backup(url, filled / "copy.sqlite3")
    assert backup._installation(made.path) == home_id(database(filled))
    monkeypatch.setattr(backup, "PROBE_SECONDS", -1.0)
    monkeypatch.setattr(backup, "PROBE_STEPS", 1)
    assert backup._installation(made.path) is None


def test_keep_with_a_named_file_keeps_n_dated_backups(filled, tmp_path):
    """--keep N counts the new backup only when it is one of the dated ones in the folder:
    a backup written to a name of one's own choosing left N - 1."""
    folder = tmp_path / "vault"
    for _ in range(3):
        assert followupd(filled, "backup", f"{folder}/")[0] == 0
    code, out, err = followupd(
        filled, "backup", str(folder / "before-upgrade.sqlite3"), "--keep", "2"
    )
    assert code == 0, err
    assert len(ours(folder)) == 2 and (folder / "before-upgrade.sqlite3").exists()
    assert "removed 1" in out


def test_a_folder_named_like_a_journal_does_not_stop_rotation(filled, tmp_path):
    folder = tmp_path / "vault"
    for _ in range(2):
        assert followupd(filled, "backup", f"{folder}/")[0] == 0
    oldest = folder / ours(folder)[0]
    Path(f"{oldest}-wal").mkdir()
    code, _, err = followupd(filled, "backup", f"{folder}/", "--keep", "1")
    assert code == 0, err
    assert not oldest.exists() and Path(f"{oldest}-wal").is_dir() and len(ours(folder)) == 1


def test_a_home_restored_from_our_copy_is_never_taken_for_a_backup(filled, tmp_path):
    """A home restored from another's copy holds the same installation id: its database
    must still never be written over by a backup, nor deleted by rotation."""
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    twin = tmp_path / "twin"
    assert run_cli("init", str(twin), log_to=tmp_path).returncode == 0
    assert followupd(twin, "restore", str(copy), "--yes")[0] == 0
    add_referrals(twin, ["T-1"])  # in use: the twin's own database now
    before = digest(database(twin))
    code, _, err = followupd(filled, "backup", str(database(twin)))
    assert code == 2 and "not a backup of this database" in err, err
    assert digest(database(twin)) == before


def test_rotation_never_deletes_a_database_in_use_under_a_backup_name(tmp_path):
    """A database kept in the backups folder under a dated name (a restore by hand with
    cp) is in use, not a backup: --keep once deleted it."""
    folder = tmp_path / "vault"
    folder.mkdir()
    live = folder / "followupd-20200101T000000Z.sqlite3"
    url = f"sqlite:///{live}"
    Store(url).close()
    made = make_backup(url, default_target(folder), new=True)
    assert rotate(folder, 1, made) == []
    assert live.exists() and made.path.exists()


def test_a_file_of_no_followupd_home_is_never_written_over(tmp_path):
    """Two SQLite files without a home id (None == None) once passed for the same home."""
    source, target = tmp_path / "app.sqlite3", tmp_path / "other.sqlite3"
    for path in (source, target):
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    before = digest(target)
    with pytest.raises(BackupError, match="not a backup of this database"):
        make_backup(f"sqlite:///{source}", target)
    assert digest(target) == before


def test_a_backup_is_not_written_through_a_symbolic_link(filled, tmp_path):
    earlier = tmp_path / "earlier.sqlite3"
    assert followupd(filled, "backup", str(earlier))[0] == 0
    link = tmp_path / "latest.sqlite3"
    link.symlink_to(earlier)
    code, _, err = followupd(filled, "backup", str(link))
    assert code == 2 and "symbolic link" in err, err
    assert link.is_symlink()


def test_the_schedule_counts_this_homes_backups_up_to_now(filled, tmp_path):
    """The first scheduled backup is dated from the newest backup of this home made before
    now: a name dated 9999 (once an overflow that stopped the daemon) or another home's
    newer backup in a shared folder would put it off."""
    url = f"sqlite:///{database(filled)}"
    folder = tmp_path / "vault"
    folder.mkdir()
    mine = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    make_backup(url, folder / backup_name(mine))
    make_backup(url, folder / backup_name(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
    other = tmp_path / "other"
    assert run_cli("init", str(other), log_to=tmp_path).returncode == 0
    add_referrals(other, ["O-1"])
    theirs = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    make_backup(f"sqlite:///{database(other)}", folder / backup_name(theirs))
    assert newest_backup_time(folder, url) == mine
    assert newest_backup_time(folder) == theirs  # any home's, as `status` may say


def test_two_backups_racing_for_one_dated_name_keep_both(filled):
    """Both chose the same free name before either was written: the second takes `-2`."""
    url = f"sqlite:///{database(filled)}"
    target = default_target(filled / "backups")
    first = make_backup(url, target, new=True)
    second = make_backup(url, target, new=True)
    assert first.path == target and second.path.name.endswith("-2.sqlite3")
    assert check_copy(first.path).revision and check_copy(second.path).revision


def test_a_fifo_or_folder_named_like_a_leftover_never_blocks_a_backup(filled):
    folder = filled / "backups"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / ".followupd-backup-fifo.tmp")
    (folder / ".followupd-backup-dir.tmp").mkdir()
    code, _, err = followupd(filled, "backup")
    assert code == 0, err
    assert len(ours(folder)) == 1


def test_restore_through_a_symlinked_database_restores_the_file_it_names(filled, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    assert followupd(filled, "backup", str(copy))[0] == 0
    add_referrals(filled, ["R-4"])
    real = tmp_path / "volume" / "followupd.sqlite3"
    real.parent.mkdir()
    os.replace(database(filled), real)
    database(filled).symlink_to(real)
    code, _, err = followupd(filled, "restore", str(copy), "--yes")
    assert code == 0, err
    assert database(filled).is_symlink() and database(filled).resolve() == real
    assert count(real, "SELECT count(*) FROM referral") == 3
    assert list(real.parent.glob("followupd.sqlite3.before-restore-*"))


def test_two_backups_in_one_second_get_two_names(filled):
    written = []
    for _ in range(3):
        code, out, err = followupd(filled, "backup")
        assert code == 0, err
        written.append(Path(re.search(r"wrote (\S+)", out).group(1)).name)
    assert len(set(written)) == 3
    assert [p.name for p in backups_in(filled / "backups")] == written  # oldest first


def test_backups_and_restores_are_private_under_umask_0(filled, tmp_path):
    previous = os.umask(0)
    try:
        code, _, err = followupd(filled, "backup")
        assert code == 0, err
        folder = filled / "backups"
        [name] = ours(folder)
        assert os.stat(folder).st_mode & 0o777 == 0o700
        assert os.stat(folder / name).st_mode & 0o777 == 0o600
        elsewhere = tmp_path / "new" / "deeper" / "copy.sqlite3"
        assert followupd(filled, "backup", str(elsewhere))[0] == 0
        assert os.stat(elsewhere.parent).st_mode & 0o777 == 0o700
        assert os.stat(elsewhere).st_mode & 0o777 == 0o600
        code, _, err = followupd(filled, "restore", str(folder / name), "--yes")
        assert code == 0, err
        assert os.stat(database(filled)).st_mode & 0o777 == 0o600
        [aside] = filled.glob("followupd.sqlite3.before-restore-*")
        assert os.stat(aside).st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_a_backup_never_writes_over_the_database(filled):
    before = digest(database(filled))
    for target in (database(filled), Path(f"{database(filled)}-wal")):
        code, _, err = followupd(filled, "backup", str(target))
        assert code == 2 and "database" in err, err
    assert digest(database(filled)) == before
    with pytest.raises(BackupError):
        make_backup(f"sqlite:///{database(filled)}", database(filled))
    config = (filled / "followupd.yaml").read_text()
    code, _, err = followupd(filled, "backup", str(filled / "followupd.yaml"))  # a typo
    assert code == 2 and "not a SQLite backup" in err, err
    assert (filled / "followupd.yaml").read_text() == config


def test_a_backup_of_a_missing_database_says_so(home):
    code, _, err = followupd(home, "backup")
    assert code == 2 and "no database" in err, err
    assert not (home / "followupd.sqlite3").exists()


# --- the schedule ------------------------------------------------------------------------


def test_the_backup_section_is_validated(home):
    settings = configuration.load(home, environ={})
    assert settings.config.backup.every is None
    assert settings.config.backup.keep == 7 and settings.config.backup.path == "backups"
    for section, words in (
        ("backup:\n  every: 2 business days\n", "backup.every"),
        ("backup:\n  keep: 0\n", "backup.keep"),
        ("backup:\n  every: 1 mnth\n", "not a duration"),
        ("backup:\n  evry: 1 day\n", "did you mean"),
    ):
        with_backup(home, section)
        with pytest.raises(ConfigError) as refused:
            configuration.load(home, environ={})
        assert words in " ".join(refused.value.problems), refused.value.problems
    with_backup(home, "backup:\n  every: 1 day\n  keep: 3\n")
    backup = configuration.load(home, environ={}).config.backup
    assert str(backup.every) == "1 day" and backup.keep == 3


@pytest.mark.slow  # a daemon that backs up every 2 seconds, awaited three times: 8-20 s
def test_the_daemon_backs_up_on_its_schedule_and_rotates(filled):
    with_backup(filled, "backup:\n  every: 2 seconds\n  keep: 2\n  path: nightly\n")
    log = filled / "daemon.log"
    daemon = start_daemon(filled, log)
    try:
        backed_up = wait_for(lambda: log.read_text().count("event=backup ") >= 3, 60)
        assert backed_up, log.read_text()[-3000:]
        assert wait_for(lambda: len(ours(filled / "nightly")) == 2, 10)
        assert daemon.poll() is None
    finally:
        stop(daemon)
    text = log.read_text()
    assert "backup failed" not in text and "Client R-" not in text
    assert re.search(r"event=backup .*file=\S*followupd-\d{8}T\d{6}Z", text), text
    for name in ours(filled / "nightly"):
        assert check_copy(filled / "nightly" / name).revision
        assert count(filled / "nightly" / name, "SELECT count(*) FROM referral") == 3
    assert os.stat(filled / "nightly").st_mode & 0o777 == 0o700


@pytest.mark.slow  # a daemon whose backups cannot be written: 5-15 s
def test_a_failed_scheduled_backup_is_logged_and_the_daemon_goes_on(filled):
    (filled / "blocked").write_text("a file where the backup folder should be")
    with_backup(
        filled,
        "backup:\n  every: 1 second\n  path: blocked\n",
        ("poll: 5 minutes", "poll: 1 second"),
    )
    log = filled / "daemon.log"
    daemon = start_daemon(filled, log)
    try:
        failed = wait_for(lambda: log.read_text().count("backup failed") >= 2, 60)
        assert failed, log.read_text()[-3000:]
        ticks = log.read_text().count("event=tick ")
        assert wait_for(lambda: log.read_text().count("event=tick ") > ticks, 30)
        assert daemon.poll() is None
    finally:
        stop(daemon)


def test_the_backup_engine_url_is_sqlite_only(tmp_path):
    with pytest.raises(BackupError, match="pg_dump"):  # parsed, never connected to
        make_backup("postgresql+psycopg://u@127.0.0.1:9/x", tmp_path / "b.sqlite3")
    with pytest.raises(BackupError, match="that database's own tools") as raised:
        make_backup("mysql+pymysql://u@127.0.0.1:9/x", tmp_path / "b.sqlite3")
    assert "pg_dump" not in str(raised.value)
