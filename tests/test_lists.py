"""Finding things (issue 15): `physician list`, `referral list`, `visit list`, and `status`
filtered, limited and counted.

A new user could not list a physician, a referral or a visit, and `status` printed all
20,040 rows, could not filter, and said "nothing yet" for a state that does not exist. No list
shows a patient detail; `referral list --show-names` shows the client's name and nothing more.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import SAMPLE_PATIENT_VALUES
from followupd.commands.ledger import TERMINAL_LIMIT, row_limit
from followupd.records import REFERRAL_COLUMNS

TODAY = date.today()
OKAFOR = "Dr. Miriam Okafor"
LEE = "Dr. Ann Lee"


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def referral_row(ref: str, **changes: str) -> dict[str, str]:
    """A recent referral (older ones are a practice's history and make no note)."""
    row = {
        "ref": ref,
        "received_on": days_ago(3),
        "physician": OKAFOR,
        "physician_email": "m.okafor@lakeside-im.example",
        "specialty": "internal medicine",
        "practice": "Lakeside Internal Medicine",
        "client_name": "Avery Quinlan",
        "client_dob": "1984-03-09",
        "presenting_problem": "Panic attacks",
        "treatment_focus": "Low mood",
        "release_on_file": "yes",
    }
    return row | changes


def import_referrals(cli, path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REFERRAL_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    ran = cli("import", "referrals", str(path))
    assert ran.code == 0, ran.stderr


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def table_refs(text: str) -> list[str]:
    """The first cell of each table row: a ref or an id."""
    return re.findall(r"^│\s*(\S+)\s*│", text, flags=re.MULTILINE)


@pytest.fixture
def practice(cli, tmp_path):
    """Three referrals from two physicians (one closed, one naming a prescriber, one without
    a release), a visit, and one tick."""
    rows = [
        referral_row("R-1", received_on=days_ago(10)),
        referral_row(
            "R-2",
            received_on=days_ago(5),
            closed_on=days_ago(1),
            closing_summary="Completed twelve sessions",
        ),
        referral_row(
            "R-3",
            physician=LEE,
            physician_email="ann.lee@northloop.example",
            practice="Northloop Family Practice",
            specialty="family medicine",
            release_on_file="no",
            prescriber="Dr. Sam Ortiz",
            prescriber_email="s.ortiz@northloop.example",
            prescriber_release_on_file="yes",
        ),
    ]
    import_referrals(cli, tmp_path / "referrals.csv", rows)
    ran = cli("visit", "add", "--practice", "Lakeside Internal Medicine", "--physician", OKAFOR)
    assert ran.code == 0, ran.stderr
    assert cli("run", "--once").code == 0


# --- referral list -----------------------------------------------------------------------------


def test_referral_list_shows_refs_physicians_releases_and_follow_up_states(cli, practice):
    ran = cli("referral", "list")
    assert ran.code == 0, ran.stderr
    assert table_refs(ran.stdout) == ["R-3", "R-2", "R-1"]  # newest first
    r3 = next(line for line in ran.stdout.splitlines() if "R-3" in line)
    assert LEE in r3 and "physician: not on file; prescriber: on file" in r3
    assert "held" in r3  # its acknowledgement waits for a release
    r2 = next(line for line in ran.stdout.splitlines() if "R-2" in line)
    assert days_ago(1) in r2 and "physician: on file" in r2 and "prescriber" not in r2
    assert ran.stdout.rstrip().endswith("3 referrals")
    records = {r["ref"]: r for r in json_lines(cli("referral", "list", "--json").stdout)}
    assert records["R-3"]["release"] is False and records["R-3"]["prescriber_release"] is True
    assert records["R-1"]["prescriber_release"] is None
    assert records["R-2"]["closed"] == days_ago(1) and records["R-1"]["closed"] is None
    assert records["R-1"]["physician"] == OKAFOR and records["R-1"]["received"] == days_ago(10)
    assert sum(records["R-3"]["follow_ups"].values()) >= 1
    assert "held" in records["R-3"]["follow_ups"]


def test_lists_and_status_never_show_a_patient_detail(cli, practice):
    outputs = [
        cli(*args)
        for args in (
            ("referral", "list"),
            ("referral", "list", "--json"),
            ("referral", "list", "--closed", "--json"),
            ("physician", "list"),
            ("physician", "list", "--json"),
            ("visit", "list", "--json"),
            ("status",),
            ("status", "--ref", "R-1", "--json"),
        )
    ]
    for ran in outputs:
        assert ran.code == 0, ran.stderr
        for value in (*SAMPLE_PATIENT_VALUES, "Completed twelve sessions"):
            assert value not in ran.stdout + ran.stderr


def test_show_names_adds_the_client_name_and_nothing_more(cli, tmp_path):
    name, dob, problem, focus = "Harriet Vandermolen", "1970-05-04", "Insomnia", "CBT-I"
    row = referral_row(
        "R-9",
        client_name=name,
        client_dob=dob,
        presenting_problem=problem,
        treatment_focus=focus,
        closed_on=days_ago(1),
        closing_summary="Discharged well",
    )
    import_referrals(cli, tmp_path / "r.csv", [row])
    plain = cli("referral", "list")
    assert name not in plain.stdout and "client" not in plain.stdout
    assert plain.stdout.rstrip().endswith("\n1 referral")
    assert name not in cli("referral", "list", "--json").stdout
    for args in (("--show-names",), ("--show-names", "--json")):
        shown = cli("referral", "list", *args)
        assert shown.code == 0 and name in shown.stdout
        for value in (dob, problem, focus, "Discharged well"):
            assert value not in shown.stdout
    [record] = json_lines(cli("referral", "list", "--show-names", "--json").stdout)
    assert record["client"] == name


def test_referral_list_filters_open_closed_physician_and_since(cli, practice):
    def refs(*args: str) -> list[str]:
        ran = cli("referral", "list", "--json", *args)
        assert ran.code == 0, ran.stderr
        return [r["ref"] for r in json_lines(ran.stdout)]

    assert refs("--open") == ["R-3", "R-1"]
    assert refs("--closed") == ["R-2"]
    assert refs("--physician", "okafor") == ["R-2", "R-1"]  # any case, part of the name
    assert refs("--physician", "ann LEE") == ["R-3"]
    assert refs("--physician", "%") == []  # taken literally
    assert refs("--since", days_ago(5)) == ["R-3", "R-2"]
    assert refs("--open", "--physician", "Okafor", "--since", days_ago(30)) == ["R-1"]
    bad = cli("referral", "list", "--since", "last week")
    assert bad.code == 2 and bad.stderr.startswith("--since: ")


def test_a_ref_that_looks_like_markup_is_printed_as_it_is(cli, tmp_path):
    rows = [referral_row("R-[/]", release_on_file="no"), referral_row("[bold]7")]
    import_referrals(cli, tmp_path / "r.csv", rows)
    assert cli("run", "--once").code == 0
    listed = cli("referral", "list")
    assert listed.code == 0 and "R-[/]" in listed.stdout and "[bold]7" in listed.stdout
    ledger = cli("status", "--ref", "R-[/]")  # held: its reason names the referral
    assert ledger.code == 0 and "for referral R-[/]" in ledger.stdout


# --- physician list, visit list ----------------------------------------------------------------


def test_physician_list_counts_referrals_and_says_which_address_waits(cli, practice, tmp_path):
    changed = "m.okafor@1akeside-im.example"
    import_referrals(cli, tmp_path / "b.csv", [referral_row("R-4", physician_email=changed)])
    ran = cli("physician", "list")
    assert ran.code == 0, ran.stderr
    okafor = next(line for line in ran.stdout.splitlines() if OKAFOR in line)
    assert "Lakeside Internal Medicine" in okafor and changed in okafor and "waits" in okafor
    records = {r["name"]: r for r in json_lines(cli("physician", "list", "--json").stdout)}
    assert records[OKAFOR]["referrals"] == 3 and records[LEE]["referrals"] == 1
    assert records[OKAFOR]["needs_confirm"] is True and records[LEE]["needs_confirm"] is False
    assert records["Dr. Sam Ortiz"]["referrals"] == 0  # a prescriber, who referred no one
    assert records[LEE]["email"] == "ann.lee@northloop.example"
    assert records[LEE]["specialty"] == "family medicine"
    waiting = json_lines(cli("physician", "list", "--unconfirmed", "--json").stdout)
    assert [r["name"] for r in waiting] == [OKAFOR]
    assert cli("physician", "confirm", str(records[OKAFOR]["id"])).code == 0
    assert cli("physician", "list", "--unconfirmed").stdout.strip() == "0 physicians"


def test_visit_list_shows_date_office_physician_cards_and_handouts(cli):
    for day, office, cards in (
        (days_ago(20), "Northloop Family Practice", "4"),
        (days_ago(2), "Lakeside Internal Medicine", "12"),
    ):
        args = ("visit", "add", "--practice", office, "--on", day, "--cards", cards)
        assert cli(*args, "--handouts", "3").code == 0
    ran = cli("visit", "list")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.rstrip().endswith("2 visits")
    lines = ran.stdout.splitlines()
    assert lines.index(next(x for x in lines if "Lakeside" in x)) < lines.index(
        next(x for x in lines if "Northloop" in x)
    )  # newest first
    records = json_lines(cli("visit", "list", "--json").stdout)
    assert [(r["date"], r["cards"], r["handouts"]) for r in records] == [
        (days_ago(2), 12, 3),
        (days_ago(20), 4, 3),
    ]
    assert [
        r["practice"]
        for r in json_lines(cli("visit", "list", "--json", "--practice", "north").stdout)
    ] == ["Northloop Family Practice"]
    assert len(json_lines(cli("visit", "list", "--json", "--since", days_ago(5)).stdout)) == 1


def test_lists_on_a_new_home_say_there_is_nothing(cli):
    for group, noun in (
        ("physician", "physicians"),
        ("referral", "referrals"),
        ("visit", "visits"),
    ):
        ran = cli(group, "list")
        assert ran.code == 0 and ran.stdout.strip() == f"0 {noun}", ran.stdout
        assert cli(group, "list", "--json").stdout == ""


def test_every_list_has_a_limit_and_says_what_it_left_out(cli, tmp_path):
    rows = [referral_row(f"R-{n}", received_on=days_ago(n % 5)) for n in range(1, 8)]
    rows[0] |= {"physician": LEE, "physician_email": "ann.lee@northloop.example"}
    import_referrals(cli, tmp_path / "r.csv", rows)
    ran = cli("referral", "list", "--limit", "3")
    assert len(table_refs(ran.stdout)) == 3
    assert ran.stdout.rstrip().endswith("showing 3 of 7 referrals; --limit 0 for all")
    assert len(table_refs(cli("referral", "list", "--limit", "0").stdout)) == 7
    cut = cli("referral", "list", "--json", "--limit", "2")
    assert len(json_lines(cut.stdout)) == 2 and "showing 2 of 7" in cut.stderr
    assert "showing 1 of 2 physicians" in cli("physician", "list", "--limit", "1").stdout
    assert cli("physician", "list", "--limit", "-1").code == 2


def test_the_default_limit_is_a_screenful_on_a_terminal_and_all_when_piped(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert row_limit(None) is None  # piped (as under the test runner): all
    assert row_limit(0) is None and row_limit(7) == 7
    monkeypatch.setattr("sys.stdout", Terminal())
    assert row_limit(None) == TERMINAL_LIMIT == 50
    assert row_limit(0) is None and row_limit(120) == 120


# --- status ------------------------------------------------------------------------------------


def test_status_refuses_a_state_or_rule_that_does_not_exist(cli, practice):
    ran = cli("status", "--state", "bogus")
    assert ran.code == 2 and ran.stdout == ""
    assert ran.stderr.startswith("--state: 'bogus' is not one of: planned, held,")
    assert "failed" in ran.stderr
    ran = cli("status", "--state", "held", "--rule", "acknowledgement")
    assert ran.code == 2 and "--rule: 'acknowledgement' is not one of:" in ran.stderr
    assert "referral-acknowledgement" in ran.stderr and "office-revisit" in ran.stderr
    ran = cli("status", "--since", "2026-02-30")
    assert ran.code == 2 and ran.stderr.startswith("--since: ")
    ran = cli("status", "--ref", "R-404")
    assert ran.code == 1 and "no referral R-404" in ran.stderr
    assert cli("status", "--json", "--state", "bogus").code == 2


def test_status_filters_by_state_rule_ref_and_since(cli, practice):
    def shown(*args: str) -> list[dict]:
        ran = cli("status", "--json", *args)
        assert ran.code == 0, ran.stderr
        return json_lines(ran.stdout)

    everything = shown()
    assert len(everything) >= 4
    held = shown("--state", "held")
    assert held and {r["state"] for r in held} == {"held"}
    several = shown("--state", "held", "--state", "done")
    assert {r["state"] for r in several} <= {"held", "done"} and len(several) > len(held)
    reminders = shown("--rule", "office-revisit")
    assert [r["kind"] for r in reminders] == ["reminder"]
    assert [r["rule"] for r in shown("--ref", "R-1")] == ["referral-acknowledgement"]
    assert [r["rule"] for r in shown("--ref", " R-2 ")] == ["closing-note"]  # closed: no ack
    later = shown("--since", (TODAY + timedelta(days=7)).isoformat())
    assert [r["rule"] for r in later] == ["office-revisit"]  # its reminder is a month out
    assert shown("--rule", "office-revisit", "--state", "held") == []


def test_status_is_in_the_order_of_its_when_column_and_counts_what_matched(cli, practice):
    ran = cli("status")
    assert ran.code == 0, ran.stderr
    whens = re.findall(r"│ (\d{4}-\d\d-\d\d \d\d:\d\d) │", ran.stdout)
    assert len(whens) >= 4 and whens == sorted(whens)
    # the reminder was due (made) days ago, but is shown, and so sorted, at its time a
    # month away: after the notes due since
    rows = [line for line in ran.stdout.splitlines() if line.startswith("│")]
    assert "office-revisit" in rows[-1]
    total = len(json_lines(cli("status", "--json").stdout))
    count_line = ran.stdout.rstrip().splitlines()[-1]
    assert count_line.startswith(f"{total} of {total} follow-ups shown: ")
    one = cli("status", "--state", "held", "--limit", "1").stdout.rstrip().splitlines()[-1]
    held = len(json_lines(cli("status", "--json", "--state", "held").stdout))
    assert one.startswith(f"1 of {total} follow-ups shown")
    assert one.endswith(f": {held} held")
    if held > 1:
        assert f"({held} match; --limit 0 for all)" in one


def test_status_with_a_limit_shows_the_first_rows_and_says_how_many_more(cli, tmp_path):
    rows = [referral_row(f"R-{n}", received_on=TODAY.isoformat()) for n in range(1, 61)]
    import_referrals(cli, tmp_path / "r.csv", rows)
    assert cli("run", "--once").code == 0
    piped = cli("status")  # not a terminal: every row
    assert len(re.findall(r"│ referral-acknowledgement", piped.stdout)) == 60
    assert piped.stdout.rstrip().endswith("60 of 60 follow-ups shown: 60 planned")
    cut = cli("status", "--limit", "50")
    assert len(re.findall(r"│ referral-acknowledgement", cut.stdout)) == 50
    assert cut.stdout.rstrip().endswith("50 of 60 follow-ups shown (--limit 0 for all): 60 planned")
    listed = cli("status", "--json", "--limit", "5")
    assert len(json_lines(listed.stdout)) == 5 and "showing 5 of 60" in listed.stderr


def test_status_on_an_empty_ledger_says_so(cli):
    ran = cli("status")
    assert ran.code == 0 and ran.stdout.startswith("nothing yet")
