"""`followupd backup` and `followupd restore`: a consistent copy of the SQLite database,
made while the daemon runs, and putting one back while no daemon does.

PostgreSQL has its own tools; both commands say so (exit 2) and point to the recipe in
docs/operations.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from followupd import config as configuration
from followupd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    Home,
    fail,
    file_problem,
    load_settings,
    out,
)
from followupd.store import (
    BackupError,
    NotSQLite,
    default_target,
    make_backup,
    rotate,
    sqlite_file,
    staged_restore,
)

PG_BACKUP = (
    "backup: the database is PostgreSQL: back it up with pg_dump (the recipe is in "
    "docs/operations.md, Backups); followupd backup copies a SQLite database"
)
PG_RESTORE = (
    "restore: the database is PostgreSQL: put a pg_dump back with pg_restore (the recipe is "
    "in docs/operations.md, Backups); followupd restore puts back a SQLite database"
)
OTHER = (
    "{command}: the database is {kind}, not SQLite: use that database's own backup tools; "
    "followupd {command} works on a SQLite database"
)


def backup(
    file: Annotated[
        str | None,  # text, not a Path: a trailing `/` (a folder not made yet) must survive
        typer.Argument(
            metavar="[FILE]",
            help="Where to write it: a file, or a folder for a dated name "
            "(default: followupd-<UTC time>.sqlite3 in backup.path, backups/ in the home).",
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Then keep only the N newest of followupd's own backups in that folder "
            "(other files there are never touched).",
        ),
    ] = None,
    home: Home = None,
) -> None:
    """Copy the SQLite database, consistently, even while the daemon runs (mode 0600)."""
    settings = load_settings(home)
    _sqlite_only(settings, PG_BACKUP)
    target, dated = _target(settings, file)
    try:
        made = make_backup(settings.database_url, target, new=dated)
    except BackupError as exc:
        fail(EXIT_CONFIG, f"backup: {exc}")
    out.print(f"wrote {made.path} ({_size(made.size)}, schema {made.revision})", markup=False)
    try:
        removed = rotate(made.path.parent, keep, made) if keep else []
    except OSError as exc:  # the backup is made; only the older ones are still there
        fail(EXIT_FAILED, f"backup: older backups could not be removed: {file_problem(exc)}")
    if keep and made.installation is None:
        out.print(
            "--keep: the database holds no installation id (not made by followupd?), so no "
            "older backup is known to be its own; none was removed",
            markup=False,
        )
    if removed:
        names = ", ".join(path.name for path in removed)
        out.print(f"removed {len(removed)} older backups (--keep {keep}): {names}", markup=False)


def _target(settings: configuration.Settings, file: str | None) -> tuple[Path, bool]:
    """The file to write: FILE, a dated name in the folder FILE names (one that ends in `/`
    is a folder, made if missing), or in backup.path; and whether the name is a dated one."""
    if file is None:
        return default_target(settings.home / settings.config.backup.path), True
    path = Path(file)
    if path.is_dir() or file.endswith(os.sep):
        return default_target(path), True
    return path, False


def restore(
    file: Annotated[Path, typer.Argument(help="The backup to put back.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Replace the database without asking.")
    ] = False,
    home: Home = None,
) -> None:
    """Put a backup back in place of the database; the current one is kept aside.

    Stop the daemon first: a restore refuses to run while one uses this home, and no daemon
    can start until it is done. The copy is checked (intact, a schema this followupd knows)
    before anything changes."""
    settings = load_settings(home)
    _sqlite_only(settings, PG_RESTORE)
    lock = _hold_home(settings)
    try:
        with staged_restore(settings.database_url, file) as staged:
            info = staged.info
            _confirm(
                f"Replace the database {staged.database} with {file} (schema {info.revision}, "
                f"{_size(info.size)})? The current one is kept beside it.",
                yes,
            )
            restored = staged.install()
    except BackupError as exc:
        fail(EXIT_CONFIG, f"restore: {exc}")
    finally:
        if lock is not None:
            os.close(lock)
    out.print(f"restored {restored.database} from {file}", markup=False)
    if restored.aside is not None:
        out.print(f"the database before the restore: {restored.aside}", markup=False)
    if restored.copy.older:
        out.print(
            f"the copy is at schema {restored.copy.revision}; followupd brings it up to "
            f"{restored.copy.head} the next time it opens the database",
            markup=False,
        )


def _sqlite_only(settings: configuration.Settings, message: str) -> None:
    """PostgreSQL: one line pointing to pg_dump / pg_restore, exit 2."""
    try:
        sqlite_file(settings.database_url)
    except NotSQLite as exc:
        if exc.kind not in ("postgresql", "postgres"):
            command = message.split(":", 1)[0]
            fail(EXIT_CONFIG, OTHER.format(command=command, kind=exc.kind))
        fail(EXIT_CONFIG, message)
    except BackupError as exc:
        fail(EXIT_CONFIG, f"database: {exc}")


def _hold_home(settings: configuration.Settings) -> int | None:
    """The daemon's own lock, taken without waiting and held until the restore is done: a
    daemon running is refused, and none can start meanwhile."""
    from followupd.daemon import AlreadyRunning, single_daemon_lock

    try:
        return single_daemon_lock(settings)
    except AlreadyRunning as exc:
        fail(
            EXIT_CONFIG,
            f"restore: a daemon (pid {exc.holder}) is using this home's database; stop it "
            "first (systemctl stop followupd, docker compose stop, or kill -TERM), then "
            "restore",
        )


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere only --yes goes ahead (a script must say so)."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(EXIT_CONFIG, "restore: not a terminal, so nothing to confirm with: add --yes")
    if not typer.confirm(question, default=False):
        fail(EXIT_FAILED, "nothing was restored")


def _size(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
