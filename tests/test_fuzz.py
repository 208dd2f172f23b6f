"""Bad input, fuzzed: every input is accepted or refused with a clear message; never a
traceback, never an injected header line, never a patient value in an error.

Each property counts its inputs into the trust summary (`tests/trust.py`).
"""

from __future__ import annotations

import email
import email.policy
import shutil
import string
from datetime import UTC, date, datetime

import pytest
import trust
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from followupd import config as configuration
from followupd.config import ConfigError
from followupd.models import Bundle, FollowUp, Physician, Referral
from followupd.records import RowError, parse_referral, parse_visit
from followupd.render import RenderError, Rendering, Templates, build_draft, context_for
from followupd.resources import default_config_dir

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any Unicode (control characters, line separators, surrogates excluded by Python's str),
# very long values, and cells a spreadsheet would run as a formula.
nasty_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(
        [
            "=cmd|' /C calc'!A0",
            "+SUM(1,2)",
            "-2+3",
            '@HYPERLINK("x")',
            "a\r\nBcc: evil@example.com",
            "x\nSubject: hi",
            "\u2028",
            "\x00",
            "\x1b[31m",
            "",
            " ",
            "yes",
            "no",
            "2026-02-30",
            "1984-03-09",
        ]
    ),
    st.text(alphabet=string.printable, min_size=1000, max_size=5000),
)
# RFC 2047 encoded words a decoder turns into a header line (tests/test_header_fuzz.py has
# 100,000 of their kind); here they meet every other field's nastiness.
ENCODED_WORDS = [
    "=?utf-8?q?a=0D=0ABcc:_evil@attacker.example?=",
    '=?utf-8?b?~d:>=22Bcc:wF"<dw?=h=)',
    "=?utf-8?b?DQpCY2M6IGV2aWxAYS5leGFtcGxl?=",
    "=?iso-8859-1?Q?=0ATo:_evil@attacker.example?=",
]
header_values = st.one_of(
    nasty_text,
    st.sampled_from(ENCODED_WORDS),
    st.builds(lambda text, word: f"{text} {word}", nasty_text, st.sampled_from(ENCODED_WORDS)),
)
MARK = "Qzx"  # patient values are fenced with this, to look for them in messages


class Crash(AssertionError):
    pass


def _not_leaked(message: str, values: list[str]) -> None:
    for value in values:
        assert f"{MARK}{value}{MARK}" not in message, "a patient value appeared in an error"


REFERRAL_COLUMNS = [
    "ref",
    "received_on",
    "physician",
    "physician_email",
    "specialty",
    "practice",
    "fax",
    "client_dob",
    "treatment_focus",
    "release_on_file",
    "release_on",
    "prescriber",
    "prescriber_email",
    "closed_on",
]


@FUZZ
@given(
    st.fixed_dictionaries({column: nasty_text for column in REFERRAL_COLUMNS}),
    nasty_text,
    nasty_text,
    nasty_text,
)
def test_any_csv_referral_row_is_accepted_or_refused_with_a_reason(row, name, problem, summary):
    trust.record("fuzz", inputs=1)
    patient = [name, problem, summary]
    row = {
        **row,
        "client_name": f"{MARK}{name}{MARK}",
        "presenting_problem": f"{MARK}{problem}{MARK}",
        "closing_summary": f"{MARK}{summary}{MARK}",
    }
    try:
        record = parse_referral(row)
    except RowError as exc:
        assert exc.column in row and str(exc).startswith(f"{exc.column}: ")
        _not_leaked(str(exc), patient)
        return
    except Exception as exc:  # anything else is a crash the user would see as a traceback
        trust.record("fuzz", crashes=1)
        raise Crash(f"{type(exc).__name__}: {exc}") from None
    assert record.client_name.startswith(MARK)


VISIT_COLUMNS = [
    "visited_on",
    "practice",
    "physician",
    "specialty",
    "business_manager",
    "cards_left",
    "handouts_left",
    "notes",
]


@FUZZ
@given(st.fixed_dictionaries({column: nasty_text for column in VISIT_COLUMNS}))
def test_any_csv_visit_row_is_accepted_or_refused_with_a_reason(row):
    trust.record("fuzz", inputs=1)
    try:
        parse_visit(row)
    except RowError as exc:
        assert exc.column in row
    except Exception as exc:
        trust.record("fuzz", crashes=1)
        raise Crash(f"{type(exc).__name__}: {exc}") from None


# --- configuration files -----------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.dates(),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
DEFAULT = yaml.safe_load((default_config_dir() / "followupd.yaml").read_text())


def _key_paths(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _key_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _key_paths(value, (*path, index))
    yield path


KEY_PATHS = [p for p in _key_paths(DEFAULT) if p]


@pytest.fixture(scope="module")
def fuzz_home(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-home")


def _load_config(home, text: str) -> None:
    (home / "followupd.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        configuration.load(home, environ={})
    except ConfigError as exc:
        assert exc.problems and all(
            p.startswith(str(home / "followupd.yaml")) for p in exc.problems
        ), exc.problems
    except Exception as exc:
        trust.record("fuzz", crashes=1)
        raise Crash(f"{type(exc).__name__}: {exc}") from None


@FUZZ
@given(
    st.one_of(documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=200))
)
def test_any_yaml_file_loads_or_is_refused_naming_the_file(fuzz_home, text):
    trust.record("fuzz", inputs=1)
    _load_config(fuzz_home, text)


@FUZZ
@given(st.sampled_from(KEY_PATHS), documents)
def test_a_wrong_value_at_any_key_is_refused_naming_the_file(fuzz_home, key_path, value):
    trust.record("fuzz", inputs=1)
    document = yaml.safe_load(yaml.safe_dump(DEFAULT))
    node = document
    for key in key_path[:-1]:
        node = node[key]
    node[key_path[-1]] = value
    _load_config(fuzz_home, yaml.safe_dump(document, allow_unicode=True))


# --- template contexts and header values -------------------------------------------------


@pytest.fixture(scope="module")
def drafting(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-draft")
    shutil.copyfile(default_config_dir() / "followupd.yaml", home / "followupd.yaml")
    loaded = configuration.load(home, environ={})
    rule = next(
        r for r in loaded.config.rules if r.make == "draft" and r.event == "referral.received"
    )
    return loaded, Templates(loaded.templates_dir), rule


HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "x-followupd-id",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
}


# Mostly a valid address: with a nasty one the draft is refused before a name is looked at.
emails = st.one_of(
    nasty_text, st.sampled_from(["m.okafor@lakeside-im.example", "dr@münchen.example"])
)


@FUZZ
@given(
    physician=header_values,
    physician_email=emails,
    client=nasty_text,
    problem=nasty_text,
    focus=nasty_text,
    ref=header_values,
)
def test_any_field_renders_a_clean_draft_or_is_refused(
    drafting, physician, physician_email, client, problem, focus, ref
):
    """Whatever reaches a template, the draft has exactly followupd's headers: a line break
    (or an encoded word that decodes to one) in a name, an address or the ref in the subject
    never becomes a header of its own."""
    trust.record("fuzz", inputs=1)
    loaded, templates, rule = drafting
    follow_up = FollowUp(
        id=7,
        rule=rule.name,
        subject_type="referral",
        subject_id=1,
        kind="draft",
        state="claimed",
        attempts=1,
    )
    doctor = Physician(id=1, key="k", name=physician, email=physician_email)
    referral = Referral(
        id=1,
        ref=ref,
        received_on=date(2026, 11, 2),
        physician_id=1,
        client_name=f"{MARK}{client}{MARK}",
        client_dob=date(1984, 3, 9),
        presenting_problem=f"{MARK}{problem}{MARK}",
        treatment_focus=f"{MARK}{focus}{MARK}",
        release_on_file=True,
    )
    bundle = Bundle(follow_up, referral=referral, physician=doctor)
    try:
        context = context_for(loaded, rule, bundle, release=True)
        job = Rendering(templates, rule, context, 7, loaded, "0" * 32)
        draft = build_draft(job, now=datetime(2026, 11, 23, 15, 0, tzinfo=UTC))
        raw = draft.raw  # made and checked at render time: what delivery writes
    except RenderError as exc:
        _not_leaked(str(exc), [client, problem, focus])
        return
    except Exception as exc:
        trust.record("fuzz", crashes=1)
        raise Crash(f"{type(exc).__name__}: {exc}") from None
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    names = {
        line.split(b":", 1)[0].decode().lower()
        for line in head.splitlines()
        if line and not line[:1].isspace()
    }
    assert names == HEADERS, names
    strict = [
        line.split(b":", 1)[0].decode().lower()
        for line in head.split(b"\r\n")
        if line and not line[:1].isspace()
    ]  # at CRLF only, each header once
    assert sorted(strict) == sorted(HEADERS), strict
    assert draft.as_bytes() == raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["X-Followupd-Id"].endswith(".7")
    assert len(parsed.get_all("To")) == 1 and len(parsed["To"].addresses) == 1
