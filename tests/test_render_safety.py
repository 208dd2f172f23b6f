"""Rendering is where user text meets a mail header and templates meet patient data.

A draft's bytes are made and checked when it is rendered: an encoded word that decodes to a
line break, a name the serializer chokes on or a non-ASCII domain fails that one follow-up
with a reason naming the header, never the value. Templates run in Jinja2's sandbox, and a
template error names the template, the line and a name written in the template, never data.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from followupd import config as configuration
from followupd import render
from followupd.engine import Engine
from followupd.models import Bundle, FollowUp, Physician, Practice, Referral, Visit
from followupd.records import parse_referral
from followupd.render import (
    RenderError,
    Rendering,
    Templates,
    build_draft,
    build_reminder,
    context_for,
)
from followupd.store import Directory, Store, upsert_referrals

MARK = "Qzx"  # patient values are fenced with this, to look for them in reasons
INJECTION = "=?utf-8?q?a=0D=0ABcc:_evil@attacker.example?="
CRASHER = '=?utf-8?b?~d:>=22Bcc:wF"<dw?=h=)'  # UnicodeEncodeError in as_bytes() (3.11.7)
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "x-followupd-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}


def load(home, **practice: str) -> configuration.Settings:
    """The home's settings, with `practice:` keys changed in its followupd.yaml."""
    text = (home / "followupd.yaml").read_text()
    for key, value in practice.items():
        text, count = re.subn(rf"(?m)^  {key}: .*$", f"  {key}: {value!r}", text)
        assert count == 1, key
    (home / "followupd.yaml").write_text(text)
    return configuration.load(home, environ={})


def rule_of(settings, name: str):
    return next(r for r in settings.config.rules if r.name == name)


def draft(
    settings,
    *,
    rule="referral-acknowledgement",
    ref="R-1",
    physician="Dr. Miriam Okafor",
    email_="m.okafor@lakeside-im.example",
    focus="CBT-I",
    templates=None,
):
    rule = rule_of(settings, rule)
    follow_up = FollowUp(
        id=7,
        rule=rule.name,
        subject_type="referral",
        subject_id=1,
        kind="draft",
        state="claimed",
        attempts=1,
    )
    doctor = Physician(id=1, key="k", name=physician, email=email_)
    referral = Referral(
        id=1,
        ref=ref,
        received_on=date(2026, 11, 2),
        physician_id=1,
        client_name=f"{MARK}Harriet Vandermolen{MARK}",
        client_dob=date(1970, 5, 4),
        presenting_problem=f"{MARK}Insomnia{MARK}",
        treatment_focus=focus,
        release_on_file=True,
        closed_on=date(2026, 11, 20),
        closing_summary=f"{MARK}Better{MARK}",
    )
    context = context_for(
        settings, rule, Bundle(follow_up, referral=referral, physician=doctor), release=True
    )
    job = Rendering(
        templates or Templates(settings.templates_dir), rule, context, 7, settings, "0" * 32
    )
    return build_draft(job, now=NOW)


def header_names(raw: bytes) -> list[str]:
    """The header lines' names, split the strict way: at CRLF; a line that does not start
    with white space starts a header of its own."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].decode().lower()
        for line in head.split(b"\r\n")
        if line and not line[:1].isspace()
    ]


def refused(settings, **kw) -> str:
    with pytest.raises(RenderError) as caught:
        draft(settings, **kw)
    reason = str(caught.value)
    assert MARK not in reason and "attacker" not in reason and "=?" not in reason, reason
    return reason


# --- 1. header injection through RFC 2047 encoded words ---------------------------------


def test_an_encoded_word_in_the_subject_is_refused_naming_the_header(home):
    reason = refused(load(home), ref=f"R-1 {INJECTION}")
    assert "subject" in reason.lower() and "encoded word" in reason


def test_an_encoded_word_in_the_to_name_is_refused_naming_the_header(home):
    reason = refused(load(home), physician=f"Dr. {INJECTION}")
    assert "physician name" in reason and "encoded word" in reason


def test_an_encoded_word_in_the_from_name_is_refused(home):
    reason = refused(load(home, therapist=f"Dana {INJECTION}"))
    assert "therapist name" in reason and "encoded word" in reason


def test_an_encoded_word_in_an_address_is_refused(home):
    reason = refused(load(home), email_="=?utf-8?q?evil?=@lakeside-im.example")
    assert "physician email" in reason


def test_a_plain_draft_carries_the_bytes_it_was_checked_with(home):
    made = draft(load(home))
    assert made.raw and made.as_bytes() == made.raw
    assert sorted(header_names(made.raw)) == sorted(HEADERS)
    parsed = email.message_from_bytes(made.raw, policy=email.policy.default)
    assert parsed["To"] == '"Dr. Miriam Okafor" <m.okafor@lakeside-im.example>'
    assert parsed["Subject"] == "Your referral of November 2, 2026 (our ref R-1)"
    assert parsed["Message-ID"] == made.message_id


@pytest.fixture
def unguarded(monkeypatch):
    """The encoded-word refusal switched off: what is left is the check of the bytes."""
    monkeypatch.setattr(render.headers, "ENCODED_WORD", re.compile(r"(?!)"), raising=False)


@pytest.mark.parametrize("field", ["ref", "physician"])
def test_the_bytes_are_read_back_and_an_injected_header_is_refused(home, unguarded, field):
    """Safety must not hang on the interpreter's patch level: even when the serializer
    turns an encoded word into a header line, the draft is refused before it exists."""
    reason = refused(load(home), **{field: f"x {INJECTION}"})
    assert "header" in reason and "read back" in reason


@pytest.mark.parametrize(
    ("header", "written"),
    [
        ("to", '"Dr. Okafor" <m.okafor@lakeside-im.example>, <evil@attacker.example>'),
        ("to", '"Dr. Okafor" <evil@attacker.example>'),
        ("to", '"Dr. Evil" <m.okafor@lakeside-im.example>'),
        ("from", '"Ana Reyes" <evil@attacker.example>'),
    ],
)
def test_an_address_header_that_reads_back_otherwise_is_refused(home, header, written):
    """The read-back of To and From is remembered per value (every draft has the same
    From): a value that was fine once does not make a different one pass."""
    made = draft(load(home))
    block = render.headers.check_header_block(made.raw)
    envelope = render.headers.Envelope(
        sender=render.headers.Address("Ana Reyes", addr_spec="ana@reyes-therapy.example"),
        to=render.headers.Address("Dr. Okafor", addr_spec="m.okafor@lakeside-im.example"),
        to_what="physician",
        subject=str(block["subject"]).strip(),
        date=block["date"].strip(),
        message_id=made.message_id,
        tag=block["x-followupd-id"].strip(),
    )
    fine = {
        **block,
        "to": ' "Dr. Okafor" <m.okafor@lakeside-im.example>',
        "from": ' "Ana Reyes" <ana@reyes-therapy.example>',
    }
    render.headers.check_parsed(fine, envelope)  # read back as meant (and remembered)
    with pytest.raises(RenderError, match=f"the {header.title()} header did not read back"):
        render.headers.check_parsed({**fine, header: f" {written}"}, envelope)


def test_a_name_the_serializer_chokes_on_fails_with_the_step_and_type_only(home, unguarded):
    reason = refused(load(home), physician=CRASHER)
    assert reason == "serializing the message failed (UnicodeEncodeError)"


@pytest.mark.parametrize("ref", ["R-\udcff", "R-\ud800"])
def test_a_value_that_is_not_text_is_refused_before_the_email_package_sees_it(home, ref):
    reason = refused(load(home), ref=ref)
    assert reason.startswith("subject is not valid Unicode text")


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1b"])
def test_control_characters_never_reach_a_header(home, char):
    reason = refused(load(home), physician=f"Dr. X{char}Bcc: x@attacker.example")
    assert "physician name" in reason


# --- 2. one bad item does not block a batch ----------------------------------------------


def test_one_bad_physician_name_fails_that_follow_up_and_the_batch_of_50_goes(home, tmp_path):
    url = f"sqlite:///{tmp_path / 'batch.sqlite3'}"
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": url})
    assert settings.config.delivery.backend == "outbox"
    store = Store(url)
    received = (date.today() - timedelta(days=10)).isoformat()
    rows = [
        {
            "ref": f"B-{n}",
            "received_on": received,
            "physician": f"Dr. Batch {n}",
            "physician_email": f"batch{n}@clinic.example",
            "client_name": "Test Client",
            "presenting_problem": "Synthetic",
            "release_on_file": "yes",
        }
        for n in range(50)
    ]
    with store.session() as session:
        upsert_referrals(session, [parse_referral(row) for row in rows], Directory())
        # data entry refuses "=?" in a name now; a database written by other means might not
        session.execute(
            sa.update(Physician).where(Physician.name == "Dr. Batch 17").values(name=CRASHER)
        )
    engine = Engine(settings, store)
    report = engine.tick()
    with store.session() as session:
        ledger = {r.id: r for r in session.execute(sa.select(FollowUp)).scalars()}
        bad = session.execute(sa.select(Referral.id).where(Referral.ref == "B-17")).scalar_one()
    engine.close()
    store.close()
    [failed] = [r for r in ledger.values() if r.state != "done"]
    assert failed.subject_id == bad and failed.state == "failed", (failed.state, failed.reason)
    assert "physician name" in failed.reason and "=?" not in failed.reason
    assert len(report.failed) == 1 and len(report.delivered) == 49
    drafts = home / "outbox" / "drafts"
    assert sorted(p.name for p in drafts.glob("*.eml")) == sorted(
        f"{r.id}.eml" for r in ledger.values() if r.state == "done"
    )
    assert not (drafts / f"{failed.id}.eml").exists()


# --- 3. templates are code: the sandbox ---------------------------------------------------


def visit_reminder(settings):
    rule = rule_of(settings, "office-revisit")
    follow_up = FollowUp(
        id=9,
        rule=rule.name,
        subject_type="visit",
        subject_id=1,
        kind="reminder",
        state="claimed",
        attempts=1,
    )
    office = Practice(id=1, key="lakeside", name="Lakeside Internal Medicine")
    visit = Visit(id=1, key="v", visited_on=date(2026, 11, 2), practice_id=1)
    context = context_for(
        settings, rule, Bundle(follow_up, visit=visit, practice=office), release=False
    )
    job = Rendering(Templates(settings.templates_dir), rule, context, 9, settings, "0" * 32)
    return build_reminder(job, remind_at=NOW)


@pytest.mark.parametrize(
    "snippet",
    [
        "{{ lipsum.__globals__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% set _ = practice.update({'name': 'x'}) %}",
    ],
)
def test_a_home_template_cannot_reach_python_internals(home, snippet):
    (home / "templates").mkdir()
    (home / "templates" / "revisit.txt.j2").write_text(f"Title: Revisit\n\n{snippet}\n")
    with pytest.raises(RenderError) as caught:
        visit_reminder(load(home))
    assert str(caught.value) == "template revisit.txt.j2:3: the template tried an unsafe operation"


def test_the_default_reminder_still_renders_in_the_sandbox(home):
    reminder = visit_reminder(load(home))
    assert reminder.title == "Revisit Lakeside Internal Medicine: more cards and handouts"


# --- 4. no values in template errors ------------------------------------------------------


def with_template(home, name: str, text: str) -> configuration.Settings:
    (home / "templates").mkdir(exist_ok=True)
    (home / "templates" / name).write_text(text)
    return load(home)


ACK_HEAD = "Subject: Hello {{ referral.ref }}\n\nDear {{ recipient.salutation }},\n"


def test_a_missing_key_taken_from_the_data_is_not_named(home):
    settings = with_template(
        home,
        "acknowledgement.txt.j2",
        ACK_HEAD + ('{% set focus_names = {"cbt": "CBT"} %}{{ focus_names[client.focus] }}\n'),
    )
    reason = refused(settings, focus=f"{MARK}psychodynamic{MARK}")
    assert reason == (
        "template acknowledgement.txt.j2:4: a key or attribute taken from the data is missing"
    )


def test_a_missing_variable_written_in_the_template_is_named(home):
    settings = with_template(home, "acknowledgement.txt.j2", ACK_HEAD + "{{ nosuchvariable }}\n")
    reason = refused(settings)
    assert reason == "template acknowledgement.txt.j2:4: 'nosuchvariable' is undefined"


def test_a_missing_attribute_written_in_the_template_is_named(home):
    settings = with_template(
        home, "acknowledgement.txt.j2", ACK_HEAD + '{{ client.outcome }} {{ client["score"] }}\n'
    )
    assert refused(settings) == ("template acknowledgement.txt.j2:4: no attribute or key 'outcome'")


def test_an_error_in_an_included_template_names_that_template(home):
    with_template(home, "_signature.txt.j2", "{{ therapist.name }}\n{{ therapist.pager }}\n")
    reason = refused(load(home))
    assert reason == "template _signature.txt.j2:2: no attribute or key 'pager'"


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("client.focus.format()", "KeyError"),  # KeyError('secret'): a piece of the value
        ("client.focus + 1", "TypeError"),
        ("1 / 0", "ZeroDivisionError"),
        ("client.focus.index('nowhere')", "ValueError"),
    ],
)
def test_other_errors_while_rendering_give_the_type_only(home, expression, error):
    settings = with_template(home, "acknowledgement.txt.j2", ACK_HEAD + f"{{{{ {expression} }}}}\n")
    reason = refused(settings, focus=f"{MARK}{{secret}}{MARK}")
    assert reason == f"template acknowledgement.txt.j2:4: {error}"


def test_an_unsafe_operation_in_a_draft_template_is_refused(home):
    settings = with_template(
        home, "acknowledgement.txt.j2", ACK_HEAD + "{{ client.__class__.__mro__ }}\n"
    )
    assert refused(settings) == (
        "template acknowledgement.txt.j2:4: the template tried an unsafe operation"
    )


# --- 5. international domains -------------------------------------------------------------


def test_a_non_ascii_domain_is_written_in_idna(home):
    made = draft(load(home), email_="dr@münchen.example")
    [to] = [line for line in made.raw.split(b"\r\n") if line.startswith(b"To:")]
    assert to == b'To: "Dr. Miriam Okafor" <dr@xn--mnchen-3ya.example>'


def test_a_non_ascii_local_part_is_refused(home):
    reason = refused(load(home), email_="dänä@clinic.example")
    assert "physician email" in reason and "non-ASCII" in reason


def test_a_non_ascii_practice_domain_gives_an_ascii_message_id_and_from(home):
    made = draft(load(home, email="dana@thérapie.example"))
    assert made.message_id.endswith("@xn--thrapie-cya.example>")
    # the identity the engine computes to find the draft again is the one written
    assert render.message_id("0" * 32, 7, "thérapie.example") == made.message_id
    parsed = email.message_from_bytes(made.raw, policy=email.policy.default)
    assert parsed["From"].addresses[0].addr_spec == "dana@xn--thrapie-cya.example"
    assert parsed["Message-ID"] == made.message_id


@pytest.mark.parametrize("domain", ["bad domain.example", "x>y.example", "-.example", ""])
def test_a_message_domain_that_is_not_a_domain_is_refused(home, domain):
    settings = load(home)
    practice = settings.config.practice.model_copy(update={"mail_domain": domain or "."})
    settings = replace(settings, config=settings.config.model_copy(update={"practice": practice}))
    assert "message domain" in refused(settings)


def test_the_default_home_still_renders_every_draft_rule(home):
    settings = load(home)
    for rule in ("referral-acknowledgement", "closing-note"):
        assert sorted(header_names(draft(settings, rule=rule).raw)) == sorted(HEADERS)


def test_a_long_subject_is_not_folded_right_after_its_name(home):
    """A subject a little over 78 characters once came out as "Subject:" and the text on the
    next line, which some readers show with a leading space."""
    made = draft(load(home), rule="closing-note", ref="DEMO-30")
    assert b"Subject:\r\n" not in made.raw and b"\r\nSubject: Treatment summary" in made.raw
    parsed = email.message_from_bytes(made.raw, policy=email.policy.default)
    assert str(parsed["Subject"]).endswith("(our ref DEMO-30)")


def test_a_subject_folded_onto_a_second_line_reads_back_as_written(home):
    """A subject over the 998-character line limit is folded; it reads back with the fold's
    white space in front, which is not a change of subject."""
    settings = with_template(
        home,
        "acknowledgement.txt.j2",
        "Subject: " + "word " * 210 + "{{ referral.ref }}\n\nHello\n",
    )
    made = draft(settings, ref="DEMO-31")
    assert b"\r\n word" in made.raw.split(b"\r\n\r\n")[0]  # folded
    parsed = email.message_from_bytes(made.raw, policy=email.policy.default)
    assert str(parsed["Subject"]).strip().endswith("word DEMO-31")


def test_a_missing_included_template_is_still_a_start_up_problem(home):
    settings = with_template(
        home, "acknowledgement.txt.j2", ACK_HEAD + '{% include "_nowhere.txt.j2" %}\n'
    )
    problems = Templates(settings.templates_dir).problems(settings.config.rules)
    assert any("_nowhere.txt.j2 not found" in p for p in problems), problems
