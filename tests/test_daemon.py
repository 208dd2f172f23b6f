"""`followupd run` as a real background process: schedule, wake-up, signals, one per home,
recovery after a kill, health, and logs without patient details."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from conftest import run_cli, wait_for
from followupd.demo import SAMPLE_CLIENTS, load_samples, prepare_home
from followupd.models import FollowUp
from followupd.store import SCHEMA_HEAD, Store, write_meta
from followupd.store.database import _alembic_config


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": db_url, **extra}


def followupd(home: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return run_cli("--home", str(home), *args, log_to=home.parent, env=env, timeout=60)


def start_daemon(home: Path, env: dict, log_path: Path | None = None) -> subprocess.Popen:
    log = open(log_path or home / "daemon.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "followupd", "--home", str(home), "run"],
        stdout=log,
        stderr=log,
        env=env,
    )


def set_poll(home: Path, poll: str = "1 second") -> None:
    path = home / "followupd.yaml"
    path.write_text(path.read_text().replace("poll: 5 minutes", f"poll: {poll}"))


def add_referral(home: Path, ref: str, env: dict, release: bool = True) -> None:
    args = [
        "referral",
        "add",
        "--ref",
        ref,
        "--physician",
        "Dr. Miriam Okafor",
        "--physician-email",
        "okafor@lakeside.example",
        "--client-name",
        "Imogen Ashcroft",
        "--problem",
        "Panic disorder",
        "--received-on",
        (date.today() - timedelta(days=10)).isoformat(),
    ]
    ran = followupd(home, *args, *(["--release"] if release else []), env=env)
    assert ran.returncode == 0, ran.stderr


def drafts(home: Path) -> list[Path]:
    return (
        sorted((home / "outbox" / "drafts").glob("*.eml"))
        if (home / "outbox" / "drafts").exists()
        else []
    )


def ticks(log: Path) -> int:
    """How many ticks the daemon has logged as done (logfmt or JSON), failed ones not counted."""
    return sum(
        1
        for line in log.read_text().splitlines()
        if " event=tick " in f"{line} " or '"event": "tick"' in line
    )


def stop(proc: subprocess.Popen, timeout: float = 10) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - started


@pytest.mark.parametrize("poll", ["1 second", "1 minute"])  # a minute: only the wake-up
def test_a_new_referral_is_drafted_within_seconds_and_sigterm_exits_0(home, db_url, poll):
    set_poll(home, poll)
    env = env_for(db_url)
    daemon = start_daemon(home, env)
    try:
        assert wait_for(lambda: "event=started" in (home / "daemon.log").read_text(), 30)
        assert wait_for(lambda: ticks(home / "daemon.log"), 30)
        add_referral(home, "R-1", env)
        committed = time.monotonic()  # the command has returned: its row is committed
        # Woken by the wake file (polled each second), not by the poll: well inside a poll of
        # a minute even on a loaded 2-core machine. bench/latency.py holds the figure.
        assert wait_for(lambda: drafts(home), 20.0), (home / "daemon.log").read_text()
        assert time.monotonic() - committed < 20.0
        code, took = stop(daemon)
        assert code == 0 and took < 10
        assert "event=stopped" in (home / "daemon.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_a_second_daemon_on_the_same_sqlite_home_refuses(home, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    env = env_for(db_url)
    first = start_daemon(home, env)
    try:
        assert wait_for(lambda: "event=started" in (home / "daemon.log").read_text(), 30)
        second = run_cli("--home", str(home), "run", log_to=home.parent, env=env, timeout=30)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "already using" in second.stderr
    finally:
        stop(first)


# What `followupd run` does before opening its store, then the store it opens: is Alembic
# loaded in the daemon's process after a new database was migrated?
MIGRATE_APART = """
import sys
from followupd import config
from followupd.commands.running import _migrate_apart
from followupd.store import SCHEMA_HEAD, Store
settings = config.load(sys.argv[1])
_migrate_apart(settings, None)
store = Store(settings.database_url)
with store.engine.connect() as connection:
    revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
store.close()
print(revision == SCHEMA_HEAD, "alembic" in sys.modules)
"""


def test_the_daemon_migrates_a_new_database_in_a_child_process(home, db_url):
    """A daemon that migrated in its own process would keep Alembic loaded for months."""
    ran = subprocess.run(
        [sys.executable, "-c", MIGRATE_APART, str(home)],
        env=env_for(db_url),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert ran.stdout.split() == ["True", "False"], ran.stderr


def test_a_daemon_started_with_sigchld_ignored_still_starts(home, tmp_path):
    """A parent that set SIGCHLD to SIG_IGN passes that on: the migration child is then
    reaped by the kernel, and waiting for it must not stop the daemon from starting."""
    env = env_for(f"sqlite:///{tmp_path / 'ignored.sqlite3'}")
    log = open(home / "daemon.log", "w")  # noqa: SIM115 - closed with the process
    daemon = subprocess.Popen(
        [sys.executable, "-m", "followupd", "--home", str(home), "run"],
        stdout=log,
        stderr=log,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
    )
    try:
        started = wait_for(lambda: "event=started" in (home / "daemon.log").read_text(), 60)
        assert started, (home / "daemon.log").read_text()[-2000:]
    finally:
        stop(daemon)
        log.close()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def _has_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(fd) == str(path):
                    return True
    return False


def test_a_daemon_stopped_while_it_migrates_leaves_no_migration_behind(home, tmp_path):
    """SIGTERM while the migration child waits for a busy database: the child is stopped
    with the daemon, not left running as an orphan holding the daemon's lock."""
    path = tmp_path / "busy.sqlite3"
    Store(f"sqlite:///{path}").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:  # one revision back: the daemon has one to apply
        alembic = _alembic_config()
        alembic.attributes["connection"] = connection
        command.downgrade(alembic, "-1")
    engine.dispose()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the migration waits for this write lock (30 s)
    daemon = start_daemon(home, env_for(f"sqlite:///{path}"))
    try:
        assert wait_for(lambda: _children(daemon.pid), 60), "no migration child"
        [child] = _children(daemon.pid)
        assert wait_for(lambda: _has_open(child, path), 60), "the child never opened it"
        daemon.send_signal(signal.SIGTERM)  # the child is migrating, or waiting to
        assert daemon.wait(timeout=20) == 0  # well before the 30 s busy timeout
        assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 20), "orphaned"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        stop(daemon)
    said = (home / "daemon.log").read_text()
    assert "event=stopping signal=SIGTERM" in said and "migration=" in said, said[-2000:]
    with sqlite3.connect(path) as connection:  # the migration was not made, nor half made
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() != (
            SCHEMA_HEAD,
        )
    Store(f"sqlite:///{path}").close()  # and the next start makes it
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (
            SCHEMA_HEAD,
        )
    lock = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds the daemon's lock
    finally:
        os.close(lock)


STOPPED_AS_IT_FORKS = """
import os, signal, subprocess, sys, time, types
from followupd.commands import running

real_fork = os.fork


def slow_fork():  # the child is slow to set its own handlers; the stop comes meanwhile
    pid = real_fork()
    if pid == 0:
        time.sleep(0.5)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
    return pid


os.fork = slow_fork
try:
    running._migrate_apart(types.SimpleNamespace(database_url=sys.argv[1]), None)
except BaseException as exc:
    print(type(exc).__name__, getattr(exc, "exit_code", None))
"""


def test_a_stop_as_the_migration_child_is_forked_stops_it(tmp_path):
    """A stop that reached the child before it set its own handlers ran the daemon's there,
    which forwards to nobody: the child migrated on, waiting out a busy database (30 s)."""
    path = tmp_path / "race.sqlite3"
    Store(f"sqlite:///{path}").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        alembic = _alembic_config()
        alembic.attributes["connection"] = connection
        command.downgrade(alembic, "-1")
    engine.dispose()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the child would wait 30 s for this
    try:
        ran = subprocess.run(
            [sys.executable, "-c", STOPPED_AS_IT_FORKS, f"sqlite:///{path}"],
            capture_output=True,
            text=True,
            timeout=25,  # stopped while the holder still holds: not after its 30 s
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ran.stdout.split() == ["Exit", "0"], ran.stderr[-2000:]


@pytest.mark.slow  # 400 drafts, a kill and a restart: 10-25 s
def test_a_killed_daemon_restarted_finishes_without_duplicates(home, db_url, tmp_path):
    set_poll(home)
    config = home / "followupd.yaml"  # 400 at once, with no person to say yes (test_history)
    config.write_text(config.read_text().replace("confirm_over: 50", "confirm_over: null"))
    env = env_for(db_url)
    count = 400
    received = (date.today() - timedelta(days=10)).isoformat()
    csv_path = tmp_path / "referrals.csv"
    csv_path.write_text(
        "ref,received_on,physician,physician_email,client_name,release_on_file\n"
        + "".join(
            f"R-{i},{received},Dr. P{i % 9},p{i % 9}@clinic.example,Client {i},yes\n"
            for i in range(count)
        )
    )
    assert followupd(home, "import", "referrals", str(csv_path), env=env).returncode == 0
    daemon = start_daemon(home, env)
    assert wait_for(lambda: len(drafts(home)) >= 30, 60), (home / "daemon.log").read_text()
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert len(drafts(home)) < count  # killed mid-run
    restarted = start_daemon(home, env, home / "daemon2.log")
    try:
        assert wait_for(lambda: len(drafts(home)) == count, 120), len(drafts(home))
        store = Store(db_url)
        with store.session() as session:
            assert wait_for(
                lambda: (
                    {r.state for r in session.execute(sa.select(FollowUp)).scalars()} == {"done"}
                ),
                10,
            )
            session.expire_all()
            rows = session.execute(sa.select(FollowUp)).scalars().all()
        store.close()
        assert len(rows) == count and {row.state for row in rows} == {"done"}
        assert sorted(int(p.stem) for p in drafts(home)) == sorted(row.id for row in rows)
        assert [
            p.name for p in (home / "outbox" / "drafts").iterdir() if not p.name.endswith(".eml")
        ] == []  # no half-written file left behind
    finally:
        stop(restarted)


@pytest.mark.slow  # six commands, each a fresh interpreter: 6-30 s as the machine is loaded
def test_health(home, db_url):
    env = env_for(db_url)
    ran = followupd(home, "health", env=env)
    assert ran.returncode == 1 and "no tick has completed yet" in ran.stderr
    assert followupd(home, "run", "--once", env=env).returncode == 0
    ran = followupd(home, "health", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "healthy" in ran.stdout and "due backlog: 0" in ran.stdout
    store = Store(db_url)
    with store.session() as session:  # the daemon stopped ticking an hour ago
        old = datetime.now(UTC) - timedelta(hours=1)
        write_meta(session, "heartbeat", json.dumps({"at": old.isoformat()}))
    ran = followupd(home, "health", env=env)
    assert ran.returncode == 1 and "the last tick was" in ran.stderr
    assert followupd(home, "run", "--once", env=env).returncode == 0
    with store.session() as session:  # Google refused the grant
        write_meta(
            session,
            "google_credentials",
            "Google sign-in expired or was revoked: run `followupd auth`",
        )
    store.close()
    ran = followupd(home, "health", env={**env, "FOLLOWUPD_DELIVERY": "google"})
    assert ran.returncode == 1 and "run `followupd auth`" in ran.stderr


def test_sighup_reloads_and_a_bad_reload_keeps_the_old_configuration(home, db_url):
    set_poll(home)
    env = env_for(db_url)
    daemon = start_daemon(home, env)
    log = home / "daemon.log"
    try:
        assert wait_for(lambda: "event=started" in log.read_text(), 30)
        config = home / "followupd.yaml"
        good = config.read_text()
        config.write_text(good.replace("after: 1 month", "after: 1 mnth"))
        daemon.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed" in log.read_text(), 20), log.read_text()
        assert "rules[3].after" in log.read_text()
        config.write_text(good)
        daemon.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "event=reloaded" in log.read_text(), 20), log.read_text()
        add_referral(home, "R-1", env)
        assert wait_for(lambda: drafts(home), 20), log.read_text()  # works after both reloads
    finally:
        stop(daemon)


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_the_daemons_logs_carry_no_patient_details(tmp_path, fmt):
    home = tmp_path / "demo"
    prepare_home(home)
    set_poll(home)
    db_url = f"sqlite:///{home / 'followupd.sqlite3'}"
    store = Store(db_url)
    load_samples(store, date.today())
    store.close()
    env = env_for(db_url, FOLLOWUPD_LOG_FORMAT=fmt, FOLLOWUPD_LOG_LEVEL="DEBUG")
    daemon = start_daemon(home, env)
    log = home / "daemon.log"
    try:
        assert wait_for(lambda: len(drafts(home)) == 4, 30), log.read_text()[-3000:]
        done = ticks(log)  # then two more ticks, with nothing new
        assert wait_for(lambda: ticks(log) >= done + 2, 30), log.read_text()[-3000:]
    finally:
        code, _ = stop(daemon)
    assert code == 0
    lines = (home / "daemon.log").read_text().splitlines()
    assert any("delivered" in line for line in lines)
    if fmt == "json":
        events = [json.loads(line) for line in lines]
        assert {"ts", "level", "event"} <= set(events[0])
    for value in (v for client in SAMPLE_CLIENTS for v in client):
        assert not [line for line in lines if value in line], value
