"""`followupd run`: engine ticks on a schedule, in the foreground, for months unattended.

APScheduler's BlockingScheduler runs the tick every `schedule.poll` and the draft sync every
`schedule.sync`, one at a time on one worker (the Google client is not thread-safe), with
`coalesce` and a misfire grace that survives a laptop sleeping or a container being paused.
A watcher job, once a second on its own thread, does what signals ask (signal handlers only
set flags) and notices the wake file that data entry touches, or on PostgreSQL a NOTIFY from
the referral and visit tables, so a new referral does not wait for the next poll.

- SIGTERM, SIGINT: the tick in hand finishes its batch, unstarted claims are handed back, and
  the process exits 0.
- SIGHUP: the configuration is read again; if it is broken, the old one stays and the log
  says why.
- One daemon per SQLite database: a second one exits at once (status 2). Several replicas
  are for PostgreSQL: each runs its own ticks (APScheduler's job stores cannot be shared
  between processes) and the ledger's leases keep them from doing the same work twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from followupd.config import ConfigError, Settings
from followupd.engine import Engine
from followupd.logs import Log
from followupd.sources import Watcher
from followupd.store import ChangeListener

log = Log()
WAKE_FILE = ".followupd-wake"
WATCH_SECONDS = 1.0
STOP_TIMEOUT = 9.0  # seconds to let the tick in hand finish before exiting anyway


class AlreadyRunning(Exception):
    """Another daemon holds this SQLite database."""


def wake(home: Path) -> None:
    """Tell a daemon on this home that there is new data (touch the wake file)."""
    with contextlib.suppress(OSError):  # read-only home: the next poll sees the data anyway
        (home / WAKE_FILE).touch()


def single_daemon_lock(settings: Settings) -> int | None:
    """Hold an exclusive lock beside a SQLite database for the daemon's lifetime."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    path = Path(url.database + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another `followupd run` (pid {holder}) is already using {url.database}; one "
            "daemon per SQLite database (use PostgreSQL to run several)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class Daemon:
    def __init__(
        self,
        settings: Settings,
        make_engine: Callable[[Settings], Engine],
        reload: Callable[[], Settings],
    ):
        self.settings = settings
        self.make_engine = make_engine
        self.reload_settings = reload
        self.engine = make_engine(settings)
        self.busy = threading.Lock()  # held while a tick or sync runs
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake_path = settings.home / WAKE_FILE
        self.wake_seen = self._wake_mtime()
        self.notified = threading.Event()  # PostgreSQL said referrals or visits changed
        self.listener = None
        if self.engine.store.engine.dialect.name == "postgresql":
            self.listener = ChangeListener(
                self.engine.store.url,
                self.notified.set,
                name=f"followupd listen {self.engine.owner}",
            )
        self.watcher = Watcher(settings, self.engine.store)
        self.scheduler = BlockingScheduler(
            timezone="UTC",
            executors={"default": ThreadPoolExecutor(1), "watch": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    # --- jobs -------------------------------------------------------------------------

    def tick(self) -> None:
        with self.busy:
            engine = self.engine
            try:
                report = engine.tick()
            except Exception as exc:  # noqa: BLE001 -- the next tick tries again
                log.error("tick failed", error=type(exc).__name__, detail=_safe(exc))
                return
        log.info(
            "tick",
            delivered=len(report.delivered),
            failed=len(report.failed),
            held=len(report.held),
            waiting=len(report.waiting),
            synced=len(report.synced),
            stopped=report.stopped,
        )

    def read_source(self, name: str) -> None:
        """Read one watched source; new rows wake the tick at once."""
        source = next((s for s in self.settings.config.sources if s.name == name), None)
        if source is None:
            return
        with self.busy:
            try:
                done = self.watcher.read(source)
            except Exception as exc:  # noqa: BLE001 -- one source must not stop the rest
                log.error("source read failed", source=name, error=type(exc).__name__)
                return
        for outcome in done.files:
            counts = outcome.report.counts if outcome.report else None
            log.info(
                "source file",
                source=name,
                refused=outcome.refused is not None,
                added=counts.added if counts else 0,
                updated=counts.updated if counts else 0,
                rejected=counts.rejected if counts else 0,
            )
        if done.error:
            log.warning("source cannot be read", source=name, error=done.error)
        if done.changed:
            self.scheduler.modify_job("tick", next_run_time=self.engine.clock())

    def sync(self) -> None:
        with self.busy:
            try:
                self.engine.sync()
            except Exception as exc:  # noqa: BLE001 -- the next sync tries again
                log.error("sync failed", error=type(exc).__name__, detail=_safe(exc))

    def watch(self) -> None:
        """Act on signals' flags and on the wake file, off the signal handlers."""
        if self.stop_requested.is_set():
            self.scheduler.shutdown(wait=False)
            return
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self._reload()
        mtime = self._wake_mtime()
        if mtime != self.wake_seen or self.notified.is_set():
            self.wake_seen = mtime
            self.notified.clear()
            log.debug("woken by new data")
            self.scheduler.modify_job("tick", next_run_time=self.engine.clock())

    def _wake_mtime(self) -> float | None:
        try:
            return self.wake_path.stat().st_mtime_ns
        except OSError:
            return None

    def _reload(self) -> None:
        try:
            settings = self.reload_settings()
            engine = self.make_engine(settings)
        except ConfigError as exc:
            log.error(
                "reload failed; keeping the running configuration",
                problems=" | ".join(exc.problems),
            )
            return
        with self.busy:
            old, self.engine, self.settings = self.engine, engine, settings
            self.watcher.settings = settings
            old.close()
        self._schedule(replace=True)
        log.info(
            "reloaded", rules=len(settings.config.rules), poll=str(settings.config.schedule.poll)
        )

    # --- running ----------------------------------------------------------------------

    def _schedule(self, replace: bool = False) -> None:
        schedule = self.settings.config.schedule
        grace = int(schedule.misfire_grace.as_timedelta().total_seconds())
        seconds = max(1.0, schedule.poll.as_timedelta().total_seconds())
        sync_seconds = max(1.0, schedule.sync.as_timedelta().total_seconds())
        first = None if replace else self.engine.clock()
        first_sync = self.engine.clock() + timedelta(seconds=seconds)
        for job, every, starts in (
            (self.tick, seconds, {"next_run_time": first} if first else {}),
            (self.sync, sync_seconds, {"next_run_time": first_sync}),
        ):
            self.scheduler.add_job(
                job,
                "interval",
                seconds=every,
                id=job.__name__,
                replace_existing=True,
                misfire_grace_time=grace,
                **starts,
            )
        self._schedule_sources(grace)

    def _schedule_sources(self, grace: int) -> None:
        """One job a watched source, every `every`; a source removed on reload stops."""
        names = {source.name for source in self.settings.config.sources}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("source:") and job.id.removeprefix("source:") not in names:
                job.remove()
        for source in self.settings.config.sources:
            self.scheduler.add_job(
                self.read_source,
                "interval",
                args=[source.name],
                seconds=max(1.0, source.interval.as_timedelta().total_seconds()),
                id=f"source:{source.name}",
                replace_existing=True,
                misfire_grace_time=grace,
                next_run_time=self.engine.clock(),
            )

    def request_stop(self, signum: int, _frame) -> None:
        self.engine.stop()
        self.stop_requested.set()
        log.info("stopping", signal=signal.Signals(signum).name)

    def request_reload(self, _signum: int, _frame) -> None:
        self.reload_requested.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        self._schedule()
        self.scheduler.add_job(
            self.watch,
            "interval",
            seconds=WATCH_SECONDS,
            id="watch",
            executor="watch",
            misfire_grace_time=None,
        )
        if self.listener is not None:
            self.listener.start()
        schedule = self.settings.config.schedule
        log.info(
            "started",
            pid=os.getpid(),
            poll=str(schedule.poll),
            sync=str(schedule.sync),
            delivery=self.settings.config.delivery.backend,
            listen=self.listener is not None,
        )
        self.scheduler.start()  # returns once watch() shuts the scheduler down
        if self.listener is not None:
            self.listener.stop()
        if self.busy.acquire(timeout=STOP_TIMEOUT):  # the tick in hand has finished
            self.busy.release()
        self.engine.close()
        log.info("stopped")


def _safe(exc: Exception) -> str:
    """The first line of a database or OS error, for the log. Other errors' messages could
    quote data, so only their type is logged."""
    if not isinstance(exc, sa.exc.SQLAlchemyError | OSError):
        return ""
    text = str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()
    return text[0][:200] if text else ""
