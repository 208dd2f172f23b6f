"""Benchmarks for followupd, each figure set against a floor: what the same work costs with
nothing but the standard library. Run `python -m bench` (or `python -m bench --quick`) from the
repository root; results go to the terminal and to bench/results.json.
"""
