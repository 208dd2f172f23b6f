"""The idle daemon: CPU share and resident memory of `followupd run` with nothing to do.

Floor: a bare Python process running APScheduler's BlockingScheduler with a no-op job on the
same schedule, measured in the same run, since any scheduler costs something. They run side
by side over the same window (60 s; 3 s with --quick, which then shows little but memory):
the floor, a daemon on the demo's home (already migrated, already ticked), and a daemon on a
new home (`followupd init`), which migrates its database as it starts, as after an upgrade.
Goals: at most 0.5% of a core and 60 MiB (issue 18).

A second floor shows what the goal is up against: the same scheduler in a process that has
also imported the libraries of the design card the daemon cannot run without (SQLModel, and
with it SQLAlchemy's ORM and pydantic; Jinja2's sandbox), before a line of followupd.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row

SETTLE = 4.0  # seconds for the daemon to start and finish its first tick
FLOOR_SCRIPT = """
from apscheduler.schedulers.blocking import BlockingScheduler
s = BlockingScheduler(timezone="UTC")
s.add_job(lambda: None, "interval", minutes=5)
s.add_job(lambda: None, "interval", seconds=1)
s.start()
"""
STACK_SCRIPT = "import sqlmodel, sqlalchemy.orm, pydantic, jinja2.sandbox\n" + FLOOR_SCRIPT


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sample(procs: list[subprocess.Popen], seconds: float) -> list[tuple[float, float]]:
    """(CPU share of one core, RSS MiB) of each process over the same `seconds`."""
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2:]} exited with {proc.returncode}")
    cpu0, t0 = [_cpu_seconds(proc.pid) for proc in procs], time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = [_cpu_seconds(proc.pid) for proc in procs], time.monotonic()
    return [
        ((after - before) / (t1 - t0), _rss_mib(proc.pid))
        for proc, before, after in zip(procs, cpu0, cpu1, strict=True)
    ]


def _measure(
    commands: list[tuple[list[str], dict]], seconds: float, settle: float
) -> list[tuple[float, float]]:
    """Start every command (each with its environment), let them settle, then sample them
    side by side: idle processes hardly disturb each other, and one window instead of
    several saves the wait."""
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for args, env in commands
    ]
    try:
        time.sleep(settle)
        return _sample(procs, seconds)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)


def _demo_home(root: Path) -> dict:
    """A home with the demo's data, already ticked: the daemon finds nothing new."""
    home = root / "home"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run(
        [sys.executable, "-m", "followupd", "demo", str(home)],
        env=env,
        check=True,
        capture_output=True,
    )
    return {**env, "FOLLOWUPD_HOME": str(home)}


def _new_home(root: Path) -> Path:
    """A home as `followupd init` writes it: no database yet."""
    home = root / "new"
    subprocess.run(
        [sys.executable, "-m", "followupd", "init", str(home)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=True,
        capture_output=True,
    )
    return home


def run(quick: bool) -> list[Row]:
    seconds = 3.0 if quick else 60.0
    root = Path(tempfile.mkdtemp(prefix="followupd-bench-idle-"))
    try:
        env = _demo_home(root)
        new_env = {**env, "FOLLOWUPD_HOME": str(_new_home(root))}
        daemon = [sys.executable, "-m", "followupd", "run"]
        (floor_cpu, floor_rss), (_, stack_rss), (cpu, rss), (_, new_rss) = _measure(
            [
                ([sys.executable, "-c", FLOOR_SCRIPT], env),
                ([sys.executable, "-c", STACK_SCRIPT], env),
                (daemon, env),
                (daemon, new_env),
            ],
            seconds,
            SETTLE,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    label = f"idle daemon over {seconds:.0f} s"
    return [
        Row(f"{label}: CPU (% of a core; goal <= 0.5)", cpu * 100, "%", floor_cpu * 100, "%"),
        Row(f"{label}: resident memory (goal <= 60 MiB)", rss, "MiB", floor_rss, "MiB"),
        Row(
            f"{label}: resident memory, a new home migrated at start",
            new_rss,
            "MiB",
            floor_rss,
            "MiB",
        ),
        Row(f"{label}: resident memory against the libraries' own", rss, "MiB", stack_rss, "MiB"),
    ]
