"""Header injection, fuzzed: RFC 2047 encoded words and their relatives, 100,000 of them, in
every value that reaches a mail header (the ref in the Subject, the physician's name and
address in To, the therapist's name in From).

Each case is refused (RenderError) or gives a draft whose bytes hold exactly followupd's
headers, each once, with one To address: the one meant. Anything else is an injection; any
other exception is a crash. Both must be 0.

Two modes: `shipped` is build_draft as it is; `unguarded` switches off the refusal of encoded
words, so that what stands between a decoder's line break and a header line is the check of
the serialized bytes alone (the interpreter may or may not write the break out: on 3.11.7 it
does). Cases come from a seeded `random.Random` (hypothesis is too slow for this many), so a
failure reproduces from its mode and chunk.
"""

from __future__ import annotations

import base64
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.parser import BytesParser
from email.policy import default as default_policy
from types import SimpleNamespace

import pytest
import trust
from email_validator import EmailNotValidError, validate_email

from followupd import config as configuration
from followupd import render
from followupd.models import Bundle
from followupd.render import RenderError, Rendering, Templates, build_draft, context_for
from followupd.resources import default_config_dir

HEADERS = Counter(
    [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "x-followupd-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    ]
)
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
CHUNKS = {"shipped": (7, 10_000), "unguarded": (6, 5_000)}  # mode: (chunks, cases in each)
FIELDS = ("ref", "physician", "email", "therapist")

# --- the encoded-word family -------------------------------------------------------------

EVIL = "evil@attacker.example"
PAYLOADS = [
    f"\r\nBcc: {EVIL}",
    f"\nBcc: {EVIL}",
    f"\rBcc: {EVIL}",
    f"\r\nTo: {EVIL}",
    f"\r\nCc: {EVIL}",
    "\r\nSubject: pwned",
    "\r\n\r\nbody",
    f"\r\n Bcc: {EVIL}",
    f"\r\n\tTo: {EVIL}",
    f"\u2028Bcc: {EVIL}",
    f"\u2029To: {EVIL}",
    f"\x85Bcc: {EVIL}",
    f"\x0bBcc: {EVIL}",
    f"\x0cBcc: {EVIL}",
    f"\x1cTo: {EVIL}",
    f"\x00Bcc: {EVIL}",
    f">, {EVIL}",
    f'", {EVIL}',
    f"; {EVIL}",
    f"<{EVIL}>",
    f'"x" <{EVIL}>',
    f", {EVIL}",
    f"Bcc: {EVIL}",
    f"To: {EVIL}",
    "Subject: pwned",
    f"group: {EVIL};",
    f"\\\r\nBcc: {EVIL}",
    "?=",
    "=?",
    '"',
    "<",
    ">",
    ",",
    ";",
    ":",
    "\\",
    "(",
    ")",
    "@",
    "Ü",
    "日本",
    "\U0001f600",
]
CHARSETS = [
    "utf-8",
    "UTF-8",
    "us-ascii",
    "iso-8859-1",
    "latin-1",
    "unknown-8bit",
    "utf-8*en",
    "utf-16",
    "x-bogus",
    "",
    "utf-8?q",
    "*",
]
ENCODINGS = ["q", "Q", "b", "B", "x", "", "qq"]
FILLERS = [
    "Dr. ",
    "Miriam Okafor",
    "R-1",
    " ",
    "  ",
    "\t",
    "a",
    "Okafor, MD",
    "O'Brien",
    "(comment)",
    '"quoted"',
    "=",
    "?",
    "_",
    "=0D=0A",
    "=0A",
    "=0D",
    "=00",
    "=3F=3D",
]
CRASHER = '=?utf-8?b?~d:>=22Bcc:wF"<dw?=h=)'


def q_encode(rnd: random.Random, data: bytes) -> str:
    """Q-encoding, sometimes leaving characters as they are (invalid, but decoders try)."""
    out = []
    for byte in data:
        char = chr(byte)
        if char == " " and rnd.random() < 0.7:
            out.append("_")
        elif char.isalnum() and byte < 128 and rnd.random() < 0.8:
            out.append(char)
        elif rnd.random() < 0.9:
            out.append(f"={byte:02X}" if rnd.random() < 0.8 else f"={byte:02x}")
        else:
            out.append(char)
    return "".join(out)


def b_encode(rnd: random.Random, data: bytes) -> str:
    """Base64, sometimes broken (padding gone, junk in it: decoders guess)."""
    text = base64.b64encode(data).decode()
    roll = rnd.random()
    if roll < 0.2:
        text = text.rstrip("=")
    elif roll < 0.4:
        at = rnd.randrange(len(text) + 1)
        text = text[:at] + rnd.choice(["~", '"', "<", ">", ":", "=", "?", " ", "\r\n"]) + text[at:]
    return text


def encoded_word(rnd: random.Random) -> str:
    payload = "".join(rnd.choice(PAYLOADS + FILLERS) for _ in range(rnd.randint(1, 3)))
    data = payload.encode("utf-8", "surrogatepass")
    encoding = rnd.choice(ENCODINGS)
    if encoding.lower() == "b":
        text = b_encode(rnd, data)
    elif rnd.random() < 0.1:
        text = payload  # unencoded: a raw break inside the word
    else:
        text = q_encode(rnd, data)
    end = rnd.choice(["?=", "?=", "?=", "?=", "", "?", "=", "?= "])
    return f"=?{rnd.choice(CHARSETS)}?{encoding}?{text}{end}"


def fuzz_value(rnd: random.Random) -> str:
    """Mostly encoded words; some raw payloads (a raw break is refused early, so they are
    few: the encoded ones are what reaches the serializer)."""
    parts = []
    for _ in range(rnd.randint(1, 4)):
        roll = rnd.random()
        if roll < 0.65:
            parts.append(encoded_word(rnd))
        elif roll < 0.73:
            parts.append(rnd.choice(PAYLOADS))
        elif roll < 0.75:
            parts.append(CRASHER)
        else:
            parts.append(rnd.choice(FILLERS))
    return rnd.choice(["", " ", " ", "\t", "  ", "\r\n "]).join(parts)


def fuzz_email(rnd: random.Random) -> str:
    value = fuzz_value(rnd)
    return rnd.choice(
        [
            value,
            f"{value}@clinic.example",
            f"dr@{value}",
            f"dr.{value}@clinic.example",
            f"dr@clinic.example{value}",
            f"{value}dr@münchen.example",
            "dr@münchen.example",
            f"dr@clinic.example, {EVIL}",
            "m.okafor@lakeside-im.example",
        ]
    )


@dataclass
class Case:
    ref: str = "R-1"
    physician: str = "Dr. Miriam Okafor"
    email: str = "m.okafor@lakeside-im.example"
    therapist: str | None = None  # None: the configuration's

    @classmethod
    def make(cls, rnd: random.Random) -> Case:
        case = cls()
        for name in rnd.sample(FIELDS, rnd.choice([1, 1, 1, 2, 4])):
            setattr(case, name, fuzz_email(rnd) if name == "email" else fuzz_value(rnd))
        return case


# --- running and judging a case ----------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    refused: int = 0
    accepted: int = 0
    injections: list = field(default_factory=list)
    crashes: list = field(default_factory=list)
    echoed: list = field(default_factory=list)  # a reason that repeats a fuzzed value


@pytest.fixture(scope="module")
def drafting(tmp_path_factory):
    home = tmp_path_factory.mktemp("header-fuzz")
    shutil.copyfile(default_config_dir() / "followupd.yaml", home / "followupd.yaml")
    settings = configuration.load(home, environ={})
    rule = next(r for r in settings.config.rules if r.name == "referral-acknowledgement")
    return settings, Templates(settings.templates_dir), rule


def render_case(drafting, case: Case):
    settings, templates, rule = drafting
    if case.therapist is not None:
        practice = settings.config.practice.model_copy(update={"therapist": case.therapist})
        settings = replace(
            settings, config=settings.config.model_copy(update={"practice": practice})
        )
    # Plain stand-ins for the rows (what context_for reads): SQLModel rows cost a third of
    # a case's time.
    follow_up = SimpleNamespace(id=7, rule=rule.name)
    doctor = SimpleNamespace(name=case.physician, email=case.email, fax=None, specialty=None)
    referral = SimpleNamespace(
        ref=case.ref,
        received_on=date(2026, 11, 2),
        closed_on=None,
        release_on=None,
        client_name="Test Client",
        client_dob=None,
        presenting_problem=None,
        treatment_focus=None,
        closing_summary=None,
    )
    bundle = Bundle(follow_up, referral=referral, physician=doctor)
    context = context_for(settings, rule, bundle, release=True)
    job = Rendering(templates, rule, context, 7, settings, "0" * 32)
    return build_draft(job, now=NOW), settings


def intended(address: str) -> str | None:
    try:
        return validate_email(address.strip(), check_deliverability=False).ascii_email
    except EmailNotValidError:
        return None


def injection(raw: bytes, to: str | None, sender: str) -> str | None:
    """What is wrong with an accepted draft's bytes, judged without followupd's own check."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = Counter(
        line.split(b":", 1)[0].decode("ascii", "replace").lower()
        for line in head.split(b"\r\n")
        if line and not line[:1].isspace()
    )
    if names != HEADERS:
        return f"header lines {sorted(names)}"
    lenient = Counter(
        line.split(b":", 1)[0].decode("ascii", "replace").lower()
        for line in head.splitlines()
        if line and not line[:1].isspace()
    )
    if lenient != HEADERS:  # a reader that breaks lines at a bare CR or LF
        return f"header lines split leniently {sorted(lenient)}"
    parsed = BytesParser(policy=default_policy).parsebytes(raw, headersonly=True)
    if Counter(name.lower() for name in parsed) != HEADERS:
        return f"parsed headers {sorted(parsed.keys())}"
    addresses = [a.addr_spec for a in parsed["To"].addresses]
    if to is None or addresses != [to]:
        return f"To {addresses}, meant {to}"
    senders = [a.addr_spec for a in parsed["From"].addresses]
    if senders != [sender]:
        return f"From {senders}"
    return None


def run_case(drafting, case: Case, tally: Tally) -> None:
    tally.cases += 1
    try:
        draft, settings = render_case(drafting, case)
    except RenderError as exc:
        tally.refused += 1
        if "attacker" in str(exc) or "=?" in str(exc):
            tally.echoed.append((case, str(exc)))
        return
    except Exception as exc:
        tally.crashes.append((case, f"{type(exc).__name__}: {exc}"))
        return
    tally.accepted += 1
    wrong = injection(
        draft.as_bytes(), intended(case.email), intended(settings.config.practice.email)
    )
    if wrong:
        tally.injections.append((case, wrong, draft.as_bytes()[:600]))


def fixed_cases() -> list[Case]:
    """The reported ones, in each field."""
    values = ["=?utf-8?q?a=0D=0ABcc:_evil@attacker.example?=", CRASHER]
    return [Case(**{name: value}) for value in values for name in ("ref", "physician", "therapist")]


@pytest.mark.slow  # 100,000 cases in 13 chunks of 7-25 s each: minutes of CPU in all
@pytest.mark.parametrize(
    ("mode", "chunk"),
    [(mode, chunk) for mode, (chunks, _) in CHUNKS.items() for chunk in range(chunks)],
)
def test_encoded_words_never_inject_a_header(drafting, monkeypatch, mode, chunk):
    if mode == "unguarded":
        monkeypatch.setattr(render.headers, "ENCODED_WORD", re.compile(r"(?!)"))
    rnd = random.Random(f"header-fuzz:{mode}:{chunk}")
    tally = Tally()
    started = time.perf_counter()
    for case in fixed_cases() if chunk == 0 else []:
        run_case(drafting, case, tally)
    for _ in range(CHUNKS[mode][1]):
        run_case(drafting, Case.make(rnd), tally)
    seconds = time.perf_counter() - started
    trust.record(
        "injection",
        cases=tally.cases,
        injections=len(tally.injections),
        accepted=tally.accepted,
        refused=tally.refused,
        crashes=len(tally.crashes),
    )
    print(
        f"header fuzz {mode}/{chunk}: {tally.cases} cases, {tally.refused} refused, "
        f"{tally.accepted} accepted, {len(tally.injections)} injections, "
        f"{len(tally.crashes)} crashes, {seconds:.1f} s"
    )
    assert not tally.crashes, tally.crashes[:3]
    assert not tally.injections, tally.injections[:3]
    assert not tally.echoed, tally.echoed[:3]
    assert tally.accepted > 0  # the family is not refused wholesale: the check has work


def test_ordinary_names_and_addresses_are_accepted(drafting):
    """Refusing is safe but not free: real names, punctuation and IDNA domains go through."""
    cases = [
        Case(physician="Miriam Okafor, MD"),
        Case(physician="Dr. Seán O'Brien-Ng"),
        Case(physician="Dr. 山田 太郎"),
        Case(physician='Dr. "Mo" Ali (IM)'),
        Case(email="dr@münchen.example"),
        Case(ref="R-2026/11 #4; urgent?"),
        Case(therapist="Dana Reyes-Ünal"),
        Case(ref="x" * 300),
    ]
    for case in cases:
        draft, settings = render_case(drafting, case)
        assert (
            injection(
                draft.as_bytes(), intended(case.email), intended(settings.config.practice.email)
            )
            is None
        ), case
