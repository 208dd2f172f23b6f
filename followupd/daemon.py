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
- `backup.every`: a backup job on a worker of its own copies the SQLite database (one
  snapshot, in steps) while ticks go on writing; `followupd restore` takes this daemon's lock.
- `report.every`: a report job rewrites the HTML report (`report.path`, readable by the
  owner only, replaced whole); what it needs is imported when it first runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from followupd.config import ConfigError, Settings, Source
from followupd.engine import Engine
from followupd.folder_watch import QUIET_NS, FolderWatch
from followupd.logs import Log
from followupd.sources import Watcher, retry_delay
from followupd.store import (
    BackupError,
    ChangeListener,
    default_target,
    make_backup,
    newest_backup_time,
    rotate,
    sqlite_path,
)
from followupd.wakeup import WAKE_FILE

log = Log()
WATCH_SECONDS = 1.0
STOP_TIMEOUT = 9.0  # seconds to let the tick in hand finish before exiting anyway
LOOK_AGAIN = QUIET_NS / 1e9  # seconds: a folder's file not complete yet is looked at again
SOURCE_RUNS = 3  # a source's read running, one its `every` queued, one a folder event queued


class AlreadyRunning(Exception):
    """Another daemon holds this SQLite database (`holder`: its pid, as it wrote it)."""

    def __init__(self, message: str, holder: str = "unknown"):
        super().__init__(message)
        self.holder = holder


def single_daemon_lock(settings: Settings) -> int | None:
    """Hold an exclusive lock beside a SQLite database for the daemon's lifetime."""
    database = sqlite_path(sa.make_url(settings.database_url))
    if database is None:  # another database, or SQLite in memory: no file to share
        return None
    path = Path(f"{database}.lock")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: private
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another `followupd run` (pid {holder}) is already using {database}; one "
            "daemon per SQLite database (use PostgreSQL to run several)",
            holder,
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
        self.source_failures: dict[str, int] = {}  # reads failed in a row, by source
        self.listener = None
        if self.engine.store.engine.dialect.name == "postgresql":
            self.listener = ChangeListener(
                self.engine.store.url,
                self.notified.set,
                name=f"followupd listen {self.engine.owner}",
            )
        self.folders = FolderWatch(self._wake_source)  # inotify, started by run()
        self.watcher = Watcher(settings, self.engine.store, self.folders)
        self.scheduler = BlockingScheduler(
            timezone="UTC",
            executors={
                "default": ThreadPoolExecutor(1),
                "watch": ThreadPoolExecutor(1),
                "backup": ThreadPoolExecutor(1),  # a copy never waits for, or holds up, a tick
            },
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
        self.folders.reading(name)  # a file completed from now on wakes this read again
        with self.busy:
            try:
                done = self.watcher.read(source)
            except Exception as exc:  # noqa: BLE001 -- one source must not stop the rest
                log.error("source read failed", source=name, error=type(exc).__name__)
                self._back_off(source, f"internal error ({type(exc).__name__})")
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
        self._back_off(source, done.error)
        if done.waiting:
            self._look_again(name)
        if done.changed:
            self.scheduler.modify_job("tick", next_run_time=self.engine.clock())

    def _wake_source(self, name: str) -> None:
        """inotify says a folder's file is complete: read that source now (called from the
        observer's thread; the scheduler is thread-safe)."""
        self.scheduler.modify_job(f"source:{name}", next_run_time=self.engine.clock())

    def _look_again(self, name: str) -> None:
        """A folder's file is not complete yet (or an older one holds it back): look again
        within LOOK_AGAIN, not only at the next `every` (an hour, where inotify notices)."""
        job = self.scheduler.get_job(f"source:{name}")
        soon = self.engine.clock() + timedelta(seconds=LOOK_AGAIN)
        if job is not None and job.next_run_time is not None and job.next_run_time > soon:
            job.modify(next_run_time=soon)

    def _back_off(self, source: Source, error: str | None) -> None:
        """A source that failed waits longer before each new try (its `every`, doubled
        with each failure in a row, up to RETRY_CAP); a good read restores its pace."""
        failures = self.source_failures[source.name] = (
            self.source_failures.get(source.name, 0) + 1 if error else 0
        )
        if not error:
            return
        every = source.interval.as_timedelta().total_seconds()
        delay = retry_delay(every, failures)
        log.warning("source cannot be read", source=source.name, error=error, retry_in=delay)
        if delay > every:
            job = self.scheduler.get_job(f"source:{source.name}")
            if job is not None:
                job.modify(next_run_time=self.engine.clock() + timedelta(seconds=delay))

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
        self.folders.restart(settings, engine.store)  # only if the folder sources changed
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
        self._schedule_backup(grace)
        self._schedule_report(grace)

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
                max_instances=SOURCE_RUNS,  # one worker runs them one after another
                misfire_grace_time=grace,
                next_run_time=self.engine.clock(),
            )

    def backup(self) -> None:
        """A scheduled backup, on its own thread: it copies one snapshot in steps while ticks
        go on writing (WAL). A failure is logged; the next turn tries again."""
        settings = self.settings
        folder = settings.home / settings.config.backup.path
        try:
            made = make_backup(
                settings.database_url,
                default_target(folder),
                new=True,
                stop=self.stop_requested.is_set,
            )
            removed = rotate(folder, settings.config.backup.keep, made)
        except BackupError as exc:
            if self.stop_requested.is_set():
                log.info("backup stopped")
                return
            log.error("backup failed", reason=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 -- the next turn tries again
            log.error("backup failed", error=type(exc).__name__, detail=_safe(exc))
            return
        log.info(
            "backup",
            file=str(made.path),
            bytes=made.size,
            seconds=round(made.seconds, 2),
            removed=len(removed),
        )

    def _schedule_backup(self, grace: int) -> None:
        """The backup job every `backup.every` (SQLite only), first due when the newest
        backup there is that old: a daemon restarted every night still makes its nightly one."""
        every = self.settings.config.backup.every
        sqlite = self.engine.store.engine.dialect.name == "sqlite"
        if every is None or not sqlite:
            if self.scheduler.get_job("backup") is not None:
                self.scheduler.remove_job("backup")
            if every is not None:
                log.warning("backup not scheduled", reason="not SQLite: back it up with pg_dump")
            return
        seconds = max(1.0, every.as_timedelta().total_seconds())
        now = self.engine.clock()
        folder = self.settings.home / self.settings.config.backup.path
        try:
            newest = newest_backup_time(folder, self.settings.database_url, now)
        except OSError as exc:  # an unreadable folder: the first backup says why it fails
            log.warning("backup folder not read", detail=_safe(exc))
            newest = None
        first = now
        if newest is not None:
            turn = timedelta(seconds=seconds)
            first = min(max(now, newest + turn), now + turn)
        self.scheduler.add_job(
            self.backup,
            "interval",
            seconds=seconds,
            id="backup",
            executor="backup",
            replace_existing=True,
            misfire_grace_time=grace,
            next_run_time=first,
        )

    def write_report(self) -> None:
        """The HTML report of the last twelve months, replaced atomically, readable by the
        owner only. A failure is logged (never a value); the next turn tries again."""
        from followupd.permissions import write_private
        from followupd.report.html import page_for

        settings, engine = self.settings, self.engine
        path = settings.home / settings.config.report.path
        try:
            today = engine.clock().astimezone(settings.config.practice.zone).date()
            with engine.store.session() as session:
                figures, page = page_for(settings, session, None, today)
            write_private(path, page)
        except Exception as exc:  # noqa: BLE001 -- the next turn tries again
            log.error("report failed", error=type(exc).__name__, detail=_safe(exc))
            return
        log.info("report", file=str(path), referrals=figures.referrals, bytes=len(page))

    def _schedule_report(self, grace: int) -> None:
        """The report job every `report.every`, first due when the page there is that old
        (a restarted daemon does not rewrite a fresh one at once)."""
        every = self.settings.config.report.every
        if every is None:
            if self.scheduler.get_job("report") is not None:
                self.scheduler.remove_job("report")
            return
        seconds = max(1.0, every.as_timedelta().total_seconds())
        now = self.engine.clock()
        first = now
        with contextlib.suppress(OSError):  # no page yet: now
            written = (self.settings.home / self.settings.config.report.path).stat().st_mtime
            turn = timedelta(seconds=seconds)
            first = min(max(now, datetime.fromtimestamp(written, UTC) + turn), now + turn)
        self.scheduler.add_job(
            self.write_report,
            "interval",
            seconds=seconds,
            id="report",
            replace_existing=True,
            misfire_grace_time=grace,
            next_run_time=first,
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
        self.folders.start(self.settings, self.engine.store)
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
        self.folders.stop()
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
