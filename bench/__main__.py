"""`python -m bench [--quick] [--only NAME]`: run the benchmark modules, print one table and
write bench/results.json. A new benchmark is a module here with `run(quick) -> list[Row]`,
added to MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

from bench.common import RESULTS, Row, print_table, write_json

MODULES = [
    "delivery",
    "tick",
    "import_csv",
    "folder",
    "sheet",
    "latency",
    "idle",
    "scaleout",
    "startup",
    "report",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the data: a smoke run that finishes in seconds",
    )
    parser.add_argument(
        "--only", choices=MODULES, action="append", help="run just this module (may be repeated)"
    )
    args = parser.parse_args(argv)
    os.umask(0o077)  # the homes benchmarks make are private: followupd refuses them otherwise
    started = time.perf_counter()
    rows: list[Row] = []
    for name in args.only or MODULES:
        module = importlib.import_module(f"bench.{name}")
        began = time.perf_counter()
        rows += module.run(args.quick)
        print(f"bench.{name}: {time.perf_counter() - began:.1f} s", flush=True)
    document = write_json(rows, quick=args.quick)
    machine = document["machine"]
    mode = "quick" if args.quick else "full"
    print_table(
        rows,
        title=f"followupd benchmarks ({mode}; python {machine['python']}, "
        f"{machine['cpu_count']} CPUs)",
    )
    print(
        f"{len(rows)} figures in {time.perf_counter() - started:.1f} s; "
        f"written to {RESULTS.relative_to(RESULTS.parent.parent)}"
    )


if __name__ == "__main__":
    main()
