"""The engine tick: what one `Engine.tick()` costs with nothing new, and with 100 new
referrals, on SQLite files holding 1,000 to 1,000,000 referrals.

The promise (followupd/engine/planner.py): planning reads only rows changed since its cursor, so an
idle tick costs the same on a thousand referrals or a million (goal: flat, at most 5 ms at a
million). Each size gets a fresh home whose schema comes from followupd's own migrations
(`Store(url)`); the tables are then filled with bulk SQL (INSERT ... SELECT from a recursive
CTE): 50 practices, 300 physicians, the referrals (received over five years, 80% closed, 1% of
the open ones without a release) and the ledger a daemon would have left for them (every
acknowledgement and closing note delivered to the outbox, the unreleased acknowledgements
held), all stamped a day ago. The planning cursor is then set where planning them would have
left it (planning a million rows through `Engine.plan` would take minutes; the state it
leaves is the same), and so is the day quiet spells were last looked for (today: the spells
after the build's last referrals, 100 days ago, began before it); one untimed tick confirms
that nothing is left to plan.

Timed, each the median of several:
- idle tick: `Engine.tick()` with the outbox backend and nothing new: end dead claims, cancel
  orphans, look for changed referrals and visits, claim due follow-ups (none), heartbeat.
- 100 new referrals: before each timed tick, 100 referrals received today are added (bulk SQL,
  stamped after the cursor). The tick plans their 100 acknowledgements; those are due on the
  next business day at 08:00, so nothing is delivered: the figure is planning, not delivery
  (bench/delivery.py measures that).

Floor, same database and run: one indexed `SELECT` of the referrals changed since the
cursor (on `ix_referral_updated_at`) through the bare sqlite3 module, which finds the 100
new rows (or, for the idle tick, none). That is the least any tick must do to learn what is
new.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row

SIZES_FULL = (1_000, 10_000, 100_000, 1_000_000)
SIZES_QUICK = (1_000, 10_000, 100_000)
NEW = 100  # referrals added before each "new" tick
IDLE_TICKS = 30  # cheap, and a median of many shrugs off a busy neighbour
NEW_TICKS_FULL, NEW_TICKS_QUICK = 7, 3
FLOOR_REPEATS = 15
PHYSICIANS, PRACTICES = 300, 50
CONFIG = ROOT / "config" / "followupd.yaml"
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DATETIME in SQLite


@dataclass(frozen=True)
class Sized:
    """The timings at one table size, in milliseconds."""

    referrals: int
    idle: float
    idle_floor: float
    new: float
    new_floor: float
    build_seconds: float


# --- building the tables ----------------------------------------------------------------------

COUNT = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "

PRACTICES_SQL = (
    COUNT
    + """
INSERT INTO practice (id, key, name, created_at)
SELECT i, 'clinic ' || i, 'Clinic ' || i, :stamp FROM n"""
)

PHYSICIANS_SQL = (
    COUNT
    + """
INSERT INTO physician (id, key, name, specialty, email, fax, practice_id, created_at,
                       updated_at)
SELECT i, 'dr. test ' || i || '|clinic ' || (i % :practices + 1), 'Dr. Test ' || i,
       CASE i % 3 WHEN 0 THEN 'internal medicine' WHEN 1 THEN 'family medicine'
       ELSE 'psychiatry' END,
       'dr' || i || '@clinic.example', NULL, i % :practices + 1, :stamp, :stamp FROM n"""
)

# Received over five years up to 100 days ago, in id order (each index then grows at its
# end, which keeps the build fast); four in five closed 60 days after; one open referral in
# a hundred without a release. Stamped a second apart, ending at :stamp.
REFERRALS_SQL = (
    COUNT
    + """
INSERT INTO referral (id, ref, received_on, physician_id, client_name, client_dob,
                      presenting_problem, treatment_focus, release_on_file, release_on,
                      closed_on, closing_summary, created_at, updated_at, prescriber_id)
SELECT i, printf('R-%08d', i), day, i % :physicians + 1, 'Test Client ' || i, '1980-01-01',
       'Synthetic problem', 'Synthetic focus', released, CASE WHEN released THEN day END,
       CASE WHEN closed THEN date(day, '+60 days') END,
       CASE WHEN closed THEN 'Synthetic summary' END, stamp, stamp, NULL
FROM (SELECT i, date(:last_day, '-' || ((:count - i) * 1800 / :count) || ' days') AS day,
             i % 5 != 0 AS closed, NOT (i % 5 = 0 AND i % 500 = 0) AS released,
             strftime('%Y-%m-%d %H:%M:%f', :stamp, '-' || (:count - i) || ' seconds')
                 || '000' AS stamp
      FROM n)"""
)

# The ledger a daemon leaves: acknowledgements and closing notes delivered, or held.
ACKNOWLEDGEMENTS_SQL = """
INSERT INTO follow_up (rule, subject_type, subject_id, kind, state, due_at, external_id,
                       attempts, reason, fence, created_at, updated_at)
SELECT 'referral-acknowledgement', 'referral', id, 'draft',
       CASE WHEN release_on_file THEN 'done' ELSE 'held' END,
       datetime(received_on, '+1 day', '+14 hours') || '.000000',
       CASE WHEN release_on_file THEN 'outbox:drafts/' || id || '.eml' END,
       release_on_file, CASE WHEN release_on_file THEN NULL
       ELSE 'no release of information on file for referral ' || ref END,
       release_on_file, updated_at, updated_at
FROM referral WHERE id BETWEEN :first AND :last"""

CLOSING_SQL = """
INSERT INTO follow_up (rule, subject_type, subject_id, kind, state, due_at, external_id,
                       attempts, reason, fence, created_at, updated_at)
SELECT 'closing-note', 'referral', id, 'draft', 'done',
       datetime(closed_on, '+1 day', '+14 hours') || '.000000',
       'outbox:drafts/c' || id || '.eml', 1, NULL, 1, updated_at, updated_at
FROM referral WHERE closed_on IS NOT NULL AND id BETWEEN :first AND :last"""

# New referrals, received today and open: their acknowledgements are not due yet.
NEW_SQL = (
    COUNT
    + """
INSERT INTO referral (id, ref, received_on, physician_id, client_name, client_dob,
                      presenting_problem, treatment_focus, release_on_file, release_on,
                      closed_on, closing_summary, created_at, updated_at, prescriber_id)
SELECT :first + i, printf('R-%08d', :first + i), :today, i % :physicians + 1,
       'Test Client ' || (:first + i), '1980-01-01', 'Synthetic problem', 'Synthetic focus',
       1, :today, NULL, NULL, :stamp, :stamp, NULL
FROM n"""
)

FLOOR_SQL = "SELECT * FROM referral WHERE updated_at > ? ORDER BY updated_at, id"


# For the build only: no journal and no fsync (a failed build is thrown away), and the
# pages being written kept in memory.
BUILD_PRAGMAS = (
    "PRAGMA foreign_keys = OFF",
    "PRAGMA synchronous = OFF",
    "PRAGMA cache_size = -262144",
    "PRAGMA journal_mode = OFF",
)
INDEXES_SQL = (
    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
    "AND tbl_name IN ('referral', 'follow_up')"
)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


def fill(path: Path, referrals: int, stamp: datetime) -> None:
    """Practices, physicians, referrals and their ledger, with bulk SQL in one transaction.

    Nothing else may have the file open. The secondary indexes are dropped first and made
    again from their own SQL at the end: building an index once is faster than growing it
    row by row, and the schema ends up exactly as the migrations left it.
    """
    today = date.today()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in BUILD_PRAGMAS:
            db.execute(pragma)
        indexes = db.execute(INDEXES_SQL).fetchall()
        db.execute("BEGIN")
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        params = {"stamp": _stamp(stamp), "practices": PRACTICES, "physicians": PHYSICIANS}
        db.execute(PRACTICES_SQL, {**params, "count": PRACTICES})
        db.execute(PHYSICIANS_SQL, {**params, "count": PHYSICIANS})
        db.execute(
            REFERRALS_SQL,
            {**params, "count": referrals, "last_day": (today - timedelta(days=100)).isoformat()},
        )
        for sql in (ACKNOWLEDGEMENTS_SQL, CLOSING_SQL):
            db.execute(sql, {"first": 1, "last": referrals})
        for _, sql in indexes:
            db.execute(sql)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")  # as followupd keeps it
    finally:
        db.close()
    # No ANALYZE: followupd never runs it, so its queries are planned without statistics.


def add_new(path: Path, first_id: int, stamp: datetime) -> None:
    """NEW referrals received today, stamped `stamp` (after the cursor, before the
    cursor's one-minute overlap, so that the next tick reads exactly these)."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            NEW_SQL,
            {
                "count": NEW,
                "first": first_id,
                "physicians": PHYSICIANS,
                "today": date.today().isoformat(),
                "stamp": _stamp(stamp),
            },
        )


# --- the engine -------------------------------------------------------------------------------


@contextmanager
def engine_on(referrals: int, stamp: datetime) -> Iterator[tuple[Any, Path, float]]:
    """An outbox Engine on a fresh SQLite home holding `referrals`, its cursor caught up;
    yields (engine, database path, seconds it took to build).

    The cursor is written where planning the build would leave it. Planning it for real
    through `Engine.plan` took 18 s at 100,000 referrals on 2 cores, half of it in
    `store.ledger_rows`, which scans the whole ledger for each page of 2,000: minutes at a
    million."""
    from followupd import config as configuration
    from followupd.engine import Engine
    from followupd.store import Store, write_cursor

    scratch = Path(tempfile.mkdtemp(prefix="followupd-bench-tick-"))
    try:
        started = time.perf_counter()
        shutil.copyfile(CONFIG, scratch / "followupd.yaml")
        database = scratch / "followupd.sqlite3"
        settings = configuration.load(
            scratch, environ={"FOLLOWUPD_DATABASE_URL": f"sqlite:///{database}"}
        )
        Store(settings.database_url).close()  # the real schema, by followupd's migrations
        fill(database, referrals, stamp)
        store = Store(settings.database_url)
        engine = Engine(settings, store)
        with store.session() as session:
            for table in ("referral", "physician"):
                prefix = f"plan:{table}:"
                write_cursor(session, prefix + engine.fingerprint, stamp, prefix=prefix)
            write_cursor(session, f"quiet:{engine.fingerprint}", datetime.now(UTC), prefix="quiet:")
        _expect_idle(engine.tick(), "the first tick after the build")
        built = time.perf_counter() - started
        try:
            yield engine, database, built
        finally:
            engine.close()
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _expect_idle(report: Any, what: str) -> None:
    """A tick that found work when it should not have is measuring the wrong thing."""
    if report.inserted or report.changed or report.delivered or report.failed:
        raise RuntimeError(
            f"{what} was not idle: inserted {report.inserted}, changed "
            f"{report.changed}, delivered {len(report.delivered)}, "
            f"failed {len(report.failed)}"
        )


def _ms(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return (time.perf_counter() - started) * 1000, result


def floor_ms(database: Path, since: datetime, expect: int) -> float:
    """The median time of the indexed SELECT of rows changed since `since`."""
    times = []
    with closing(sqlite3.connect(database)) as db:
        for _ in range(FLOOR_REPEATS):
            took, rows = _ms(lambda: db.execute(FLOOR_SQL, (_stamp(since),)).fetchall())
            if len(rows) != expect:
                raise RuntimeError(f"the floor's SELECT found {len(rows)} rows, not {expect}")
            times.append(took)
    return statistics.median(times)


def idle_ms(engine: Any) -> float:
    """The median of IDLE_TICKS ticks with nothing to do."""
    times = []
    for _ in range(IDLE_TICKS):
        took, report = _ms(engine.tick)
        _expect_idle(report, "an idle tick")
        times.append(took)
    return statistics.median(times)


def new_ms(
    engine: Any, database: Path, referrals: int, stamp: datetime, ticks: int
) -> tuple[float, float]:
    """Median (tick, floor) over `ticks` rounds of NEW new referrals each."""
    tick_times, floor_times = [], []
    for round_ in range(ticks):
        before = stamp + timedelta(seconds=round_)
        add_new(database, referrals + round_ * NEW, before + timedelta(milliseconds=500))
        floor_times.append(floor_ms(database, before, NEW))
        took, report = _ms(engine.tick)
        if report.inserted != NEW or report.delivered or report.failed:
            raise RuntimeError(
                f"a tick after {NEW} new referrals planned {report.inserted}, "
                f"delivered {len(report.delivered)}, failed "
                f"{len(report.failed)}"
            )
        tick_times.append(took)
    return statistics.median(tick_times), statistics.median(floor_times)


def measure(referrals: int, quick: bool) -> Sized:
    """Build one size, then time its idle ticks and its ticks with new referrals."""
    stamp = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)  # SQL keeps ms
    with engine_on(referrals, stamp) as (engine, database, built):
        idle = idle_ms(engine)
        idle_floor = floor_ms(database, stamp, 0)
        new, new_floor = new_ms(
            engine, database, referrals, stamp, NEW_TICKS_QUICK if quick else NEW_TICKS_FULL
        )
    return Sized(referrals, idle, idle_floor, new, new_floor, built)


# --- the rows ---------------------------------------------------------------------------------


def _rows(sized: Sized) -> list[Row]:
    at = f"tick on {sized.referrals:,} referrals"
    return [
        Row(f"{at}: idle (goal flat, <= 5 ms)", sized.idle, "ms", sized.idle_floor, "ms"),
        Row(f"{at}: {NEW} new", sized.new, "ms", sized.new_floor, "ms"),
    ]


def run(quick: bool) -> list[Row]:
    """Every size in turn, then how the idle and the new ticks grew from smallest to largest."""
    results = [measure(size, quick) for size in (SIZES_QUICK if quick else SIZES_FULL)]
    rows = [row for sized in results for row in _rows(sized)]
    small, large = results[0], results[-1]
    growth = f"{small.referrals:,} -> {large.referrals:,} referrals"
    rows += [
        Row(
            f"idle tick growth, {growth}",
            large.idle / small.idle,
            "x",
            large.idle_floor / small.idle_floor,
            "x",
        ),
        Row(
            f"{NEW}-new tick growth, {growth}",
            large.new / small.new,
            "x",
            large.new_floor / small.new_floor,
            "x",
        ),
        Row(f"tick bench: build {large.referrals:,} referrals", large.build_seconds, "s"),
    ]
    return rows
