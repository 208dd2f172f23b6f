"""Physicians found as a person means them, and the commands that fix data entered by mistake.

Issue 15: a referral naming "Dr. Ann Lee" without her practice made a second Dr. Ann Lee with
no address, and the note was held. These tests are what a practice relies on instead.
"""

from __future__ import annotations

import csv
from datetime import date, timedelta
from email import message_from_bytes
from email.utils import parseaddr

import sqlalchemy as sa

from followupd.commands import entry
from followupd.models import FollowUp, Physician, Referral, Release, State, Visit
from followupd.records import REFERRAL_COLUMNS
from followupd.store import Store

CLIENT, DOB, PROBLEM = "Imogen Ashcroft", "1988-02-14", "Intrusive memories"
RECEIVED = (date.today() - timedelta(days=6)).isoformat()  # its acknowledgement is due now
ANN = ("--name", "Dr. Ann Lee", "--email", "ann@lee.example", "--practice", "Lee Clinic")
DR_LEE = ("--physician", "Dr. Ann Lee")


def rows(db_url, model, *where) -> list:
    store = Store(db_url)
    try:
        with store.session() as session:
            query = sa.select(model).where(*where).order_by(model.id)
            return list(session.execute(query).scalars())
    finally:
        store.close()


def execute(db_url, statement) -> None:
    store = Store(db_url)
    try:
        with store.session() as session:
            session.execute(statement)
    finally:
        store.close()


def add_referral(cli, ref: str, *options: str):
    return cli(
        "referral",
        "add",
        "--ref",
        ref,
        "--client-name",
        CLIENT,
        "--client-dob",
        DOB,
        "--problem",
        PROBLEM,
        "--received-on",
        RECEIVED,
        *options,
    )


def drafts_to(home) -> list[str]:
    """Whom the drafts in the outbox are addressed to."""
    return [
        parseaddr(message_from_bytes(path.read_bytes())["To"])[1]
        for path in sorted((home / "outbox" / "drafts").glob("*.eml"))
    ]


def no_patient_value(*texts: str) -> None:
    for text in texts:
        for value in (CLIENT, DOB, PROBLEM):
            assert value not in text


def write_csv(path, records: list[dict], columns) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return str(path)


# --- matching: a name without a practice ---------------------------------------------------------


def test_a_referral_naming_only_the_physician_goes_to_her_address(cli, db_url, home):
    assert cli("physician", "add", *ANN).code == 0
    ran = add_referral(cli, "R-1", "--physician", "Dr. Ann Lee", "--release")
    assert ran.code == 0, ran.stderr
    assert len(rows(db_url, Physician)) == 1
    assert cli("run", "--once").code == 0
    assert drafts_to(home) == ["ann@lee.example"]


def test_a_name_two_physicians_share_is_refused_naming_them_by_id_and_practice(cli, db_url):
    assert cli("physician", "add", *ANN).code == 0
    assert cli("physician", "add", "--name", "Dr. Ann Lee", "--practice", "North Clinic").code == 0
    ran = add_referral(cli, "R-1", "--physician", "dr. ann  lee")
    assert ran.code == 2
    assert ran.stderr == (
        '--physician: "dr. ann  lee" is 2 physicians: 1 (Lee Clinic), 2 (North Clinic); '
        "add --practice to say which\n"
    )
    no_patient_value(ran.stderr, ran.stdout)
    assert rows(db_url, Referral) == [] and len(rows(db_url, Physician)) == 2
    ran = add_referral(cli, "R-1", "--physician", "Dr. Ann Lee", "--practice", "North Clinic")
    assert ran.code == 0
    assert rows(db_url, Referral)[0].physician_id == 2
    ran = cli("physician", "add", "--name", "Dr. Ann Lee", "--fax", "555-0100")
    assert ran.code == 2 and ran.stderr.startswith('--name: "Dr. Ann Lee" is 2 physicians: 1 (')


def test_a_practice_given_later_is_the_physician_entered_without_one(cli, db_url, home):
    assert add_referral(cli, "R-1", "--physician", "Dr. Ann Lee", "--release").code == 0
    cli("run", "--once")
    assert rows(db_url, FollowUp)[0].state == State.held  # no address yet
    assert cli("physician", "add", *ANN).code == 0
    (physician,) = rows(db_url, Physician)
    assert physician.key == "dr. ann lee|lee clinic" and physician.email == "ann@lee.example"
    assert cli("run", "--once").code == 0
    assert drafts_to(home) == ["ann@lee.example"]
    # an office visit naming her there is the same physician, and so is a name alone again
    assert cli("visit", "add", "--practice", "lee clinic", "--physician", "Dr. Ann Lee").code == 0
    assert add_referral(cli, "R-2", "--physician", "Dr. Ann Lee").code == 0
    assert len(rows(db_url, Physician)) == 1
    assert rows(db_url, Visit)[0].physician_id == physician.id


def test_an_import_without_a_practice_column_finds_the_physician(cli, db_url, home, tmp_path):
    assert cli("physician", "add", *ANN).code == 0
    columns = ["ref", "received_on", "physician", "client_name", "release_on_file"]
    record = {"received_on": RECEIVED, "physician": "Dr. Ann Lee", "client_name": CLIENT}
    path = write_csv(
        tmp_path / "r.csv",
        [{**record, "ref": "R-1", "release_on_file": "yes"}, {**record, "ref": "R-2"}],
        columns,
    )
    ran = cli("import", "referrals", path)
    assert ran.code == 0, ran.stderr
    assert len(rows(db_url, Physician)) == 1
    assert {r.physician_id for r in rows(db_url, Referral)} == {1}
    cli("run", "--once")
    assert drafts_to(home) == ["ann@lee.example"]


def test_an_import_rejects_only_the_row_whose_physician_is_ambiguous(cli, db_url, tmp_path):
    assert cli("physician", "add", *ANN).code == 0
    assert cli("physician", "add", "--name", "Dr. Ann Lee", "--practice", "North Clinic").code == 0
    columns = [c for c in REFERRAL_COLUMNS if c not in ("prescriber", "prescriber_email")]
    base = {"received_on": RECEIVED, "client_name": CLIENT, "client_dob": DOB}
    path = write_csv(
        tmp_path / "r.csv",
        [
            {**base, "ref": "R-1", "physician": "Dr. Ann Lee", "practice": "Lee Clinic"},
            {**base, "ref": "R-2", "physician": "Dr. Ann Lee"},
            {**base, "ref": "R-3", "physician": "Dr. Bo Chen"},
        ],
        columns,
    )
    ran = cli("import", "referrals", path)
    assert ran.code == 1
    assert (
        'line 3, column physician: "Dr. Ann Lee" is 2 physicians: 1 (Lee Clinic), 2 (North Clinic)'
    ) in ran.stderr
    assert "rejected 1" in ran.stdout
    no_patient_value(ran.stderr, ran.stdout)
    assert [r.ref for r in rows(db_url, Referral)] == ["R-1", "R-3"]


# --- physician edit ----------------------------------------------------------------------------


def test_edit_sets_an_address_that_needs_no_confirmation(cli, db_url, home, tmp_path):
    columns = ["ref", "received_on", "physician", "physician_email", "practice", "client_name"]
    record = {"ref": "R-1", "received_on": RECEIVED, "physician": "Dr. Ann Lee"}
    record |= {"physician_email": "ann@lee.example", "client_name": CLIENT}
    path = write_csv(tmp_path / "r.csv", [{**record, "release_on_file": "yes"}], columns)
    assert cli("import", "referrals", path).code == 0
    path = write_csv(
        tmp_path / "r2.csv", [{**record, "physician_email": "ann@lee-clinic.example"}], columns
    )
    assert cli("import", "referrals", path).code == 0  # an address an import changed: held
    assert rows(db_url, Physician)[0].email_check
    assert cli("referral", "release", "R-1").code == 0
    cli("run", "--once")
    assert drafts_to(home) == []
    ran = cli("physician", "edit", "1", "--email", "ann@lee.example", "--practice", "Lee Clinic")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.startswith("physician 1 (Dr. Ann Lee, Lee Clinic): saved")
    (physician,) = rows(db_url, Physician)
    assert physician.email_check is None and physician.key == "dr. ann lee|lee clinic"
    cli("run", "--once")
    assert drafts_to(home) == ["ann@lee.example"]


def test_edit_refuses_the_name_of_another_physician_and_names_it(cli, db_url):
    assert cli("physician", "add", *ANN).code == 0
    assert cli("physician", "add", "--name", "Dr. A. Lee", "--practice", "Lee Clinic").code == 0
    ran = cli("physician", "edit", "2", "--name", "dr. ann lee")
    assert ran.code == 2
    assert ran.stderr.startswith(
        "--name/--practice: physician 1 is already Dr. Ann Lee (Lee Clinic)"
    )
    assert "physician merge 1 2" in ran.stderr
    assert rows(db_url, Physician)[1].name == "Dr. A. Lee"
    assert cli("physician", "edit", "9", "--fax", "555-0100").stderr == "no physician 9\n"
    assert cli("physician", "edit", "9", "--fax", "555-0100").code == 1
    assert cli("physician", "edit", "1").code == 2
    ran = cli("physician", "edit", "1", "--email", "not an address")
    assert ran.code == 2 and ran.stderr.startswith("--email: is not an email address")
    assert cli("physician", "edit", "1", "--email", "", "--specialty", "psychiatry").code == 0
    physician = rows(db_url, Physician)[0]
    assert physician.email is None and physician.specialty == "psychiatry"


# --- physician merge ---------------------------------------------------------------------------


def test_merge_moves_referrals_visits_and_releases_and_keeps_a(cli, db_url, home):
    assert cli("physician", "add", *ANN).code == 0
    duplicate = ("--name", "Dr. A. Lee", "--practice", "Lee Clinic", "--fax", "555-0100")
    assert cli("physician", "add", *duplicate, "--specialty", "family medicine").code == 0
    common = ("--physician", "Dr. A. Lee", "--practice", "Lee Clinic", "--release")
    assert add_referral(cli, "R-1", *common).code == 0
    assert add_referral(cli, "R-2", *DR_LEE, "--prescriber", "Dr. A. Lee").code == 0
    visit = ("visit", "add", "--practice", "Lee Clinic", "--physician", "Dr. A. Lee")
    assert cli(*visit).code == 0
    cli("run", "--once")
    assert drafts_to(home) == []  # Dr. A. Lee has no address: R-1's note is held

    ran = cli("physician", "merge", "1", "2")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.startswith(
        "physician 2 merged into physician 1 (Dr. Ann Lee, Lee Clinic): moved 1 referrals, "
        "1 as prescriber, 1 visits; took fax, specialty from 2"
    )
    (physician,) = rows(db_url, Physician)
    assert (physician.email, physician.fax) == ("ann@lee.example", "555-0100")
    assert physician.specialty == "family medicine"
    assert {(r.physician_id, r.prescriber_id) for r in rows(db_url, Referral)} == {
        (1, None),
        (1, 1),
    }
    assert {r.physician_id for r in rows(db_url, Release)} == {1}
    assert rows(db_url, Visit)[0].physician_id == 1
    assert cli("run", "--once").code == 0  # the release moved with the referral: R-1 goes out
    assert drafts_to(home) == ["ann@lee.example"]

    assert cli("physician", "merge", "1", "1").code == 2
    ran = cli("physician", "merge", "1", "2")
    assert ran.code == 1 and ran.stderr == "no physician 2\n"
    assert "keeps A" in cli("physician", "merge", "--help").stdout


def test_merge_takes_the_practice_and_address_a_lacks(cli, db_url):
    assert add_referral(cli, "R-1", *DR_LEE).code == 0  # no practice, no address
    duplicate = ("--name", "Dr. A. Lee", "--practice", "North Clinic", "--email", "ann@lee.example")
    assert cli("physician", "add", *duplicate).code == 0
    ran = cli("physician", "merge", "1", "2")
    assert ran.code == 0 and "took email, practice from 2" in ran.stdout
    (physician,) = rows(db_url, Physician)
    assert physician.key == "dr. ann lee|north clinic" and physician.email == "ann@lee.example"


# --- referral delete ---------------------------------------------------------------------------


def test_delete_takes_back_the_draft_and_removes_the_referral(cli, db_url, home):
    assert cli("physician", "add", *ANN).code == 0
    assert add_referral(cli, "R-1", *DR_LEE, "--release").code == 0
    assert add_referral(cli, "R-2", *DR_LEE).code == 0  # no release: its note is held
    cli("run", "--once")
    assert len(drafts_to(home)) == 1

    ran = cli("referral", "delete", "R-1")
    assert ran.code == 2 and "add --yes" in ran.stderr
    assert len(rows(db_url, Referral)) == 2

    ran = cli("referral", "delete", "R-1", "--yes")
    assert ran.code == 0, ran.stderr
    assert "withdrawn" in ran.stdout and "referral R-1: deleted" in ran.stdout
    no_patient_value(ran.stdout, ran.stderr)
    assert drafts_to(home) == []
    assert [r.ref for r in rows(db_url, Referral)] == ["R-2"]
    withdrawn = rows(db_url, FollowUp, FollowUp.state == State.withdrawn)
    assert len(withdrawn) == 1  # the history stays, its subject gone

    ran = cli("referral", "delete", "R-2", "--yes")
    assert ran.code == 0 and "(1 pending notes cancelled)" in ran.stdout
    assert rows(db_url, Referral) == []
    (cancelled,) = rows(db_url, FollowUp, FollowUp.state == State.cancelled)
    assert cancelled.reason == "the referral was deleted"
    assert cli("run", "--once").code == 0

    ran = cli("referral", "delete", "R-404", "--yes")
    assert ran.code == 1 and ran.stderr == "no referral R-404\n"


def test_a_referral_added_after_a_delete_gets_its_own_note(cli, db_url, home):
    """SQLite gives the deleted referral's id to the next one: it must not inherit the
    deleted one's ledger (its note, done or sent, would stand for the new referral's)."""
    assert cli("physician", "add", *ANN).code == 0
    assert add_referral(cli, "R-5", *DR_LEE, "--release").code == 0
    cli("run", "--once")
    engine = sa.create_engine(db_url)  # the therapist sent R-5's note
    with engine.begin() as connection:
        connection.execute(sa.update(FollowUp).values(state=State.sent, reason="sent 2026-11-30"))
    engine.dispose()
    assert cli("referral", "delete", "R-5", "--yes").code == 0
    assert add_referral(cli, "R-6", *DR_LEE, "--release").code == 0
    ran = cli("run", "--once")
    assert ran.stdout.startswith("made 1 draft"), ran.stdout
    [mine] = rows(db_url, FollowUp, FollowUp.state == State.done)
    [r6] = rows(db_url, Referral)
    assert mine.subject_id == r6.id


def test_delete_asks_on_a_terminal(cli, db_url, monkeypatch):
    assert add_referral(cli, "R-1", *DR_LEE).code == 0
    monkeypatch.setattr(entry, "_interactive", lambda: True)
    ran = cli("referral", "delete", "R-1", input="n\n")
    assert ran.code == 1 and len(rows(db_url, Referral)) == 1
    ran = cli("referral", "delete", "R-1", input="y\n")
    assert ran.code == 0 and rows(db_url, Referral) == []


def test_delete_lists_a_sent_note_as_disclosed(cli, db_url, home):
    assert cli("physician", "add", *ANN).code == 0
    assert add_referral(cli, "R-1", *DR_LEE, "--release").code == 0
    cli("run", "--once")
    execute(db_url, sa.update(FollowUp).values(state=State.sent))  # the therapist sent it
    ran = cli("referral", "delete", "R-1", "--yes")
    assert ran.code == 0, ran.stderr
    assert "follow-up 1 (referral-acknowledgement): disclosed" in ran.stdout
    assert rows(db_url, Referral) == []
    assert rows(db_url, FollowUp)[0].state == State.sent


def test_delete_waits_for_a_withdrawal_google_cannot_take_now(cli, db_url, home):
    assert cli("physician", "add", *ANN).code == 0
    assert add_referral(cli, "R-1", *DR_LEE, "--release").code == 0
    cli("run", "--once")
    execute(db_url, sa.update(FollowUp).values(external_id="gmail:r1"))  # a Gmail draft
    google = {"FOLLOWUPD_DELIVERY": "google"}  # and no token: Google cannot be reached
    ran = cli("referral", "delete", "R-1", "--yes", env=google)
    assert ran.code == 1
    assert "the daemon finishes the withdrawal" in ran.stderr
    assert "run `followupd referral delete R-1` again later" in ran.stderr
    assert len(rows(db_url, Referral)) == 1
    assert rows(db_url, FollowUp)[0].state == State.withdraw
    execute(db_url, sa.update(FollowUp).values(state=State.withdrawn))  # the daemon took it
    assert cli("referral", "delete", "R-1", "--yes", env=google).code == 0
    assert rows(db_url, Referral) == []


# --- referral add --prescriber -----------------------------------------------------------------


def test_referral_add_names_the_prescriber_and_their_release(cli, db_url):
    ran = add_referral(
        cli,
        "R-1",
        *DR_LEE,
        "--prescriber",
        "Dr. Bo Chen",
        "--prescriber-email",
        "bo@chen.example",
        "--prescriber-release",
    )
    assert ran.code == 0, ran.stderr
    (referral,) = rows(db_url, Referral)
    prescriber = rows(db_url, Physician, Physician.id == referral.prescriber_id)[0]
    assert prescriber.email == "bo@chen.example" and referral.prescriber_release_on_file
    ran = add_referral(cli, "R-2", *DR_LEE, "--prescriber-email", "bo@chen.example")
    assert ran.code == 2 and ran.stderr.startswith("--prescriber-email: needs --prescriber")
    ran = add_referral(cli, "R-2", *DR_LEE, "--prescriber", "Dr. Bo", "--prescriber-email", "x")
    assert ran.code == 2 and ran.stderr.startswith("--prescriber-email: is not an email")
