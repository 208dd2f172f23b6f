"""What every command needs before anything heavy is imported: the exit statuses, the
consoles, `--home`, one-line errors and the root group. `followupd --help` loads this and
typer only; a command's own module, and what it needs, load when it runs.

Exit statuses: 0 all went well; 1 some item (a CSV row, a follow-up) was rejected or failed
and the rest were done; 2 the configuration, the command line or the database needs fixing
before anything can run (a database that is locked or cannot be reached included: one line
says what to do, and no traceback or value is ever printed).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import typer.core
from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

# Piped or redirected output is not cut to 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
        self.bound_numbers()
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            _refuse_usage(exc)

    def bound_numbers(self) -> None:
        """Bound every whole-number option under this group (see bound_whole_numbers)."""
        bound_whole_numbers(self)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            _refuse_usage(exc)
        except BrokenPipeError:  # the reader went away (`| head`): click handles it
            raise
        except OSError as exc:  # a path that cannot be used: what the system said, one line
            fail(EXIT_CONFIG, file_problem(exc))
        except Exception as exc:
            problem = _database_failure(exc)
            if problem is None:
                raise
            err.print(f"database: {problem}", markup=False)
            raise typer.Exit(EXIT_CONFIG) from None


def _database_failure(exc: Exception) -> str | None:
    """One line on a database error (None: not one); SQLAlchemy is looked at only when a
    command has loaded it, so the light commands never import it."""
    if "sqlalchemy" not in sys.modules:
        return None
    import sqlalchemy as sa

    from followupd.store.database import StoreError

    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, sa.exc.SQLAlchemyError):
        from followupd.commands.common import database_problem

        return database_problem(exc)
    return None


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
