"""`followupd import referrals|visits FILE.csv`: the spreadsheets a practice already keeps."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from followupd.commands.common import (
    EXIT_FAILED,
    Home,
    err,
    fail,
    load_settings,
    opened_engine,
    opened_store,
    out,
    therapists,
    today,
)
from followupd.commands.summaries import print_rehearsal
from followupd.intake import ImportRefused, ImportReport, Kind, import_csv
from followupd.wakeup import wake

import_app = typer.Typer(
    help="Import a CSV export of your referral or visit log.", no_args_is_help=True
)

File = Annotated[str, typer.Argument(help="A UTF-8 CSV file with a header row; - reads stdin.")]

SHOWN = 50  # rejected rows and notes listed one by one; the rest are counted


DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check the file and show what the import would make, by rule; write nothing.",
    ),
]


@import_app.command("referrals")
def import_referrals(file: File, dry_run: DryRun = False, home: Home = None) -> None:
    """Import referrals; the same `ref` again updates that referral instead of adding one.

    Referrals received long before you import them are history: they make no notes
    (history.cutoff). Try `--dry-run` first."""
    _import("referrals", file, home, dry_run)


@import_app.command("visits")
def import_visits(file: File, dry_run: DryRun = False, home: Home = None) -> None:
    """Import office visits; the same date, practice and physician again updates that visit."""
    _import("visits", file, home, dry_run)


def _import(kind: Kind, file: str, home: Path | None, dry_run: bool = False) -> None:
    settings = load_settings(home)
    rehearsal = None
    with opened_store(settings) as store, _progress_bar() as progress:

        def read() -> ImportReport:
            return import_csv(
                store,
                file,
                kind,
                progress=progress,
                therapists=therapists(settings),
                today=today(settings),
            )

        try:
            if dry_run:
                with opened_engine(settings, store) as engine:
                    report, rehearsal = engine.rehearse(read)
            else:
                report = read()
        except ImportRefused as exc:
            fail(EXIT_FAILED, f"refused: {exc}")
    if (report.counts.added or report.counts.updated) and not dry_run:
        wake(settings.home)
    _print_report(kind, report)
    if rehearsal is not None:
        print_rehearsal(rehearsal, settings)
    elif report.counts.added or report.counts.updated:
        out.print("next: `followupd run --dry-run` shows the notes this makes", markup=False)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@contextmanager
def _progress_bar() -> Iterator[Callable[[int, int | None], None] | None]:
    """A progress callback that draws a bar on a terminal (None when stderr is not one)."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = Progress(
        "importing",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("import", total=None)
    bar.start()

    def progress(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        bar.stop()


def _print_report(kind: str, report: ImportReport) -> None:
    if report.ignored_columns:
        err.print(
            f"ignored columns (not followupd's): {', '.join(report.ignored_columns)}", markup=False
        )
    _print_some(err, "rejected: ", report.problems, "more rejected rows")
    _print_some(out, "note: ", report.notices, "more notes")
    for physician_id, why in sorted(report.flagged.items()):
        out.print(
            f"address held: physician {physician_id}: {why}; notes to it wait until you "
            f"check it and run `followupd physician confirm {physician_id}`",
            markup=False,
        )
    out.print(f"{kind}: {report.counts}", markup=False)


def _print_some(console: Console, prefix: str, lines: list[str], more: str) -> None:
    """The first SHOWN lines, then how many more there are."""
    for line in lines[:SHOWN]:
        console.print(f"{prefix}{line}", markup=False)
    if len(lines) > SHOWN:
        console.print(f"... and {len(lines) - SHOWN} more {more}", markup=False)
