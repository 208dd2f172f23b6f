"""Change notifications: a daemon wakes when referrals or visits change (PostgreSQL only)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import sqlalchemy as sa


class ChangeListener:
    """Wakes a daemon when referrals or visits change, through PostgreSQL LISTEN/NOTIFY.

    Migration 0003's trigger notifies channel `followupd` after every statement that writes
    either table, whoever wrote it (the CLI, an import, the practice's own system). A thread
    holds one connection of its own and reconnects after an outage; the poll still runs, so
    a lost notification only delays a follow-up until the next one.
    """

    CHANNEL = "followupd"

    def __init__(self, url: str, on_change: Callable[[], None], name: str = "followupd"):
        self.name = name[:63]  # its application_name in pg_stat_activity
        self.conninfo = (
            sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.on_change = on_change
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self.listening = threading.Event()  # for tests: LISTEN is in place

    def start(self) -> ChangeListener:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        import psycopg

        delay = 1.0
        while not self.stopped.is_set():
            try:
                with psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=10, application_name=self.name
                ) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    self.listening.set()
                    delay = 1.0
                    while not self.stopped.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.on_change()
            except psycopg.Error:
                self.listening.clear()
                self.stopped.wait(delay)
                delay = min(delay * 2, 30.0)
