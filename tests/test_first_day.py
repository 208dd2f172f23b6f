"""A new user's first day: what the command line says when something is not right.

Each test is something a new user met (issue 15): a traceback, an answer that misled, a file
awkward to use. Every error is one line and a documented exit status.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest


def test_auth_with_a_web_application_client_says_which_type_to_make(cli, home):
    (home / "client_secret.json").write_text(json.dumps({"web": {"client_id": "x"}}))
    ran = cli("auth")
    assert ran.code == 2 and "Traceback" not in ran.stderr
    assert 'type "Web application"' in ran.stderr and '"Desktop app"' in ran.stderr


@pytest.mark.parametrize("content", ["not json at all", "[1, 2]", '{"other": {}}'])
def test_auth_with_a_file_that_is_no_oauth_client_says_so(cli, home, content):
    (home / "client_secret.json").write_text(content)
    ran = cli("auth")
    assert ran.code == 2 and "Traceback" not in ran.stderr
    assert "client_secret.json: not an OAuth client file" in ran.stderr


def test_an_empty_physician_name_names_the_option_given(cli):
    ran = cli("physician", "add", "--name", "")
    assert ran.code == 2 and ran.stderr.startswith("--name: is empty")


def test_preview_of_a_follow_up_that_does_not_exist(cli):
    cli("run", "--once")
    ran = cli("preview", "999")
    assert ran.code == 1 and ran.stderr.startswith("no follow-up 999")


def test_preview_shows_a_reminder_as_a_calendar_does(cli):
    day = (date.today() - timedelta(days=7)).isoformat()
    assert cli("visit", "add", "--practice", "Lakeside Internal Medicine", "--on", day).code == 0
    assert cli("run", "--once").code == 0
    shown = cli("preview", "1")
    assert shown.code == 0
    assert shown.stdout.startswith("Reminder: Revisit Lakeside Internal Medicine")
    assert "\nWhen: " in shown.stdout and "BEGIN:VCALENDAR" not in shown.stdout
    raw = cli("preview", "1", "--raw")
    assert raw.stdout.startswith("BEGIN:VCALENDAR")


def test_holidays_from_a_country_and_its_state(cli, home):
    config = home / "followupd.yaml"
    assert "country: US" in config.read_text()
    assert cli("check").code == 0
    config.write_text(config.read_text().replace("country: US", "country: XX"))
    ran = cli("check")
    assert ran.code == 2 and "holidays: no public holidays known for XX/MN" in ran.stderr
    assert cli("run", "--once").code == 2


def test_a_plain_list_of_closed_days_still_works(cli, home):
    config = home / "followupd.yaml"
    text = config.read_text()
    start = text.index("holidays:\n")
    end = text.index("\n\n", start)
    config.write_text(text[:start] + "holidays:\n  - 2026-12-24\n  - 2026-12-31" + text[end:])
    assert cli("check").code == 0, cli("check").stderr


def test_health_is_unhealthy_with_google_delivery_and_no_token(cli, home):
    assert cli("run", "--once").code == 0  # a tick on the outbox: a heartbeat
    assert cli("health").code == 0
    ran = cli("health", env={"FOLLOWUPD_DELIVERY": "google"})
    assert ran.code == 1
    assert "unhealthy: no Google token at" in ran.stderr and "run `followupd auth`" in ran.stderr
    (home / "google-token.json").write_text("{}")
    assert "no Google token" not in cli("health", env={"FOLLOWUPD_DELIVERY": "google"}).stderr


def test_check_warns_loudly_about_the_sample_identity(cli, home):
    ran = cli("check")
    assert ran.code == 0
    assert "WARNING: practice: still the sample identity (Dana Reyes" in ran.stderr
    config = home / "followupd.yaml"
    config.write_text(
        config.read_text()
        .replace('"Dana Reyes"', '"Ines Okonkwo"')
        .replace("dana@reyes-therapy.example", "ines@okonkwo-therapy.example")
    )
    assert "WARNING" not in cli("check").stderr


def test_a_closing_note_without_a_summary_carries_no_placeholder(cli, home):
    """Closed without --summary (and without a DOB, problem or focus): the note leaves those
    lines out and says it plainly, instead of going out with `[outcome and recommendations]`."""
    import email
    import email.policy

    received = (date.today() - timedelta(days=10)).isoformat()
    closed = (date.today() - timedelta(days=7)).isoformat()
    added = cli(
        "referral", "add", "--ref", "R-1", "--physician", "Dr. Miriam Okafor",
        "--physician-email", "m.okafor@lakeside-im.example", "--client-name", "Ann Lee",
        "--received-on", received, "--release",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    assert cli("referral", "close", "R-1", "--on", closed).code == 0
    assert cli("run", "--once").code == 0
    notes = {}
    for path in (home / "outbox").rglob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        notes[message["Subject"]] = message.get_content()
    [closing] = [text for subject, text in notes.items() if subject.startswith("Treatment")]
    assert "[" not in closing and "]" not in closing, closing
    assert "Outcome and recommendations" not in closing and "DOB" not in closing
    assert "talk over the outcome and my recommendations" in closing
    assert all("[" not in text for text in notes.values()), notes


def test_an_encoded_word_in_a_ref_is_refused_when_typed_not_when_the_note_renders(cli):
    """`=?utf-8?q?...?=` in a ref was accepted, and its note then failed at render."""
    ran = cli(
        "referral", "add", "--ref", "=?utf-8?q?a=0D=0ABcc:_x@y?=", "--physician", "Dr. Ann Lee",
        "--client-name", "Avery Quinlan",
    )  # fmt: skip
    assert ran.code == 2
    assert ran.stderr.strip() == '--ref: contains "=?", which mail programs read as an encoded word'
