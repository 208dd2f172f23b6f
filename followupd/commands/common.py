"""What every command shares: the consoles, `--home`, the exit statuses, and opening the
configuration, the database and the engine.

Exit statuses: 0 all went well; 1 some item (a CSV row, a follow-up) was rejected or failed
and the rest were done; 2 the configuration, the command line or the database needs fixing
before anything can run (a database that is locked or cannot be reached included: one line
says what to do, and no traceback or value is ever printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from followupd import config as configuration
from followupd import logs
from followupd.commands.base import (  # noqa: F401 -- what commands import from here
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    Home,
    TherapistOption,
    UsageError,
    bound_whole_numbers,
    err,
    fail,
    file_problem,
    given_home,
    out,
    root,
    shorten,
    usage_problem,
)
from followupd.store import Store, StoreError

if TYPE_CHECKING:  # loaded by the commands that use them: `status` needs neither
    from sqlalchemy.orm import Session

    from followupd.engine import Engine
    from followupd.records import Therapists


def database_problem(exc: BaseException) -> str:
    """One line on a database error, with what to do: never its statement or values."""
    text = str(getattr(exc, "orig", None) or "").strip().splitlines()
    first = text[0].casefold() if text else ""
    if "locked" in first or "busy" in first:
        return (
            "the database is busy: another process held it too long (a long import, a "
            "backup?); nothing was changed by this command, try it again"
        )
    if "unable to open" in first or "readonly" in first or "read-only" in first:
        return (
            "the database file cannot be opened for writing; check that the folder "
            "exists and is yours (ls -l), or set FOLLOWUPD_DATABASE_URL"
        )
    if "connect" in first or "connection" in first or "server" in first:
        return (
            "the database server cannot be reached; check that it is running and that "
            "FOLLOWUPD_DATABASE_URL names it"
        )
    if isinstance(exc, sa.exc.IntegrityError):
        return "the database refused the change (a conflicting row); nothing was changed"
    kind = type(getattr(exc, "orig", None) or exc).__name__
    return f"the database failed ({kind}); nothing was changed by this command"


def load_settings(home: Path | None) -> configuration.Settings:
    try:
        return configuration.load(given_home(home))
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)


def setup_logging(settings: configuration.Settings) -> None:
    logs.setup(settings.config.logging.level, settings.config.logging.format)


def open_store(settings: configuration.Settings) -> Store:
    try:
        return Store(settings.database_url)
    except StoreError as exc:
        fail(EXIT_CONFIG, f"database: {exc}")


@contextmanager
def opened_store(settings: configuration.Settings) -> Iterator[Store]:
    """The database for the length of a command; closed however the command ends."""
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def session_for(settings: configuration.Settings) -> Iterator[Session]:
    """One transaction on the database, which is closed afterwards."""
    with opened_store(settings) as store, store.session() as session:
        yield session


def open_engine(settings: configuration.Settings, store: Store) -> Engine:
    """The engine on `store`; a configuration it refuses is exit 2 (the caller closes
    `store`)."""
    from followupd.engine import Engine

    try:
        return Engine(settings, store)
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)


@contextmanager
def opened_engine(settings: configuration.Settings, store: Store) -> Iterator[Engine]:
    """The engine for the length of a command; its backends are closed afterwards."""
    engine = open_engine(settings, store)
    try:
        yield engine
    finally:
        engine.close()


def today(settings: configuration.Settings) -> date:
    return datetime.now(settings.config.practice.zone).date()


def therapists(settings: configuration.Settings) -> Therapists:
    """The therapist keys data entry accepts (a group practice's `therapists:`)."""
    from followupd.records import Therapists

    config = settings.config
    return Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())


def date_option(option: str, value: str | None, settings: configuration.Settings) -> date:
    """A date option (default: today in the practice's zone); a bad one is exit 2."""
    from followupd.records import RowError, parse_date

    try:
        return parse_date(option, value or today(settings).isoformat(), required=True)
    except RowError as exc:
        fail(EXIT_CONFIG, f"{option}: {exc.message}")
