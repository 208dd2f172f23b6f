"""Kill the daemon while it imports from a folder: SIGKILL `followupd run` at varied moments
as CSV files keep arriving, restart it, and check that every file was imported exactly once:
each in imported/ once beside its report, none left in the folder or rejected, and the
database holding exactly the union of the files' rows, the last file's values winning.

Seeded and reproducible: the seed is printed (and in every failure message); set
FOLLOWUPD_TEST_KILL_SEED to replay a run. Some files are 2,500 rows (three batches), so kills
land mid-file; others are small and share refs, so a file applied again after a later one
would leave the wrong values. Half the kills come after a random amount of progress, half
as soon as a file is recorded whole but not yet moved (the narrowest window).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import trust
from test_sources import add_source

from conftest import wait_for

pytestmark = pytest.mark.slow  # the kill harness: tens of seconds

SEED = int(os.environ.get("FOLLOWUPD_TEST_KILL_SEED") or random.SystemRandom().randrange(1 << 30))
FILES, KILLS = 40, 20
BIG_ROWS = 2_500  # three batches of BATCH_ROWS
SHARED = [f"S-{i}" for i in range(30)]  # refs several files set, each its own value
HEADER = "ref,received_on,physician,physician_email,client_name,treatment_focus\n"
SOURCE = """  - name: drops
    kind: folder
    table: referrals
    path: drops
    every: 1 hour
"""


@dataclass(frozen=True)
class Drop:
    """One file the practice's system saves into the folder."""

    name: str
    refs: tuple[str, ...]

    @property
    def focus(self) -> str:
        return f"from {self.name}"

    def text(self) -> str:
        day = (date.today() - timedelta(days=7)).isoformat()
        line = "{ref},{day},Dr. K{n},k{n}@clinic.example,Test Client,{focus}\n"
        return HEADER + "".join(
            line.format(ref=ref, day=day, n=i % 7, focus=self.focus)
            for i, ref in enumerate(self.refs)
        )


def drops(rng: random.Random) -> list[Drop]:
    """40 files, a quarter of them big; each sets some shared refs and refs of its own."""
    made = []
    for i in range(FILES):
        own = BIG_ROWS if i % 4 == 1 else rng.randint(1, 40)
        shared = tuple(rng.sample(SHARED, rng.randint(1, 8)))
        made.append(Drop(f"{i:02d}-export.csv", shared + tuple(f"F{i}-{j}" for j in range(own))))
    return made


def expected(files: list[Drop]) -> dict[str, str]:
    """Each ref's value after all the files, in order: the last file that names it wins."""
    values: dict[str, str] = {}
    for drop in files:
        for ref in drop.refs:
            values[ref] = drop.focus
    return values


class Folder:
    """The watched folder and the database, as the test sees them from outside."""

    def __init__(self, home: Path, db_url: str):
        self.path = home / "drops"
        self.engine = sa.create_engine(db_url)

    def close(self) -> None:
        self.engine.dispose()

    def waiting(self) -> set[str]:
        try:
            return {n for n in os.listdir(self.path) if n.endswith(".csv")}
        except FileNotFoundError:
            return set()

    def query(self, sql: str) -> list:
        try:
            with self.engine.connect() as connection:
                return list(connection.execute(sa.text(sql)))
        except sa.exc.OperationalError:  # not made yet (the first start migrates)
            return []

    def pending(self) -> list:
        """Records of files not yet known to be out of the folder: name, state, finished."""
        return self.query(
            "SELECT name, state, finished_at IS NOT NULL FROM imported_file WHERE moved_at IS NULL"
        )

    def progress(self) -> int:
        """Steps taken so far, ever growing: rows in, files recorded whole, files moved."""
        [rows] = self.query("SELECT count(*) FROM referral") or [(0,)]
        [(done, moved)] = self.query(
            "SELECT count(finished_at), count(moved_at) FROM imported_file"
        ) or [(0, 0)]
        return rows[0] + 200 * (done + moved)

    def unbegun(self) -> set[str]:
        """Files in the folder with no record yet."""
        return self.waiting() - {row[0] for row in self.pending()}


class Feeder:
    """Saves the next file once the folder is empty (or, now and then, once every file in
    it has been taken up), so kills land on files in every state rather than on a queue of
    untouched ones, which a restarted daemon must look at twice, seconds apart."""

    def __init__(self, folder: Folder, files: list[Drop], rng: random.Random):
        self.folder = folder
        self.left = list(files)
        self.rng = rng
        self.eager = False  # the next file may queue behind one being imported

    def feed(self) -> None:
        if not self.left:
            return
        if self.folder.waiting() and (not self.eager or self.folder.unbegun()):
            return
        drop = self.left.pop(0)
        self.folder.path.mkdir(exist_ok=True)
        if len(self.left) % 2:  # saved in place
            (self.folder.path / drop.name).write_text(drop.text(), encoding="utf-8")
        else:  # written aside, renamed into place
            partial = self.folder.path / f".{drop.name}.part"
            partial.write_text(drop.text(), encoding="utf-8")
            os.replace(partial, self.folder.path / drop.name)
        self.eager = self.rng.random() < 0.25

    @property
    def done(self) -> bool:
        return not self.left


class Harness:
    """Starts `followupd run`, kills it at a moment drawn from the seed, starts it again."""

    def __init__(self, home: Path, env: dict, folder: Folder, feeder: Feeder, seed: int):
        self.home, self.env, self.folder, self.feeder = home, env, folder, feeder
        self.rng = random.Random(seed)
        self.kills = 0
        self.starts = 0
        self.phases: Counter = Counter()
        self.log = home / "runs.log"

    def start(self) -> subprocess.Popen:
        with self.log.open("a") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "followupd", "--home", str(self.home), "run"],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def cycle(self) -> None:
        """One run, killed after a random amount of progress, or just after a file is
        recorded whole (before its move)."""
        proc = self.start()
        try:
            self.await_start(proc)
            at_whole = self.rng.random() < 0.5
            target = self.folder.progress() + self.rng.randint(1, 3_000)
            give_up = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < give_up:
                self.feeder.feed()
                if at_whole and any(finished for _, _, finished in self.folder.pending()):
                    break
                if not at_whole and self.folder.progress() >= target:
                    break
                time.sleep(0.002)
            time.sleep(self.rng.uniform(0.0, 0.01 if at_whole else 0.05))
            assert proc.poll() is None, f"seed {SEED}: the daemon exited: {self.tail()}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.kills += 1
        self.phases[self.phase()] += 1

    def await_start(self, proc: subprocess.Popen) -> None:
        """Until the daemon watches the folder: a file saved before is one it finds by
        looking (two looks, seconds apart), one saved after is one inotify reports."""
        runs = self.starts
        self.starts += 1
        assert wait_for(
            lambda: self.log.read_text().count("event=started") > runs or proc.poll() is not None,
            60,
            step=0.01,
        ), f"seed {SEED}: the daemon did not start: {self.tail()}"

    def phase(self) -> str:
        """What the kill interrupted, from what it left behind."""
        waiting = self.folder.waiting()
        for name, state, finished in self.folder.pending():
            if state == "importing" and name in waiting:
                return "mid-file (an import cut short)"
            if finished and name in waiting:
                return "recorded whole, not moved yet"
            if finished:
                return "moved, not yet recorded moved"
        return "between files (start-up, a look, a tick)"

    def finish(self) -> None:
        """Run without kills until every file is in and moved, then stop."""
        proc = self.start()
        try:
            self.await_start(proc)

            def drained() -> bool:
                self.feeder.feed()
                return self.feeder.done and not self.folder.waiting() and not self.folder.pending()

            assert wait_for(drained, 90, step=0.01), f"seed {SEED}: not drained: {self.tail()}"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, f"seed {SEED}: {self.tail()}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def quiet_home(home: Path) -> None:
    """The folder source, and no rule: the daemon's ticks plan nothing, so the kills land
    in imports, not in drafting 30,000 notes."""
    add_source(home, SOURCE)
    config = home / "followupd.yaml"
    text = re.sub(r"(?m)^    enabled: .*\n", "", config.read_text())  # each rule: off
    assert "\n    event: " in text
    config.write_text(text.replace("\n    event: ", "\n    enabled: false\n    event: "))


def test_kills_while_importing_from_a_folder_leave_each_file_imported_once(home, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'folder-kill.sqlite3'}"
    env = {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": db_url}
    quiet_home(home)
    files = drops(random.Random(SEED))
    folder = Folder(home, db_url)
    feeder = Feeder(folder, files, random.Random(SEED + 1))
    harness = Harness(home, env, folder, feeder, SEED)
    began = time.monotonic()
    try:
        while harness.kills < KILLS and time.monotonic() < began + 200:
            harness.cycle()
        harness.finish()
        print(
            f"folder kill harness: seed {SEED}, {harness.kills} kills, {FILES} files in "
            f"{time.monotonic() - began:.0f} s; what they interrupted: {dict(harness.phases)}"
        )
        values = dict(folder.query("SELECT ref, treatment_focus FROM referral"))
        records = Counter(row[0] for row in folder.query("SELECT name FROM imported_file"))
        [totals] = folder.query("SELECT state FROM source_state WHERE name = 'drops'")
    finally:
        folder.close()

    moved = sorted(p.name for p in (folder.path / "imported").iterdir())
    copies = Counter(name.split("-", 1)[1] for name in moved if name.endswith(".csv"))
    reports = [name for name in moved if name.endswith(".report.txt")]
    want = expected(files)
    lost = sum(copies[f.name] == 0 for f in files) + len(set(want) - set(values))
    duplicates = sum(n - 1 for n in copies.values() if n > 1) + sum(
        values.get(ref) != focus for ref, focus in want.items() if ref in values
    )
    trust.record("kill", kills=harness.kills, duplicates=duplicates, lost=lost)
    assert harness.kills >= KILLS, f"seed {SEED}: only {harness.kills} kills"
    assert folder.waiting() == set() and not (folder.path / "rejected").exists(), f"seed {SEED}"
    assert copies == Counter({f.name: 1 for f in files}), f"seed {SEED}: {copies}"
    assert len(reports) == FILES and len(moved) == 2 * FILES, f"seed {SEED}: {moved}"
    for name in reports:
        text = (folder.path / "imported" / name).read_text()
        assert text.startswith("referrals: added") and "rejected 0" in text.splitlines()[0]
    assert values == want, f"seed {SEED}: {len(values)} refs, {len(want)} wanted"
    assert records == Counter({f.name: 1 for f in files}), f"seed {SEED}: {records}"
    assert json.loads(totals[0])["totals"]["files"] == FILES, f"seed {SEED}: {totals[0]}"
    assert harness.phases["mid-file (an import cut short)"], f"seed {SEED}: {harness.phases}"
