"""The `followupd` command (console script and `python -m followupd`).

The commands live in followupd/commands/, one module per group; this module lists them and
loads a command's module only when that command runs, so `followupd --help` imports typer
and nothing of the database, the configuration or Google. Their help lines are read from
the modules' source (their docstrings), without importing them. Exit statuses
(followupd.commands.base): 0 all went well; 1 some item was rejected or failed and the rest
were done; 2 something must be fixed before anything can run.
"""

from __future__ import annotations

import ast
import gc
import importlib
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import typer
import typer.core

from followupd.commands.base import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    bound_whole_numbers,
    root,
)

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "app", "main"]

# click's Command, as typer uses it (it vendors click in some versions, uses it in others).
ClickCommand = next(c for c in typer.core.TyperCommand.__mro__[1:] if c.__name__ == "Command")

# The order here is the order `followupd --help` lists them in: name, module, attribute (a
# command function, or a Typer app for a group of commands).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("init", "setup", "init"),
    ("check", "setup", "check"),
    ("auth", "setup", "auth"),
    ("run", "running", "run"),
    ("preview", "running", "preview"),
    ("demo", "running", "demo"),
    ("health", "running", "health"),
    ("status", "ledger", "status"),
    ("report", "report", "report"),
    ("backup", "backup", "backup"),
    ("restore", "backup", "restore"),
    ("physician", "entry", "physician_app"),
    ("referral", "entry", "referral_app"),
    ("visit", "entry", "visit_app"),
    ("import", "imports", "import_app"),
    ("sources", "sources", "sources_app"),
)
# Modules that add commands to another module's groups when imported.
ALSO_LOAD = {"entry": ("lists",)}
COMMANDS_DIR = Path(__file__).resolve().parent / "commands"


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


@cache
def _help_texts(module: str) -> dict[str, str]:
    """{name: help} of a command module's functions (their docstrings) and Typer apps (their
    `help=`), read from its source: what `--help` lists, without importing the module."""
    tree = ast.parse((COMMANDS_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = ast.get_docstring(node) or ""
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for keyword in node.value.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            found[target.id] = str(keyword.value.value)
    return found


def load_command(name: str, module: str, attribute: str) -> ClickCommand:
    """The command, its module imported now; its whole-number options bounded."""
    loaded = importlib.import_module(f"followupd.commands.{module}")
    for extra in ALSO_LOAD.get(module, ()):
        importlib.import_module(f"followupd.commands.{extra}")
    target = getattr(loaded, attribute)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name=name)(target)
        command = typer.main.get_command(single)
    command.name = name
    bound_whole_numbers(SimpleNamespace(commands={name: command}))
    return command


class _NotYetLoaded(typer.core.TyperCommand):
    """A command as `--help` lists it; running it loads the real one and hands over."""

    def __init__(self, name: str, help_text: str, load):
        super().__init__(name, help=help_text)
        self._load = load

    def make_context(self, info_name, args, parent=None, **extra):
        return self._load().make_context(info_name, args, parent=parent, **extra)


class LazyCommands(Commands):
    """The root group: its commands are loaded when run (and all of them when something
    walks the whole tree through `.commands`)."""

    def __init__(self, *args, **kwargs):
        self._loaded: dict[str, ClickCommand] = {}
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, ClickCommand]:
        return {name: self._real(name) for name, *_ in COMMANDS}

    @commands.setter
    def commands(self, _given: dict) -> None:
        """Typer hands over the commands registered on the app: there are none."""

    def bound_numbers(self) -> None:
        """Nothing to do here: each command is bounded as it is loaded."""

    def list_commands(self, ctx) -> list[str]:
        return [name for name, *_ in COMMANDS]

    def get_command(self, ctx, name: str) -> ClickCommand | None:
        if name in self._loaded:
            return self._loaded[name]
        spec = next((spec for spec in COMMANDS if spec[0] == name), None)
        if spec is None:
            return None
        return _NotYetLoaded(name, _help_texts(spec[1]).get(spec[2], ""), lambda: self._real(name))

    def _real(self, name: str) -> ClickCommand:
        if name not in self._loaded:
            spec = next(spec for spec in COMMANDS if spec[0] == name)
            self._loaded[name] = load_command(*spec)
            _loaded()
        return self._loaded[name]


app = typer.Typer(
    cls=LazyCommands,
    name="followupd",
    help="Follow-up notes to referring physicians and outreach reminders, "
    "as Gmail drafts and Calendar events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(root)


# True while `main` loads its command with the garbage collector paused.
_collector_paused = False


def main() -> None:
    """Run one command, then exit.

    Loading a command makes over 100,000 objects that live until the process ends (modules,
    classes, validators, compiled statements), and every full collection walks them all for
    nothing: the interpreter's last collections at exit took a quarter of `followupd
    status`. So while the command loads the collector is paused, and what the loading made
    is then set aside (`gc.freeze`) where no collection looks at it again; what the command
    itself makes is collected as usual. (`app`, as tests run it in their own process, leaves
    the collector alone.)"""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True
    try:
        app()
    finally:
        _loaded()  # no command loaded (`--help`, a usage error): the collector is back


def _loaded() -> None:
    """The command's module is loaded: freeze what start-up made, resume the collector."""
    global _collector_paused
    if _collector_paused:
        _collector_paused = False
        gc.freeze()
        gc.enable()


if __name__ == "__main__":
    main()
