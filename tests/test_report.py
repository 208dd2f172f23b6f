"""`followupd report`: its figures against a fixture computed by hand (tests/report_data.py:
41 referrals, 10 physicians, 12 visits, the ledger), on SQLite and PostgreSQL; the terminal,
CSV and HTML outputs, their exit statuses, and never a patient value in any of them; the
`report:` configuration and the daemon's report job.

How the expected figures were computed is written beside each. The percentile is a
spreadsheet's PERCENTILE.INC: sorted x[0..n-1], the p-th percentile is at 0-based rank
h = (n - 1) p, x[floor(h)] + (h - floor(h)) (x[floor(h) + 1] - x[floor(h)]).
"""

from __future__ import annotations

import csv
import io
import os
import re
import statistics
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
import report_data
import sqlalchemy as sa

from conftest import SAMPLE_PATIENT_VALUES, wait_for
from followupd import config as configuration
from followupd.config import ConfigError
from followupd.models import Physician, Practice, Referral
from followupd.report import build, default_since, options_for, percentile, sparkline
from followupd.report.figures import month_names
from followupd.store import Store
from followupd.store.report import records_prospects

TODAY = report_data.TODAY  # Monday 2026-06-15, America/Chicago
SINCE = date(2025, 7, 1)  # the default period's first day for TODAY


def settings_for(home: Path, db_url: str) -> configuration.Settings:
    return configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})


@pytest.fixture
def filled(home, db_url):
    """The fixture in a fresh database (SQLite or PostgreSQL); the home's settings."""
    store = Store(db_url)
    try:
        report_data.fill(store.engine)
    finally:
        store.close()
    return settings_for(home, db_url)


def figures_of(settings, since=SINCE, today=TODAY, limit=None):
    store = Store(settings.database_url)
    try:
        with store.session() as session:
            return build(session, options_for(settings, since, today, limit=limit))
    finally:
        store.close()


# --- the definitions -----------------------------------------------------------------------------


def test_percentiles_are_percentile_inc():
    # 1, 2, 3, 4: median at h = 1.5 -> 2 + 0.5 * 1 = 2.5; p90 at h = 2.7 -> 3 + 0.7 * 1 = 3.7
    assert percentile({1: 1, 2: 1, 3: 1, 4: 1}, 0.5) == 2.5
    assert percentile({1: 1, 2: 1, 3: 1, 4: 1}, 0.9) == pytest.approx(3.7)
    assert percentile({7: 3}, 0.9) == 7.0  # one value, however many times
    assert percentile({}, 0.5) is None
    # The same as Python's own inclusive quantiles, over a histogram with repeats.
    histogram = {10: 3, 25: 1, 40: 5, 90: 2, 600: 1}
    values = sorted(v for v, n in histogram.items() for _ in range(n))
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    assert percentile(histogram, 0.9) == pytest.approx(deciles[8])
    assert percentile(histogram, 0.5) == statistics.median(values)


def test_the_default_period_is_twelve_months():
    assert default_since(TODAY) == SINCE
    assert default_since(date(2026, 1, 31)) == date(2025, 2, 1)
    assert default_since(date(2026, 12, 1)) == date(2026, 1, 1)
    assert month_names(SINCE, TODAY)[0] == "2025-07" and month_names(SINCE, TODAY)[-1] == "2026-06"
    assert len(month_names(SINCE, TODAY)) == 12


def test_sparklines():
    assert sparkline([0, 1, 2, 4]) == "·▂▄█"
    assert sparkline([0, 0]) == "··"


# --- the hand-computed fixture --------------------------------------------------------------------


# physician: (referrals in the period, ever, first, last, days since the last, visits in the
# period, cards, visits at least 90 days old, referrals 90 days before, 90 days after)
PHYSICIANS = {
    # Ann: R-01..R-08 are in the period (R-01 on its first day); R-09 (2025-06-10) and R-40
    # (06-11) before it. Her visit V2 is 2025-09-09 (V1, 2025-06-20, is before the period).
    # Before V2 [06-11, 09-08]: R-40 (exactly 90 days), R-01, R-02 = 3; R-09 (91 days) no.
    # After V2 [09-10, 12-08]: R-04, R-05 (exactly 90 days) = 2; R-06 (91 days) no; R-03 is
    # on the visit's own day: neither. Last 2026-06-02: 13 days before TODAY.
    "Dr. Ann Lee": (8, 10, "2025-06-10", "2026-06-02", 13, 1, 10, 1, 3, 2),
    # Ben: R-10..R-14 (R-14 received TODAY, in); R-15 (2026-06-20) is after today: nowhere.
    # V10 2026-02-02: before [2025-11-04, 2026-02-01] none; after [02-03, 05-03]: R-12;
    # R-13 (05-05) is 92 days after.
    "Dr. Ben Ortiz": (5, 5, "2025-07-15", "2026-06-15", 0, 1, 10, 1, 0, 1),
    # Cara: V3 2025-11-12: before [08-14, 11-11]: R-17; R-16 (08-05) no. After [11-13,
    # 2026-02-10].
    "Dr. Cara Diaz": (6, 6, "2025-08-05", "2026-05-19", 27, 1, 10, 1, 1, 2),
    # Dev: V8 2025-07-10 left no cards: after [07-11, 10-08]: R-22.
    "Dr. Dev Shah": (4, 4, "2025-07-22", "2026-04-28", 48, 1, 0, 1, 0, 1),
    # Gia: V4 2026-01-15: before [2025-10-17, 2026-01-14]: R-32 (exactly 90); after [01-16,
    # 04-15]: R-34 (exactly 90); R-35 (91) no; R-33 on the day. V11 (2026-06-10) is a visit
    # of the period but too young for windows.
    "Dr. Gia Roy": (4, 4, "2025-10-17", "2026-04-16", 60, 2, 20, 1, 1, 1),
    # Eve: R-26 (2025-06-30) is the day before the period. V5 on 2026-03-17, exactly 90 days
    # before TODAY, counts: before [2025-12-17, 2026-03-16]: R-28; after [03-18, 06-15]: R-29.
    "Dr. Eve Park": (3, 4, "2025-06-30", "2026-05-26", 20, 1, 5, 1, 1, 1),
    "Dr. Finn Moss": (2, 2, "2025-10-07", "2026-03-31", 76, 0, 0, 0, 0, 0),
    # Hal: V6 on 2026-03-18, 89 days before TODAY: a visit of the period, no windows yet.
    "Dr. Hal Kim": (2, 2, "2025-08-19", "2026-03-18", 89, 1, 10, 0, 0, 0),
    "Dr. Ida Fox": (2, 2, "2025-12-16", "2026-03-17", 90, 0, 0, 0, 0, 0),
    # Jon: one referral, 2025-03-02: 365 days to 2026-03-02, then 29 + 30 + 31 + 15 = 470.
    "Dr. Jon Wu": (0, 1, "2025-03-02", "2025-03-02", 470, 0, 0, 0, 0, 0),
}
PRACTICES = {
    # Harbor = Ann + Ben + Ida: 8 + 5 + 2 = 15 in the period, 10 + 5 + 2 = 17 ever. Visits
    # V2, V7 (no physician met), V10: 30 cards; V2 and V10 are old enough. Before V2
    # [2025-06-11, 09-08]: Ann 06-11, 07-01, 08-12, Ben 07-15; before V10 [2025-11-04,
    # 2026-02-01]: Ann 12-08, 12-09, Ida 12-16: 7 distinct. After V2 [09-10, 12-08]: Ann
    # 10-14, 12-08, Ben 10-21; after V10 [02-03, 05-03]: Ben 02-10, Ida 03-17, Ann 04-07:
    # 6 (Ann's 12-08 is after V2 and before V10: once on each side).
    "Harbor Family Medicine": (15, 17, "2025-06-10", "2026-06-15", 0, 3, 30, 2, 7, 6),
    # Lakeside = Cara + Dev. V8 2025-07-10: after [07-11, 10-08]: Dev 07-22, Cara 08-05,
    # 09-16. V3 2025-11-12: before [08-14, 11-11]: Cara 09-16; after [11-13, 2026-02-10]:
    # Cara 11-18, 01-20, Dev 12-02. Before 1; after 6 distinct.
    "Lakeside Internal Medicine": (10, 10, "2025-07-22", "2026-05-19", 27, 2, 10, 2, 1, 6),
    # Riverbend = Gia + Hal: V4 before: Gia 10-17; after [01-16, 04-15]: Gia 04-15, Hal
    # 03-18. V6 and V11 too young.
    "Riverbend OB/GYN": (6, 6, "2025-08-19", "2026-04-16", 60, 3, 30, 1, 1, 2),
    # Northfield = Eve + Finn. V9 2025-10-01: before [07-03, 09-30]: Eve 09-23; after
    # [10-02, 12-30]: Finn 10-07. V5 2026-03-17: before: Eve 01-06; after: Eve 05-26, Finn
    # 03-31. Before 2, after 3.
    "Northfield Pediatrics": (5, 6, "2025-06-30", "2026-05-26", 20, 2, 15, 2, 2, 3),
    # Summit: visited once (V12), never referred.
    "Summit Psychiatry": (0, 0, None, None, None, 1, 10, 1, 0, 0),
}


def _line(source) -> tuple:
    day = lambda value: value.isoformat() if value else None  # noqa: E731
    return (
        source.referrals,
        source.ever,
        day(source.first),
        day(source.last),
        source.days_since,
        source.visits,
        source.cards,
        source.windows,
        source.before,
        source.after,
    )


def test_referrals_visits_and_windows_by_physician_and_practice(filled):
    report = figures_of(filled)
    assert report.months[0] == "2025-07" and len(report.months) == 12
    assert {s.name: _line(s) for s in report.physicians} == PHYSICIANS
    assert {s.name: _line(s) for s in report.practices} == PRACTICES
    # The busiest first: 8, 6, 5, then 4 and 4, where the later last referral goes first
    # (Dev's 2026-04-28 before Gia's 04-16).
    assert [s.name for s in report.physicians][:5] == [
        "Dr. Ann Lee",
        "Dr. Cara Diaz",
        "Dr. Ben Ortiz",
        "Dr. Dev Shah",
        "Dr. Gia Roy",
    ]
    ann = report.physicians[0]
    # Ann by month, 2025-07 .. 2026-06: R-01 07, R-02 08, R-03 09, R-04 10, R-05 and R-06
    # 12, R-07 2026-04, R-08 06.
    assert ann.months == [1, 1, 1, 1, 0, 2, 0, 0, 0, 1, 0, 1]
    # All referrals by month (tests/report_data.py, by received day): 36 in the period.
    assert report.referrals_by_month == [3, 3, 3, 4, 1, 4, 3, 2, 4, 4, 3, 2]
    assert report.referrals == 36
    # Visits: V8 07, V2 09, V9 10, V3 11, V12 12, V4 01, V10 02, V5 and V6 03, V7 05, V11 06.
    assert report.visits_by_month == [1, 0, 1, 1, 1, 1, 1, 1, 2, 0, 1, 1]
    assert report.cards_by_month == [0, 0, 10, 10, 10, 10, 10, 10, 15, 0, 10, 10]
    assert report.windows_until == date(2026, 3, 17)


def test_acknowledgement_times_and_standings(filled):
    ack = figures_of(filled).acknowledgements
    # The 36 referrals of the period, by their acknowledgement's state.
    assert ack.states == {
        "sent": 7,
        "gone": 2,
        "done": 2,
        "deleted": 1,
        "claimed": 1,
        "waiting": 1,
        "held": 4,
        "planned": 1,  # R-14, received today
        "failed": 1,
        "withdrawn": 1,
        "cancelled": 1,
        "skipped": 10,  # history
        None: 4,  # no acknowledgement at all
    }
    assert ack.referrals == 36 and ack.sent == 9 and ack.not_sent == 27
    # Received -> drafted, minutes from local midnight of the day received (America/Chicago):
    #   1920 = 1 day 8 h (received Tuesday, drafted Wednesday 08:00): R-02, R-04 (its
    #          release came at 07:00, before the due time: no delay), R-05 (in CST: the
    #          offset moves with the day), R-29
    #   1924   R-28: the ledger's made_at says 08:04 (a tick four minutes after it was due)
    #   2460 = 1 d 17 h  R-19: its release was recorded Wednesday 17:00 CST
    #   3780 = 2 d 15 h  R-16: followupd learned of it two days late, 15:00
    #   4740 = 3 d 7 h   R-20: Friday 2026-03-06 (CST) to Monday 08:00 CDT: DST began Sunday
    #   4800 = 3 d 8 h   R-32: received on a Friday
    #   4830 = 3 d 8.5 h R-27: entered Friday 08:30
    #   4950 = 3 d 10.5 h R-11: its release was recorded Friday 10:30
    #   5040 = 3 d 12 h  R-21: entered Friday 12:00 (then deleted from Drafts: still drafted)
    # Without made_at (before migration 0008) R-28 is 1920.
    made = "made_at" in report_data.FollowUp.__table__.c
    r28 = 1924 if made else 1920
    expected = {1920: 5 if not made else 4, 2460: 1, 3780: 1, 4740: 1, 4800: 1}
    expected |= {4830: 1, 4950: 1, 5040: 1}
    if made:
        expected[r28] = 1
    assert ack.to_draft_minutes == expected
    # n = 12: 1920 1920 1920 1920 r28 2460 3780 4740 4800 4830 4950 5040
    # median: h = 11 * 0.5 = 5.5 -> 2460 + 0.5 * (3780 - 2460) = 3120
    # p90:    h = 11 * 0.9 = 9.9 -> 4830 + 0.9 * (4950 - 4830) = 4938
    assert (ack.to_draft.count, ack.to_draft.median, ack.to_draft.p90) == (12, 3120, 4938)
    # Drafted -> sent, for the sent notes whose sending time the sync recorded (R-27's
    # reason says "sent" only; were received before the period):
    #   R-20 0 (sent in the minute it was drafted), R-11 30, R-02 120, R-05 390,
    #   R-19 960 (drafted at its release, 23:00 UTC; sent 15:00 UTC), R-04 1440
    # median: h = 5 * 0.5 = 2.5 -> 120 + 0.5 * 270 = 255; p90: h = 4.5 -> 960 + 0.5 * 480 = 1200
    assert ack.to_send_minutes == {0: 1, 30: 1, 120: 1, 390: 1, 960: 1, 1440: 1}
    assert (ack.to_send.count, ack.to_send.median, ack.to_send.p90) == (6, 255, 1200)


def test_closing_notes(filled):
    closing = figures_of(filled).closing
    # Closed in the period: R-09 (received before it), R-01, R-02, R-16, R-17, R-22, R-23,
    # R-30 (closed today), R-04. R-26 closed 2025-06-30, the day before: out.
    assert closing.referrals == 9
    assert closing.states == {
        "sent": 2,
        "gone": 1,
        "done": 1,
        "held": 1,
        "planned": 1,
        "failed": 1,
        "cancelled": 1,
        None: 1,
    }
    assert (closing.sent, closing.held, closing.missing) == (3, 1, 3)
    # Closed -> drafted: R-22 Tuesday -> Wednesday 08:00 = 1920; R-01 Tuesday, its release
    # recorded Thursday 09:00 = 2 d 9 h = 3420; closed on Fridays = 4800.
    # n = 4: median h = 1.5 -> 3420 + 0.5 * 1380 = 4110; p90 h = 2.7 -> 4800 + 0.7 * 0
    assert closing.to_draft_minutes == {1920: 1, 3420: 1, 4800: 2}
    assert (closing.to_draft.median, closing.to_draft.p90) == (4110, 4800)
    # Drafted -> sent: R-01 60 (drafted 14:00 UTC, sent 15:00), R-09 300.
    # median h = 0.5 -> 60 + 0.5 * 240 = 180; p90 h = 0.9 -> 60 + 0.9 * 240 = 276
    assert (closing.to_send.count, closing.to_send.median, closing.to_send.p90) == (2, 180, 276)


def test_what_needs_attention(filled):
    attention = figures_of(filled).attention
    # Quiet for 90 days or more: Ida (last 2026-03-17: exactly 90) and Jon (470), the one
    # with more referrals first; Hal (89 days) is not.
    assert [(s.name, s.days_since) for s in attention.quiet] == [
        ("Dr. Ida Fox", 90),
        ("Dr. Jon Wu", 470),
    ]
    # Drafts still in Drafts, the longest due first (the visits' reminders are not drafts):
    # R-16's acknowledgement due 2025-08-06, 313 days before TODAY; R-28's 2026-01-07, 159;
    # R-22's closing note 2026-03-04, 103.
    assert [(n.ref, n.rule, n.to, n.due.isoformat(), n.days) for n in attention.unsent] == [
        ("R-16", "referral-acknowledgement", "Dr. Cara Diaz", "2025-08-06", 313),
        ("R-28", "referral-acknowledgement", "Dr. Eve Park", "2026-01-07", 159),
        ("R-22", "closing-note", "Dr. Dev Shah", "2026-03-04", 103),
    ]
    assert attention.unsent_total == 3
    held = {(n.ref, n.rule): n.releases for n in attention.held}
    assert list(held) == [
        ("R-03", "referral-acknowledgement"),
        ("R-38", "referral-acknowledgement"),
        ("R-16", "closing-note"),
        ("R-12", "referral-acknowledgement"),
        ("R-24", "referral-acknowledgement"),
    ]
    assert "followupd referral release R-03" in held["R-03", "referral-acknowledgement"]
    assert "physician confirm" in held["R-12", "referral-acknowledgement"]
    assert "source" in held["R-38", "referral-acknowledgement"]
    assert attention.held_total == 5
    if not records_prospects():  # before migration 0008: said, not guessed
        assert attention.prospects is None
        return
    # Named: Northfield (visited 2025-10-01, after V2 named it), Summit (V12, after V3),
    # Dr. Eve Park (met at V5, after V10), and Cedar Pediatrics / Dr. Kim Lo, named at V4
    # and again (other case and spacing) at V5, never visited: 151 days since 2026-01-15.
    found = [(p.practice, p.physician, p.named_on.isoformat(), p.days) for p in attention.prospects]
    assert found == [("Cedar Pediatrics", "Dr. Kim Lo", "2026-01-15", 151)]
    assert attention.prospects[0].named_at == "Riverbend OB/GYN"


def test_two_acknowledgement_rules_count_each_referral_once(filled, home):
    """With a second acknowledgement rule, a referral stands as its furthest note (R-03's
    held acknowledgement, but a second one sent), and both rules' drafts are timed."""
    path = home / "followupd.yaml"
    path.write_text(
        path.read_text().replace(
            "rules:\n",
            "rules:\n  - name: ack-by-fax\n    event: referral.received\n    after: 2 days\n"
            "    make: draft\n    template: acknowledgement.txt.j2\n",
            1,
        )
    )
    settings = settings_for(home, filled.database_url)
    store = Store(settings.database_url)
    with store.engine.begin() as db:
        for ref, state, day in (("R-03", "sent", "2025-09-11"), ("R-25", "held", "2026-04-30")):
            report_data._note(
                db,
                "ack-by-fax",
                "referral",
                _referral_id(db, ref),
                (state, report_data.local(day, "08:00"), None),
            )
    store.close()
    ack = figures_of(settings).acknowledgements
    assert set(ack.rules) == {"referral-acknowledgement", "ack-by-fax"}
    # R-03 moves from held to sent (its best); R-25 from no note to held.
    assert (ack.count("sent"), ack.count("held"), ack.count(None)) == (8, 4, 3)
    assert ack.referrals == 36
    # R-03's second note, made 2 days 8 h after it was received: 3360 minutes more.
    assert ack.to_draft.count == 13 and ack.to_draft_minutes.get(3360) == 1


def _referral_id(db, ref: str) -> int:
    return db.execute(sa.select(Referral.id).where(Referral.ref == ref)).scalar_one()


def test_limits_cut_the_lists_not_their_counts(filled):
    attention = figures_of(filled, limit=1).attention
    assert len(attention.unsent) == 1 and attention.unsent_total == 3
    assert len(attention.held) == 1 and attention.held_total == 5
    assert len(attention.quiet) == 1 and attention.quiet_total == 2


def test_a_later_since_narrows_the_period(filled):
    report = figures_of(filled, since=date(2026, 4, 1))
    assert report.months == ["2026-04", "2026-05", "2026-06"]
    assert report.referrals == 4 + 3 + 2
    ann = next(s for s in report.physicians if s.name == "Dr. Ann Lee")
    assert (ann.referrals, ann.ever, ann.first) == (2, 10, date(2025, 6, 10))  # first: ever
    assert ann.windows == 0  # no visit of hers from 04-01 to 03-17


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture
def filled_cli(cli, db_url):
    store = Store(db_url)
    try:
        report_data.fill(store.engine)
        with store.engine.begin() as db:  # a name a spreadsheet would run as a formula
            name = "=cmd|' /C calc'!A0 <b>& Co</b>"  # a formula, and markup for the page
            db.execute(sa.insert(Practice).values(id=9, key="=cmd", name=name))
            db.execute(
                sa.insert(Physician).values(
                    id=11, key="dr. formula|=cmd", name="@SUM(1+1)", practice_id=9
                )
            )
            db.execute(
                sa.insert(Referral).values(
                    id=99,
                    ref="R-99",
                    received_on=date(2026, 1, 5),
                    physician_id=11,
                    client_name=SAMPLE_PATIENT_VALUES[3],
                )
            )
    finally:
        store.close()
    return cli


def test_the_terminal_report(filled_cli):
    ran = filled_cli("report", "--since", "2025-07-01", "--limit", "0")
    assert ran.code == 0, ran.stderr
    text = ran.stdout
    for words in (
        "Dr. Ann Lee",
        "Harbor Family Medicine",
        "referrals received in the period)",
        "received to drafted: median 2.2 days, 90th percentile 3.4 days (12 notes)",
        "drafted to sent: median 4.2 h, 90th percentile 20.0 h (6 notes)",
        "closing notes (9 referrals closed in the period)",
        "sent 3, not sent 6 (held 1, missing 3)",
        "needs attention",
        "followupd referral release R-03",
    ):
        assert words in text, words


def test_the_csv_is_one_table_with_a_header(filled_cli):
    ran = filled_cli("report", "--since", "2025-07-01", "--csv")
    assert ran.code == 0, ran.stderr
    rows = list(csv.DictReader(io.StringIO(ran.stdout)))
    header = ran.stdout.splitlines()[0].split(",")
    assert header[:4] == ["kind", "name", "practice", "referrals"]
    assert header[13] == "2025-07"  # a column a month from --since to this month
    assert [r["kind"] for r in rows].count("physician") == 11
    assert [r["kind"] for r in rows].count("practice") == 6
    ann = next(r for r in rows if r["name"] == "Dr. Ann Lee")
    assert (ann["referrals"], ann["referrals_ever"], ann["first"]) == ("8", "10", "2025-06-10")
    assert [int(ann[m]) for m in header[13:25]] == [1, 1, 1, 1, 0, 2, 0, 0, 0, 1, 0, 1]
    # A name a spreadsheet would take for a formula is written as text.
    assert any(r["name"] == "'@SUM(1+1)" and r["practice"].startswith("'=") for r in rows)
    assert not any(r["name"].startswith(("=", "@", "+", "-")) for r in rows)


def test_since_and_exit_statuses(filled_cli, tmp_path):
    narrowed = filled_cli("report", "--since", "2026-04-01", "--csv")
    rows = csv.DictReader(io.StringIO(narrowed.stdout))
    assert next(r for r in rows if r["name"] == "Dr. Ann Lee")["referrals"] == "2"
    for args, words in (
        (("--csv", "--html", str(tmp_path / "r.html")), "one at a time"),
        (("--since", "2026-13-01"), "--since"),
        (("--since", (date.today() + timedelta(days=2)).isoformat()), "after today"),
        (("--html", str(tmp_path)), str(tmp_path.name)),  # a folder where the file should be
    ):
        ran = filled_cli("report", *args)
        assert ran.code == 2, (args, ran.stdout, ran.stderr)
        assert words in ran.stderr, (args, ran.stderr)
        assert "Traceback" not in ran.stderr


def test_an_empty_database_reports_nothing_yet(cli, tmp_path):
    ran = cli("report")
    assert ran.code == 0, ran.stderr
    assert "0 referrals" in ran.stdout
    page = tmp_path / "empty.html"
    assert cli("report", "--html", str(page)).code == 0
    assert "nothing in this period" in page.read_text()


def test_the_html_page_is_self_contained_and_private(filled_cli, tmp_path):
    page = tmp_path / "out" / "report.html"
    ran = filled_cli("report", "--since", "2025-07-01", "--html", str(page))
    assert ran.code == 0, ran.stderr
    assert f"wrote {page}" in ran.stdout
    assert os.stat(page).st_mode & 0o777 == 0o600
    text = page.read_text(encoding="utf-8")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert "default-src 'none'" in text  # the browser is told to fetch nothing
    assert text.count("<svg") == 3 and "<script" not in text.lower()
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }
    assert not re.search(r"""\b(src|href)\s*=|url\(|@import""", text)
    assert "&lt;b&gt;&amp; Co&lt;/b&gt;" in text and "<b>&" not in text  # a name is text
    for name in ("Dr. Ann Lee", "Harbor Family Medicine", "R-03", "Cedar Pediatrics"):
        if name != "Cedar Pediatrics" or records_prospects():
            assert name in text, name
    # The same page twice is the same page but for the time it was made.
    again = tmp_path / "again.html"
    filled_cli("report", "--since", "2025-07-01", "--html", str(again))
    strip = lambda t: re.sub(r"made \d{4}-\d\d-\d\d \d\d:\d\d", "", t)  # noqa: E731
    assert strip(again.read_text(encoding="utf-8")) == strip(text)


def test_no_patient_value_in_any_output(filled_cli, tmp_path):
    """The fixture's referrals and a visit's notes hold the sample patient values."""
    page = tmp_path / "report.html"
    outputs = [
        filled_cli("report", "--since", "2025-01-01", "--limit", "0").stdout,
        filled_cli("report", "--since", "2025-01-01", "--csv").stdout,
    ]
    assert filled_cli("report", "--since", "2025-01-01", "--html", str(page)).code == 0
    outputs.append(page.read_text(encoding="utf-8"))
    for text in outputs:
        assert "Dr. Ann Lee" in text
        for value in (*SAMPLE_PATIENT_VALUES, "(focus)"):
            assert value not in text, value
        assert "1984" not in text and "March 9" not in text  # a date of birth, any way


# --- the schedule --------------------------------------------------------------------------------


def with_report(home: Path, section: str) -> None:
    path = home / "followupd.yaml"
    text = path.read_text()
    start = text.index("\nreport:\n")
    end = text.index("\n\n", start + 1)
    path.write_text(text[: start + 1] + section.rstrip("\n") + text[end:])


def test_the_report_section_is_validated(home):
    report = configuration.load(home, environ={}).config.report
    assert report.every is None and report.path == "report.html"
    for section, words in (
        ("report:\n  every: 1 business day\n", "business days"),
        ("report:\n  every: soon\n", "not a duration"),
        ("report:\n  evry: 1 day\n", "did you mean"),
        ("report:\n  path: ''\n", "report.path"),
    ):
        with_report(home, section)
        with pytest.raises(ConfigError) as refused:
            configuration.load(home, environ={})
        assert words in " ".join(refused.value.problems), refused.value.problems
    with_report(home, "report:\n  every: 1 day\n  path: pages/report.html\n")
    report = configuration.load(home, environ={}).config.report
    assert str(report.every) == "1 day" and report.path == "pages/report.html"


def test_the_daemon_job_writes_the_page_and_follows_the_schedule(home, db_url):
    from followupd.daemon import Daemon
    from followupd.engine import Engine

    store = Store(db_url)
    report_data.fill(store.engine)
    with_report(home, "report:\n  every: 6 hours\n  path: pages/report.html\n")
    settings = settings_for(home, db_url)
    daemon = Daemon(settings, lambda s: Engine(s, store), lambda: settings_for(home, db_url))
    try:
        daemon._schedule()
        job = daemon.scheduler.get_job("report")
        assert job is not None and job.trigger.interval == timedelta(hours=6)
        daemon.write_report()
        page = home / "pages" / "report.html"
        assert os.stat(page).st_mode & 0o777 == 0o600
        assert "Referrals and follow-up" in page.read_text(encoding="utf-8")
        # A page written just now: the next one is due a turn later, not at once.
        daemon.scheduler.remove_job("report")  # (not started: a pending job is not replaced)
        daemon._schedule()
        due = daemon.scheduler.get_job("report").next_run_time
        assert due - daemon.engine.clock() > timedelta(hours=5)
        # Turned off on a reload: the job goes.
        with_report(home, "report:\n  every: null\n")
        daemon.settings = settings_for(home, db_url)
        daemon._schedule(replace=True)
        assert daemon.scheduler.get_job("report") is None
    finally:
        daemon.engine.close()
        store.close()


def test_a_failed_report_is_logged_and_the_daemon_goes_on(home, db_url, caplog):
    from followupd.daemon import Daemon
    from followupd.engine import Engine

    store = Store(db_url)
    (home / "blocked").write_text("a file where the report's folder should be")
    with_report(home, "report:\n  every: 1 hour\n  path: blocked/report.html\n")
    settings = settings_for(home, db_url)
    daemon = Daemon(settings, lambda s: Engine(s, store), lambda: settings)
    try:
        daemon.write_report()  # raises nothing
    finally:
        daemon.engine.close()
        store.close()
    assert "report failed" in caplog.text
    assert not (home / "blocked" / "report.html").exists()


@pytest.mark.slow  # a daemon that writes the report every 2 seconds, awaited twice: 5-15 s
def test_the_running_daemon_rewrites_the_report(home):
    store = Store(f"sqlite:///{home / 'followupd.sqlite3'}")
    report_data.fill(store.engine)
    store.close()
    with_report(home, "report:\n  every: 2 seconds\n")
    log = home.parent / "daemon.log"
    with open(log, "w") as handle:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "followupd", "--home", str(home), "run"],
            stdout=handle,
            stderr=handle,
            env={"PATH": os.environ["PATH"]},
        )
    try:
        assert wait_for(lambda: log.read_text().count("event=report ") >= 2, 60), log.read_text()
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    assert os.stat(home / "report.html").st_mode & 0o777 == 0o600
    assert "report failed" not in log.read_text()


def test_quiet_is_counted_as_the_reminders_count_it():
    """60 business days and 3 months back, as the planner's quiet reminders reckon them."""
    from datetime import date

    from followupd.report.figures import quiet_cutoff
    from followupd.timing import Duration, latest_base

    for today, span in (
        (date(2026, 11, 30), Duration(60, "business_days")),
        (date(2026, 6, 30), Duration(3, "months")),
        (date(2026, 11, 30), Duration(90, "days")),
    ):
        assert quiet_cutoff(today, span) == latest_base(today, span)
    assert quiet_cutoff(date(2026, 6, 30), Duration(3, "months")) == date(2026, 3, 31)
    assert quiet_cutoff(date(2026, 11, 30), Duration(60, "business_days")) == date(2026, 9, 7)
