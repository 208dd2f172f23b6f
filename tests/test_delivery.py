"""A tick end to end through the CLI: planning, holds, templates, the outbox, the demo."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from icalendar import Calendar

from conftest import run_cli
from followupd.demo import SAMPLE_CLIENTS
from followupd.models import FollowUp, Physician, Referral
from followupd.store import Store

PATIENT_VALUES = [value for client in SAMPLE_CLIENTS for value in client] + [
    "Harriet Vandermolen",
    "1970-05-04",
    "Insomnia with nightmares",
]


def add_referral(
    cli,
    ref,
    *,
    release=True,
    physician="Dr. Miriam Okafor",
    email_="m.okafor@lakeside-im.example",
    days_ago=10,
    **extra,
):
    args = [
        "referral",
        "add",
        "--ref",
        ref,
        "--physician",
        physician,
        "--practice",
        "Lakeside Internal Medicine",
        "--specialty",
        "internal medicine",
        "--client-name",
        "Harriet Vandermolen",
        "--client-dob",
        "1970-05-04",
        "--problem",
        "Insomnia with nightmares",
        "--focus",
        "CBT-I",
        "--received-on",
        (date.today() - timedelta(days=days_ago)).isoformat(),
    ]
    if email_:
        args += ["--physician-email", email_]
    if release:
        args.append("--release")
    ran = cli(*args, *[str(a) for a in extra.get("more", ())])
    assert ran.code == 0, ran.stderr


def ledger(db_url):
    store = Store(db_url)
    with store.session() as session:
        rows = {(r.rule, r.subject_id): r for r in session.execute(sa.select(FollowUp)).scalars()}
    store.close()
    return rows


def outbox_files(home):
    return sorted(
        p.relative_to(home / "outbox") for p in (home / "outbox").rglob("*") if p.is_file()
    )


def test_a_referral_with_a_release_gets_its_acknowledgement(cli, db_url, home):
    add_referral(cli, "R-1")
    ran = cli("run", "--once")
    assert ran.code == 0, ran.stderr
    [draft] = (home / "outbox" / "drafts").glob("*.eml")
    message = email.message_from_bytes(draft.read_bytes(), policy=email.policy.default)
    assert message["To"] == '"Dr. Miriam Okafor" <m.okafor@lakeside-im.example>'
    assert message["From"].addresses[0].addr_spec == "dana@reyes-therapy.example"
    assert message["Message-ID"].startswith("<followupd.") and message["Message-ID"].endswith(
        "@reyes-therapy.example>"
    )
    body = message.get_content()
    assert "Dear Dr. Okafor," in body and "Insomnia with nightmares" in body and "CBT-I" in body
    assert oct(draft.stat().st_mode & 0o777) == "0o600"


def test_running_twice_writes_nothing_new(cli, db_url, home):
    add_referral(cli, "R-1")
    cli(
        "visit",
        "add",
        "--practice",
        "Lakeside Internal Medicine",
        "--physician",
        "Dr. Miriam Okafor",
        "--specialty",
        "internal medicine",
    )
    assert cli("run", "--once").code == 0
    files = {p: (home / "outbox" / p).stat().st_mtime_ns for p in outbox_files(home)}
    before = {k: (r.state, r.updated_at) for k, r in ledger(db_url).items()}
    assert len(files) == 2
    assert cli("run", "--once").code == 0
    assert {p: (home / "outbox" / p).stat().st_mtime_ns for p in outbox_files(home)} == files
    assert {k: (r.state, r.updated_at) for k, r in ledger(db_url).items()} == before


def test_release_recorded_later_releases_the_held_note(cli, db_url, home):
    add_referral(cli, "R-12", release=False)
    assert cli("run", "--once").code == 0
    [row] = ledger(db_url).values()
    assert row.state == "held"
    assert row.reason == "no release of information on file for referral R-12"
    status = cli("status")
    assert "no release of information on file for referral R-12" in status.stdout
    assert not (home / "outbox" / "drafts").exists()
    assert cli("referral", "release", "R-12").code == 0
    assert cli("run", "--once").code == 0
    [row] = ledger(db_url).values()
    assert row.state == "done" and row.external_id == f"outbox:drafts/{row.id}.eml"


def test_release_revoked_before_delivery_cancels_and_never_delivers(cli, db_url, home):
    add_referral(cli, "R-5", days_ago=0)  # due tomorrow at 08:00: still pending
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "planned"
    cli("referral", "release", "R-5", "--revoke")
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "cancelled" and "revoked" in row.reason


def test_disabling_a_rule_cancels_its_pending_follow_ups(cli, db_url, home):
    add_referral(cli, "R-5", days_ago=0)
    cli("run", "--once")
    config = home / "followupd.yaml"
    config.write_text(
        config.read_text().replace(
            "template: acknowledgement.txt.j2\n",
            "template: acknowledgement.txt.j2\n    enabled: false\n",
        )
    )
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "cancelled" and "disabled" in row.reason


def test_an_unknown_template_variable_fails_only_that_follow_up(cli, db_url, home):
    (home / "templates").mkdir()
    (home / "templates" / "closing.txt.j2").write_text(
        "Subject: Closing\n\nDear {{ recipient.salutation }}, {{ client.outcome_score }}\n"
    )
    add_referral(cli, "R-1", days_ago=10)
    add_referral(cli, "R-2", days_ago=10)
    cli("referral", "close", "R-2", "--on", (date.today() - timedelta(days=5)).isoformat())
    ran = cli("run", "--once")
    assert ran.code == 1
    rows = ledger(db_url)
    failed = [r for r in rows.values() if r.state == "failed"]
    assert len(failed) == 1 and failed[0].rule == "closing-note"
    assert "closing.txt.j2:3" in failed[0].reason and "outcome_score" in failed[0].reason
    assert sum(r.state == "done" for r in rows.values()) == 1  # R-1's acknowledgement went
    assert "Harriet" not in ran.stderr


def test_no_header_injection_from_a_physician_name(cli, db_url, home):
    add_referral(cli, "R-1")
    add_referral(cli, "R-2", physician="Dr. Safe Person", email_="safe@clinic.example")
    store = Store(db_url)
    with store.session() as session:  # input validation would refuse this; the DB might not
        session.execute(
            sa.update(Physician)
            .where(Physician.name == "Dr. Miriam Okafor")
            .values(name="Dr X\r\nBcc: x@example.org")
        )
    store.close()
    ran = cli("run", "--once")
    assert ran.code == 1
    rows = {r.subject_id: r for r in ledger(db_url).values()}
    assert rows[1].state == "failed" and "line break" in rows[1].reason
    assert rows[2].state == "done"
    for path in (home / "outbox" / "drafts").glob("*.eml"):
        assert b"Bcc" not in path.read_bytes()


def test_a_second_address_in_the_email_field_is_refused(cli, db_url, home):
    add_referral(cli, "R-1")
    store = Store(db_url)
    with store.session() as session:
        session.execute(sa.update(Physician).values(email="a@clinic.example, b@evil.example"))
    store.close()
    assert cli("run", "--once").code == 1
    [row] = ledger(db_url).values()
    assert row.state == "failed" and "single valid address" in row.reason


def test_preview_matches_what_is_delivered(cli, db_url, home):
    add_referral(cli, "R-1")
    assert cli("status", "--json").stdout == ""  # nothing planned before a tick
    cli("run", "--once")
    [record] = [json.loads(line) for line in cli("status", "--json").stdout.splitlines()]
    preview = cli("preview", str(record["id"]), "--raw")
    assert preview.code == 0
    delivered = (home / "outbox" / "drafts" / f"{record['id']}.eml").read_bytes()

    def undated(text: bytes) -> bytes:  # a preview is dated now, the delivered note then
        return re.sub(rb"(?m)^Date: .*\n", b"", text)

    as_delivered = delivered.removeprefix(b"X-Unsent: 1\r\n").replace(b"\r\n", b"\n")
    assert undated(as_delivered) == undated(preview.stdout.encode())  # --raw: the very bytes
    parsed = email.message_from_bytes(delivered, policy=email.policy.default)
    shown = cli("preview", str(record["id"])).stdout  # as a person reads it
    assert shown.startswith(f"From: {parsed['From']}\nTo: {parsed['To']}\n")
    assert f"Subject: {parsed['Subject']}\n" in shown
    assert shown.endswith(parsed.get_content().replace("\r\n", "\n"))
    assert "quoted-printable" not in shown and "Message-ID" not in shown


def test_preview_of_a_held_follow_up_says_why(cli, db_url, home):
    add_referral(cli, "R-3", release=False)
    cli("run", "--once")
    [row] = ledger(db_url).values()
    ran = cli("preview", str(row.id))
    assert ran.code == 1 and "no release of information" in ran.stderr
    assert "Harriet" not in ran.stdout + ran.stderr


def test_changing_a_physicians_email_releases_notes_held_for_it(cli, db_url, home):
    add_referral(cli, "R-1", email_=None)
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "held" and "no email address" in row.reason
    cli(
        "physician",
        "add",
        "--name",
        "Dr. Miriam Okafor",
        "--practice",
        "Lakeside Internal Medicine",
        "--email",
        "okafor@lakeside.example",
    )
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "done"


def test_an_idle_plan_reads_no_rows(cli, db_url, home, monkeypatch):
    """Planning follows a changed-since cursor: rows it has planned are not read again."""
    from followupd import config, engine
    from followupd.engine import planner
    from followupd.timing import utcnow

    add_referral(cli, "R-1")
    add_referral(cli, "R-2")
    cli("run", "--once")
    seen = []
    real = planner.changed_referrals

    def spy(*args, **kwargs):
        rows = real(*args, **kwargs)
        seen.extend(row.ref for row in rows)
        return rows

    monkeypatch.setattr(planner, "changed_referrals", spy)
    settings = config.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(db_url)
    later = engine.Engine(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
    later.plan()  # rows from the last minute are read once more, then the cursor passes them
    assert sorted(seen) == ["R-1", "R-2"]
    seen.clear()
    later.plan()
    assert seen == []
    cli("referral", "close", "R-2")
    later.plan()
    assert seen == ["R-2"]
    store.close()


@pytest.fixture
def demo_run(tmp_path):
    target = tmp_path / "demo"
    ran = run_cli(  # --verbose: the log too, for the patient-data checks below
        "demo", str(target), "--verbose", log_to=tmp_path, env={"PATH": "/usr/bin:/bin"}
    )
    return target, ran


def test_demo_writes_drafts_and_reminders_that_read_back(demo_run):
    target, ran = demo_run
    assert ran.returncode == 0, ran.stderr
    drafts = sorted((target / "outbox" / "drafts").glob("*.eml"))
    reminders = sorted((target / "outbox" / "reminders").glob("*.ics"))
    assert len(drafts) == 4 and len(reminders) == 3  # revisits, and the prospect named
    for path in drafts:
        raw = path.read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["Subject"] and message["To"] and message["Message-ID"]
        assert raw.count(b"\r\n") == raw.count(b"\n")  # RFC 5322 line ends throughout
        assert raw.startswith(b"X-Unsent: 1\r\n")  # mail programs open it as a draft to send
        assert b"Subject:\r\n" not in raw  # not folded right after the header's name
        again = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        assert {k: str(v).strip() for k, v in again.items()} == {
            k: str(v).strip() for k, v in message.items()
        }  # (the email package refolds)
        body = message.get_content().replace("\r\n", "\n")
        assert again.get_content().replace("\r\n", "\n") == body
        assert body.startswith("Dear Dr. ") and "With thanks," in body
        assert str(path) in ran.stdout
    store = Store(f"sqlite:///{target / 'followupd.sqlite3'}")
    with store.session() as session:
        rows = {r.id: r for r in session.execute(sa.select(FollowUp)).scalars()}
    store.close()
    for path in reminders:
        calendar = Calendar.from_ical(path.read_bytes())
        [event] = calendar.walk("VEVENT")
        row = rows[int(path.stem)]
        assert str(event["UID"]).endswith(f"-{row.id}@reyes-therapy.example")
        assert event.decoded("DTSTART") == row.remind_at
        assert str(event.decoded("DTSTART").tzinfo) == "America/Chicago"
        [alarm] = event.walk("VALARM")
        assert alarm.decoded("TRIGGER") == timedelta(minutes=-30)
        assert calendar.walk("VTIMEZONE")
    held = [r for r in rows.values() if r.state == "held"]
    assert {r.reason for r in held} == {
        "no release of information on file for referral R-1002",
        "no email address for the physician of referral R-1005",
    }


def test_demo_keeps_patient_details_out_of_logs_calendar_and_status(demo_run):
    target, ran = demo_run
    status = run_cli(
        "--home", str(target), "status", log_to=target.parent, env={"PATH": "/usr/bin:/bin"}
    )
    status_json = run_cli(
        "--home",
        str(target),
        "status",
        "--json",
        log_to=target.parent,
        env={"PATH": "/usr/bin:/bin"},
    )
    ics = "".join(p.read_text() for p in (target / "outbox" / "reminders").glob("*.ics"))
    assert "event=delivered" in ran.stderr  # the log was captured
    haystacks = {
        "log": ran.stderr,
        "stdout": ran.stdout,
        "status": status.stdout,
        "status --json": status_json.stdout,
        "ics": ics,
    }
    for value in PATIENT_VALUES:
        for where, text in haystacks.items():
            assert value not in text, f"{value!r} in {where}"
    # ... while the drafts to physicians with a release do carry them
    drafts = "".join(
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default).get_content()
        for p in (target / "outbox" / "drafts").glob("*.eml")
    )
    assert SAMPLE_CLIENTS[0][0] in drafts
    assert SAMPLE_CLIENTS[1][0] not in drafts  # no release for R-1002


def test_demo_twice_starts_over_and_refuses_a_foreign_folder(demo_run, tmp_path):
    target, _ = demo_run
    again = run_cli("demo", str(target), log_to=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert again.returncode == 0
    assert len(list((target / "outbox" / "drafts").glob("*.eml"))) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = run_cli("demo", str(foreign), log_to=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 2 and (foreign / "notes.txt").exists()


def test_a_removed_referral_cancels_its_pending_note(cli, db_url, home):
    add_referral(cli, "R-8", days_ago=0)
    cli("run", "--once")
    store = Store(db_url)
    with store.session() as session:
        session.execute(sa.delete(Referral))
    store.close()
    cli("run", "--once")
    [row] = ledger(db_url).values()
    assert row.state == "cancelled" and row.reason == "the referral was removed"


def test_run_once_with_a_bad_configuration_exits_2(cli, db_url, home):
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("after: 1 month", "after: 1 mnth"))
    ran = cli("run", "--once")
    assert ran.code == 2 and "rules[3].after" in ran.stderr
    config.write_text(
        config.read_text()
        .replace("after: 1 mnth", "after: 1 month")
        .replace("template: revisit.txt.j2", "template: nosuch.txt.j2")
    )
    ran = cli("run", "--once")
    assert ran.code == 2 and "nosuch.txt.j2 not found" in ran.stderr


def test_the_revisit_reminder_asks_for_the_next_specialty(demo_run):
    target, _ = demo_run
    texts = [
        Calendar.from_ical(p.read_bytes()).walk("VEVENT")[0]
        for p in (target / "outbox" / "reminders").glob("*.ics")
    ]
    by_practice = {str(e["SUMMARY"]): str(e["DESCRIPTION"]) for e in texts}
    lakeside = by_practice["Revisit Lakeside Internal Medicine: more cards and handouts"]
    assert "Who is your favorite practice to refer to?" in lakeside
    assert "Then ask for their favorite OB/GYN." in lakeside  # after an internist
    assert "Pat Lindqvist, the business manager" in lakeside
    cedar = by_practice["Revisit Cedar Women's Health: more cards and handouts"]
    assert "favorite pediatrician" in cedar  # after an OB/GYN
