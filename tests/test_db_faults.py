"""Database faults: SQLite held by another writer, PostgreSQL stopped under a running daemon.

The PostgreSQL test makes a private cluster with initdb/pg_ctl on a spare port (never the
shared one); it is skipped where those programs are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_clock import add
from test_daemon import (
    add_referral,
    drafts,
    env_for,
    followupd,
    set_poll,
    start_daemon,
    stop,
)

from conftest import wait_for
from followupd import config as configuration
from followupd.engine import Engine
from followupd.models import FollowUp
from followupd.store import Store


def test_sqlite_held_by_another_writer_for_seconds_is_waited_for(home, tmp_path):
    path = tmp_path / "held.sqlite3"
    url = f"sqlite:///{path}"
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": url})
    store = Store(url)
    add(store, ["L-1", "L-2", "L-3"])
    engine = Engine(settings, store)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for three seconds
    holder.execute("UPDATE referral SET ref = ref")
    release = threading.Timer(3.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    report = engine.tick()
    waited = time.monotonic() - started
    release.join()
    holder.close()
    assert waited >= 2.5  # it waited for the lock rather than failing
    assert len(report.delivered) == 3 and not report.failed and not report.waiting
    with store.session() as session:
        states = session.execute(sa.select(FollowUp.state)).scalars().all()
    assert states == ["done"] * 3
    engine.close()
    store.close()


# --- a private PostgreSQL cluster ---------------------------------------------------------


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """initdb + pg_ctl in a temporary folder, as the postgres user when we are root."""

    def __init__(self, root: Path, bin_dir: Path):
        self.data, self.bin, self.port = root / "pgdata", bin_dir, _free_port()
        self.socket_dir = root / "sock"
        self.log = root / "pg.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(root, 0o777)
        self.socket_dir.mkdir()
        os.chmod(self.socket_dir, 0o777)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        ran = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60)
        if ran.returncode:
            raise subprocess.CalledProcessError(ran.returncode, args, ran.stdout, ran.stderr)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def cluster():
    bin_dir = _pg_bin()
    if bin_dir is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("initdb/pg_ctl are not installed: no private PostgreSQL cluster")
    # Not under pytest's tmp_path: its parents are private to us, and the server runs as
    # the postgres user when we are root.
    root = Path(tempfile.mkdtemp(prefix="followupd-pg-"))
    running = Cluster(root, bin_dir)
    try:
        running.init()
        running.start()
        yield running
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            running.stop()
        shutil.rmtree(root, ignore_errors=True)


def failed_ticks(log: Path) -> int:
    """How many ticks the daemon has logged as failed."""
    return log.read_text().count('event="tick failed"')


@pytest.mark.slow  # a private cluster made, stopped and started: about 20 s
def test_postgres_stopped_and_started_under_a_running_daemon(home, cluster):
    """Unhealthy while the database is away, still running, and caught up when it is back."""
    set_poll(home, "1 second")
    env = env_for(cluster.url)
    daemon = start_daemon(home, env)
    log = home / "daemon.log"
    try:
        assert wait_for(lambda: "event=started" in log.read_text(), 20), log.read_text()
        add_referral(home, "P-1", env)
        assert wait_for(lambda: len(drafts(home)) == 1, 10), log.read_text()

        failed = failed_ticks(log)
        cluster.stop()
        assert wait_for(lambda: failed_ticks(log) >= failed + 2, 30), log.read_text()[-3000:]
        health = followupd(home, "health", env=env)
        assert health.returncode == 1, health.stdout + health.stderr
        assert daemon.poll() is None, "the daemon died with its database"

        cluster.start()
        add_referral(home, "P-2", env)
        assert wait_for(lambda: len(drafts(home)) == 2, 20), log.read_text()[-3000:]
        health = followupd(home, "health", env=env)
        assert health.returncode == 0, health.stdout + health.stderr
        code, took = stop(daemon)
        assert code == 0 and took < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
