"""Entering data one item at a time: physicians, referrals, releases, closes, visits."""

from __future__ import annotations

import sqlalchemy as sa

from followupd.models import Physician, Referral, Visit
from followupd.store import Store


def one(db_url, model, **where):
    store = Store(db_url)
    try:
        with store.session() as session:
            query = sa.select(model).filter_by(**where)
            return session.execute(query).scalar_one_or_none()
    finally:
        store.close()


def test_referral_lifecycle(cli, db_url):
    ran = cli(
        "referral",
        "add",
        "--ref",
        "R-12",
        "--physician",
        "Dr. Ann Lee",
        "--practice",
        "Hilltop Family Medicine",
        "--physician-email",
        "lee@hilltop.example",
        "--specialty",
        "family medicine",
        "--client-name",
        "Tobias Wren",
        "--client-dob",
        "1988-02-14",
        "--problem",
        "Alcohol use disorder",
        "--focus",
        "Motivational interviewing",
        "--received-on",
        "2026-11-02",
    )
    assert ran.code == 0, ran.stderr
    referral = one(db_url, Referral, ref="R-12")
    assert referral.release_on_file is False and referral.treatment_focus
    physician = one(db_url, Physician, id=referral.physician_id)
    assert physician.email == "lee@hilltop.example"

    assert cli("referral", "release", "R-12", "--on", "2026-11-05").code == 0
    referral = one(db_url, Referral, ref="R-12")
    assert referral.release_on_file and str(referral.release_on) == "2026-11-05"

    assert (
        cli("referral", "close", "R-12", "--on", "2026-11-20", "--summary", "Goals met").code == 0
    )
    referral = one(db_url, Referral, ref="R-12")
    assert str(referral.closed_on) == "2026-11-20" and referral.closing_summary == "Goals met"

    assert cli("referral", "release", "R-12", "--revoke").code == 0
    referral = one(db_url, Referral, ref="R-12")  # revoked; the date it was signed stays known
    assert referral.release_on_file is False and str(referral.release_on) == "2026-11-05"


def test_adding_an_existing_ref_is_refused(cli, db_url):
    args = ("referral", "add", "--ref", "R-1", "--physician", "Dr A", "--client-name", "X Y")
    assert cli(*args).code == 0
    ran = cli(*args)
    assert ran.code == 1 and "exists already" in ran.stderr


def test_bad_option_values_name_the_option_not_the_value(cli, db_url):
    ran = cli(
        "referral",
        "add",
        "--ref",
        "R-1",
        "--physician",
        "Dr A",
        "--client-name",
        "Imogen Ashcroft",
        "--client-dob",
        "14/02/1988",
    )
    assert ran.code == 2
    assert "--client-dob: is not a date" in ran.stderr
    assert "Imogen" not in ran.stderr and "14/02/1988" not in ran.stderr
    ran = cli(
        "referral",
        "add",
        "--ref",
        "R-2",
        "--physician",
        "Dr A\r\nBcc: x@example.org",
        "--client-name",
        "Imogen Ashcroft",
    )
    assert ran.code == 2 and "line break" in ran.stderr


def test_close_before_received_is_refused(cli, db_url):
    cli(
        "referral",
        "add",
        "--ref",
        "R-1",
        "--physician",
        "Dr A",
        "--client-name",
        "X Y",
        "--received-on",
        "2026-11-10",
    )
    ran = cli("referral", "close", "R-1", "--on", "2026-11-01")
    assert ran.code == 2 and "before" in ran.stderr
    assert one(db_url, Referral, ref="R-1").closed_on is None
    assert cli("referral", "close", "R-404").code == 1


def test_physician_and_visit_add(cli, db_url):
    assert (
        cli(
            "physician",
            "add",
            "--name",
            "Dr. Elena Ruiz",
            "--specialty",
            "OB/GYN",
            "--email",
            "ruiz@cedar.example",
            "--practice",
            "Cedar Women's Health",
        ).code
        == 0
    )
    ran = cli(
        "physician",
        "add",
        "--name",
        "Dr. Elena Ruiz",
        "--practice",
        "Cedar Women's Health",
        "--email",
        "not-an-email",
    )
    assert ran.code == 2 and "--email: is not an email address" in ran.stderr
    ran = cli(
        "visit",
        "add",
        "--practice",
        "Cedar Women's Health",
        "--physician",
        "Dr. Elena Ruiz",
        "--business-manager",
        "Morgan Ellis",
        "--cards",
        "10",
        "--handouts",
        "5",
        "--on",
        "2026-11-19",
    )
    assert ran.code == 0 and "added" in ran.stdout
    visit = one(db_url, Visit, visited_on=__import__("datetime").date(2026, 11, 19))
    assert visit.cards_left == 10 and visit.business_manager == "Morgan Ellis"
    physician = one(db_url, Physician, id=visit.physician_id)
    assert physician.email == "ruiz@cedar.example"  # the visit found the same physician


def test_init_writes_a_home_that_checks(tmp_path):
    from typer.testing import CliRunner

    from followupd.cli import app

    runner = CliRunner()
    target = tmp_path / "practice"
    ran = runner.invoke(app, ["init", str(target)])
    assert ran.exit_code == 0, ran.output
    assert (target / "followupd.yaml").is_file() and (target / ".env.example").is_file()
    ran = runner.invoke(app, ["--home", str(target), "check"], env={"FOLLOWUPD_DATABASE_URL": ""})
    assert ran.exit_code == 0, ran.output
    again = runner.invoke(app, ["init", str(target)])
    assert "kept" in again.stdout  # nothing overwritten without --force
