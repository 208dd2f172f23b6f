"""What every benchmark module shares: the result row, measuring a child process, and the
table and JSON a run leaves behind.

Imported by the measured child processes too, so it imports nothing heavy at module level:
whatever it loads would count against the peak memory of the floor being measured.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class Row:
    """One figure, with the floor it is compared to (None when there is no fair floor)."""

    name: str
    value: float
    unit: str
    floor: float | None = None
    floor_unit: str | None = None

    @property
    def ratio(self) -> float | None:
        """value / floor: how many times the floor's cost (or, for rates, its speed)."""
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "floor": self.floor,
            "floor_unit": self.floor_unit,
            "ratio": self.ratio,
        }


# --- in the child -----------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    On Linux, VmHWM: ru_maxrss survives execve, so a child started by a parent holding 200
    MiB would report the parent's 200 MiB; VmHWM belongs to the new program alone.
    Elsewhere ru_maxrss, which is KiB on Linux and bytes on macOS.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def report(result: dict[str, Any]) -> None:
    """Hand a child's measurements to the parent: one JSON object on standard output."""
    result["peak_rss_mib"] = peak_rss_mib()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


# --- in the parent ----------------------------------------------------------------------


def run_child(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m <module> <args>` in a fresh interpreter, so its peak RSS is its own,
    and return the JSON it printed; a failing child stops the benchmark with its stderr."""
    ran = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if ran.returncode != 0:
        raise RuntimeError(
            f"benchmark child `{module} {' '.join(args)}` failed "
            f"(exit {ran.returncode}):\n{ran.stderr.strip()}"
        )
    return json.loads(ran.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    """Enough about the machine to tell whether two results files are comparable."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _number(value: float | None, unit: str | None = None) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.2g}x"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}" if unit else text


def print_table(rows: list[Row], title: str) -> None:
    """The results as a table: figure, value, floor, and value/floor."""
    from rich.console import Console  # imported here: children import this module too
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("floor", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.name,
            _number(row.value, row.unit),
            _number(row.floor, row.floor_unit),
            _number(row.ratio, "x"),
        )
    console = Console()
    if not console.is_terminal:  # a CI log: never cut a figure to fit 80 columns
        console = Console(width=140)
    console.print(table)


def write_json(rows: list[Row], *, quick: bool, path: Path = RESULTS) -> dict[str, Any]:
    """bench/results.json: the machine, the mode, and every row."""
    document = {"machine": machine(), "quick": quick, "rows": [row.as_dict() for row in rows]}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document
