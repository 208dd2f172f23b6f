"""Scale-out: follow-ups per second with one, two and three replicas of `followupd run` on
PostgreSQL, three therapists (three mailboxes), against the local fake Google answering
each round trip in 100 ms.

The stages run in turn on one database and one set of replica processes, started as a
stage needs more, each stage with three mailboxes of its own. What is timed: from the start
of the import (`followupd import referrals`' code, in this process; the replicas running,
idle, listening) to the moment every
follow-up is `done` in the ledger. The import
fires the NOTIFY that wakes the replicas; they plan the new rows (all at once: planning is
idempotent) and share the deliveries through leases. So the figure is referrals entered to
drafts in their mailboxes, with everything between.

Floors, both measured or derived in the same run:
- for two and three replicas, one replica's rate (the ratio is the speed-up);
- for a paced run, the quota-bound ceiling: each mailbox may spend Google's 15,000 Gmail
  units a minute (a draft costs 10), so three mailboxes allow 75 drafts/s, however many
  replicas deliver. Followupd's buckets are shared in the database, so replicas approach
  that ceiling and do not pass it (the server counts 429s: goal 0). A --quick run is too
  short for that: its 80 drafts a mailbox are mostly the bucket's first burst (50), so it
  passes the per-second ceiling while staying inside the per-minute budget.

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
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row

DELAY = 0.1  # seconds per round trip, about Google's
GOOGLE_UNITS_PER_MINUTE = 15_000  # Gmail's per-mailbox limit
DRAFT_UNITS = 10
MAILBOXES = 3  # therapists per stage
REFERRALS_FULL, REFERRALS_QUICK = 3000, 120
PACED_FULL, PACED_QUICK = 3000, 240
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
        yield (
            sa.make_url(url)
            .update_query_dict({"options": f"-csearch_path={name}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _home(server: Any, stages: list[Stage]) -> Path:
    """A group practice with three therapists (mailboxes) per stage delivering to `server`.

    Each stage has mailboxes of its own, so Google's per-minute window of one stage never
    counts against the next; the paced stage's therapists have Google's quota, the others
    one so large that followupd never waits.
    """
    home = Path(tempfile.mkdtemp(prefix="followupd-scaleout-"))
    text = CONFIG.read_text()
    entries = []
    for stage in stages:
        for key in stage.therapists:
            info = server.add_user(f"{key}@group.example")
            (home / "tokens").mkdir(exist_ok=True)
            (home / "tokens" / f"{key}.json").write_text(json.dumps(info))
            quota = (
                f"    quota: {{gmail_units_per_minute: {GOOGLE_UNITS_PER_MINUTE}}}\n"
                if stage.paced
                else ""
            )
            entries.append(
                f'  - key: {key}\n    name: "Therapist {key}"\n'
                f"    email: {key}@group.example\n{quota}"
            )
    for old, new in (
        ("poll: 5 minutes", "poll: 1 hour"),
        ("gmail_units_per_minute: 6000", "gmail_units_per_minute: 10000000"),
        ("confirm_over: 50", "confirm_over: null"),  # thousands at once is the point here
        ("cutoff: 14 days", "cutoff: null"),
        ("therapists: []\n", "therapists:\n" + "".join(entries)),
    ):
        assert old in text, old
        text = text.replace(old, new)
    (home / "followupd.yaml").write_text(text)
    return home


def _write_referrals(path: Path, stage: Stage) -> Path:
    received = (date.today() - timedelta(days=10)).isoformat()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "ref",
                "received_on",
                "physician",
                "physician_email",
                "client_name",
                "release_on_file",
                "therapist",
            ]
        )
        for i in range(stage.referrals):
            writer.writerow(
                [
                    f"{stage.name}-{i}",
                    received,
                    f"Dr. Plum {i % 17}",
                    f"plum{i % 17}@clinic.example",
                    "Theodora Quist",
                    "yes",
                    stage.therapists[i % len(stage.therapists)],
                ]
            )
    return path


def _env(url: str, server: Any) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "FOLLOWUPD_DATABASE_URL": url,
        "FOLLOWUPD_DELIVERY": "google",
        "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url,
        "FOLLOWUPD_LOG_LEVEL": "WARNING",
    }


def _followupd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "followupd", "--home", str(home), *args]


def _done(url: str) -> int:
    """Follow-ups delivered so far (0 before planning has made any)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM follow_up WHERE state = 'done'")
            ).scalar()
    except sa.exc.ProgrammingError:  # no tables yet
        return 0
    finally:
        engine.dispose()


def _run(base_url: str, stages: list[Stage]) -> dict[str, tuple[float, int]]:
    """Each stage in turn on one database, one server and one set of replicas (started as
    a stage needs more): {stage: (seconds from import to the last draft, 429s)}."""
    google = _google_server()
    results: dict[str, tuple[float, int]] = {}
    with google.running_server(delay=DELAY) as server, _schema(base_url) as url:
        server.rate_limit("gmail", GOOGLE_UNITS_PER_MINUTE)  # Google's, per mailbox
        home = _home(server, stages)
        env = _env(url, server)
        procs: list[subprocess.Popen] = []
        expected = 0
        try:
            for stage in stages:
                while len(procs) < stage.replicas:
                    procs.append(
                        subprocess.Popen(
                            _followupd(home, "run"),
                            env={**env, "FOLLOWUPD_REPLICA": f"r{len(procs)}"},
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                _wait_listening(url, len(procs))
                csv_path = _write_referrals(home / f"{stage.name}.csv", stage)
                rejected = server.stats.rate_limited
                started = time.perf_counter()
                _import(url, csv_path, stages)
                expected += stage.referrals  # one acknowledgement each
                deadline = started + 600
                while _done(url) < expected:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"scale-out: stage {stage.name} did not finish")
                    time.sleep(0.05)
                results[stage.name] = (
                    time.perf_counter() - started,
                    server.stats.rate_limited - rejected,
                )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            shutil.rmtree(home, ignore_errors=True)
    return results


def _import(url: str, path: Path, stages: list[Stage]) -> None:
    """What `followupd import referrals` does, in this process (no interpreter start to
    time); its writes fire the NOTIFY that wakes the replicas."""
    from followupd.intake import import_csv
    from followupd.records import Therapists
    from followupd.store import Store

    keys = frozenset(key for stage in stages for key in stage.therapists)
    store = Store(url)
    try:
        report = import_csv(store, str(path), "referrals", therapists=Therapists(keys))
    finally:
        store.close()
    if not report.ok:
        raise RuntimeError(f"scale-out: import rejected rows: {report.problems[:3]}")


def _wait_listening(url: str, replicas: int) -> None:
    """Until every replica holds its LISTEN connection (they are then idle and ready)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                listening = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN followupd' "
                        "AND datname = current_database() AND state = 'idle'"
                    )
                ).scalar()
            if listening >= replicas:
                time.sleep(0.5)  # their first tick (nothing due yet) is over too
                return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise RuntimeError("scale-out: the replicas did not start listening")


@dataclass(frozen=True)
class Stage:
    name: str
    replicas: int
    referrals: int
    paced: bool = False

    @property
    def therapists(self) -> tuple[str, ...]:
        return tuple(f"{self.name}{i}" for i in range(1, MAILBOXES + 1))


def run(quick: bool) -> list[Row]:
    url = _postgres_url()
    if url is None:
        return [Row("scale-out: skipped (no PostgreSQL on 127.0.0.1:5432)", 0, "")]
    referrals = REFERRALS_QUICK if quick else REFERRALS_FULL
    paced = PACED_QUICK if quick else PACED_FULL
    counts = (1, 2) if quick else (1, 2, 3)  # quick: a process start less
    stages = [Stage(f"u{count}x", count, referrals) for count in counts]
    stages.append(Stage("paced", counts[-1], paced, paced=True))
    results = _run(url, stages)
    rows: list[Row] = []
    one = referrals / results[stages[0].name][0]
    for stage in stages[:-1]:
        rate = stage.referrals / results[stage.name][0]
        floor = None if stage.replicas == 1 else one
        plural = "s" if stage.replicas > 1 else ""
        rows.append(
            Row(
                f"scale-out {referrals:,} drafts: {stage.replicas} replica{plural}",
                rate,
                "drafts/s",
                floor,
                "drafts/s" if floor else None,
            )
        )
    seconds, rejected = results["paced"]
    ceiling = MAILBOXES * GOOGLE_UNITS_PER_MINUTE / DRAFT_UNITS / 60
    rows.append(
        Row(
            f"scale-out {paced:,} drafts: {counts[-1]} replicas at Google's quota "
            f"({MAILBOXES} mailboxes)",
            paced / seconds,
            "drafts/s",
            ceiling,
            "drafts/s",
        )
    )
    rows.append(Row("scale-out at quota: HTTP 429s", rejected, "429s", 0, "429s"))
    return rows
