"""The `followupd` command (console script and `python -m followupd`).

The commands live in followupd/commands/, one module per group; this module assembles them
into one Typer app. Exit statuses (followupd.commands.common): 0 all went well; 1 some item
was rejected or failed and the rest were done; 2 something must be fixed before anything can
run.
"""

from __future__ import annotations

import typer
import typer.core

import followupd.commands.lists  # noqa: F401 -- registers `physician|referral|visit list`
from followupd.commands import entry, imports, ledger, running, setup, sources
from followupd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Commands, root

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "app", "main"]


def _flags_show_no_type() -> None:
    """Typer's help writes `<bool>` beside a flag such as --once, as if it took a value
    (`run --once true` then fails): a flag shows nothing there."""
    option = typer.core.TyperOption
    shown = getattr(option, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_bool_flag", False) else shown(self, ctx)

    option.display_type_rich = display_type_rich


_flags_show_no_type()

app = typer.Typer(
    cls=Commands,
    name="followupd",
    help="Follow-up notes to referring physicians and outreach reminders, "
    "as Gmail drafts and Calendar events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(root)
# The order here is the order `followupd --help` lists them in.
for command in (
    setup.init,
    setup.check,
    setup.auth,
    running.run,
    running.preview,
    running.demo,
    running.health,
    ledger.status,
):
    app.command()(command)
app.add_typer(entry.physician_app, name="physician")
app.add_typer(entry.referral_app, name="referral")
app.add_typer(entry.visit_app, name="visit")
app.add_typer(imports.import_app, name="import")
app.add_typer(sources.sources_app, name="sources")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
