"""Running the engine: `followupd run`, `preview`, `demo` and `health`."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from followupd import config as configuration
from followupd import logs
from followupd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    Home,
    fail,
    given_home,
    load_settings,
    opened_engine,
    opened_store,
    out,
    setup_logging,
    today,
)
from followupd.commands.ledger import print_ledger
from followupd.commands.summaries import print_rehearsal, tick_lines
from followupd.delivery import Draft
from followupd.delivery.outbox import reminder_calendar
from followupd.engine import Engine
from followupd.render import RenderError

if TYPE_CHECKING:
    from followupd.daemon import Daemon
    from followupd.store import Store


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log each step to stderr, as the daemon does.")
]


def run(
    once: Annotated[bool, typer.Option("--once", help="Run one tick and exit.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what a run would make now, by rule; write nothing."),
    ] = False,
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm",
            help="With --once: make the notes due now even if there are more than "
            "history.confirm_over.",
        ),
    ] = False,
    verbose: Verbose = False,
    home: Home = None,
) -> None:
    """The daemon: plan and deliver follow-ups on a schedule (--once: one tick, then exit).

    With --once the exit status is 0 if nothing failed, 1 if some follow-up failed (the
    others were still done), 2 for something to fix or confirm first (a configuration, or
    more notes due at once than history.confirm_over).
    """
    settings = load_settings(home)
    if dry_run:
        _dry_run(settings)
        return
    if confirm and not once:
        fail(EXIT_CONFIG, "--confirm goes with --once: `followupd run --once --confirm`")
    if not once:
        setup_logging(settings)
        _run_daemon(settings, home)
        return
    quiet_logging(settings, verbose)
    with opened_store(settings) as store, opened_engine(settings, store) as engine:
        try:
            engine.check_backends()  # missing credentials: exit 2, whether or not anything is due
            report = engine.plan()
            if engine.burst() and (confirm or _asked_yes(settings, engine.burst())):
                engine.confirm_burst()
            report = engine.tick(report)
        except configuration.ConfigError as exc:
            fail(EXIT_CONFIG, *exc.problems)
    for line in tick_lines(report, settings):
        out.print(line, markup=False)
    if report.refused:
        fail(EXIT_CONFIG, report.refused)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _asked_yes(settings: configuration.Settings, due: int) -> bool:
    """On a terminal, a person may say yes to a burst here; elsewhere nobody can."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    limit = settings.config.history.confirm_over
    return typer.confirm(
        f"{due} notes are due at once, more than history.confirm_over ({limit}). "
        "Make them now? (`followupd run --dry-run` lists them by rule)",
        default=False,
    )


def _dry_run(settings: configuration.Settings) -> None:
    """`run --dry-run`: plan inside a rolled-back transaction and say what a run would do."""
    with opened_store(settings) as store, opened_engine(settings, store) as engine:
        _, rehearsal = engine.rehearse()
    print_rehearsal(rehearsal, settings)


def quiet_logging(settings: configuration.Settings, verbose: bool) -> None:
    """A command run by a person ends with a summary: its log lines (to stderr) only with
    --verbose; errors always."""
    level = settings.config.logging.level if verbose else "ERROR"
    logs.setup(level, settings.config.logging.format)


def _run_daemon(settings: configuration.Settings, home: Path | None) -> None:
    from followupd.daemon import AlreadyRunning, single_daemon_lock

    try:
        lock = single_daemon_lock(settings)
    except AlreadyRunning as exc:
        fail(EXIT_CONFIG, str(exc))
    try:
        _migrate_apart(settings, lock)
        with opened_store(settings) as store:
            _daemon_on(settings, store, home).run()
    finally:
        if lock is not None:
            os.close(lock)


def _migrate_apart(settings: configuration.Settings, lock: int | None) -> None:
    """Bring the schema to this version's head in a child process: a daemon that migrated
    in its own process would keep Alembic loaded for months (13 MiB). The store the daemon
    opens next finds the schema at head and skips Alembic. A database the child could not
    use (busy past the timeout, unreachable, from a newer followupd) is said in one line and
    the daemon exits 2 at once, instead of waiting out the same timeout again; any other
    failure, the daemon's own store meets again and reports as it always has.

    The child lets go of the daemon's lock at once (it is not the daemon). A stop asked of
    the daemon meanwhile (SIGTERM, ^C) stops the child too, and the daemon exits 0: the
    migration is one transaction, so a stopped one leaves the schema as it was, and no
    migration is left running, orphaned, after `followupd run` was stopped."""
    from followupd.logs import Log

    # An ignored SIGCHLD (inherited from a careless parent) would reap the child on its
    # own, and waitpid would find none to wait for, nor its exit status.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    child: list[int] = []  # the child's pid, once forked
    stopped: list[int] = []  # the stop signals that came meanwhile

    def stop_the_child(signum: int, _frame) -> None:
        stopped.append(signum)
        for pid in child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Handlers before the fork: a stop between the fork and waiting is not lost.
    previous = {sig: signal.signal(sig, stop_the_child) for sig in STOP_SIGNALS}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # read just now
    try:
        status, problem = _migrated_in_child(settings, lock, child, stopped)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:  # stopped, as asked; the schema is at head or as it was
        log = Log()
        log.info("stopping", signal=signal.Signals(stopped[0]).name)
        log.info("stopped", migration="finished" if status == 0 else "not made")
        raise typer.Exit(0)
    if problem:
        fail(EXIT_CONFIG, f"database: {problem}")


def _migrated_in_child(
    settings: configuration.Settings, lock: int | None, child: list[int], stopped: list[int]
) -> tuple[int | None, str]:
    """Fork, migrate in the child, wait for it: (its exit status, the one line it said
    about a database it could not use). No process to spare: (None, ""), and the daemon's
    own store migrates, as it used to."""
    from followupd.store import Store, StoreError

    sys.stdout.flush()
    sys.stderr.flush()
    said, says = os.pipe()
    # Held back across the fork: in the child, a stop before its own handlers are set would
    # reach the daemon's (which forwards to nobody there), and be lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()  # before the daemon starts any thread
    except BaseException as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(said)
        os.close(says)
        if isinstance(exc, OSError):
            return None, ""
        raise
    if pid == 0:
        status = 1
        try:
            for sig in STOP_SIGNALS:  # stopped by the daemon: its transaction rolls back
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(said)
            if lock is not None:
                os.close(lock)
            Store(settings.database_url).close()
            status = 0
        except StoreError as exc:  # busy, unreachable, newer: said once, not waited for twice
            os.write(says, str(exc).encode("utf-8", "replace")[:4000])
        finally:
            os._exit(status)  # anything else: the daemon's own store says it again
    os.close(says)
    child.append(pid)  # from here a stop signal stops the child too
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one held back is handled now
    if stopped:  # one handled before the fork
        os.kill(pid, signal.SIGTERM)
    _, waited = os.waitpid(pid, 0)  # retried by Python after a handled signal (PEP 475)
    with os.fdopen(said, "rb") as reading:
        problem = reading.read().decode("utf-8", "replace").strip()
    return os.waitstatus_to_exitcode(waited), problem


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _daemon_on(settings: configuration.Settings, store: Store, home: Path | None) -> Daemon:
    """The daemon on `store`: its engine checks the credentials whenever it is built (at
    start and on a reload); a configuration it refuses is exit 2."""
    from followupd.daemon import Daemon

    def make_engine(current: configuration.Settings) -> Engine:
        engine = Engine(current, store)
        engine.check_backends()  # fail at start (or reload) on missing credentials
        return engine

    try:
        return Daemon(settings, make_engine, reload=lambda: configuration.load(given_home(home)))
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)


def preview(
    follow_up_id: Annotated[int, typer.Argument(metavar="ID", help="A follow-up id (status).")],
    raw: Annotated[
        bool, typer.Option("--raw", help="The bytes as delivered (.eml / .ics), not decoded.")
    ] = False,
    home: Home = None,
) -> None:
    """Show a follow-up as it would be delivered now, without delivering it: headers and text
    as a person reads them (--raw: the very bytes)."""
    settings = load_settings(home)
    with opened_store(settings) as store, opened_engine(settings, store) as engine:
        try:
            rendered, why_not = engine.preview(follow_up_id)
        except RenderError as exc:
            fail(EXIT_FAILED, f"follow-up {follow_up_id} would fail: {exc}")
    if rendered is None and why_not is None:
        fail(EXIT_FAILED, f"no follow-up {follow_up_id} (`followupd status` lists them)")
    if rendered is None:
        fail(EXIT_FAILED, f"follow-up {follow_up_id} would not go out: {why_not}")
    if raw:
        data = (
            rendered.as_bytes()
            if isinstance(rendered, Draft)
            else reminder_calendar(rendered).to_ical()
        )  # the very bytes, checked as delivered
        sys.stdout.write(data.decode("utf-8", "replace").replace("\r\n", "\n"))
    elif isinstance(rendered, Draft):
        sys.stdout.write(readable_draft(rendered))
    else:
        sys.stdout.write(readable_reminder(rendered))


def readable_draft(draft: Draft) -> str:
    """The draft as a mail program shows it: decoded headers, then the text."""
    import email
    import email.policy

    message = email.message_from_bytes(draft.as_bytes(), policy=email.policy.default)
    head = "".join(f"{name}: {message[name]}\n" for name in ("From", "To", "Subject", "Date"))
    return f"{head}\n{message.get_content().replace(chr(13) + chr(10), chr(10))}"


def readable_reminder(reminder) -> str:
    """The reminder as a calendar shows it: title, time and text."""
    when = f"{reminder.start:%A %d %B %Y, %H:%M} to {reminder.end:%H:%M} ({reminder.timezone})"
    return f"Reminder: {reminder.title}\nWhen: {when}\n\n{reminder.description}"


def demo(
    directory: Annotated[Path, typer.Argument(help="The demo home to create.")] = Path(
        "followupd-demo"
    ),
    verbose: Verbose = False,
) -> None:
    """A complete run on the embedded defaults: SQLite, a local outbox, sample data, one tick."""
    from followupd.demo import DemoRefused, load_samples, prepare_home

    try:
        prepare_home(directory)
    except DemoRefused as exc:
        fail(EXIT_CONFIG, str(exc))
    try:
        settings = configuration.load(directory, environ={})
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)
    quiet_logging(settings, verbose)
    with opened_store(settings) as store, opened_engine(settings, store) as engine:
        load_samples(store, today(settings))
        report = engine.tick()
        print_ledger(settings, store, title="followupd demo: one tick on sample data")
    out.print()
    for line in tick_lines(report, settings):
        out.print(line, markup=False)
    out.print(f"\nwrote {len(report.delivered)} files into {settings.outbox_dir}:", markup=False)
    for _, _, external in report.delivered:
        out.print(f"  {settings.outbox_dir / external.removeprefix('outbox:')}", markup=False)
    out.print(
        "\nNothing was sent: drafts wait for your review. Try:\n"
        f"  followupd --home {directory} status\n"
        f"  followupd --home {directory} preview {report.delivered[0][0]}\n"
        f"  followupd --home {directory} referral release R-1002 && "
        f"followupd --home {directory} run --once",
        markup=False,
    )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def health(home: Home = None) -> None:
    """Exit 0 if the daemon is ticking and can deliver, 1 if not (a container HEALTHCHECK)."""
    from followupd.health import judge

    settings = load_settings(home)
    verdict = judge(settings, datetime.now(UTC))
    for line in verdict.lines:
        out.print(line, markup=False)
    if not verdict.healthy:
        fail(EXIT_FAILED, *(f"unhealthy: {problem}" for problem in verdict.problems))
    out.print("healthy", markup=False)
