"""Start-up: `followupd --help` loads no command module and nothing heavy (the database,
the configuration's validation, Google's client), and lists each command with the help the
command itself gives. The seconds are measured in bench/startup.py, not here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from followupd.cli import COMMANDS, _help_texts, load_command

HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "googleapiclient", "jinja2", "followupd.store")

PROBE = """
import sys
from followupd.cli import main
sys.argv = ["followupd", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("LOADED", " ".join(sorted(name for name in sys.modules if name.split(".")[0] in
      ("sqlalchemy", "sqlmodel", "pydantic", "googleapiclient", "jinja2", "followupd"))))
"""


def loaded_by(*args: str) -> set[str]:
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    [line] = [line for line in ran.stdout.splitlines() if line.startswith("LOADED")]
    return set(line.split()[1:])


def test_help_imports_nothing_heavy_and_no_command_module():
    loaded = loaded_by("--help")
    assert not {name for name in loaded if name.startswith(HEAVY)}, loaded
    assert not {name for name in loaded if name.startswith("followupd.commands.")} - {
        "followupd.commands.base"
    }


def test_a_command_loads_what_it_needs_only_when_it_runs():
    loaded = loaded_by("referral", "--help")
    assert "followupd.commands.entry" in loaded and "followupd.commands.lists" in loaded
    assert "followupd.commands.backup" not in loaded
    # data entry wakes the daemon (followupd.wakeup) without loading it, or the engine
    assert not {"followupd.daemon", "followupd.engine", "jinja2"} & loaded


@pytest.mark.parametrize(("name", "module", "attribute"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_lists_each_command_with_its_own_help(name, module, attribute):
    """The line `--help` shows (read from the source) is the command's own help."""
    command = load_command(name, module, attribute)
    assert command.name == name
    assert (command.help or "").strip() == _help_texts(module)[attribute].strip()


GC_PROBE = """
import gc, sys
from followupd.cli import main
sys.argv = ["followupd", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("GC", gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("args", [("--help",), ("referral", "--help")], ids=["root", "loaded"])
def test_start_up_is_frozen_and_the_collector_runs_for_the_command(args):
    """What loading a command made is set aside from the garbage collector (it lives until
    exit: walking it in every full collection, and at exit, was a quarter of `status`), and
    the collector is on again for what the command itself makes."""
    ran = subprocess.run(
        [sys.executable, "-c", GC_PROBE, *args], capture_output=True, text=True, check=True
    )
    assert ran.stdout.splitlines()[-1] == "GC True True"
