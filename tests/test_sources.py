"""Watched sources, first slice of issue 16: a folder of exports, read on its own.

A CSV file saved into the folder is imported once it has stopped changing, through the same
validation and upsert as `followupd import`, then moved to `imported/` beside a report that
names rows and columns, never a value; a file that cannot be read goes to `rejected/`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_daemon import drafts, env_for, start_daemon, stop

from conftest import SAMPLE_PATIENT_VALUES, wait_for

WEEK_AGO = (date.today() - timedelta(days=7)).isoformat()
HEADER = "Referral #,Date received,physician,physician_email,Client,release_on_file\n"


def add_source(home: Path, text: str) -> None:
    config = home / "followupd.yaml"
    shipped = config.read_text()
    assert "\nsources: []\n" in shipped
    config.write_text(shipped.replace("\nsources: []\n", "\nsources:\n" + text, 1))


FOLDER = """  - name: exports
    kind: folder
    table: referrals
    path: inbox
    every: 1 second
    columns:
      ref: "Referral #"
      received_on: "Date received"
      client_name: "Client"
"""


def drop(folder: Path, name: str, text: str) -> Path:
    """Save a file the way an export does: written elsewhere, renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.part"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, folder / name)
    return folder / name


def rows(*refs: str) -> str:
    return HEADER + "".join(
        f"{ref},{WEEK_AGO},Dr. Ann Lee,ann@lee.example,Avery Quinlan,yes\n" for ref in refs
    )


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("  - name: a\n    kind: folder\n    table: referrals\n", "a folder source needs path"),
        (
            "  - name: a\n    kind: folder\n    table: referrals\n    path: x\n    query: y\n",
            "query is not a key of a folder source (it takes path)",
        ),
        (
            "  - name: a\n    kind: google_sheet\n    table: referrals\n"
            "    spreadsheet: 1AbCdEfGhIjKlMnOpQ\n",
            "a google_sheet source needs range",
        ),
        (
            "  - name: a\n    kind: folder\n    table: visits\n    path: x\n    every: 10 ms\n",
            "every",
        ),
        (
            "  - name: a\n    kind: folder\n    table: referrals\n    path: x\n"
            "  - name: a\n    kind: folder\n    table: visits\n    path: y\n",
            'source name "a" is used twice',
        ),
    ],
    ids=["no-path", "foreign-key", "sheet-without-range", "too-often", "twice"],
)
def test_a_bad_source_names_the_file_line_and_key(cli, home, text, problem):
    add_source(home, text)
    ran = cli("check")
    assert ran.code == 2 and problem in ran.stderr, ran.stderr
    assert re.search(r"followupd\.yaml:\d+: sources", ran.stderr), ran.stderr


# --- sources read ------------------------------------------------------------------------


def test_a_settled_file_is_imported_once_and_moved_beside_its_report(cli, home):
    add_source(home, FOLDER)
    inbox = home / "inbox"
    drop(inbox, "monday.csv", rows("R-1", "R-2") + f"R-3,{WEEK_AGO},,x@y.example,Z,yes\n")
    ran = cli("sources", "read")
    assert ran.code == 1  # one row was rejected: the rest went in
    assert "exports: monday.csv: added 2, updated 0, unchanged 0, rejected 1" in ran.stdout
    assert list(inbox.glob("*.csv")) == []
    [moved] = (inbox / "imported").glob("*-monday.csv")
    report = moved.with_name(moved.name + ".report.txt")
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert stat.S_IMODE((inbox / "imported").stat().st_mode) == 0o700
    text = report.read_text()
    assert "line 4, column physician: is empty" in text
    assert not any(value in text for value in SAMPLE_PATIENT_VALUES)
    assert (home / ".followupd-wake").exists()  # a running daemon plans them at once
    assert cli("sources", "read").stdout.strip() == "exports: nothing new"
    listing = cli("sources")
    assert "exports" in listing.stdout and "line 4, column physician: is empty" in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith("│ exports"))
    cells = [c.strip() for c in row.split("│")[7:12]]
    assert cells == ["1", "2", "0", "1", "0"]  # files, added, updated, rejected, refused
    assert cli("run", "--once").stdout.startswith("made 2 drafts")


def test_a_file_that_cannot_be_read_goes_to_rejected_with_the_reason(cli, home):
    add_source(home, FOLDER)
    drop(home / "inbox", "notes.csv", "Avery Quinlan,1984-03-09\n")
    ran = cli("sources", "read")
    assert ran.code == 1
    assert "notes.csv: refused (notes.csv: line 1 is not a header row" in ran.stdout
    [moved] = (home / "inbox" / "rejected").glob("*-notes.csv")
    reason = moved.with_name(moved.name + ".report.txt").read_text()
    assert reason.startswith("refused: notes.csv: line 1 is not a header row")
    assert "Avery" not in reason and "Avery" not in ran.stdout


def test_read_names_an_unknown_source(cli, home):
    add_source(home, FOLDER)
    ran = cli("sources", "read", "sheet")
    assert ran.code == 2 and "no source 'sheet' in followupd.yaml (sources: exports)" in ran.stderr


# --- the daemon --------------------------------------------------------------------------


def test_the_daemon_drafts_a_referral_saved_into_the_folder(home, db_url):
    add_source(home, FOLDER)
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("poll: 5 minutes", "poll: 1 minute"))
    env = env_for(db_url)
    daemon = start_daemon(home, env)
    try:
        assert wait_for(lambda: "event=started" in (home / "daemon.log").read_text(), 30)
        drop(home / "inbox", "tuesday.csv", rows("R-7"))
        # noticed within two looks of a second, planned at once (not at the next poll)
        assert wait_for(lambda: drafts(home), 30), (home / "daemon.log").read_text()
        assert list((home / "inbox").glob("*.csv")) == []
        assert len(list((home / "inbox" / "imported").glob("*-tuesday.csv"))) == 1
        log = (home / "daemon.log").read_text()
        assert 'event="source file" source=exports' in log and "added=1" in log
        assert not any(value in log for value in SAMPLE_PATIENT_VALUES)
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


# --- sql ---------------------------------------------------------------------------------


SQL = """  - name: ehr
    kind: sql
    table: referrals
    url: ${EHR_DATABASE_URL}
    query: "{query}"
    every: 1 minute
"""
SELECT = (
    "SELECT ref, received AS received_on, doctor AS physician, email AS physician_email, "
    "client AS client_name, released AS release_on_file, changed_at FROM referral_log"
)


def ehr_database(url: str) -> sa.Engine:
    """The practice's own database: a referral log with its own column names."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE referral_log (ref TEXT, received DATE, doctor TEXT, email TEXT, "
                "client TEXT, released BOOLEAN, changed_at TIMESTAMP)"
            )
        )
    return engine


def log_referral(engine: sa.Engine, ref: str, changed_at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO referral_log VALUES (:r, :d, :p, :e, :c, :y, :t)"),
            {
                "r": ref,
                "d": date.today() - timedelta(days=7),
                "p": "Dr. Ann Lee",
                "e": "ann@lee.example",
                "c": "Avery Quinlan",
                "y": True,
                "t": changed_at,
            },
        )


@pytest.fixture(params=["sqlite", "postgres"])
def ehr_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ehr.sqlite3'}"
    return request.getfixturevalue("postgres_url")


def test_an_sql_source_reads_its_rows_then_only_those_changed(cli, home, ehr_url):
    ehr = ehr_database(ehr_url)
    log_referral(ehr, "E-1", datetime(2026, 11, 30, 9))
    log_referral(ehr, "E-2", datetime(2026, 11, 30, 10))
    add_source(home, SQL.replace("{query}", SELECT) + "    changed_column: changed_at\n")
    env = {"EHR_DATABASE_URL": ehr_url}
    first = cli("sources", "read", "ehr", env=env)
    assert first.stdout.strip() == "ehr: 2 rows: added 2, updated 0, unchanged 0, rejected 0"
    again = cli("sources", "read", "ehr", env=env)  # the newest moment is read again
    assert again.stdout.strip() == "ehr: 1 row: added 0, updated 0, unchanged 1, rejected 0"
    log_referral(ehr, "E-3", datetime(2026, 11, 30, 10))  # the same moment as E-2: not lost
    log_referral(ehr, "E-4", datetime(2026, 11, 30, 11))
    third = cli("sources", "read", "ehr", env=env)
    assert third.stdout.strip() == "ehr: 3 rows: added 2, updated 0, unchanged 1, rejected 0"
    listing = cli("sources", env=env).stdout
    assert "${EHR_DATABASE_URL}" in listing and "Avery" not in listing
    ehr.dispose()
    assert cli("run", "--once", env=env).stdout.startswith("made 4 drafts")


def test_an_sql_source_is_read_in_a_read_only_transaction(cli, home, ehr_url):
    ehr = ehr_database(ehr_url)
    log_referral(ehr, "E-1", datetime(2026, 11, 30, 9))
    add_source(home, SQL.replace("{query}", "DELETE FROM referral_log RETURNING ref"))
    ran = cli("sources", "read", "ehr", env={"EHR_DATABASE_URL": ehr_url})
    assert ran.code == 1 and "ehr: cannot be read: " in ran.stdout
    assert "the query failed" in ran.stdout
    with ehr.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM referral_log")).scalar() == 1
    ehr.dispose()


def test_a_database_password_stays_out_of_followupd_yaml(cli, home):
    add_source(
        home,
        SQL.replace("${EHR_DATABASE_URL}", "postgresql://ehr:s3cret@db.example/ehr").replace(
            "{query}", "SELECT 1"
        ),
    )
    ran = cli("check")
    assert ran.code == 2 and "url: holds a password: write url: ${NAME}" in ran.stderr
    assert "s3cret" not in ran.stderr


def test_an_unset_url_variable_says_which(cli, home):
    add_source(home, SQL.replace("{query}", SELECT))
    ran = cli("sources", "read", "ehr")
    assert ran.code == 1
    assert "EHR_DATABASE_URL is not set (put the database URL in .env as" in ran.stdout
    assert "EHR_DATABASE_URL is not set" in cli("sources").stdout


@pytest.mark.slow  # a read every 10 seconds (the least an SQL source may ask): 10-30 s
def test_the_daemon_drafts_a_row_added_to_the_database_within_one_every(home, db_url, tmp_path):
    ehr_url = f"sqlite:///{tmp_path / 'ehr.sqlite3'}"
    ehr = ehr_database(ehr_url)
    add_source(home, SQL.replace("{query}", SELECT).replace("every: 1 minute", "every: 10 seconds"))
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("poll: 5 minutes", "poll: 1 minute"))
    daemon = start_daemon(home, env_for(db_url, EHR_DATABASE_URL=ehr_url))
    try:
        assert wait_for(lambda: "event=started" in (home / "daemon.log").read_text(), 30)
        log_referral(ehr, "E-9", datetime(2026, 11, 30, 9))
        # one `every` (10 s) plus a tick, with room for a loaded machine
        assert wait_for(lambda: drafts(home), 40), (home / "daemon.log").read_text()
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        ehr.dispose()


def test_a_column_gone_from_the_query_fails_that_source_alone_naming_it(cli, home, tmp_path):
    ehr_url = f"sqlite:///{tmp_path / 'ehr.sqlite3'}"
    ehr = ehr_database(ehr_url)
    log_referral(ehr, "E-1", datetime(2026, 11, 30, 9))
    ehr.dispose()
    add_source(home, SQL.replace("{query}", SELECT.replace("ref, ", "ref AS referral, ")) + FOLDER)
    drop(home / "inbox", "monday.csv", rows("R-1"))
    ran = cli("sources", "read", env={"EHR_DATABASE_URL": ehr_url})
    assert ran.code == 1
    assert "ehr: cannot be read: ehr: required column ref missing from the header" in ran.stdout
    assert "exports: monday.csv: added 1" in ran.stdout  # the other source went on


def test_a_second_statement_in_the_query_cannot_run(cli, home, ehr_url):
    """`SELECT ...; COMMIT; DELETE ...` once ended the read-only transaction and deleted."""
    ehr = ehr_database(ehr_url)
    log_referral(ehr, "E-1", datetime(2026, 11, 30, 9))
    add_source(home, SQL.replace("{query}", SELECT + "; COMMIT; DELETE FROM referral_log"))
    ran = cli("sources", "read", "ehr", env={"EHR_DATABASE_URL": ehr_url})
    assert ran.code == 1 and "the query failed" in ran.stdout
    with ehr.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM referral_log")).scalar() == 1
    ehr.dispose()


def test_a_password_passed_as_a_url_parameter_is_refused_and_never_shown(cli, home):
    url = "postgresql+psycopg://ehr@127.0.0.1:1/ehr?password=hunter2"
    add_source(home, SQL.replace("${EHR_DATABASE_URL}", url).replace("{query}", "SELECT 1"))
    ran = cli("check")
    assert ran.code == 2 and "holds a password" in ran.stderr and "hunter2" not in ran.stderr
    config = home / "followupd.yaml"  # from the environment it is allowed, and masked
    config.write_text(config.read_text().replace(url, "${EHR_DATABASE_URL}"))
    ran = cli("sources", "read", "ehr", env={"EHR_DATABASE_URL": url})
    assert "password=***" in ran.stdout and "hunter2" not in ran.stdout + ran.stderr
    assert "hunter2" not in cli("sources", env={"EHR_DATABASE_URL": url}).stdout


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ('      client_dbo: "Birth date"\n', "columns: client_dbo is not a column of referrals"),
        (
            '      physician: "Doctor"\n      practice: "doctor"\n',
            'their header "doctor" is mapped to two of our columns',
        ),
    ],
    ids=["typo", "twice"],
)
def test_a_column_mapping_names_our_columns_once_each(cli, home, columns, problem):
    add_source(home, FOLDER + columns)
    ran = cli("check")
    assert ran.code == 2 and problem in ran.stderr, ran.stderr


def test_files_are_imported_oldest_first(cli, home):
    """A later export's release wins over an earlier one's, whatever their names."""
    inbox = home / "inbox"
    add_source(home, FOLDER.replace("    columns:", "    columns:\n      release_on: Signed"))
    head = "Referral #,Date received,physician,physician_email,Client,release_on_file,Signed\n"
    later = drop(inbox, "export-10.csv", head + f"R-1,{WEEK_AGO},Dr. Ann Lee,ann@lee.example,"
                 f"Avery Quinlan,yes,{WEEK_AGO}\n")  # fmt: skip
    earlier = drop(inbox, "export-9.csv", head + f"R-1,{WEEK_AGO},Dr. Ann Lee,ann@lee.example,"
                   "Avery Quinlan,no,\n")  # fmt: skip
    os.utime(earlier, ns=(later.stat().st_mtime_ns - 60 * 10**9,) * 2)
    assert cli("sources", "read").code == 0
    assert cli("run", "--once").stdout.startswith("made 1 draft")  # released: the later file


def test_a_file_changed_or_touched_moments_ago_waits():
    from followupd.sources import SETTLE_NS, settled

    now = {"a.csv": (10, 5 * SETTLE_NS), "b.csv": (10, 9 * SETTLE_NS), "c.csv": (11, SETTLE_NS)}
    before = {"a.csv": (10, 5 * SETTLE_NS), "b.csv": (10, 9 * SETTLE_NS), "c.csv": (10, SETTLE_NS)}
    assert settled(now, before, at_ns=9 * SETTLE_NS + 1) == ["a.csv"]  # b: too fresh; c: grew
    assert settled(now, before, at_ns=10 * SETTLE_NS) == ["a.csv", "b.csv"]  # oldest first


def test_a_file_that_cannot_be_moved_is_not_imported_again_by_the_daemon(home, db_url, tmp_path):
    from followupd import config as configuration
    from followupd.sources import Watcher
    from followupd.store import Store

    add_source(home, FOLDER)
    inbox = home / "inbox"
    drop(inbox, "a.csv", rows("R-1"))
    (inbox / "imported").write_text("not a folder")  # moving into it fails
    os.utime(inbox / "a.csv", ns=(0, 0))
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(settings.database_url)
    [source] = settings.config.sources
    watcher = Watcher(settings, store)
    watcher.look_only(source)
    [outcome] = watcher.read(source).files
    assert outcome.report.counts.added == 1 and "could not be moved" in outcome.refused
    assert watcher.read(source).files == []  # the daemon's next look leaves it alone
    store.close()


# --- google_sheet ------------------------------------------------------------------------

SHEET_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
SHEET = f"""  - name: intake-sheet
    kind: google_sheet
    table: referrals
    spreadsheet: https://docs.google.com/spreadsheets/d/{SHEET_ID}/edit#gid=0
    range: "Referrals!A1:Z"
    every: 1 minute
    columns:
      ref: "Referral #"
      received_on: "Date received"
      client_name: "Client"
"""
SHEET_HEADER = [
    "Referral #",
    "Date received",
    "physician",
    "physician_email",
    "Client",
    "release_on_file",
]


def sheet_row(ref: str) -> list[str]:
    return [ref, WEEK_AGO, "Dr. Ann Lee", "ann@lee.example", "Avery Quinlan", "yes"]


@pytest.fixture
def sheets(home):
    """The test server holding the practice's intake sheet; the home signed in to it."""
    from google_server import running_server
    from test_google import write_token

    with running_server() as server:
        server.put_sheet(SHEET_ID, "Referrals", [SHEET_HEADER, sheet_row("S-1"), sheet_row("S-2")])
        write_token(home, token_uri=f"{server.base_url}/token")
        os.chmod(home / "google-token.json", 0o600)
        yield server, {"FOLLOWUPD_GOOGLE_API_ENDPOINT": server.sheets_endpoint}


def test_a_google_sheet_is_read_through_the_sheets_api(cli, home, sheets):
    server, env = sheets
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert ran.stdout.strip() == (
        "intake-sheet: 2 rows: added 2, updated 0, unchanged 0, rejected 0"
    ), ran.stdout + ran.stderr
    server.append_row(SHEET_ID, "Referrals", sheet_row("S-3"))
    again = cli("sources", "read", env=env)
    assert again.stdout.strip() == (
        "intake-sheet: 3 rows: added 1, updated 0, unchanged 2, rejected 0"
    )
    assert cli("run", "--once", env=env).stdout.startswith("made 3 drafts")


def test_a_renamed_tab_fails_that_source_alone_and_says_so(cli, home, sheets):
    server, env = sheets
    add_source(home, SHEET + FOLDER)
    server.rename_tab(SHEET_ID, "Referrals", "Intake 2026")
    drop(home / "inbox", "monday.csv", rows("R-1"))
    ran = cli("sources", "read", env=env)
    assert ran.code == 1
    assert (
        "intake-sheet: cannot be read: the range Referrals!A1:Z cannot be read (a renamed or "
        "deleted tab?)"
    ) in ran.stdout
    assert "exports: monday.csv: added 1" in ran.stdout
    assert "last error: the range Referrals!A1:Z cannot be read" in cli("sources", env=env).stdout


def test_a_spreadsheet_not_found_or_google_unreachable_says_what_to_do(cli, home, sheets):
    _, env = sheets
    add_source(home, SHEET.replace(SHEET_ID, "1ZzZzZzZzZzZzZzZzZzZzZz"))
    ran = cli("sources", "read", env=env)
    assert "intake-sheet: cannot be read: no such spreadsheet: check the id" in ran.stdout
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    ran = cli("sources", "read", env={"FOLLOWUPD_GOOGLE_API_ENDPOINT": nowhere})
    assert "intake-sheet: cannot be read: Google could not be reached (connection refused)" in (
        ran.stdout
    )


def test_a_spreadsheet_that_is_no_id_is_refused(cli, home):
    add_source(
        home,
        SHEET.replace(f"https://docs.google.com/spreadsheets/d/{SHEET_ID}/edit#gid=0", "my sheet"),
    )
    ran = cli("check")
    assert ran.code == 2 and "is neither a spreadsheet id nor a Google Sheets URL" in ran.stderr


def test_signing_in_asks_for_the_spreadsheets_scope_only_with_a_sheet_source(home):
    from followupd import config as configuration
    from followupd.delivery.googleapi import SCOPE_SHEETS_READ, scopes, wants_sheets

    assert not wants_sheets(configuration.load(home, environ={}))
    add_source(home, SHEET)
    settings = configuration.load(home, environ={})
    assert wants_sheets(settings)
    assert SCOPE_SHEETS_READ in scopes(settings.config.google.read_scope, wants_sheets(settings))


@pytest.mark.slow  # a sheet is read at most once a minute: 60-90 s
# One database: the wait is the sheet's `every`, and the import is the same on both (the
# other sheet tests run on each).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_daemon_drafts_a_referral_added_to_the_sheet_within_one_every(home, db_url, sheets):
    server, env = sheets
    add_source(home, SHEET)
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("poll: 5 minutes", "poll: 10 minutes"))
    daemon = start_daemon(home, env_for(db_url, **env))
    try:
        assert wait_for(lambda: len(drafts(home)) == 2, 60), (home / "daemon.log").read_text()
        server.append_row(SHEET_ID, "Referrals", sheet_row("S-9"))
        added = time.monotonic()
        # read once a minute, then planned at once: one `every` plus seconds (bench: figures)
        assert wait_for(lambda: len(drafts(home)) == 3, 90), (home / "daemon.log").read_text()
        assert time.monotonic() - added < 90
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


# --- check and health ----------------------------------------------------------------------


def test_check_reads_each_source_and_names_a_missing_column(cli, home, tmp_path, sheets):
    _, env = sheets
    ehr_url = f"sqlite:///{tmp_path / 'ehr.sqlite3'}"
    ehr_database(ehr_url).dispose()
    env = {**env, "EHR_DATABASE_URL": ehr_url}
    add_source(home, SHEET + FOLDER + SQL.replace("{query}", SELECT))
    ran = cli("check", env=env)
    assert ran.code == 0, ran.stderr
    assert (
        "source intake-sheet: can be read; its header names followupd's columns (2 rows now)"
        in ran.stdout
    )
    assert "source ehr: can be read; its header names followupd's columns" in ran.stdout
    assert "source exports: " in ran.stdout and "made on the first read" in ran.stdout
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("SELECT ref, ", "SELECT ref AS referral, "))
    ran = cli("check", env=env)
    assert ran.code == 2
    assert "source ehr: ehr: required column ref missing from the header" in ran.stderr


def test_health_says_which_source_cannot_be_read(cli, home, sheets):
    server, env = sheets
    add_source(home, SHEET)
    cli("run", "--once", env=env)
    server.rename_tab(SHEET_ID, "Referrals", "Intake")
    cli("sources", "read", env=env)
    shown = cli("health", env=env).stdout
    assert "source intake-sheet: cannot be read: the range Referrals!A1:Z cannot be read" in shown


def test_a_row_that_leaves_the_sheet_holds_its_notes_until_it_returns(cli, home, sheets):
    """Not deleted: its referral is marked gone, its pending note held saying why; the row
    back in the sheet, the note goes."""
    server, env = sheets
    add_source(home, SHEET)
    config = home / "followupd.yaml"  # the acknowledgement due in a week: still pending
    config.write_text(config.read_text().replace("after: 1 business day", "after: 10 days", 1))
    assert cli("sources", "read", env=env).code == 0
    cli("run", "--once", env=env)
    server.delete_row(SHEET_ID, "Referrals", 3)  # S-2 (row 1 is the header)
    assert cli("sources", "read", env=env).stdout.strip().startswith("intake-sheet: 1 row")
    cli("run", "--once", env=env)
    held = cli("status", "--json", "--state", "held", env=env).stdout.splitlines()
    [row] = [json.loads(line) for line in held]
    assert row["reason"].startswith("gone from source intake-sheet since ")
    assert "S-2" not in row["reason"] and "Avery" not in row["reason"]
    [kept] = [json.loads(x) for x in cli("referral", "list", "--json", env=env).stdout.splitlines()
              if json.loads(x)["ref"] == "S-2"]  # fmt: skip
    assert kept  # the referral itself is still there
    server.append_row(SHEET_ID, "Referrals", sheet_row("S-2"))
    assert "updated 1" in cli("sources", "read", env=env).stdout
    cli("run", "--once", env=env)
    assert cli("status", "--json", "--state", "held", env=env).stdout.strip() == ""


# --- dates as the sheet shows them ---------------------------------------------------------


def received(cli, env) -> dict[str, str]:
    listed = cli("referral", "list", "--json", env=env).stdout.splitlines()
    return {row["ref"]: row["received"] for row in map(json.loads, listed)}


def dated_row(ref: str, when) -> list:
    return [ref, when, "Dr. Ann Lee", "ann@lee.example", "Avery Quinlan", "yes"]


def test_dates_are_read_in_the_spreadsheets_locale_and_the_read_says_how(cli, home, sheets):
    """A date cell shows as the locale writes it (en_US: 11/3/2026); typed text, a serial
    number and a month's name are read the way the sheet reads them."""
    server, env = sheets
    server.put_sheet(
        SHEET_ID,
        "Referrals",
        [
            SHEET_HEADER,
            dated_row("D-1", date(2026, 11, 3)),  # a date cell, shown 11/3/2026
            dated_row("D-2", "11/4/2026"),  # typed as text
            dated_row("D-3", 46331),  # a date cell formatted as a number: 2026-11-05
            dated_row("D-4", "Nov 6, 2026"),
            dated_row("D-5", "2026-11-07"),
        ],
        locale="en_US",
    )
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert (
        "intake-sheet: note: dates such as 11/3/2026 were read month first (November 3, "
        "2026), as the spreadsheet's locale (en_US) writes them"
    ) in ran.stdout
    assert received(cli, env) == {
        "D-1": "2026-11-03",
        "D-2": "2026-11-04",
        "D-3": "2026-11-05",
        "D-4": "2026-11-06",
        "D-5": "2026-11-07",
    }
    assert "note: dates such as 11/3/2026" in cli("sources", env=env).stdout


def test_a_day_first_spreadsheet_reads_its_dates_day_first(cli, home, sheets):
    server, env = sheets
    server.put_sheet(
        SHEET_ID,
        "Referrals",
        [SHEET_HEADER, dated_row("G-1", date(2026, 11, 3)), dated_row("G-2", "4/11/2026")],
        locale="en_GB",
    )
    add_source(home, SHEET)
    assert "read day first" in cli("sources", "read", env=env).stdout
    assert received(cli, env) == {"G-1": "2026-11-03", "G-2": "2026-11-04"}


def test_a_date_the_locale_cannot_have_written_is_refused_naming_row_and_column(cli, home, sheets):
    server, env = sheets
    server.put_sheet(
        SHEET_ID,
        "Referrals",
        [SHEET_HEADER, dated_row("U-1", "13/3/2026"), dated_row("U-2", "3/12/2026")],
        locale="en_US",
    )
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert ran.code == 1
    assert (
        "intake-sheet: rejected: line 2, column received_on: is not a calendar date as the "
        "spreadsheet's locale (en_US) writes dates (month first); write it as YYYY-MM-DD"
    ) in ran.stdout
    assert "13/3" not in ran.stdout + ran.stderr
    assert received(cli, env) == {"U-2": "2026-03-12"}


def test_a_date_that_could_be_either_way_is_ambiguous_when_the_locale_is_unknown(cli, home, sheets):
    """Without the spreadsheet's locale (its properties cannot be read now), 3/11/2026 is
    refused as ambiguous rather than guessed; 13/11/2026 can only be one day."""
    server, env = sheets
    server.put_sheet(
        SHEET_ID,
        "Referrals",
        [SHEET_HEADER, dated_row("A-1", "3/11/2026"), dated_row("A-2", "13/11/2026")],
    )
    server.inject("spreadsheets.get", "500", times=10)
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert (
        "line 2, column received_on: is ambiguous: it could be day or month first, and the "
        "spreadsheet's locale (not given) does not say which; write it as YYYY-MM-DD"
    ) in ran.stdout
    assert received(cli, env) == {"A-2": "2026-11-13"}


def test_iso_dates_need_no_locale_and_cost_no_extra_request(cli, home, sheets):
    server, env = sheets
    add_source(home, SHEET)
    assert cli("sources", "read", env=env).code == 0
    assert server.stats.count("spreadsheets.get") == 0
    assert server.stats.count("spreadsheets.values.get") == 1


def test_sheet_reads_keep_to_the_pace_of_the_users_quota(cli, home, sheets, monkeypatch):
    """Every Sheets request of a home takes from one bucket (its Google user's quota):
    ten at once, then SHEETS_PER_MINUTE less the burst a minute; time is simulated."""
    from followupd import sources
    from followupd.pacing import TokenBucket

    server, env = sheets
    now, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pace = TokenBucket(sources.SHEETS_PER_MINUTE, burst=10, clock=lambda: now[0], sleep=sleep)
    monkeypatch.setitem(sources._paces, (str(home), "read"), pace)
    server.rate_limit("sheets", 60)
    add_source(home, SHEET)
    for _ in range(14):
        assert cli("sources", "read", env=env).code == 0
    assert server.stats.rate_limited == 0
    refill = (sources.SHEETS_PER_MINUTE - 10) / 60  # a second
    assert sum(slept) == pytest.approx(4 / refill, rel=0.05)


# --- a failing source backs off -------------------------------------------------------------


def test_a_failing_source_waits_longer_before_each_try_up_to_a_cap():
    from followupd.sources import RETRY_CAP, retry_delay

    assert [retry_delay(10, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert retry_delay(60, 20) == RETRY_CAP
    assert retry_delay(3600, 5) == 3600  # never sooner than its own pace


@pytest.mark.slow
def test_the_daemon_backs_off_a_source_that_cannot_be_read(home, db_url):
    """An SQL source whose URL variable is unset: retried after 10 s, then 20 s; the
    log says when, and nothing else stops."""
    add_source(home, SQL.replace("{query}", SELECT).replace("every: 1 minute", "every: 10 seconds"))
    daemon = start_daemon(home, env_for(db_url))
    log = home / "daemon.log"
    try:
        assert wait_for(lambda: "retry_in=20" in log.read_text(), 60), log.read_text()
        lines = [line for line in log.read_text().splitlines() if "cannot be read" in line]
        assert "retry_in=10" in lines[0] and "EHR_DATABASE_URL is not set" in lines[0]
        assert "retry_in=20" in lines[1]
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_a_sign_in_without_the_spreadsheets_scope_says_to_sign_in_again(cli, home, sheets):
    """The token was granted Gmail and Calendar only (before the sheet source was added):
    the refresh keeps to what was granted, and the sheet says to run `followupd auth`."""
    from followupd.delivery.googleapi import SCOPE_COMPOSE, SCOPE_EVENTS, TokenFile, scopes

    _, env = sheets
    token = home / "google-token.json"
    info = json.loads(token.read_text())
    token.write_text(json.dumps({**info, "scopes": [SCOPE_COMPOSE, SCOPE_EVENTS]}))
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert ran.code == 1
    assert (
        "intake-sheet: cannot be read: the Google sign-in does not allow reading spreadsheets "
        "yet: run `followupd auth` again"
    ) in ran.stdout
    loaded = TokenFile(token, scopes(False, "read"))
    assert loaded.credentials.scopes == [SCOPE_COMPOSE, SCOPE_EVENTS]  # what a refresh asks


def test_hostile_date_cells_are_rejected_by_row_and_column_and_the_rest_go_in(cli, home, sheets):
    """Huge numbers, a superscript digit, a year or a day typed in a date column: each row
    is rejected naming its row and column (never its value), and the good row goes in."""
    server, env = sheets
    bad = ["1/1/99999999999999999999", "Nov 99999999999999999999, 2026", "1/2/²", "2026", "12"]
    server.put_sheet(
        SHEET_ID,
        "Referrals",
        [SHEET_HEADER, dated_row("OK-1", "2026-11-03")]
        + [dated_row(f"H-{i}", cell) for i, cell in enumerate(bad)],
    )
    add_source(home, SHEET)
    ran = cli("sources", "read", env=env)
    assert ran.code == 1
    for line in range(3, 3 + len(bad)):
        assert f"rejected: line {line}, column received_on: " in ran.stdout
    assert "9999999" not in ran.stdout + ran.stderr and "²" not in ran.stdout + ran.stderr
    assert received(cli, env) == {"OK-1": "2026-11-03"}


def test_a_read_only_sign_in_still_reads_a_sheet_that_keeps_a_status_tab(cli, home, sheets):
    """write_status wants read and write; a sign-in that allows reading only still reads
    (the status tab says what it lacks)."""
    from followupd.delivery.googleapi import SCOPE_COMPOSE, SCOPE_EVENTS, SCOPE_SHEETS_READ

    _, env = sheets
    token = home / "google-token.json"
    granted = [SCOPE_COMPOSE, SCOPE_EVENTS, SCOPE_SHEETS_READ]
    token.write_text(json.dumps({**json.loads(token.read_text()), "scopes": granted}))
    add_source(
        home,
        SHEET.replace("    every: 1 minute\n", "    every: 1 minute\n    write_status: true\n"),
    )
    ran = cli("sources", "read", env=env)
    assert "intake-sheet: 2 rows: added 2" in ran.stdout, ran.stdout


def test_a_sheet_whose_status_tab_would_be_the_tab_it_reads_is_refused(cli, home):
    add_source(
        home,
        SHEET.replace("Referrals!A1:Z", "FollowUpD!A1:Z").replace(
            "    every: 1 minute\n", "    every: 1 minute\n    write_status: true\n"
        ),
    )
    ran = cli("check")
    assert ran.code == 2
    assert "range: the tab followupd is where write_status writes its status" in ran.stderr


def test_a_file_whose_name_is_not_utf8_waits_and_the_rest_are_imported(cli, home):
    inbox = home / "inbox"
    add_source(home, FOLDER)
    drop(inbox, "later.csv", rows("N-1"))
    bad = os.path.join(os.fsencode(inbox), b"caf\xe9.csv")
    with open(bad, "wb") as handle:
        handle.write(rows("N-2").encode())
    old = time.time_ns() - 60 * 10**9
    os.utime(inbox / "later.csv", ns=(old, old))
    ran = cli("sources", "read", "exports")
    assert "exports: later.csv: added 1" in ran.stdout, ran.stdout + ran.stderr
    assert os.path.exists(bad)
