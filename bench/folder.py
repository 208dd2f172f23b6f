"""Folder sources: the seconds from a CSV file saved into a watched folder to its draft, and
a 100,000-row file imported by the watcher against `followupd import` of the same file.

Both run `followupd run` (the daemon, a subprocess, outbox backend) on a home whose folder
source is read every hour, so only inotify can notice a file in time.

- **Saved -> draft.** One referral due now per file, written aside and renamed into the folder
  (as an export is saved); the clock starts at the rename and stops when the draft's `.eml`
  appears. p50 and p95 over 20 files (3 with --quick). Floor: the work once the file is
  known, timed in this process on the same home after the daemon has stopped: importing the
  same one-row file with `import_csv` and one warm `Engine.tick()` that drafts it (median).
- **A big file.** 100,000 referrals (10,000 with --quick; the synthetic file of
  bench/import_csv.py) renamed into the folder; the clock stops when the file is in
  `imported/` beside its report (noticed, hashed, recorded, imported in batches, moved).
  Floor: `import_csv` of the same file into a fresh home with the arguments `followupd
  import referrals` passes (the therapists, the practice's today), in a child process of
  its own, in this same run (its time from the first row read, the store already open).
  The rules are off in the watched home, so the tick after the import does not compete with
  the next measurement.
"""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Row, report, run_child
from bench.import_csv import make_home, write_referrals
from bench.latency import PAUSE, _drafts, _percentile, _row, daemon

SAVES_FULL, SAVES_QUICK = 20, 3
ROWS_FULL, ROWS_QUICK = 100_000, 3_000
FLOOR_RUNS = 7
TIMEOUT = 15.0  # seconds for a draft
BIG_TIMEOUT = 900.0  # seconds for the big file
SOURCE = """sources:
  - name: exports
    kind: folder
    table: referrals
    path: inbox
    every: 1 hour
"""


def watched_home(path: Path, rules: bool = True) -> tuple[Path, dict[str, str]]:
    """A fresh home with one folder source read hourly; yields it and the daemon's env."""
    home = make_home(path)
    config = home / "followupd.yaml"
    text = config.read_text().replace("\nsources: []\n", "\n" + SOURCE, 1)
    if not rules:  # each rule off
        text = re.sub(r"(?m)^    enabled: .*\n", "", text)
        text = text.replace("\n    event: ", "\n    enabled: false\n    event: ")
    config.write_text(text)
    return home, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FOLLOWUPD_HOME": str(home)}


def one_referral(path: Path, ref: str) -> Path:
    """A CSV export of one referral whose acknowledgement is due now."""
    row = _row(ref)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    return path


def save(inbox: Path, source: Path, name: str) -> float:
    """Put `source` into the folder as an export is saved (written aside, renamed into
    place); returns the moment of the rename."""
    partial = inbox / f".{name}.part"
    shutil.copyfile(source, partial)
    at = time.perf_counter()
    os.replace(partial, inbox / name)
    return at


def wait_until(condition: Callable[[], bool], what: str, log: Path, timeout: float) -> float:
    """Poll until `condition` holds; the moment it did. A timeout stops the benchmark."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.005)
    return time.perf_counter()


def saved_to_draft(home: Path, env: dict[str, str], scratch: Path, count: int) -> list[float]:
    """Seconds from each file's rename into the folder to its draft, one file at a time."""
    inbox = home / "inbox"
    inbox.mkdir(mode=0o700, exist_ok=True)
    seconds = []
    with daemon(home, env) as log:
        for i in range(count):
            time.sleep(random.uniform(*PAUSE))
            source = one_referral(scratch / f"saved-{i}.csv", f"D-{i}")
            before = _drafts(home)
            saved = save(inbox, source, f"export-{i}.csv")
            done = wait_until(
                lambda n=before: _drafts(home) > n, f"the draft of D-{i}", log, TIMEOUT
            )
            seconds.append(done - saved)
    return seconds


def floor_import_and_tick(home: Path, scratch: Path) -> float:
    """Median seconds of importing a one-row file and a warm tick that drafts it."""
    from followupd import config as configuration
    from followupd.engine import Engine
    from followupd.intake import import_csv
    from followupd.store import Store

    settings = configuration.load(home, environ={})
    store = Store(settings.database_url)
    engine = Engine(settings, store)
    try:
        times = []
        for i in range(FLOOR_RUNS + 1):  # the first warms the engine up
            source = one_referral(scratch / f"floor-{i}.csv", f"F-{i}")
            started = time.perf_counter()
            import_csv(store, str(source), "referrals")
            report = engine.tick()
            took = time.perf_counter() - started
            if len(report.delivered) != 1 or report.failed:
                raise RuntimeError(f"the floor's tick delivered {len(report.delivered)}")
            if i:
                times.append(took)
        return statistics.median(times)
    finally:
        engine.close()
        store.close()


def watched_import(home: Path, env: dict[str, str], big: Path, rows: int) -> float:
    """Seconds from the big file's rename into the folder to its move into imported/."""
    inbox = home / "inbox"
    inbox.mkdir(mode=0o700, exist_ok=True)
    imported = inbox / "imported"
    with daemon(home, env) as log:
        saved = save(inbox, big, "big.csv")
        done = wait_until(
            lambda: imported.exists() and any(imported.glob("*-big.csv")),
            f"the {rows:,}-row file in imported/",
            log,
            BIG_TIMEOUT,
        )
    [moved] = imported.glob("*-big.csv")
    report = moved.with_name(moved.name + ".report.txt").read_text()
    if not report.startswith(f"referrals: added {rows}, updated 0, unchanged 0, rejected 0"):
        raise RuntimeError(f"the watcher's import of {rows:,} rows reported: {report[:300]}")
    return done - saved


def child_plain(csv_path: str, home: str, rows: str) -> dict[str, float]:
    """`followupd import referrals FILE` as the command runs it, timed from the first row
    read (the store already open), refusing to report a wrong result."""
    from datetime import datetime

    from followupd import config as configuration
    from followupd.intake import import_csv
    from followupd.records import Therapists
    from followupd.store import Store

    settings = configuration.load(home, environ={})
    config = settings.config
    store = Store(settings.database_url)
    therapists = Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())
    started = time.perf_counter()
    report = import_csv(
        store,
        csv_path,
        "referrals",
        therapists=therapists,
        today=datetime.now(config.practice.zone).date(),
    )
    took = time.perf_counter() - started
    store.close()
    if report.counts.added != int(rows) or report.counts.rejected:
        sys.exit(f"import of {csv_path}: expected added {rows}, got {report.counts}")
    return {"seconds": took}


def run(quick: bool) -> list[Row]:
    """Saved -> draft through the daemon, then the big file, then the floors."""
    saves = SAVES_QUICK if quick else SAVES_FULL
    rows = ROWS_QUICK if quick else ROWS_FULL
    with tempfile.TemporaryDirectory(prefix="followupd-bench-folder-") as scratch:
        tmp = Path(scratch)
        home, env = watched_home(tmp / "home")
        latencies = saved_to_draft(home, env, tmp, saves)
        floor = floor_import_and_tick(home, tmp)
        big = write_referrals(tmp / "referrals.csv", rows)
        quiet, quiet_env = watched_home(tmp / "home-big", rules=False)
        watched = watched_import(quiet, quiet_env, big, rows)
        plain = run_child(__name__, "plain", str(big), str(make_home(tmp / "plain")), str(rows))
    at = f"folder: saved -> draft (inotify, every: 1 hour), {saves} files"
    return [
        Row(f"{at}: p50", _percentile(latencies, 0.5) * 1000, "ms", floor * 1000, "ms"),
        Row(f"{at}: p95", _percentile(latencies, 0.95) * 1000, "ms", floor * 1000, "ms"),
        Row(
            f"folder: {rows:,}-row file saved -> in imported/ (watcher)",
            watched,
            "s",
            plain["seconds"],
            "s",
        ),
        Row(
            f"folder: {rows:,}-row file: rows/s (watcher vs followupd import)",
            rows / watched,
            "rows/s",
            rows / plain["seconds"],
            "rows/s",
        ),
    ]


if __name__ == "__main__":  # the floor's child: python -m bench.folder plain CSV HOME ROWS
    if sys.argv[1:2] != ["plain"]:
        sys.exit("usage: python -m bench.folder plain CSV HOME ROWS")
    report(child_plain(*sys.argv[2:]))
