"""Figures for the trust summary line that `.ci/run` ends with.

Tests call `record(kind, **figures)`; each call appends one JSON line to a file in
FOLLOWUPD_TEST_TRUST_DIR (when set), one file per test process so parallel workers never
interleave. `python tests/trust.py DIR` adds them up and prints:

    trust: 55 kills, 0 duplicates, 0 lost; 58/58 faults converged; 2000 fuzz inputs, 0 crashes;
    0 patient values in 900 files written; 100000 header injection cases, 0 injections;
    6 revoke cases; 12 permission cases
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path


def record(kind: str, **figures: int) -> None:
    directory = os.environ.get("FOLLOWUPD_TEST_TRUST_DIR")
    if not directory:
        return
    path = Path(directory) / f"trust-{os.getpid()}.jsonl"
    with path.open("a") as handle:
        handle.write(json.dumps({"kind": kind, **figures}) + "\n")


def summary(directory: Path) -> str:
    totals: Counter = Counter()
    for path in sorted(directory.glob("trust-*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            kind = entry.pop("kind")
            for name, value in entry.items():
                totals[f"{kind}.{name}"] += value
    return (
        f"trust: {totals['kill.kills']} kills, {totals['kill.duplicates']} duplicates, "
        f"{totals['kill.lost']} lost; {totals['fault.converged']}/{totals['fault.tried']} "
        f"faults converged; {totals['fuzz.inputs']} fuzz inputs, {totals['fuzz.crashes']} "
        f"crashes; {totals['phi.hits']} patient values in {totals['phi.files']} files "
        f"written; {totals['injection.cases']} header injection cases, "
        f"{totals['injection.injections']} injections; {totals['revoke.cases']} revoke "
        f"cases; {totals['permission.cases']} permission cases"
    )


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
