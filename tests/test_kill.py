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
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import trust
from google_server import running_server

from followupd.models import FollowUp
from followupd.records import parse_referral, parse_visit
from followupd.store import Directory, Store, upsert_referrals, upsert_visits

SEED = int(os.environ.get("FOLLOWUPD_TEST_KILL_SEED") or random.SystemRandom().randrange(1 << 30))


def add_work(store: Store, cycle: int, referrals: int, visits: int) -> None:
    received = (date.today() - timedelta(days=10)).isoformat()
    rows = [{"ref": f"R-{cycle}-{i}", "received_on": received, "physician": f"Dr. K{i % 5}",
             "physician_email": f"k{i % 5}@clinic.example", "client_name": "Kim Patient",
             "presenting_problem": "Worry", "release_on_file": "yes"} for i in range(referrals)]
    places = [{"visited_on": (date.today() - timedelta(days=cycle % 300)).isoformat(),
               "practice": f"Office {cycle}-{i}", "physician": f"Dr. V{cycle}-{i}"}
              for i in range(visits)]
    with store.session() as session:
        upsert_referrals(session, [parse_referral(r) for r in rows], Directory())
        upsert_visits(session, [parse_visit(v) for v in places], Directory())


def ledger(store: Store) -> list[FollowUp]:
    with store.session() as session:
        return list(session.execute(sa.select(FollowUp)).scalars())


class Harness:
    def __init__(self, home: Path, env: dict, seed: int):
        self.home, self.env = home, env
        self.rng = random.Random(seed)
        self.seed = seed
        self.kills = 0
        self.log = home / "runs.log"

    def cycle(self, window: tuple[float, float]) -> bool:
        """Start one `run --once`; kill it at a random moment unless it finished first."""
        with self.log.open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "followupd", "--home", str(self.home), "run", "--once"],
                env=self.env, stdout=log, stderr=log)
            try:
                proc.wait(timeout=self.rng.uniform(*window))
                return False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.kills += 1
                return True

    def finish(self, store: Store) -> None:
        """Run to the end without kills ("time passes" for anything told to wait)."""
        for _ in range(6):
            with store.session() as session:
                session.execute(sa.update(FollowUp).where(FollowUp.state == "waiting")
                                .values(next_attempt_at=sa.func.current_timestamp()))
            ran = subprocess.run([sys.executable, "-m", "followupd", "--home", str(self.home),
                                  "run", "--once"], env=self.env, capture_output=True, text=True)
            states = Counter(row.state for row in ledger(store))
            if not set(states) - {"done"}:
                return
        raise AssertionError(f"seed {self.seed}: did not finish: {states}; {ran.stderr[-2000:]}")


def tags_of_drafts(server) -> Counter:
    tags: Counter = Counter()
    for draft in server.drafts("me"):
        raw = base64.urlsafe_b64decode(draft["message"]["raw"] + "==")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        tags[int(message["X-Followupd-Id"].rsplit(".", 1)[1])] += 1
    return tags


@pytest.fixture
def kill_home(home, tmp_path, monkeypatch):
    db_url = f"sqlite:///{tmp_path / 'kill.sqlite3'}"
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("batch_size: 50", "batch_size: 2")
                      .replace("timeout: 30", "timeout: 5"))
    env = {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": db_url}
    return home, env, db_url


def test_kills_against_google_leave_exactly_one_of_each(kill_home):
    home, env, db_url = kill_home
    print(f"kill harness (google) seed={SEED}")
    (home / "google-token.json").write_text(json.dumps({
        "token": "test-token", "refresh_token": "r", "client_id": "c", "client_secret": "s",
        "expiry": "2099-01-01T00:00:00Z"}))
    store = Store(db_url)
    with running_server(delay=0.04) as server:
        env = {**env, "FOLLOWUPD_DELIVERY": "google",
               "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url}
        harness = Harness(home, env, SEED)
        deadline = time.monotonic() + 110
        cycle = 0
        while harness.kills < 35 and time.monotonic() < deadline:
            add_work(store, cycle, referrals=20, visits=2)
            harness.cycle((0.8, 1.6))
            cycle += 1
            duplicates = [t for t, n in tags_of_drafts(server).items() if n > 1]
            assert not duplicates, f"seed {SEED}: cycle {cycle}: duplicate drafts {duplicates}"
        print(f"google: {cycle} cycles, {harness.kills} kills in "
              f"{time.monotonic() - deadline + 110:.0f} s")
        harness.finish(store)
        rows = ledger(store)
        tags = tags_of_drafts(server)
        events = {event["id"] for event in server.events("primary")}
    drafts_done = {row.id for row in rows if row.kind == "draft" and row.state == "done"}
    reminders_done = [row for row in rows if row.kind == "reminder" and row.state == "done"]
    duplicates = sum(n - 1 for n in tags.values())
    lost = len(drafts_done - set(tags)) + sum(
        row.external_id.removeprefix("calendar:") not in events for row in reminders_done)
    trust.record("kill", kills=harness.kills, duplicates=duplicates, lost=lost)
    assert harness.kills >= 35, f"seed {SEED}: only {harness.kills} kills"
    assert duplicates == 0 and lost == 0, f"seed {SEED}"
    assert len(rows) == cycle * 22 and {row.state for row in rows} == {"done"}
    assert set(tags) == drafts_done and len(events) == len(reminders_done)
    for row in rows:
        if row.kind == "draft":
            assert row.external_id.startswith("gmail:")
    store.close()


def test_kills_during_outbox_writes_leave_whole_files_only(kill_home):
    home, env, db_url = kill_home
    print(f"kill harness (outbox) seed={SEED}")
    store = Store(db_url)
    harness = Harness(home, env, SEED + 1)
    deadline = time.monotonic() + 60
    cycle = 0
    drafts = home / "outbox" / "drafts"
    while harness.kills < 15 and time.monotonic() < deadline:
        add_work(store, cycle, referrals=60, visits=5)
        harness.cycle((0.9, 1.5))
        cycle += 1
        for path in drafts.glob("*.eml") if drafts.exists() else ():
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert message["X-Followupd-Id"].endswith(f".{path.stem}"), f"seed {SEED}: {path}"
            assert message.get_content().rstrip().endswith("dana@reyes-therapy.example"), \
                f"seed {SEED}: {path} is not whole"
    harness.finish(store)
    rows = ledger(store)
    files = {int(p.stem) for p in drafts.glob("*.eml")} | \
        {int(p.stem) for p in (home / "outbox" / "reminders").glob("*.ics")}
    leftovers = [p.name for p in (home / "outbox").rglob(".*")]
    lost = len({row.id for row in rows} - files)
    trust.record("kill", kills=harness.kills, duplicates=len(files - {r.id for r in rows}),
                 lost=lost)
    assert harness.kills >= 15, f"seed {SEED}: only {harness.kills} kills"
    assert lost == 0 and files == {row.id for row in rows}, f"seed {SEED}"
    assert leftovers == [], f"seed {SEED}: {leftovers}"
    assert {row.state for row in rows} == {"done"} and len(rows) == cycle * 65
    store.close()
