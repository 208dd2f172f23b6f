"""Watched sources, first slice of issue 16: a folder of exports, read on its own.

A CSV file saved into the folder is imported once it has stopped changing, through the same
validation and upsert as `followupd import`, then moved to `imported/` beside a report that
names rows and columns, never a value; a file that cannot be read goes to `rejected/`.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import date, timedelta
from pathlib import Path

import pytest
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
            "  - name: a\n    kind: google_sheet\n    table: referrals\n    spreadsheet: x\n"
            "    range: A1:Z\n",
            "kind google_sheet is not read by this version of followupd yet",
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
    ids=["no-path", "foreign-key", "sheet-not-yet", "too-often", "twice"],
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
