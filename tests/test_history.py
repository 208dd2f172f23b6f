"""A practice's first day: its history makes no notes, a dry run shows what a run would do,
and a burst of notes waits for a person's yes (issue 15).

A new user imported 20,000 referrals from last year and the next `run --once` wrote 20,013
acknowledgements thanking physicians for referrals months old. These tests are that day.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from followupd import config as configuration
from followupd.config import Rule
from followupd.engine import Engine
from followupd.models import FollowUp, Referral, State
from followupd.planning import Calendar, Cutoff, Existing, Subject, desired, reconcile
from followupd.store import Store
from followupd.timing import Duration

ZONE = ZoneInfo("America/Chicago")
TODAY = date(2026, 11, 30)
ACK = Rule(
    name="ack",
    event="referral.received",
    after="1 business day",
    at="08:00",
    make="draft",
    template="acknowledgement.txt.j2",
)
CUTOFF = Cutoff(Duration(14, "days"), ZONE, TODAY)


def referral(received: date, entered: datetime | None = None, subject_id: int = 1) -> Subject:
    return Subject(
        "referral",
        subject_id,
        f"referral R-{subject_id}",
        releases={"physician": True},
        recipients={"physician": None},
        events={"referral.received": received},
        entered=entered,
    )


def entered_on(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 15, tzinfo=UTC)


# --- planning: pure ----------------------------------------------------------------------


def test_an_event_older_than_the_cutoff_at_entry_is_skipped_as_history():
    old = desired(referral(TODAY - timedelta(days=15)), [ACK], Calendar(ZONE), cutoff=CUTOFF)
    new = desired(referral(TODAY - timedelta(days=14)), [ACK], Calendar(ZONE), cutoff=CUTOFF)
    assert old[0].state == State.skipped
    assert old[0].reason.startswith("history: received 2026-11-15, more than 14 days before")
    assert new[0].state == State.planned and new[0].skip is None


def test_the_cutoff_is_measured_from_entry_so_a_daemon_down_for_weeks_still_writes():
    """A referral typed in on the day it came, planned a month later (the daemon was down),
    is not history: the person expected its note."""
    received = TODAY - timedelta(days=30)
    wanted = desired(
        referral(received, entered=entered_on(received)), [ACK], Calendar(ZONE), cutoff=CUTOFF
    )
    assert wanted[0].state == State.planned


CLOSE = Rule(
    name="closing",
    event="referral.closed",
    after="1 business day",
    at="08:00",
    make="draft",
    template="closing.txt.j2",
)


def test_a_close_typed_in_long_after_it_happened_is_history():
    """The referral entered in March (its acknowledgement went then); a close dated April
    typed in today is history, measured from when it was typed."""
    march = entered_on(date(2026, 3, 2))
    closed = Subject(
        "referral",
        1,
        "referral R-1",
        releases={"physician": True},
        recipients={"physician": None},
        events={"referral.received": date(2026, 3, 2), "referral.closed": date(2026, 4, 15)},
        closed=True,
        entered=march,
        changed=entered_on(TODAY),
    )
    [note] = desired(closed, [CLOSE], Calendar(ZONE), cutoff=CUTOFF)
    assert note.state == State.skipped and "closed 2026-04-15" in note.reason
    recent = replace(closed, events={**closed.events, "referral.closed": TODAY})
    assert desired(recent, [CLOSE], Calendar(ZONE), cutoff=CUTOFF)[0].state == State.planned


def test_a_rule_added_today_does_not_reach_back_past_its_start():
    """Referrals entered in March, a rule added (or renamed) today: their March events are
    history for it, though they were new when entered."""
    march = date(2026, 3, 2)
    old = referral(march, entered=entered_on(march))
    rules_began = replace(CUTOFF, since=entered_on(TODAY))
    assert desired(old, [ACK], Calendar(ZONE), cutoff=rules_began)[0].state == State.skipped
    running_since_january = replace(CUTOFF, since=entered_on(date(2026, 1, 5)))
    [note] = desired(old, [ACK], Calendar(ZONE), cutoff=running_since_january)
    assert note.state == State.planned  # the daemon was down since March: still its note


def test_the_rules_start_is_kept_and_moves_when_the_rules_change(home, db_url):
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(settings.database_url)
    first = Engine(settings, store, clock=lambda: datetime(2026, 1, 5, tzinfo=UTC))
    began = first.rules_since()
    later = Engine(settings, store, clock=lambda: datetime(2026, 6, 1, tzinfo=UTC))
    assert later.rules_since() == began == datetime(2026, 1, 5, tzinfo=UTC)
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("name: closing-note", "name: closing-letter"))
    renamed = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    changed = Engine(renamed, store, clock=lambda: datetime(2026, 6, 1, tzinfo=UTC))
    assert changed.rules_since() == datetime(2026, 6, 1, tzinfo=UTC)
    for engine in (first, later, changed):
        engine.close()
    store.close()


def test_no_cutoff_makes_every_note():
    wanted = desired(referral(TODAY - timedelta(days=400)), [ACK], Calendar(ZONE), cutoff=None)
    assert wanted[0].state == State.planned


def _existing(state: str, reason: str | None = None) -> Existing:
    return Existing(7, "ack", "referral", 1, state, datetime.now(UTC), None, reason, None)


def test_a_skipped_follow_up_stays_skipped_and_a_planned_one_is_never_skipped_later():
    old = desired(referral(TODAY - timedelta(days=40)), [ACK], Calendar(ZONE), cutoff=CUTOFF)
    assert not reconcile(old, [_existing(State.skipped, old[0].reason)], [("referral", 1)])
    # planned (or held) while recent, then the cut-off passes: it is not history
    held = reconcile(old, [_existing(State.held, "no release")], [("referral", 1)])
    assert all(values.get("state") != State.skipped for _, values in held.updates)


def test_a_corrected_date_inside_the_cutoff_plans_the_skipped_note():
    recent = desired(referral(TODAY - timedelta(days=2)), [ACK], Calendar(ZONE), cutoff=CUTOFF)
    changes = reconcile(recent, [_existing(State.skipped, "history: ...")], [("referral", 1)])
    [(row_id, values)] = changes.updates
    assert row_id == 7 and values["state"] == State.planned and values["reason"] is None


# --- the command line --------------------------------------------------------------------


def write_referrals(path: Path, rows: list[tuple[str, date]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["ref", "received_on", "physician", "physician_email", "client_name", "release_on_file"]
        )
        for ref, received in rows:
            out.writerow(
                [
                    ref,
                    received.isoformat(),
                    "Dr. Ann Lee",
                    "ann@lee.example",
                    "Avery Quinlan",
                    "yes",
                ]
            )
    return path


def history_file(tmp_path: Path, old: int, recent: int) -> Path:
    today = date.today()
    rows = [(f"H-{i}", today - timedelta(days=20 + i % 300)) for i in range(old)]
    # recent: due now whatever the weekday (a business day after, holidays and all)
    rows += [(f"N-{i}", today - timedelta(days=6 + i % 5)) for i in range(recent)]
    return write_referrals(tmp_path / "history.csv", rows)


def ledger(cli) -> list[dict]:
    ran = cli("status", "--json", "--limit", "0")
    return [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]


def drafts(home: Path) -> list[Path]:
    folder = home / "outbox" / "drafts"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def test_importing_history_makes_no_notes_and_says_how_many_it_skipped(cli, home, tmp_path):
    assert cli("import", "referrals", str(history_file(tmp_path, 30, 3))).code == 0
    ran = cli("run", "--once")
    assert ran.code == 0
    assert ran.stdout.splitlines()[0] == f"made 3 drafts in {home / 'outbox'}"
    assert "skipped 30 as history" in ran.stdout
    assert len(drafts(home)) == 3
    states = [row["state"] for row in ledger(cli)]
    assert states.count("skipped") == 30 and states.count("done") == 3
    assert cli("run", "--once").stdout.startswith("made nothing")  # and nothing later either
    assert len(drafts(home)) == 3


def test_run_dry_run_shows_the_counts_by_rule_and_writes_nothing(cli, home, tmp_path):
    assert cli("import", "referrals", str(history_file(tmp_path, 30, 3))).code == 0
    ran = cli("run", "--dry-run")
    assert ran.code == 0
    assert "dry run: nothing was written" in ran.stdout
    row = next(line for line in ran.stdout.splitlines() if "referral-acknowledgement" in line)
    cells = [cell.strip() for cell in row.split("│")[3:7]]
    assert cells == ["3", "0", "0", "30"]  # now, later, held, skipped
    assert "a run now would make 3 drafts" in ran.stdout
    assert ledger(cli) == [] and drafts(home) == []
    real = cli("run", "--once")  # the run does what the dry run said
    assert "made 3 drafts" in real.stdout and "skipped 30 as history" in real.stdout


def test_import_dry_run_checks_the_file_and_writes_nothing(cli, home, tmp_path):
    ran = cli("import", "referrals", str(history_file(tmp_path, 5, 2)), "--dry-run")
    assert ran.code == 0
    assert "referrals: added 7" in ran.stdout and "dry run: nothing was written" in ran.stdout
    assert "a run now would make 2 drafts" in ran.stdout
    ran = cli("run", "--once")
    assert ran.stdout.startswith("made nothing") and drafts(home) == []  # nothing imported
    assert "referrals: added 7" in cli("import", "referrals", str(tmp_path / "history.csv")).stdout


def set_history(home: Path, text: str) -> None:
    """Replace the shipped `history:` block."""
    config = home / "followupd.yaml"
    shipped = re.search(r"^history:\n(?:  .*\n|\n)*", config.read_text(), re.MULTILINE)
    assert shipped, "the shipped configuration has a history: block"
    config.write_text(config.read_text().replace(shipped.group(0), f"history:\n{text}\n\n"))


REFUSAL = (
    "6 notes are due at once, more than history.confirm_over (5) in followupd.yaml: none was "
    "made. See them with `followupd run --dry-run`, then run `followupd run --once --confirm` "
    "(or raise history.confirm_over)"
)


def test_a_burst_over_the_limit_waits_for_confirm(cli, home, tmp_path):
    set_history(home, "  confirm_over: 5")
    assert cli("import", "referrals", str(history_file(tmp_path, 0, 6))).code == 0
    refused = cli("run", "--once")
    assert refused.code == 2 and refused.stderr.strip() == REFUSAL
    assert drafts(home) == []
    assert "that is more than history.confirm_over (5)" in cli("run", "--dry-run").stdout
    assert "waiting for a yes: 6 notes due at once" in cli("health").stdout
    ran = cli("run", "--once", "--confirm")
    assert ran.code == 0 and ran.stdout.startswith("made 6 drafts")
    assert len(drafts(home)) == 6
    # what comes after, a few at a time, goes out without asking
    week_ago = date.today() - timedelta(days=7)
    write_referrals(tmp_path / "more.csv", [("M-1", week_ago), ("M-2", week_ago)])
    assert cli("import", "referrals", str(tmp_path / "more.csv")).code == 0
    assert cli("run", "--once").code == 0 and len(drafts(home)) == 8


def test_a_yes_covers_what_was_due_then_not_what_is_planned_again_later(cli, home, tmp_path):
    """Notes held until an address is fixed, or skipped until the cut-off moves, come due at
    once later: a burst of them asks again, though their rows are older than the yes."""
    set_history(home, "  cutoff: 14 days\n  confirm_over: 5")
    week_ago = (date.today() - timedelta(days=7)).isoformat()
    for n in range(6):  # held for an address: planned before the others, not due
        assert cli("referral", "add", "--ref", f"Q-{n}", "--physician", "Dr. Quill",
                   "--client-name", "Casey Fairbanks", "--received-on", week_ago,
                   "--release").code == 0  # fmt: skip
    assert cli("run", "--once").stdout.startswith("made nothing\nheld 6: no email address")
    assert cli("import", "referrals", str(history_file(tmp_path, 8, 6))).code == 0
    assert cli("run", "--once", "--confirm").stdout.startswith("made 6 drafts")
    [quill] = [
        json.loads(line)["id"]
        for line in cli("physician", "list", "--json").stdout.splitlines()
        if json.loads(line)["name"] == "Dr. Quill"
    ]
    assert cli("physician", "edit", str(quill), "--email", "quill@clinic.example").code == 0
    again = cli("run", "--once")
    assert again.code == 2 and again.stderr.startswith("6 notes are due at once"), again
    assert cli("run", "--once", "--confirm").stdout.startswith("made 6 drafts")
    set_history(home, "  cutoff: 400 days\n  confirm_over: 5")  # the 8 old ones come back
    assert cli("run", "--once").stderr.startswith("8 notes are due at once")
    assert len(drafts(home)) == 12


def test_confirm_goes_with_once(cli):
    ran = cli("run", "--confirm")
    assert ran.code == 2 and "--confirm goes with --once" in ran.stderr


def test_the_daemons_tick_refuses_a_burst_and_goes_on_after_a_confirmation(home, db_url):
    """The daemon's tick (the same `Engine.tick` it runs on its schedule) delivers nothing of
    a burst, records why for `health`, and delivers once a person confirmed."""
    set_history(home, "  confirm_over: 5")
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(settings.database_url)
    from followupd.intake import import_csv

    import_csv(store, str(history_file(home.parent, 0, 6)), "referrals")
    daemon = Engine(settings, store)
    first = daemon.tick()
    assert first.delivered == [] and first.refused == REFUSAL and first.due_at_once == 6
    assert daemon.tick().refused == REFUSAL  # and on every tick until someone says yes
    Engine(settings, store).confirm_burst()  # `run --once --confirm`, in another process
    assert len(daemon.tick().delivered) == 6
    daemon.close()
    store.close()


def test_history_cutoff_null_makes_every_note(cli, home, tmp_path):
    set_history(home, "  cutoff: null\n  confirm_over: null")
    assert cli("import", "referrals", str(history_file(tmp_path, 60, 0))).code == 0
    assert cli("run", "--once").stdout.startswith("made 60 drafts")


def test_a_bad_history_setting_names_the_key(cli, home):
    set_history(home, "  cutoff: soon")
    ran = cli("check")
    assert ran.code == 2 and "history.cutoff" in ran.stderr


# --- plain summaries ---------------------------------------------------------------------


def test_run_once_prints_a_summary_and_logs_only_with_verbose(cli, home, tmp_path):
    week_ago = date.today() - timedelta(days=7)
    write_referrals(tmp_path / "r.csv", [("R-1", week_ago)])
    cli("import", "referrals", str(tmp_path / "r.csv"))
    assert cli("referral", "add", "--ref", "R-2", "--physician", "Dr. Bo Chen",
               "--client-name", "Jordan Pelletier", "--received-on", week_ago.isoformat()
               ).code == 0  # fmt: skip
    ran = cli("run", "--once")
    assert ran.stdout.splitlines() == [
        f"made 1 draft in {home / 'outbox'}",
        "held 1: no release of information on file (1)",
    ]
    assert ran.stderr == ""  # no log lines
    cli("referral", "add", "--ref", "R-3", "--physician", "Dr. Bo Chen", "--client-name", "X")
    verbose = cli("run", "--once", "--verbose")
    assert "planned" in verbose.stderr and "rule=referral-acknowledgement" in verbose.stderr


def test_demo_prints_its_table_and_a_summary_without_log_lines(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from followupd.cli import app

    monkeypatch.chdir(tmp_path)
    ran = CliRunner().invoke(app, ["demo", "d"])
    assert ran.exit_code == 0, ran.output
    assert ran.stderr == ""
    assert ran.stdout.startswith("followupd demo: one tick on sample data")
    assert "made 4 drafts and 3 reminders in d/outbox" in ran.stdout  # a prospect's too
    assert "held 2: " in ran.stdout


# --- the 20,000-row history of the issue ---------------------------------------------------


@pytest.mark.slow
def test_twenty_thousand_rows_of_history(cli, home, tmp_path, db_url):
    """The issue's history on SQLite; a quarter of it on PostgreSQL (the same statements:
    what the size adds is time)."""
    old = 20_000 if db_url.startswith("sqlite") else 5_000
    path = history_file(tmp_path, old, 13)
    dry = cli("import", "referrals", str(path), "--dry-run")
    assert dry.code == 0 and "a run now would make 13 drafts" in dry.stdout
    assert f"{old:,} are history" in dry.stdout
    assert cli("import", "referrals", str(path)).code == 0
    assert "a run now would make 13 drafts" in cli("run", "--dry-run").stdout
    engine = sa.create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(FollowUp)).scalar() == 0
        assert connection.execute(sa.select(sa.func.count()).select_from(Referral)).scalar() == (
            old + 13
        )
    ran = cli("run", "--once")
    assert ran.code == 0
    assert ran.stdout.splitlines()[:2] == [
        f"made 13 drafts in {home / 'outbox'}",
        f"skipped {old:,} as history (events already more than 14 days old when followupd "
        "learned of them make no note; `followupd status --state skipped` lists them)",
    ]
    assert len(drafts(home)) == 13
    with engine.connect() as connection:
        skipped = connection.execute(
            sa.select(sa.func.count()).where(FollowUp.state == State.skipped)
        ).scalar()
    engine.dispose()
    assert skipped == old


def test_help_shows_a_flag_without_a_value(cli):
    """Help said `--once <bool>`, and `run --once true` failed."""
    shown = cli("run", "--help").stdout
    assert "<bool>" not in shown
    line = next(line for line in shown.splitlines() if line.startswith("│ --once"))
    assert "Run one tick and exit." in line
    assert "<path>" in shown  # an option that takes a value still says what kind


PROBE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=0.2, isolation_level=None)
try:
    connection.execute("BEGIN IMMEDIATE")
    print("free")
except sqlite3.OperationalError as exc:
    print(exc)
"""


def another_process_may_write(path: Path) -> str:
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    return ran.stdout.strip()


def test_a_dry_run_on_sqlite_keeps_others_out_until_it_is_rolled_back(tmp_path):
    """A rehearsal holds SQLite's write lock to its end: nobody writes between its reads and
    its writes (opening a second engine on the file once dropped the process's locks)."""
    path = tmp_path / "followupd.sqlite3"
    store = Store(f"sqlite:///{path}")
    with store.session() as session:  # the command's own pooled connection, as in `run`
        session.execute(sa.text("SELECT 1")).all()
    with store.rehearsal():
        with store.session() as session:
            session.execute(sa.text("INSERT INTO meta (key, value) VALUES ('dry', '1')"))
        assert another_process_may_write(path) == "database is locked"
        with store.session() as session:
            session.execute(sa.text("UPDATE meta SET value = '2' WHERE key = 'dry'"))
        assert another_process_may_write(path) == "database is locked"
    assert another_process_may_write(path) == "free"
    with store.session() as session:
        assert session.execute(sa.text("SELECT count(*) FROM meta WHERE key = 'dry'")).scalar() == 0
    store.close()
