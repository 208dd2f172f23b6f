"""Start-up: how long `followupd --help`, `followupd status` and `followupd referral add`
take as a person types them, against the floor of starting Python at all (`python -c
pass`), each the median of several runs in fresh processes. Goals (issue 18): `--help`
within 20x of the floor, `status` within 50x.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Row

RUNS_FULL, RUNS_QUICK = 11, 2


def _seconds(argv: list[str], env: dict[str, str], runs: int) -> float:
    """The median wall time of `runs` runs (one untimed first, to warm the file cache)."""
    times = []
    for attempt in range(runs + 1):
        start = time.perf_counter()
        ran = subprocess.run(argv, env=env, capture_output=True, text=True)
        if ran.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[1:])} failed: {ran.stderr[-500:]}")
        if attempt:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool) -> list[Row]:
    runs = RUNS_QUICK if quick else RUNS_FULL
    followupd = [sys.executable, "-m", "followupd"]
    with tempfile.TemporaryDirectory(prefix="followupd-bench-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir(mode=0o700)
        shutil.copyfile(ROOT / "config" / "followupd.yaml", home / "followupd.yaml")
        os.chmod(home / "followupd.yaml", 0o600)
        env = {**os.environ, "FOLLOWUPD_HOME": str(home)}
        env = {k: v for k, v in env.items() if not k.startswith("FOLLOWUPD_") or k in (
            "FOLLOWUPD_HOME",
        )}  # fmt: skip
        subprocess.run([*followupd, "status"], env=env, capture_output=True, check=True)
        floor = _seconds([sys.executable, "-c", "pass"], env, runs)
        figures = {
            "--help": _seconds([*followupd, "--help"], env, runs),
            "status": _seconds([*followupd, "status"], env, runs),
            "referral add": _add_seconds(followupd, env, runs),
        }
    return [Row(f"start-up: followupd {name}", seconds, "s", floor, "s")
            for name, seconds in figures.items()]  # fmt: skip


def _add_seconds(followupd: list[str], env: dict[str, str], runs: int) -> float:
    """`referral add` of a new referral each run (the same one again would change nothing)."""
    times = []
    for n in range(runs + 1):
        argv = [
            *followupd, "referral", "add", "--ref", f"B-{n}", "--received-on", "2026-11-20",
            "--physician", "Dr. Bench Test", "--physician-email", "bench@clinic.example",
            "--client-name", "Bench Client",
        ]  # fmt: skip
        start = time.perf_counter()
        ran = subprocess.run(argv, env=env, capture_output=True, text=True)
        if ran.returncode != 0:
            raise RuntimeError(f"referral add failed: {ran.stderr[-500:]}")
        if n:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
