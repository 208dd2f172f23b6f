"""What every command shares: the consoles, `--home`, the exit statuses, and opening the
configuration, the database and the engine.

Exit statuses: 0 all went well; 1 some item (a CSV row, a follow-up) was rejected or failed
and the rest were done; 2 the configuration, the command line or the database needs fixing
before anything can run (a database that is locked or cannot be reached included: one line
says what to do, and no traceback or value is ever printed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import sqlalchemy as sa
import typer
import typer.core
from rich.console import Console

from followupd import config as configuration
from followupd import logs
from followupd.engine import Engine
from followupd.records import RowError, Therapists, parse_date
from followupd.store import Store, StoreError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

# Piped or redirected output is not cut to 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


class Commands(typer.core.TyperGroup):
    """Turns a database error in any command into one line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except sa.exc.SQLAlchemyError as exc:
            err.print(f"database: {database_problem(exc)}", markup=False)
            raise typer.Exit(EXIT_CONFIG) from None
        except StoreError as exc:
            err.print(f"database: {exc}", markup=False)
            raise typer.Exit(EXIT_CONFIG) from None


Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="FOLLOWUPD_HOME",
        show_envvar=True,
        help="Folder with followupd.yaml, templates/, .env and the database "
        "[default: current folder].",
    ),
]

TherapistOption = Annotated[
    str | None,
    typer.Option(
        help="Whose it is, in a group practice: a key from `therapists:` in followupd.yaml."
    ),
]

_given_home: Path | None = None


def root(home: Home = None) -> None:
    """`followupd --home DIR COMMAND` is the same as `followupd COMMAND --home DIR`."""
    global _given_home
    _given_home = home


def given_home(home: Path | None) -> Path | None:
    """The command's own --home, else the one given before the command."""
    return home if home is not None else _given_home


def fail(code: int, *lines: str) -> NoReturn:
    for line in lines:
        err.print(line, markup=False)
    raise typer.Exit(code)


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
    config = settings.config
    return Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())


def date_option(option: str, value: str | None, settings: configuration.Settings) -> date:
    """A date option (default: today in the practice's zone); a bad one is exit 2."""
    try:
        return parse_date(option, value or today(settings).isoformat(), required=True)
    except RowError as exc:
        fail(EXIT_CONFIG, f"{option}: {exc.message}")
