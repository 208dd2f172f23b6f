"""What every command shares: the consoles, `--home`, the exit statuses, and opening the
configuration, the database and the engine.

Exit statuses: 0 all went well; 1 some item (a CSV row, a follow-up) was rejected or failed
and the rest were done; 2 the configuration, the command line or the database needs fixing
before anything can run (a database that is locked or cannot be reached included: one line
says what to do, and no traceback or value is ever printed).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Iterator
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


# click's UsageError (a bad value, an unknown option, a missing argument), found through a
# public class: typer vendors click in some versions and uses it in others.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
USAGE_LIMIT = 300  # characters: a refused 10,000-character value is not printed back whole


def usage_problem(exc: Exception) -> str:
    """One line on a command line that cannot be read: the option, what is wrong with it,
    and where the command's help is (instead of a usage block and a framed panel)."""
    param = getattr(exc, "param", None)
    message = getattr(exc, "message", "") or str(exc)
    if isinstance(exc, typer.BadParameter) and param is not None and not _is_missing(exc):
        name = param.opts[0] if param.param_type_name == "option" else param.name.upper()
        line = f"{name}: {message}"
    else:
        line = exc.format_message()
    if len(line) > USAGE_LIMIT:
        line = line[: USAGE_LIMIT - 1] + "…"
    ctx = getattr(exc, "ctx", None)
    return f"{line} (see `{ctx.command_path} --help`)" if ctx is not None else line


def shorten(text: str, limit: int = 120) -> str:
    """A path or value as it fits on one line of an error: its start and its end."""
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-(limit // 2) :]}"


def file_problem(exc: OSError) -> str:
    """One line on a file or folder the system refused: which, and the system's reason."""
    reason = exc.strerror or type(exc).__name__
    return f"{shorten(str(exc.filename))}: {reason}" if exc.filename else reason


def _is_missing(exc: Exception) -> bool:
    return type(exc).__name__ == "MissingParameter"


def _refuse_usage(exc: Exception) -> NoReturn:
    """A command line click refused: one line and exit status 2; a group named without a
    command still shows its help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    fail(EXIT_CONFIG, " ".join(usage_problem(exc).split()))


LARGEST = 2**63 - 1  # the largest number a database integer holds (SQLite, PostgreSQL BIGINT)


def bound_whole_numbers(group: object) -> None:
    """Every whole-number option and argument under `group` refuses a number no database
    integer holds, naming the option, instead of an OverflowError deep inside a query."""
    for command in getattr(group, "commands", {}).values():
        bound_whole_numbers(command)
        for param in getattr(command, "params", []):
            if _whole_number(param) and not getattr(param, "bounded", False):
                param.callback = _bounded(param.callback)
                param.bounded = True


def _whole_number(param: object) -> bool:
    """Whether a parameter takes an int (typer's parameters or click's)."""
    described = getattr(param, "type_descriptor", None)  # typer's own parameters
    if described is not None:
        return described.annotation is int or int in typing.get_args(described.annotation)
    return getattr(getattr(param, "type", None), "name", "") == "integer"  # click's


def _bounded(callback: Callable | None) -> Callable:
    """`callback`, after a check that the number fits in a database integer."""

    def check(ctx: typer.Context, param: object, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST:
            raise typer.BadParameter(f"is too large (at most {LARGEST})", ctx=ctx, param=param)
        return callback(ctx, param, value) if callback is not None else value

    return check


class Commands(typer.core.TyperGroup):
    """Turns a database error in any command into one line and exit status 2, and a command
    line that cannot be read (a bad value, an unknown option) into one line and status 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        bound_whole_numbers(self)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            _refuse_usage(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            _refuse_usage(exc)
        except BrokenPipeError:  # the reader went away (`| head`): click handles it
            raise
        except OSError as exc:  # a path that cannot be used: what the system said, one line
            fail(EXIT_CONFIG, file_problem(exc))
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
        "(default: the current folder).",
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
