"""Kill at any point: SIGKILL `followupd run --once` at random moments, restart, and check
that nothing was duplicated or lost, against the local Google server and the outbox.

Seeded and reproducible: the seed is printed (and in every failure message); set
FOLLOWUPD_TEST_KILL_SEED to replay a run. Work keeps arriving between kills, so kills land in
every phase of a tick: before planning, between the claim (the intent) and the call, during
a call, after a call and before its result is recorded, and during an outbox write.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import trust
from google_server import running_server

from conftest import run_cli
from followupd.models import FollowUp
from followupd.records import parse_referral, parse_visit
from followupd.store import Directory, Store, upsert_referrals, upsert_visits

pytestmark = pytest.mark.slow  # the kill harness: each test runs for tens of seconds

SEED = int(os.environ.get("FOLLOWUPD_TEST_KILL_SEED") or random.SystemRandom().randrange(1 << 30))


def add_work(store: Store, cycle: int, referrals: int, visits: int) -> None:
    received = (date.today() - timedelta(days=10)).isoformat()
    rows = [
        {
            "ref": f"R-{cycle}-{i}",
            "received_on": received,
            "physician": f"Dr. K{i % 5}",
            "physician_email": f"k{i % 5}@clinic.example",
            "client_name": "Kim Patient",
            "presenting_problem": "Worry",
            "release_on_file": "yes",
        }
        for i in range(referrals)
    ]
    places = [
        {
            # at least yesterday: "today" on this machine (UTC) may still be tomorrow in the
            # practice's zone, and a reminder of a visit tomorrow is not due yet
            "visited_on": (date.today() - timedelta(days=cycle % 300 + 1)).isoformat(),
            "practice": f"Office {cycle}-{i}",
            "physician": f"Dr. V{cycle}-{i}",
        }
        for i in range(visits)
    ]
    with store.session() as session:
        upsert_referrals(session, [parse_referral(r) for r in rows], Directory())
        upsert_visits(session, [parse_visit(v) for v in places], Directory())


def ledger(store: Store) -> list[FollowUp]:
    with store.session() as session:
        return list(session.execute(sa.select(FollowUp)).scalars())


@dataclass(frozen=True)
class Snapshot:
    """What is out there: follow-up ids made (on the server or in the outbox), recorded as
    done, the owners of claims, and half-written outbox files."""

    made: frozenset[int]
    done: frozenset[int]
    claimed_by: frozenset[str]
    partial: int = 0


def snapshot(store: Store, made: set[int], partial: int = 0) -> Snapshot:
    rows = ledger(store)
    return Snapshot(
        frozenset(made),
        frozenset(r.id for r in rows if r.state == "done"),
        frozenset(r.claimed_by for r in rows if r.state == "claimed"),
        partial,
    )


class Harness:
    """Runs `followupd run --once` and SIGKILLs it at a moment drawn from the seed.

    The moment is counted in what the process has done, not in seconds since it started
    (start-up alone takes a second): after a random number of steps (requests the server
    received, files in the outbox), plus a random fraction of a round trip. So kills land
    between a claim and its call, during a call, after a call and before its result is
    committed, during a write, and in start-up and planning.
    """

    def __init__(
        self,
        home: Path,
        env: dict,
        seed: int,
        *,
        progress: Callable[[], int],
        look: Callable[[], Snapshot],
        busy: Callable[[], int] = lambda: 0,
    ):
        self.home, self.env = home, env
        self.rng = random.Random(seed)
        self.seed = seed
        self.progress = progress  # steps taken so far, ever growing
        self.look = look  # a snapshot: Snapshot
        self.busy = busy  # just before it: requests the server is answering
        self.kills = 0
        self.phases: Counter = Counter()
        self.log = home / "runs.log"

    def cycle(self, steps: int) -> bool:
        """One run; kill it after up to `steps` steps unless it finished first."""
        target = self.progress() + self.rng.randint(0, steps)
        extra = self.rng.uniform(0.0, 0.1)  # then this much longer, to land inside a step
        with self.log.open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "followupd", "--home", str(self.home), "run", "--once"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        before = self.look()
        give_up = time.monotonic() + 30
        while proc.poll() is None and self.progress() < target and time.monotonic() < give_up:
            time.sleep(0.002)
        time.sleep(extra)
        if proc.poll() is not None:
            return False
        in_flight = self.busy()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1
        self.phases.update(self._phases(in_flight, before, self.look(), proc.pid))
        return True

    @staticmethod
    def _phases(in_flight: int, before: Snapshot, after: Snapshot, pid: int) -> list[str]:
        """What the kill interrupted, from what the killed run left behind (often several:
        a call in flight while earlier calls' results wait for their commit)."""
        phases = []
        if after.partial:
            phases.append("during an outbox write")
        if in_flight:
            phases.append("during a call")
        if (after.made - before.made) - after.done:
            phases.append("after a call, before its commit")
        if not phases and any(owner.endswith(f":{pid}") for owner in after.claimed_by):
            phases.append("between a claim and its call")
        return phases or ["outside delivery (start-up, planning, between batches)"]

    def finish(self, store: Store) -> None:
        """Run to the end without kills ("time passes" for anything told to wait, once the
        server has finished what the killed runs left in flight)."""
        deadline = time.monotonic() + 30
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(6):
            with store.session() as session:  # and the settle time of dead runs' claims
                session.execute(
                    sa.update(FollowUp)
                    .where(FollowUp.state == "waiting")
                    .values(next_attempt_at=sa.func.current_timestamp())
                )
                session.execute(
                    sa.update(FollowUp)
                    .where(FollowUp.state == "claimed")
                    .values(lease_until=sa.func.current_timestamp())
                )
            ran = run_cli(
                "--home", str(self.home), "run", "--once", log_to=self.home.parent, env=self.env
            )
            states = Counter(row.state for row in ledger(store))
            if not set(states) - {"done"}:
                return
        raise AssertionError(f"seed {self.seed}: did not finish: {states}; {ran.stderr[-2000:]}")

    def report(self, what: str, cycles: int, started: float) -> None:
        print(
            f"kill harness ({what}): seed {self.seed}, {cycles} cycles, {self.kills} kills in "
            f"{time.monotonic() - started:.0f} s; what they interrupted: {dict(self.phases)}"
        )


class DraftTags:
    """X-Followupd-Id of every draft on the server, parsing each draft once."""

    def __init__(self, server):
        self.server = server
        self.parsed: dict[str, int] = {}

    def __call__(self) -> Counter:
        for draft in self.server.drafts("me"):
            if draft["id"] not in self.parsed:
                raw = base64.urlsafe_b64decode(draft["message"]["raw"] + "==")
                message = email.message_from_bytes(raw, policy=email.policy.default)
                self.parsed[draft["id"]] = int(message["X-Followupd-Id"].rsplit(".", 1)[1])
        return Counter(self.parsed.values())


@pytest.fixture
def kill_home(home, tmp_path):
    """A home on its own SQLite file, with small Google batches and no quota pacing, so a
    run makes many separate calls to be killed between."""
    db_url = f"sqlite:///{tmp_path / 'kill.sqlite3'}"
    config = home / "followupd.yaml"
    text = config.read_text()
    for old, new in (
        ("batch_size: 50", "batch_size: 4"),
        ("timeout: 30", "timeout: 5"),
        ("gmail_units_per_minute: 6000", "gmail_units_per_minute: 10000000"),
        ("calendar_requests_per_minute: 600", "calendar_requests_per_minute: 1000000"),
        ("confirm_over: 50", "confirm_over: null"),  # many notes at once is the point here
        ("cutoff: 14 days", "cutoff: null"),  # and every event makes its notes
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    env = {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": db_url}
    return home, env, db_url


GOOGLE_KILLS, OUTBOX_KILLS = 30, 25  # together at least 50 in every CI run


def test_kills_against_google_leave_exactly_one_of_each(kill_home):
    home, env, db_url = kill_home
    (home / "google-token.json").write_text(
        json.dumps(
            {
                "token": "test-token",
                "refresh_token": "r",
                "client_id": "c",
                "client_secret": "s",
                "expiry": "2099-01-01T00:00:00Z",
            }
        )
    )
    store = Store(db_url)
    with running_server(delay=0.04) as server:
        tags = DraftTags(server)

        def look() -> Snapshot:
            events = {
                int(
                    event["extendedProperties"]["private"]["followupd"]
                    .split("@")[0]
                    .rsplit("-", 1)[1]
                )
                for event in server.events("primary")
            }
            return snapshot(store, set(tags()) | events)

        env = {
            **env,
            "FOLLOWUPD_DELIVERY": "google",
            "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url,
        }

        def creates() -> int:  # lookups come first after a kill: count what makes things
            calls = server.stats.calls
            return calls.get(("POST", "drafts.create"), 0) + calls.get(("POST", "events.insert"), 0)

        harness = Harness(home, env, SEED, progress=creates, look=look, busy=lambda: server.busy)
        started, cycle = time.monotonic(), 0
        while harness.kills < GOOGLE_KILLS and time.monotonic() < started + 150:
            add_work(store, cycle, referrals=8, visits=2)
            harness.cycle(steps=10)
            cycle += 1
            duplicates = [t for t, n in tags().items() if n > 1]
            assert not duplicates, f"seed {SEED}: cycle {cycle}: duplicate drafts {duplicates}"
        harness.report("google", cycle, started)
        harness.finish(store)
        rows = ledger(store)
        made = tags()
        events = {event["id"] for event in server.events("primary")}
    drafts_done = {row.id for row in rows if row.kind == "draft" and row.state == "done"}
    reminders_done = [row for row in rows if row.kind == "reminder" and row.state == "done"]
    duplicates = sum(n - 1 for n in made.values())
    lost = len(drafts_done - set(made)) + sum(
        row.external_id.removeprefix("calendar:") not in events for row in reminders_done
    )
    trust.record("kill", kills=harness.kills, duplicates=duplicates, lost=lost)
    assert harness.kills >= GOOGLE_KILLS, f"seed {SEED}: only {harness.kills} kills"
    assert duplicates == 0 and lost == 0, f"seed {SEED}"
    assert len(rows) == cycle * 10 and {row.state for row in rows} == {"done"}
    assert set(made) == drafts_done and len(events) == len(reminders_done)
    assert all(row.external_id.startswith("gmail:") for row in rows if row.kind == "draft")
    # the kills landed inside delivery, not only in start-up
    assert harness.phases["during a call"] and harness.phases["after a call, before its commit"], (
        f"seed {SEED}: {dict(harness.phases)}"
    )
    store.close()


def test_kills_during_outbox_writes_leave_whole_files_only(kill_home):
    home, env, db_url = kill_home
    store = Store(db_url)
    outbox = home / "outbox"
    drafts = outbox / "drafts"
    checked: set[str] = set()

    def look() -> Snapshot:
        files = {int(p.stem) for p in outbox.rglob("*") if p.suffix in (".eml", ".ics")}
        return snapshot(store, files, partial=sum(1 for p in outbox.rglob(".*") if p.is_file()))

    def files() -> int:
        return sum(len(os.listdir(d)) for d in (drafts, outbox / "reminders") if d.exists())

    harness = Harness(home, env, SEED + 1, progress=files, look=look)
    started, cycle = time.monotonic(), 0
    while harness.kills < OUTBOX_KILLS and time.monotonic() < started + 150:
        add_work(store, cycle, referrals=30, visits=5)
        harness.cycle(steps=35)
        cycle += 1
        for path in drafts.glob("*.eml") if drafts.exists() else ():
            if path.name in checked:
                continue
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert message["X-Followupd-Id"].endswith(f".{path.stem}"), f"seed {SEED}: {path}"
            assert message.get_content().rstrip().endswith("dana@reyes-therapy.example"), (
                f"seed {SEED}: {path} is not whole"
            )
            checked.add(path.name)
    harness.report("outbox", cycle, started)
    harness.finish(store)
    rows = ledger(store)
    files = {int(p.stem) for p in drafts.glob("*.eml")} | {
        int(p.stem) for p in (outbox / "reminders").glob("*.ics")
    }
    leftovers = [p.name for p in outbox.rglob(".*")]
    lost = len({row.id for row in rows} - files)
    trust.record(
        "kill", kills=harness.kills, duplicates=len(files - {r.id for r in rows}), lost=lost
    )
    assert harness.kills >= OUTBOX_KILLS, f"seed {SEED}: only {harness.kills} kills"
    assert lost == 0 and files == {row.id for row in rows}, f"seed {SEED}"
    assert leftovers == [], f"seed {SEED}: {leftovers}"
    assert {row.state for row in rows} == {"done"} and len(rows) == cycle * 35
    store.close()
