"""`followupd report` over 100,000 referrals and 1,000,000 follow-ups (quick: a tenth).

A fresh SQLite home, its schema from followupd's own migrations, filled with bulk SQL
(INSERT ... SELECT from a recursive CTE): 50 practices, 300 physicians, the referrals
received over the last two years (so half fall in the report's twelve months; four in five
of those older than 60 days closed), a release for each, 3,000 outreach visits (two in three
meeting a physician), and a ledger of 1,000,000 rows: an acknowledgement for every referral
(most sent, with the sending time a sync with Gmail's read scope records; some gone, in
Drafts, held or history; half of the drafts made before the ledger recorded when, as after
an upgrade), a closing note for every closed one, and reminders of other rules for the rest.

Timed, each the median of several runs:
- figures: `report.build`, every aggregate the report reads (in SQL) and the arithmetic on
  them: what `followupd report` and `--csv` cost;
- page: the figures and the HTML page with its three charts (pygal): what `--html` and the
  daemon's report job cost. The goal is under 2 s.

Floor, same database and run: one statement counting the same tables, `SELECT (SELECT
COUNT(*) FROM referral), (SELECT COUNT(*) FROM follow_up), ...`, through the bare sqlite3
module: the least any report over them must read.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path

from bench.common import ROOT, Row
from bench.tick import BUILD_PRAGMAS, COUNT, PHYSICIANS_SQL, PRACTICES_SQL

REFERRALS_FULL, FOLLOW_UPS_FULL, VISITS_FULL = 100_000, 1_000_000, 3_000
PHYSICIANS, PRACTICES = 300, 50
SPAN_DAYS = 730  # referrals received over the last two years
REPEATS_FULL, REPEATS_QUICK = 5, 3
FLOOR_REPEATS = 15
CONFIG = ROOT / "config" / "followupd.yaml"
TABLES = ("referral", "follow_up", "visit", "release", "physician", "practice")

REFERRALS_SQL = (
    COUNT
    + """
INSERT INTO referral (id, ref, received_on, physician_id, client_name, client_dob,
                      presenting_problem, treatment_focus, release_on_file, release_on,
                      closed_on, closing_summary, created_at, updated_at, prescriber_id)
SELECT i, printf('R-%08d', i), day, (i * 7919) % :physicians + 1, 'Test Client ' || i,
       '1980-01-01', 'Synthetic problem', 'Synthetic focus', 1, day,
       CASE WHEN closed THEN date(day, '+60 days') END,
       CASE WHEN closed THEN 'Synthetic summary' END, stamp, stamp, NULL
FROM (SELECT i, day, i % 5 != 0 AND day <= date(:today, '-60 days') AS closed,
             day || ' 14:00:00.000000' AS stamp
      FROM (SELECT i, date(:today, '-' || ((:count - i) * :span / :count) || ' days') AS day
            FROM n))"""
)

RELEASES_SQL = """
INSERT INTO release (referral_id, recipient, physician_id, granted_on, granted_by,
                     created_at, updated_at)
SELECT id, 'physician', physician_id, received_on, 'import', created_at, created_at
FROM referral"""

# An acknowledgement for every referral: due the next day at 13:00 UTC, sent 0-24 h later.
ACKNOWLEDGEMENTS_SQL = """
INSERT INTO follow_up (rule, subject_type, subject_id, kind, state, due_at, external_id,
                       attempts, reason, fence, created_at, updated_at{made})
SELECT 'referral-acknowledgement', 'referral', id, 'draft', state, due,
       CASE WHEN state IN ('sent', 'gone', 'done') THEN 'gmail:a' || id END, 1,
       CASE state
         WHEN 'sent' THEN 'sent ' || strftime('%Y-%m-%d %H:%M', due, '+' || (id % 1440)
                                               || ' minutes') || ' UTC'
         WHEN 'held' THEN 'no release of information on file for referral ' || ref
       END, 1, created_at, created_at{made_value}
FROM (SELECT id, ref, created_at,
             datetime(received_on, '+1 day', '+13 hours') || '.000000' AS due,
             CASE id % 20 WHEN 0 THEN 'held' WHEN 1 THEN 'done' WHEN 2 THEN 'gone'
                          WHEN 3 THEN 'skipped' ELSE 'sent' END AS state
      FROM referral)"""

CLOSING_SQL = """
INSERT INTO follow_up (rule, subject_type, subject_id, kind, state, due_at, external_id,
                       attempts, reason, fence, created_at, updated_at{made})
SELECT 'closing-note', 'referral', id, 'draft', state, due,
       CASE WHEN state IN ('sent', 'done') THEN 'gmail:c' || id END, 1,
       CASE state WHEN 'sent' THEN 'sent ' || strftime('%Y-%m-%d %H:%M', due, '+2 hours')
                                 || ' UTC' END, 1, created_at, created_at{made_value}
FROM (SELECT id, created_at, datetime(closed_on, '+1 day', '+13 hours') || '.000000' AS due,
             CASE id % 10 WHEN 0 THEN 'done' WHEN 1 THEN 'held' ELSE 'sent' END AS state
      FROM referral WHERE closed_on IS NOT NULL)"""

# The rest of the ledger: reminders of other rules, done.
REMINDERS_SQL = """
INSERT INTO follow_up (rule, subject_type, subject_id, kind, state, due_at, external_id,
                       attempts, fence, created_at, updated_at)
SELECT :rule, 'referral', id, 'reminder', 'done',
       datetime(received_on, '+' || :days || ' days') || '.000000', 'calendar:' || id, 1, 1,
       created_at, created_at
FROM referral WHERE id <= :last"""

VISITS_SQL = (
    COUNT
    + """
INSERT INTO visit (id, key, visited_on, practice_id, physician_id, cards_left, handouts_left,
                   created_at, updated_at{named})
SELECT i, 'v' || i, day, practice, CASE WHEN i % 3 != 0 THEN practice - 1 + 50 * (1 + i % 5)
       END, 10, 2, day || ' 18:00:00.000000', day || ' 18:00:00.000000'{named_value}
FROM (SELECT i, i % :practices + 1 AS practice,
             date(:today, '-' || ((:count - i) * :span / :count) || ' days') AS day FROM n)"""
)


def _columns(database: Path, table: str) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def fill(database: Path, referrals: int, follow_ups: int, visits: int, today: date) -> None:
    """Everything above in one transaction, the secondary indexes dropped first and made
    again from their own SQL at the end (as bench/tick.py does)."""
    made = "made_at" in _columns(database, "follow_up")
    named = "named_practice" in _columns(database, "visit")
    db = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in BUILD_PRAGMAS:
            db.execute(pragma)
        indexes = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({', '.join(repr(t) for t in TABLES)})"
        ).fetchall()
        db.execute("BEGIN")
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        stamp = f"{today - timedelta(days=SPAN_DAYS + 1)} 12:00:00.000000"
        params = {"stamp": stamp, "practices": PRACTICES, "physicians": PHYSICIANS}
        db.execute(PRACTICES_SQL, {**params, "count": PRACTICES})
        db.execute(PHYSICIANS_SQL, {**params, "count": PHYSICIANS})
        span = {"today": today.isoformat(), "span": SPAN_DAYS}
        db.execute(REFERRALS_SQL, {**params, **span, "count": referrals})
        db.execute(RELEASES_SQL)
        with_made = {
            "made": ", made_at" if made else "",
            # Half made before followupd recorded the time (migration 0008 set their due
            # time): for those the report looks up when their release was recorded.
            "made_value": ", CASE WHEN id % 2 = 0 THEN due ELSE datetime(due, '+4 minutes') "
            "|| '.000000' END"
            if made
            else "",
        }
        db.execute(ACKNOWLEDGEMENTS_SQL.format(**with_made))
        db.execute(CLOSING_SQL.format(**with_made))
        left = follow_ups - db.execute("SELECT COUNT(*) FROM follow_up").fetchone()[0]
        rule = 0
        while left > 0:
            rule += 1
            last = min(left, referrals)
            db.execute(REMINDERS_SQL, {"rule": f"check-in-{rule}", "days": 7 * rule, "last": last})
            left -= last
        db.execute(
            VISITS_SQL.format(
                named=", named_practice" if named else "",
                named_value=", CASE WHEN i % 10 = 0 THEN 'Prospect Clinic ' || i END"
                if named
                else "",
            ),
            {**span, "practices": PRACTICES, "count": visits},
        )
        for _, sql in indexes:
            db.execute(sql)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()


def floor_ms(database: Path) -> float:
    """The median time of one statement counting every table the report reads."""
    sql = "SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {t})" for t in TABLES)
    times = []
    with closing(sqlite3.connect(database)) as db:
        for _ in range(FLOOR_REPEATS):
            started = time.perf_counter()
            db.execute(sql).fetchone()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(quick: bool) -> list[Row]:
    from followupd import config as configuration
    from followupd.report import build, default_since, options_for
    from followupd.report.html import page_for
    from followupd.store import Store

    scale = 10 if quick else 1
    referrals, follow_ups = REFERRALS_FULL // scale, FOLLOW_UPS_FULL // scale
    visits = VISITS_FULL // scale
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    scratch = Path(tempfile.mkdtemp(prefix="followupd-bench-report-"))
    try:
        shutil.copyfile(CONFIG, scratch / "followupd.yaml")
        database = scratch / "followupd.sqlite3"
        settings = configuration.load(
            scratch, environ={"FOLLOWUPD_DATABASE_URL": f"sqlite:///{database}"}
        )
        today = date.today()
        started = time.perf_counter()
        Store(settings.database_url).close()  # the real schema, by followupd's migrations
        fill(database, referrals, follow_ups, visits, today)
        built = time.perf_counter() - started
        floor = floor_ms(database)
        store = Store(settings.database_url)
        try:
            options = options_for(settings, default_since(today), today, limit=50)
            figures_ms, page_ms = [], []
            for _ in range(repeats):
                began = time.perf_counter()
                with store.session() as session:
                    report = build(session, options)
                figures_ms.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                with store.session() as session:
                    _, page = page_for(settings, session, None, today)
                page_ms.append((time.perf_counter() - began) * 1000)
        finally:
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if report.acknowledgements.to_send.count == 0 or report.referrals == 0 or len(page) < 10_000:
        raise RuntimeError("the report bench measured an empty report")
    at = f"{referrals:,} referrals, {follow_ups:,} follow-ups"
    return [
        Row(f"report figures over {at}", statistics.median(figures_ms), "ms", floor, "ms"),
        Row(
            f"report page (--html) over {at} (goal < 2 s)",
            statistics.median(page_ms),
            "ms",
            floor,
            "ms",
        ),
        Row(f"report bench: build {at}", built, "s"),
    ]
