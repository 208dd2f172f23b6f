"""CSV import: how long `import_csv` takes on a large referrals file and how much memory it
needs, against the floor of merely reading the same file with `csv.reader`.

Every measurement runs in its own interpreter (`python -m bench.import_csv <mode> ...`), so
each peak RSS belongs to one job alone. Importing the same file at a tenth of the rows shows
whether memory grows with the file (the import promises it stays flat).
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import Row, report, run_child

ROWS_FULL = 100_000
ROWS_QUICK = 10_000
PHYSICIANS = 300
PRACTICES = 50
FLOOR_REPEATS = 5  # the floor is cheap and its time is short, so take the best of a few
CONFIG = Path(__file__).resolve().parent.parent / "config" / "followupd.yaml"
COLUMNS = (
    "ref",
    "received_on",
    "physician",
    "physician_email",
    "physician_fax",
    "specialty",
    "practice",
    "client_name",
    "client_dob",
    "presenting_problem",
    "treatment_focus",
    "release_on_file",
    "closed_on",
    "closing_summary",
)
SPECIALTIES = (
    "internal medicine",
    "family medicine",
    "obstetrics and gynecology",
    "pediatrics",
    "psychiatry",
    "neurology",
)
PROBLEMS = (
    "Synthetic problem: low mood",
    "Synthetic problem: worry",
    "Synthetic problem: poor sleep",
    "Synthetic problem: panic",
)
FOCUSES = (
    "Synthetic focus: CBT",
    "Synthetic focus: behavioral activation",
    "Synthetic focus: exposure",
    "",
)
FIRST_DAY = date(2025, 1, 1)
LAST_DAY = date(2026, 11, 20)


# --- the file ---------------------------------------------------------------------------


def write_referrals(path: Path, rows: int, seed: int = 1) -> Path:
    """A referrals CSV of synthetic values only, the same for the same seed. Each physician
    always has the same details, so the import sees stable physicians, not constant edits."""
    rng = random.Random(seed)
    span = (LAST_DAY - FIRST_DAY).days
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(1, rows + 1):
            doctor = rng.randrange(PHYSICIANS)
            received = FIRST_DAY + timedelta(days=rng.randrange(span + 1))
            born = date(1980, 1, 1) + timedelta(days=rng.randrange(-15_000, 8_000))
            closed = (
                received + timedelta(days=rng.randrange(1, 120)) if rng.random() < 0.1 else None
            )
            writer.writerow(
                (
                    f"R-{i:06d}",
                    received.isoformat(),
                    f"Dr. Test {doctor}",
                    f"dr{doctor}@clinic.example",
                    f"(555) 010-{doctor:04d}",
                    SPECIALTIES[doctor % len(SPECIALTIES)],
                    f"Clinic {doctor % PRACTICES}",
                    f"Test Client {i}",
                    born.isoformat(),
                    rng.choice(PROBLEMS),
                    rng.choice(FOCUSES),
                    rng.choice(("yes", "no")),
                    closed.isoformat() if closed else "",
                    "Synthetic closing summary." if closed else "",
                )
            )
    return path


def make_home(path: Path) -> Path:
    """A fresh followupd home: the shipped configuration and nothing else (SQLite default)."""
    path.mkdir()
    shutil.copyfile(CONFIG, path / "followupd.yaml")
    return path


# --- the children -----------------------------------------------------------------------


def _rss_now_mib() -> float | None:
    """Current (not peak) RSS, to tell the interpreter and libraries from the import itself."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def child_floor(csv_path: str) -> dict[str, Any]:
    """The floor: read every row with csv.reader, as the import itself must."""
    start = time.perf_counter()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    return {"seconds": time.perf_counter() - start, "rows": rows}


def child_followupd(csv_path: str, home: str, expect: str, rows: str) -> dict[str, Any]:
    """Import through the library as the CLI does, and refuse to report a wrong result."""
    from followupd import config as configuration
    from followupd.intake import import_csv
    from followupd.store import Store

    start = time.perf_counter()
    settings = configuration.load(home, environ={})  # environ={}: the user's env stays out
    store = Store(settings.database_url)
    opened = time.perf_counter()
    rss_before = _rss_now_mib()
    result = import_csv(store, csv_path, "referrals")
    done = time.perf_counter()
    store.close()
    counts = result.counts
    if getattr(counts, expect) != int(rows) or counts.rejected:
        sys.exit(
            f"import of {csv_path}: expected {expect} {rows}, got {counts}; "
            f"first problems: {result.problems[:5]}"
        )
    return {
        "seconds": done - opened,
        "open_seconds": opened - start,
        "rss_before_import_mib": rss_before,
        "added": counts.added,
        "updated": counts.updated,
        "unchanged": counts.unchanged,
        "rejected": counts.rejected,
    }


def _child_main(argv: list[str]) -> None:
    modes = {"floor": child_floor, "followupd": child_followupd}
    if not argv or argv[0] not in modes:
        sys.exit(f"usage: python -m bench.import_csv {{{'|'.join(modes)}}} ARGS...")
    report(modes[argv[0]](*argv[1:]))


# --- the parent -------------------------------------------------------------------------


def _floor(csv_path: Path, rows: int) -> dict[str, Any]:
    runs = [run_child(__name__, "floor", str(csv_path)) for _ in range(FLOOR_REPEATS)]
    for measured in runs:
        if measured["rows"] != rows:
            raise RuntimeError(f"floor read {measured['rows']} rows of {csv_path}, not {rows}")
    return min(runs, key=lambda measured: measured["seconds"])


def _followupd(csv_path: Path, home: Path, expect: str, rows: int) -> dict[str, Any]:
    return run_child(__name__, "followupd", str(csv_path), str(home), expect, str(rows))


def run(quick: bool) -> list[Row]:
    """Import N referrals into a fresh SQLite home, again unchanged, and N/10 for memory."""
    rows = ROWS_QUICK if quick else ROWS_FULL
    small = rows // 10
    with tempfile.TemporaryDirectory(prefix="followupd-bench-") as scratch:
        tmp = Path(scratch)
        big_csv = write_referrals(tmp / "referrals.csv", rows)
        small_csv = write_referrals(tmp / "referrals-small.csv", small)
        floor = _floor(big_csv, rows)
        floor_small = _floor(small_csv, small)
        home = make_home(tmp / "home")
        first = _followupd(big_csv, home, "added", rows)
        again = _followupd(big_csv, home, "unchanged", rows)
        first_small = _followupd(small_csv, make_home(tmp / "home-small"), "added", small)

    rss, rss_small = first["peak_rss_mib"], first_small["peak_rss_mib"]
    floor_rss, floor_rss_small = floor["peak_rss_mib"], floor_small["peak_rss_mib"]
    results = [
        Row(f"import {rows:,}: time", first["seconds"], "s", floor["seconds"], "s"),
        Row(
            f"import {rows:,}: rows/s",
            rows / first["seconds"],
            "rows/s",
            rows / floor["seconds"],
            "rows/s",
        ),
        Row(f"import {rows:,}: peak RSS", rss, "MiB", floor_rss, "MiB"),
        Row(f"re-import {rows:,} unchanged: time", again["seconds"], "s", floor["seconds"], "s"),
        Row(f"import {small:,}: peak RSS", rss_small, "MiB", floor_rss_small, "MiB"),
        Row(
            "import peak RSS growth 10x rows",
            rss / rss_small,
            "x",
            floor_rss / floor_rss_small,
            "x",
        ),
    ]
    for measured, count in ((first, rows), (first_small, small)):
        if measured["rss_before_import_mib"] is not None:  # Linux only
            results.append(
                Row(
                    f"import {count:,}: peak - start RSS",
                    measured["peak_rss_mib"] - measured["rss_before_import_mib"],
                    "MiB",
                )
            )
    results.append(Row("open new store (migrate)", first["open_seconds"], "s"))
    return results


if __name__ == "__main__":
    _child_main(sys.argv[1:])
