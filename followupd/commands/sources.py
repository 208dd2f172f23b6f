"""`followupd sources`: the tables you already keep, read on their own (`sources:` in
followupd.yaml); `followupd sources read [NAME]` reads them now."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd.commands.common import EXIT_CONFIG, Home, fail, load_settings, opened_store, out
from followupd.sources import FileOutcome, Watcher, folder_of
from followupd.store import mask_url, read_source_states
from followupd.wakeup import wake

sources_app = typer.Typer(
    help="Watched sources: the tables you already keep, read on their own.",
    invoke_without_command=True,
)

COUNTS = ("files", "added", "updated", "rejected", "refused")
SETTLE_SECONDS = 2.0  # a file must look the same this long apart before it is imported


@sources_app.callback(invoke_without_command=True)
def sources(ctx: typer.Context, home: Home = None) -> None:
    """Each source: where it is, how often it is read, what its reads found."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(home)
    if not settings.config.sources:
        out.print("no sources: add one under `sources:` in followupd.yaml", markup=False)
        return
    with opened_store(settings) as store, store.session() as session:
        states = read_source_states(session)
    out.print(_table(settings, states))
    for source in settings.config.sources:
        state = states.get(source.name, {})
        if state.get("watch"):  # inotify, or polling and why (the daemon's last start)
            out.print(f"{source.name}: new files noticed by {state['watch']}", markup=False)
        for note in state.get("notes", []):
            out.print(f"{source.name}: note: {note}", markup=False)
        for problem in state.get("problems", []):
            out.print(f"{source.name}: {problem}", markup=False)
        if state.get("last_error"):
            out.print(f"{source.name}: last error: {state['last_error']}", markup=False)


def _table(settings: configuration.Settings, states: dict[str, dict]) -> Table:
    table = Table(title="sources", title_justify="left")
    for column in ("name", "kind", "table", "where", "every", "last import"):
        table.add_column(column)
    for column in COUNTS:
        table.add_column(column, justify="right")
    for source in settings.config.sources:
        state = states.get(source.name, {})
        totals = state.get("totals", {})
        table.add_row(
            Text(source.name),
            source.kind,
            source.table,
            Text(_where(settings, source)),
            str(source.interval),
            state.get("last_read", "never"),
            *(
                f"{totals.get(k, 0):,}"
                for k in ("files", "added", "updated", "rejected", "refused")
            ),
        )
    return table


def _where(settings: configuration.Settings, source: configuration.Source) -> str:
    """Where a source is read from; a database URL without its password."""
    if source.kind == "folder":
        return str(folder_of(settings, source))
    return mask_url(source.url or "") if "${" not in (source.url or "") else source.url


@sources_app.command("read")
def sources_read(
    name: Annotated[
        str | None, typer.Argument(help="One source's name [default: every source].")
    ] = None,
    home: Home = None,
) -> None:
    """Read the sources now: each settled file of a folder is imported and moved."""
    settings = load_settings(home)
    chosen = [s for s in settings.config.sources if name in (None, s.name)]
    if not chosen:
        known = ", ".join(s.name for s in settings.config.sources) or "none configured"
        fail(EXIT_CONFIG, f"no source {name!r} in followupd.yaml (sources: {known})")
    with opened_store(settings) as store:
        watcher = Watcher(settings, store)
        folders = [source for source in chosen if source.kind == "folder"]
        for source in folders:  # a first look, then the one that imports what stayed the same
            watcher.look_only(source)
        if folders:
            time.sleep(SETTLE_SECONDS)
        reads = [watcher.read(source) for source in chosen]
    for read in reads:
        if read.error:
            out.print(f"{read.source}: cannot be read: {read.error}", markup=False)
        for outcome in read.files:
            out.print(f"{read.source}: {_outcome(outcome)}", markup=False)
            for note in outcome.report.notices if outcome.report else []:
                out.print(f"{read.source}: note: {note}", markup=False)
            for problem in outcome.report.problems if outcome.report else []:
                out.print(f"{read.source}: rejected: {problem}", markup=False)
        if not read.files and not read.error:
            out.print(f"{read.source}: nothing new", markup=False)
    if any(read.changed for read in reads):
        wake(settings.home)
    if any(read.error or any(f.refused or not f.report.ok for f in read.files) for read in reads):
        raise typer.Exit(1)


def _outcome(outcome: FileOutcome) -> str:
    where = f"; moved to {outcome.moved_to}" if outcome.moved_to else ""
    if outcome.refused and outcome.report is not None:  # imported, then not moved
        return f"{outcome.name}: {outcome.report.counts}; {outcome.refused}"
    if outcome.refused:
        return f"{outcome.name}: refused ({outcome.refused}){where}"
    return f"{outcome.name}: {outcome.report.counts}{where}"
