"""The wake file: how a command tells a daemon on the same home that there is new data.

Data entry touches `.followupd-wake` in the home; the daemon's watch job notices its time
change and starts a tick at once. This is all a command needs of the daemon, so it lives
here, apart from `daemon.py`, whose imports (the engine, the scheduler) a command that only
writes a row should not pay for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

WAKE_FILE = ".followupd-wake"


def wake(home: Path) -> None:
    """Tell a daemon on this home that there is new data (touch the wake file)."""
    with contextlib.suppress(OSError):  # read-only home: the next poll sees the data anyway
        (home / WAKE_FILE).touch()
