"""Scale-out: follow-ups per second with one, two and three replicas of `followupd run` on
PostgreSQL, three therapists (three mailboxes), against the local fake Google answering
each round trip in 100 ms.

What is timed: from the start of `followupd import referrals` (the replicas are already
running, idle, listening) to the moment every follow-up is `done` in the ledger. The import
fires the NOTIFY that wakes the replicas; they plan the new rows (all at once: planning is
idempotent) and share the deliveries through leases. So the figure is referrals entered to
drafts in their mailboxes, with everything between.

Floors, both measured or derived in the same run:
- for two and three replicas, one replica's rate (the ratio is the speed-up);
- for a paced run, the quota-bound ceiling: each mailbox may spend Google's 15,000 Gmail
  units a minute (a draft costs 10), so three mailboxes allow 75 drafts/s, however many
  replicas deliver. Followupd's buckets are shared in the database, so replicas approach
  that ceiling and do not pass it (the server counts 429s: goal 0).

The replicas, the import and this process (the fake server) share the machine's cores;
where CPU, not latency, is the limit (batched drafts cost a few ms of CPU each), more
replicas than cores add little. Skipped, with a row saying so, when PostgreSQL is not there.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row

DELAY = 0.1  # seconds per round trip, about Google's
GOOGLE_UNITS_PER_MINUTE = 15_000  # Gmail's per-mailbox limit
DRAFT_UNITS = 10
THERAPISTS = ("lopez", "chen", "okoro")
REFERRALS_FULL, REFERRALS_QUICK = 3000, 150
PACED_FULL, PACED_QUICK = 3000, 300
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONFIG = ROOT / "config" / "followupd.yaml"


def _google_server() -> Any:
    from bench.delivery import _google_server as load

    return load()


def _postgres_url() -> str | None:
    """The benchmark database, if one answers (FOLLOWUPD_TEST_POSTGRES_URL, else the local)."""
    import sqlalchemy as sa

    url = os.environ.get("FOLLOWUPD_TEST_POSTGRES_URL") or DEFAULT_URL
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return None
    return url


@contextmanager
def _schema(url: str):
    """A fresh schema for one run, dropped afterwards; yields a URL into it."""
    import sqlalchemy as sa

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield sa.make_url(url).update_query_dict({"options": f"-csearch_path={name}"}) \
            .render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _home(server: Any, units_per_minute: int) -> Path:
    """A three-therapist home delivering to `server` with this per-mailbox Gmail budget."""
    home = Path(tempfile.mkdtemp(prefix="followupd-scaleout-"))
    text = CONFIG.read_text()
    for old, new in (("poll: 5 minutes", "poll: 1 hour"),
                     ("gmail_units_per_minute: 6000",
                      f"gmail_units_per_minute: {units_per_minute}")):
        text = text.replace(old, new)
    text = text.replace("therapists: []\n", "therapists:\n" + "".join(
        f"  - key: {key}\n    name: \"Therapist {key.title()}\"\n"
        f"    email: {key}@group.example\n" for key in THERAPISTS))
    (home / "followupd.yaml").write_text(text)
    (home / "tokens").mkdir()
    for key in THERAPISTS:
        info = server.add_user(f"{key}@group.example")
        (home / "tokens" / f"{key}.json").write_text(json.dumps(info))
    return home


def _write_referrals(path: Path, count: int) -> None:
    received = (date.today() - timedelta(days=10)).isoformat()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ref", "received_on", "physician", "physician_email", "client_name",
                         "release_on_file", "therapist"])
        for i in range(count):
            writer.writerow([f"S-{i}", received, f"Dr. Plum {i % 17}",
                             f"plum{i % 17}@clinic.example", "Theodora Quist", "yes",
                             THERAPISTS[i % len(THERAPISTS)]])


def _env(url: str, server: Any) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": url,
            "FOLLOWUPD_DELIVERY": "google", "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url,
            "FOLLOWUPD_LOG_LEVEL": "WARNING"}


def _followupd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "followupd", "--home", str(home), *args]


def _pending(url: str) -> int:
    """Follow-ups not yet done (or -1 before planning has made any)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            total, done = conn.execute(sa.text(
                "SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM follow_up")).one()
    except sa.exc.ProgrammingError:  # no tables yet
        return -1
    finally:
        engine.dispose()
    return total - done if total else -1


def _run(base_url: str, replicas: int, referrals: int, units_per_minute: int) -> tuple[float, int]:
    """(seconds from import to the last draft, 429s the server sent) for one configuration."""
    google = _google_server()
    with google.running_server(delay=DELAY) as server, _schema(base_url) as url:
        server.rate_limit("gmail", GOOGLE_UNITS_PER_MINUTE)  # Google's, per mailbox
        home = _home(server, units_per_minute)
        env = _env(url, server)
        _write_referrals(home / "referrals.csv", referrals)
        procs = [subprocess.Popen(_followupd(home, "run"), env={**env, "FOLLOWUPD_REPLICA":
                                                               f"r{i}"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(replicas)]
        try:
            _wait_listening(url, replicas)
            started = time.perf_counter()
            subprocess.run(_followupd(home, "import", "referrals", str(home / "referrals.csv")),
                           env=env, check=True, capture_output=True)
            deadline = started + 600
            while _pending(url) != 0:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"scale-out: {replicas} replicas did not finish")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            shutil.rmtree(home, ignore_errors=True)
        return seconds, server.stats.rate_limited


def _wait_listening(url: str, replicas: int) -> None:
    """Until every replica holds its LISTEN connection (they are then idle and ready)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                listening = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN followupd' "
                    "AND datname = current_database() AND state = 'idle'")).scalar()
            if listening >= replicas:
                time.sleep(0.5)  # their first tick (nothing due yet) is over too
                return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise RuntimeError("scale-out: the replicas did not start listening")


def run(quick: bool) -> list[Row]:
    url = _postgres_url()
    if url is None:
        return [Row("scale-out: skipped (no PostgreSQL on 127.0.0.1:5432)", 0, "")]
    referrals = REFERRALS_QUICK if quick else REFERRALS_FULL
    counts = (1, 3) if quick else (1, 2, 3)
    unpaced = 10_000_000  # followupd's pacing out of the way: what the replicas can do
    rates: dict[int, float] = {}
    rows: list[Row] = []
    for count in counts:
        seconds, _ = _run(url, count, referrals, unpaced)
        rates[count] = referrals / seconds
        floor = None if count == 1 else rates[1]
        rows.append(Row(f"scale-out {referrals:,} drafts: {count} replica{'s' * (count > 1)}",
                        rates[count], "drafts/s", floor, "drafts/s" if floor else None))
    paced = PACED_QUICK if quick else PACED_FULL
    seconds, rejected = _run(url, 3, paced, GOOGLE_UNITS_PER_MINUTE)
    ceiling = len(THERAPISTS) * GOOGLE_UNITS_PER_MINUTE / DRAFT_UNITS / 60
    rows.append(Row(f"scale-out {paced:,} drafts: 3 replicas at Google's quota (3 mailboxes)",
                    paced / seconds, "drafts/s", ceiling, "drafts/s"))
    rows.append(Row("scale-out at quota: HTTP 429s", rejected, "429s", 0, "429s"))
    return rows
