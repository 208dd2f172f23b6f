"""Latency: from a referral entered to its draft in the outbox, with `followupd run` (the
daemon, as a subprocess, outbox backend, the shipped 5-minute poll) doing the work.

Each referral (received ten days ago, with a release and the physician's email, so its
acknowledgement is due at once) is entered through the code path `followupd referral add`
runs: `parse_referral`, `upsert_referrals` in one transaction, then `wake(home)`, which
touches the wake file. The clock starts before the transaction and stops when the draft's
`.eml` file appears (written atomically, so it is complete). Entries are spaced by random
pauses so that they fall at random points of the daemon's one-second watch. p50 and p95
over 20 referrals (3 with --quick). The interpreter start of the CLI itself is not in that
figure; a separate row times `followupd referral add` as a command, from its start to the
draft, against the moment the command had committed the referral (the wake file's mtime):
nothing can draft a referral before it is in the database.

Floor: the daemon's own work once it knows, i.e. one warm `Engine.tick()` that plans and
delivers one new referral, timed in this process on the same home after the daemon has
stopped (median of several). What the daemon adds on top is the wake-up: it checks the wake
file every WATCH_SECONDS (1 s), so by design p50 is about the floor + 0.5 s and p95 about
the floor + 0.95 s.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row

ENTRIES_FULL, ENTRIES_QUICK = 20, 3
CLI_FULL, CLI_QUICK = 3, 1  # `followupd referral add` as a command, start to draft
FLOOR_TICKS = 7
PAUSE = (0.1, 0.6)  # seconds between a draft appearing and the next entry, at random
TIMEOUT = 15.0  # seconds to wait for the daemon to start, or for a draft
STEP = 0.005  # seconds between looks at the outbox
CONFIG = ROOT / "config" / "followupd.yaml"


def _drafts(home: Path) -> int:
    """How many finished drafts the outbox holds."""
    try:
        return sum(
            1 for entry in os.scandir(home / "outbox" / "drafts") if entry.name.endswith(".eml")
        )
    except FileNotFoundError:
        return 0


def _wait_for(condition: Callable[[], bool], what: str, log: Path | None = None) -> None:
    """Poll `condition` every STEP until it holds; a timeout stops the benchmark loudly."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"timed out waiting for {what}\n{tail}")
        time.sleep(STEP)


def _wait_for_draft(home: Path, before: int, ref: str, log: Path) -> None:
    """Until the outbox holds more than `before` drafts."""
    _wait_for(lambda: _drafts(home) > before, f"the draft of referral {ref}", log)


def _row(ref: str) -> dict[str, str]:
    """A referral whose acknowledgement is due now: received ten days ago, released."""
    return {
        "ref": ref,
        "received_on": (date.today() - timedelta(days=10)).isoformat(),
        "physician": "Dr. Test Latency",
        "physician_email": "latency@clinic.example",
        "specialty": "internal medicine",
        "practice": "Clinic",
        "client_name": "Test Client",
        "client_dob": "1980-01-01",
        "presenting_problem": "Synthetic problem",
        "treatment_focus": "Synthetic focus",
        "release_on_file": "yes",
    }


def enter(store: Any, home: Path, ref: str) -> None:
    """What `followupd referral add` does once its arguments are parsed."""
    from followupd.records import parse_referral
    from followupd.store import Directory, upsert_referrals
    from followupd.wakeup import wake

    with store.session() as session:
        upsert_referrals(session, [parse_referral(_row(ref))], Directory())
    wake(home)


# --- the home and the daemon --------------------------------------------------------------


@contextmanager
def fresh_home() -> Iterator[tuple[Path, Any, dict[str, str]]]:
    """A home with the shipped configuration; yields (home, its Store, the daemon's env)."""
    from followupd import config as configuration
    from followupd.store import Store

    scratch = Path(tempfile.mkdtemp(prefix="followupd-bench-latency-"))
    try:
        home = scratch / "home"
        home.mkdir()
        shutil.copyfile(CONFIG, home / "followupd.yaml")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FOLLOWUPD_HOME": str(home)}
        store = Store(configuration.load(home, environ=env).database_url)
        try:
            yield home, store, env
        finally:
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def daemon(home: Path, env: dict[str, str]) -> Iterator[Path]:
    """`followupd run` on `home`, once its first tick is done; yields its log file."""
    log = home / "daemon.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "followupd", "run"], env=env, stdout=handle, stderr=handle
        )
    try:
        _wait_for(
            lambda: "event=tick" in log.read_text(errors="replace") or proc.poll() is not None,
            "the daemon's first tick",
            log,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{log.read_text()}")
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the measurements ---------------------------------------------------------------------


def entered_to_draft(store: Any, home: Path, log: Path, count: int) -> list[float]:
    """Seconds from entering each referral to its draft, one referral at a time."""
    latencies = []
    for i in range(count):
        time.sleep(random.uniform(*PAUSE))
        before = _drafts(home)
        started = time.perf_counter()
        enter(store, home, f"L-{i}")
        _wait_for_draft(home, before, f"L-{i}", log)
        latencies.append(time.perf_counter() - started)
    return latencies


def cli_to_draft(
    home: Path, env: dict[str, str], log: Path, count: int
) -> tuple[list[float], list[float]]:
    """Seconds from starting `followupd referral add` to its draft, and to the moment the
    command had committed the referral (it touches the wake file right after), for each of
    `count` referrals."""
    from followupd.wakeup import WAKE_FILE

    totals, committed = [], []
    for i in range(count):
        row = _row(f"C-{i}")
        args = [
            "referral",
            "add",
            "--ref",
            row["ref"],
            "--physician",
            row["physician"],
            "--physician-email",
            row["physician_email"],
            "--client-name",
            row["client_name"],
            "--received-on",
            row["received_on"],
            "--release",
        ]
        before = _drafts(home)
        started, wall = time.perf_counter(), time.time()
        subprocess.run(
            [sys.executable, "-m", "followupd", *args], env=env, check=True, capture_output=True
        )
        _wait_for_draft(home, before, row["ref"], log)
        totals.append(time.perf_counter() - started)
        committed.append((home / WAKE_FILE).stat().st_mtime_ns / 1e9 - wall)
        time.sleep(random.uniform(*PAUSE))
    return totals, committed


def floor_tick(store: Any, home: Path) -> float:
    """Median seconds of a warm in-process tick that plans and delivers one new referral."""
    from followupd import config as configuration
    from followupd.engine import Engine

    engine = Engine(configuration.load(home, environ={}), store)
    try:
        times = []
        for i in range(FLOOR_TICKS + 1):  # the first warms the engine up
            enter(store, home, f"F-{i}")
            started = time.perf_counter()
            report = engine.tick()
            took = time.perf_counter() - started
            if len(report.delivered) != 1 or report.failed:
                raise RuntimeError(
                    f"the floor's tick delivered {len(report.delivered)}, "
                    f"failed {report.failed[:3]}"
                )
            if i:
                times.append(took)
        return statistics.median(times)
    finally:
        engine.close()


def _percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def run(quick: bool) -> list[Row]:
    """Start the daemon, enter referrals one by one, stop it, then time the floor."""
    entries = ENTRIES_QUICK if quick else ENTRIES_FULL
    cli = CLI_QUICK if quick else CLI_FULL
    with fresh_home() as (home, store, env):
        with daemon(home, env) as log:
            latencies = entered_to_draft(store, home, log, entries)
            totals, committed = cli_to_draft(home, env, log, cli)
        floor = floor_tick(store, home)
    at = f"entered -> draft, daemon, {entries} referrals"
    return [
        Row(f"{at}: p50", _percentile(latencies, 0.5) * 1000, "ms", floor * 1000, "ms"),
        Row(f"{at}: p95", _percentile(latencies, 0.95) * 1000, "ms", floor * 1000, "ms"),
        Row(
            f"`followupd referral add` start -> draft (median of {cli})",
            statistics.median(totals) * 1000,
            "ms",
            statistics.median(committed) * 1000,
            "ms",
        ),
    ]
