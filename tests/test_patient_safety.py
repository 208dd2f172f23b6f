"""Patient data and mail safety: the holes a hostile review found, each proved closed.

A hostile spreadsheet, a careless umask, a locked database and a revoked release: each test
here failed on the code before the fix (see the closing note of issue 13) and asserts what a
practice relies on now.
"""

from __future__ import annotations

import csv
import email
import email.policy
import os
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
import trust

from conftest import SAMPLE_PATIENT_VALUES, keep_output, run_cli
from followupd import store as store_module
from followupd.models import FollowUp, Physician, Referral, Release
from followupd.store import Store, create_engine, expire_dead_claims, mask_url

CLIENT, DOB, PROBLEM = "Avery Quinlan", "1984-03-09", "Panic attacks with avoidance of driving"
RECEIVED = (date.today() - timedelta(days=10)).isoformat()


def referral_row(ref: str, **changes: str) -> dict[str, str]:
    row = {
        "ref": ref,
        "received_on": RECEIVED,
        "physician": "Dr. Miriam Okafor",
        "physician_email": "m.okafor@lakeside-im.example",
        "specialty": "internal medicine",
        "practice": "Lakeside Internal Medicine",
        "client_name": CLIENT,
        "client_dob": DOB,
        "presenting_problem": PROBLEM,
        "treatment_focus": "CBT",
        "release_on_file": "yes",
    }
    row.update(changes)
    return row


def write_csv(path, rows, columns=None):
    columns = columns or list(dict.fromkeys(c for row in rows for c in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def ledger(db_url) -> dict[str, FollowUp]:
    store = Store(db_url)
    with store.session() as session:
        rows = {r.rule: r for r in session.execute(sa.select(FollowUp)).scalars()}
    store.close()
    return rows


def draft_files(home):
    return sorted((home / "outbox" / "drafts").glob("*.eml"))


def no_patient_value(*texts: str) -> None:
    for text in texts:
        for value in (CLIENT, DOB, PROBLEM, *SAMPLE_PATIENT_VALUES):
            assert value not in text, f"a patient value in: {text[:300]}"


# --- a locked database: one line, no values, exit 2 ---------------------------------------------


@pytest.fixture
def locked(home, tmp_path, monkeypatch):
    """A SQLite home whose database another process holds write-locked."""
    monkeypatch.setattr(store_module.database, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "locked.sqlite3"
    url = f"sqlite:///{path}"
    Store(url).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # writers wait; readers go on (WAL)
    yield url
    holder.execute("ROLLBACK")
    holder.close()


def test_a_locked_database_is_one_line_without_patient_values(cli, locked):
    env = {"FOLLOWUPD_DATABASE_URL": locked}
    ran = cli(
        "referral",
        "add",
        "--ref",
        "R-1",
        "--physician",
        "Dr. Miriam Okafor",
        "--client-name",
        CLIENT,
        "--client-dob",
        DOB,
        "--problem",
        PROBLEM,
        env=env,
    )
    assert ran.code == 2
    assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr
    assert ran.stderr.startswith("database: the database is busy") and "try it again" in ran.stderr
    no_patient_value(ran.stderr, ran.stdout)
    for args in (
        ("referral", "close", "R-1", "--summary", PROBLEM),
        ("visit", "add", "--practice", "Lakeside Internal Medicine"),
        ("physician", "add", "--name", "Dr. Ann Lee"),
        ("run", "--once"),
    ):
        ran = cli(*args, env=env)
        assert ran.code in (1, 2) and "Traceback" not in ran.stderr, args
        assert len(ran.stderr.strip().splitlines()) <= 1, (args, ran.stderr)
        no_patient_value(ran.stderr, ran.stdout)


def test_engines_hide_statement_parameters(db_url):
    """A database error's text (which reaches logs and tracebacks) never carries values."""
    engine = create_engine(db_url)
    assert engine.hide_parameters
    Store(db_url).close()
    stamp = datetime.now(UTC)
    with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as connection:
        connection.execute(
            sa.insert(Referral.__table__),
            {
                "ref": "R-1",
                "received_on": date(2026, 11, 2),
                "physician_id": 999,
                "client_name": CLIENT,
                "release_on_file": False,
                "prescriber_release_on_file": False,
                "created_at": stamp,
                "updated_at": stamp,
            },
        )
    assert CLIENT not in str(raised.value) and "parameters hidden" in str(raised.value)
    engine.dispose()


def test_a_malformed_database_url_never_shows_its_password(cli):
    secret = "s3cr3t-pw"
    for url in (
        f"postgresql+psycopg://user:{secret}@db:notaport/x",
        f"nonsense://user:{secret}@host/x",
        f"user:{secret}@host",
    ):
        for args in (("check",), ("status",)):
            ran = cli(*args, env={"FOLLOWUPD_DATABASE_URL": url})
            assert ran.code == 2, (url, args, ran.stderr)
            assert secret not in ran.stderr + ran.stdout, (url, args)
    assert mask_url(f"postgresql://u:{secret}@h:99999x/d") == "postgresql://u:***@h:99999x/d"


def test_six_first_commands_at_once_on_a_new_home_all_work(home, tmp_path):
    """The migration is serialised: none fails with "table ... already exists"."""
    env = {**os.environ, "FOLLOWUPD_DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "followupd", "--home", str(home), "status"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    keep_output(tmp_path, *(text for _, text in results))
    assert [code for code, _ in results] == [0] * 6, results


# --- dates given on the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("referral", "close", "R-1", "--on", "2026-99-99"),
        ("referral", "close", "R-1", "--on", "2026/12/01"),
        ("referral", "release", "R-1", "--on", "12/01/2026"),
        ("referral", "release", "R-1", "--revoke", "--on", "tomorrow"),
    ],
)
def test_a_bad_date_option_is_exit_2_naming_the_option(cli, args):
    ran = cli(*args)
    assert ran.code == 2 and ran.stderr.startswith("--on: ") and "Traceback" not in ran.stderr


# --- a CSV without a header row never echoes its first row --------------------------------------


def test_a_csv_without_a_header_row_names_no_cell(cli, tmp_path):
    path = tmp_path / "noheader.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(
            [list(referral_row("R-1").values()), list(referral_row("R-2").values())]
        )
    ran = cli("import", "referrals", str(path))
    assert ran.code == 1 and "line 1 is not a header row" in ran.stderr
    no_patient_value(ran.stderr, ran.stdout)
    # a header that misses a required column names the columns it has, and no other cell
    partial = write_csv(tmp_path / "partial.csv", [{"ref": "R-1", CLIENT: PROBLEM}])
    ran = cli("import", "referrals", str(partial))
    assert ran.code == 1 and "(it has ref and 1 other columns)" in ran.stderr
    no_patient_value(ran.stderr, ran.stdout)


def test_a_field_over_the_limit_stops_the_import_there(cli, db_url, tmp_path):
    """csv would resynchronise mid-field and read the rest of a huge cell as rows."""
    rows = [
        referral_row("R-1"),
        referral_row(
            "R-2",
            presenting_problem="x" * (1 << 20) + "\nR-9,2026-11-02,Dr. Evil,,,,,Mallory,,,,yes",
        ),
        referral_row("R-3"),
    ]
    ran = cli("import", "referrals", str(write_csv(tmp_path / "big.csv", rows)))
    assert ran.code == 1
    assert "line 3: a field is longer than 1,048,576 characters" in ran.stderr
    assert "nothing from line 3 on was imported" in ran.stderr
    store = Store(db_url)
    with store.session() as session:
        refs = set(session.execute(sa.select(Referral.ref)).scalars())
    store.close()
    assert refs == {"R-1"}


# --- status is not console markup ---------------------------------------------------------------


def test_status_shows_a_ref_that_looks_like_markup(cli, tmp_path):
    path = write_csv(
        tmp_path / "r.csv",
        [
            referral_row("R-[/]", release_on_file="no"),
            referral_row("R-[bold]x[/bold]", release_on_file="no"),
        ],
    )
    assert cli("import", "referrals", str(path)).code == 0
    assert cli("run", "--once").code == 0
    ran = cli("status")
    assert ran.code == 0, ran.stderr
    assert "referral R-[/]" in ran.stdout and "referral R-[bold]x[/bold]" in ran.stdout


# --- the outbox: another installation's file is not ours ----------------------------------------


def test_an_outbox_file_of_another_installation_is_not_counted_as_delivered(cli, db_url, home):
    drafts = home / "outbox" / "drafts"
    drafts.mkdir(parents=True)
    foreign = drafts / "1.eml"
    foreign.write_bytes(b"From: x@y.example\r\nX-Followupd-Id: 0000000000000000.1\r\n\r\nhi\r\n")
    assert (
        cli(
            "import", "referrals", str(write_csv(home.parent / "r.csv", [referral_row("R-1")]))
        ).code
        == 0
    )
    ran = cli("run", "--once")
    assert ran.code == 1
    row = ledger(db_url)["referral-acknowledgement"]
    assert row.state == "failed" and "another note" in row.reason
    assert foreign.read_bytes().endswith(b"hi\r\n")  # left alone


# --- a physician's address changed by an import waits for a person -------------------------------


def test_an_address_changed_by_an_import_holds_notes_until_confirmed(cli, db_url, tmp_path):
    first = write_csv(tmp_path / "a.csv", [referral_row("R-1")])
    assert cli("import", "referrals", str(first)).code == 0
    assert cli("run", "--once").code == 0
    evil = "m.okafor@lakeside-im.example".replace("lakeside", "1akeside")
    changed = write_csv(tmp_path / "b.csv", [referral_row("R-2", physician_email=evil)])
    ran = cli("import", "referrals", str(changed))
    assert ran.code == 0
    assert "address held: physician 1:" in ran.stdout and "physician confirm 1" in ran.stdout
    assert "changed in an import from m.okafor@lakeside-im.example" in ran.stdout
    assert cli("run", "--once").code == 0
    held = [r for r in ledger(db_url).values() if r.state == "held"]
    assert len(held) == 1 and "waits for confirmation" in held[0].reason
    assert "followupd physician confirm 1" in held[0].reason
    ran = cli("physician", "confirm", "1")
    assert ran.code == 0 and evil in ran.stdout
    assert cli("run", "--once").code == 0
    assert {r.state for r in ledger(db_url).values()} == {"done"}


def test_a_new_address_that_looks_like_a_known_one_is_held(cli, db_url, tmp_path):
    first = write_csv(tmp_path / "a.csv", [referral_row("R-1")])
    assert cli("import", "referrals", str(first)).code == 0
    lookalike = write_csv(
        tmp_path / "b.csv",
        [
            referral_row(
                "R-2",
                physician="Dr. Miriam Okafor-Lee",
                physician_email="m.okafor@lakeslde-im.example",
            )
        ],
    )
    ran = cli("import", "referrals", str(lookalike))
    assert "looks like m.okafor@lakeside-im.example (physician 1)" in ran.stdout
    other = write_csv(
        tmp_path / "c.csv",
        [referral_row("R-3", physician="Dr. Ann Lee", physician_email="ann.lee@northloop.example")],
    )
    assert "address held" not in cli("import", "referrals", str(other)).stdout
    assert cli("run", "--once").code == 0
    store = Store(db_url)
    with store.session() as session:
        refs = dict(session.execute(sa.select(Referral.id, Referral.ref)).all())
        states = {
            refs[r.subject_id]: r.state for r in session.execute(sa.select(FollowUp)).scalars()
        }
        checks = dict(session.execute(sa.select(Physician.name, Physician.email_check)).all())
    store.close()
    assert states == {"R-1": "done", "R-2": "held", "R-3": "done"}
    assert checks["Dr. Ann Lee"] is None and checks["Dr. Miriam Okafor"] is None
    assert checks["Dr. Miriam Okafor-Lee"].startswith("new in an import and looks like")


# --- releases name their recipient, keep a history, and a revoke takes notes back ---------------


def test_a_revoke_withdraws_the_outbox_draft_and_records_it(cli, db_url, home, tmp_path):
    trust.record("revoke", cases=1)
    assert (
        cli("import", "referrals", str(write_csv(tmp_path / "r.csv", [referral_row("R-1")]))).code
        == 0
    )
    assert cli("run", "--once").code == 0
    [draft] = draft_files(home)
    assert CLIENT in draft.read_text()
    ran = cli("referral", "release", "R-1", "--revoke")
    assert ran.code == 0, ran.stderr
    assert "release for the physician revoked" in ran.stdout
    assert f"follow-up {draft.stem}: withdrawn" in ran.stdout
    assert not draft.exists()
    row = ledger(db_url)["referral-acknowledgement"]
    assert row.state == "withdrawn" and "release of information was revoked" in row.reason
    status = cli("status").stdout
    assert "withdrawn" in status and "release of information was revoked" in status
    assert cli("run", "--once").code == 0  # nothing comes back
    assert draft_files(home) == []


def test_reimporting_the_same_sheet_does_not_undo_a_revoke(cli, db_url, home, tmp_path):
    trust.record("revoke", cases=1)
    sheet = write_csv(tmp_path / "r.csv", [referral_row("R-1")])
    assert cli("import", "referrals", str(sheet)).code == 0
    assert cli("referral", "release", "R-1", "--revoke").code == 0
    ran = cli("import", "referrals", str(sheet))
    assert ran.code == 0
    assert "line 2: the release for the physician stays revoked" in ran.stdout
    assert "only with a release_on after that date" in ran.stdout
    assert cli("run", "--once").code == 0
    assert draft_files(home) == []
    assert ledger(db_url)["referral-acknowledgement"].state == "held"
    # a release signed after the revoke is a new release: the import grants it, and says so
    later = (date.today() + timedelta(days=1)).isoformat()
    sheet = write_csv(tmp_path / "r2.csv", [referral_row("R-1", release_on=later)])
    ran = cli("import", "referrals", str(sheet))
    assert f"granted again (signed {later}, after the revoke of" in ran.stdout
    store = Store(db_url)
    with store.session() as session:
        history = session.execute(sa.select(Release).order_by(Release.id)).scalars().all()
    store.close()
    assert [(r.granted_by, r.revoked_by) for r in history] == [("import", "cli"), ("import", None)]


def test_the_physicians_release_does_not_cover_the_prescriber(cli, db_url, home, tmp_path):
    trust.record("revoke", cases=1)
    row = referral_row(
        "R-1",
        release_on=RECEIVED,
        prescriber="Dr. Lena Marsh",
        prescriber_email="lmarsh@uptown-psych.example",
    )
    assert cli("import", "referrals", str(write_csv(tmp_path / "r.csv", [row]))).code == 0
    assert cli("run", "--once").code == 0
    rows = ledger(db_url)
    assert rows["referral-acknowledgement"].state == "done"
    assert "prescriber-introduction" not in rows  # no release names the prescriber: no event
    recipients = {
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"]
        .addresses[0]
        .addr_spec
        for p in draft_files(home)
    }
    assert recipients == {"m.okafor@lakeside-im.example"}
    # the prescriber's own release, as its own column
    row["prescriber_release_on_file"], row["prescriber_release_on"] = "yes", RECEIVED
    assert cli("import", "referrals", str(write_csv(tmp_path / "r2.csv", [row]))).code == 0
    assert cli("run", "--once").code == 0
    assert ledger(db_url)["prescriber-introduction"].state == "done"
    # revoking the prescriber's release takes back the prescriber's note only
    ran = cli("referral", "release", "R-1", "--prescriber", "--revoke")
    assert ran.code == 0 and "release for the prescriber revoked" in ran.stdout
    rows = ledger(db_url)
    assert rows["prescriber-introduction"].state == "withdrawn"
    assert rows["referral-acknowledgement"].state == "done"
    assert len(draft_files(home)) == 1


def test_the_prescribers_release_without_a_prescriber_is_refused(cli, tmp_path):
    assert (
        cli("import", "referrals", str(write_csv(tmp_path / "r.csv", [referral_row("R-1")]))).code
        == 0
    )
    ran = cli("referral", "release", "R-1", "--prescriber")
    assert ran.code == 1 and "names no prescriber" in ran.stderr


# --- files the home holds are its owner's -------------------------------------------------------


def test_init_writes_private_files_under_any_umask(home, tmp_path):
    trust.record("permission", cases=1)
    target = tmp_path / "fresh"
    target.mkdir(mode=0o777)
    os.chmod(target, 0o777)
    script = (
        "import os, sys; os.umask(0); from followupd.cli import main; "
        "sys.argv = ['followupd', 'init', sys.argv[1]]; main()"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True
    )
    keep_output(tmp_path, ran.stderr)
    assert ran.returncode == 0, ran.stderr
    for path in [target, target / "templates", *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {mode:o}"
    check = run_cli("--home", str(target), "check", log_to=tmp_path)
    assert check.returncode == 0, check.stderr


# --- a claim of a dead process waits for what it may have started at Google ---------------------


def test_claims_of_a_dead_process_wait_out_the_settle_time(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'claims.sqlite3'}")
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    with store.session() as session:
        session.add(
            FollowUp(
                rule="r",
                subject_type="referral",
                subject_id=1,
                kind="draft",
                state="claimed",
                due_at=now,
                claimed_by="host:4242",
                lease_until=now + timedelta(minutes=5),
            )
        )
    with store.session() as session:
        assert (
            expire_dead_claims(session, "host", lambda pid: False, now, timedelta(seconds=60)) == 1
        )
        assert (
            expire_dead_claims(session, "host", lambda pid: False, now, timedelta(seconds=60)) == 0
        )  # not pushed again
        [row] = session.execute(sa.select(FollowUp)).scalars()
        assert row.lease_until == now + timedelta(seconds=60)  # not now: Google may finish
    store.close()


def test_a_message_domain_that_is_no_domain_stops_start_up(cli, home):
    config = home / "followupd.yaml"
    config.write_text(
        config.read_text().replace("mail_domain: null", 'mail_domain: "x@y.example\\nBcc: z"')
    )
    ran = cli("check")
    assert ran.code == 2 and "practice.mail_domain" in ran.stderr and "Traceback" not in ran.stderr


def test_a_template_error_names_no_value_in_log_status_json_or_preview(cli, home, tmp_path):
    """`focus_names[client.focus]` once put the client's focus in every report of the error."""
    focus = "Exposure work Qzx"
    (home / "templates").mkdir(exist_ok=True)
    (home / "templates" / "acknowledgement.txt.j2").write_text(
        "Subject: Your referral (our ref {{ referral.ref }})\n\n"
        '{% set focus_names = {"cbt": "CBT"} %}\n'
        "Focus: {{ focus_names[client.focus] }}\n"
    )
    row = referral_row("R-1", treatment_focus=focus)
    assert cli("import", "referrals", str(write_csv(tmp_path / "r.csv", [row]))).code == 0
    ran = cli("run", "--once")
    assert ran.code == 1
    reports = {
        "log": ran.stderr,
        "status": cli("status").stdout,
        "status --json": cli("status", "--json").stdout,
        "preview": cli("preview", "1").stderr,
    }
    for where, text in reports.items():
        assert "acknowledgement.txt.j2:4" in text, (where, text)
        assert "taken from the data" in text, (where, text)
        assert focus not in text and "Qzx" not in text, where
        no_patient_value(text)


def test_demo_writes_private_files_and_folders_under_any_umask(tmp_path):
    trust.record("permission", cases=1)
    target = tmp_path / "demo"
    script = (
        "import os, sys; os.umask(0); from followupd.cli import main; "
        "sys.argv = ['followupd', 'demo', sys.argv[1]]; main()"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True
    )
    keep_output(tmp_path, ran.stderr)
    assert ran.returncode == 0, ran.stderr
    for path in [target, *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {mode:o}"
