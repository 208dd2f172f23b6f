"""followupd.yaml: a typo is an error naming file, line and key; the environment wins."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest

from conftest import run_cli
from followupd import config as configuration


def edit(home, old: str, new: str) -> None:
    path = home / "followupd.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def problems(home, environ=None) -> list[str]:
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(home, environ=environ or {})
    return caught.value.problems


def test_the_shipped_default_is_valid(home):
    settings = configuration.load(home, environ={})
    assert settings.config.practice.timezone == "America/Chicago"
    assert [r.name for r in settings.config.rules][:2] == [
        "referral-acknowledgement",
        "closing-note",
    ]
    assert settings.database_url == f"sqlite:///{home / 'followupd.sqlite3'}"
    assert settings.outbox_dir == home / "outbox"


def test_a_country_code_in_lower_case_is_the_same_country(home):
    """`country: us` is what a person types; the holidays package knows `US` only."""
    from followupd.engine.core import closed_days

    edit(home, "country: US", "country: us")
    settings = configuration.load(home, environ={})
    assert settings.config.holidays.country == "US"
    assert closed_days(settings).problem() is None


def test_every_key_of_the_default_has_a_comment():
    from followupd.resources import default_config_dir

    lines = (default_config_dir() / "followupd.yaml").read_text().splitlines()
    section = ""
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([a-z_]+):", line)
        if not match:
            continue
        if not match.group(1):
            section = match.group(2)
        # The entries of rules and specialty_chain are the user's own, documented above them.
        elif section in ("rules", "specialty_chain") or lines[index - 1].strip().startswith("- "):
            continue
        above = lines[index - 1].strip()
        assert above.startswith("#") or (
            lines[index - 1].rstrip().endswith(":") and line.strip().endswith(":")
        ), f"no comment above line {index + 1}: {line}"


def test_bad_duration_names_file_line_key_and_fix(home):
    edit(home, "after: 1 month", "after: 1 mnth")
    [problem] = problems(home)
    assert re.fullmatch(
        r'.*followupd\.yaml:\d+: rules\[3\]\.after: "1 mnth" is not a duration '
        r'\(try "3 days", "1 month", "2 business days"\)',
        problem,
    )
    line = int(problem.split(":")[1])
    assert "1 mnth" in (home / "followupd.yaml").read_text().splitlines()[line - 1]


def test_misspelt_key_suggests_the_right_one(home):
    edit(home, '  email: "dana', '  emial: "dana')
    found = problems(home)
    assert any('practice.emial: unknown key (did you mean "email"?)' in p for p in found)
    assert any("practice.email: required key is missing" in p for p in found)


def test_wrong_type(home):
    edit(home, "batch_size: 50", "batch_size: lots")
    [problem] = problems(home)
    assert "google.batch_size" in problem and "'lots'" in problem


def test_unknown_time_zone(home):
    edit(home, "America/Chicago", "America/Chicgo")
    [problem] = problems(home)
    assert 'practice.timezone: "America/Chicgo" is not an IANA time zone' in problem


def test_bad_email_event_and_time_of_day(home):
    edit(home, '"dana@reyes-therapy.example"', '"dana at reyes"')
    edit(home, "event: visit.logged", "event: visit.logd")
    edit(home, 'at: "10:00"', 'at: "25:00"')
    found = "\n".join(problems(home))
    assert 'practice.email: "dana at reyes" is not an email address' in found
    assert 'rules[3].event: "visit.logd" is not an event' in found
    assert 'rules[3].at: "25:00" is not a time of day' in found


def test_duplicate_rule_names(home):
    edit(home, "name: closing-note", "name: referral-acknowledgement")
    assert any("used twice" in p for p in problems(home))


def test_yaml_syntax_error_has_a_line(home):
    edit(home, "  poll: 5 minutes", "  poll: [5 minutes")
    [problem] = problems(home)
    assert re.match(r".*followupd\.yaml:\d+: not valid YAML", problem)


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(home):
    """YAML keeps the last of two equal keys; a second `lease:` added under `schedule:` must
    not silently lose to (or override) the first."""
    edit(home, "  lease: 5 minutes", "  lease: 5 minutes\n  lease: 15 seconds")
    [problem] = problems(home)
    assert re.match(
        r".*followupd\.yaml:(\d+): schedule\.lease: appears twice \(also on line "
        r"(\d+); keep one\)",
        problem,
    ), problem


def test_missing_and_empty_files(tmp_path):
    assert "followupd init" in problems(tmp_path)[0]
    (tmp_path / "followupd.yaml").write_text("")
    assert "empty" in problems(tmp_path)[0]


def test_environment_overrides_dotenv_overrides_yaml(home):
    (home / ".env").write_text("FOLLOWUPD_DELIVERY=google\nFOLLOWUPD_OUTBOX=from-dotenv\n")
    settings = configuration.load(home, environ={"FOLLOWUPD_OUTBOX": "from-env"})
    assert settings.config.delivery.backend == "google"
    assert settings.outbox_dir == home / "from-env"


def test_a_bad_environment_value_names_the_variable(home):
    found = problems(home, environ={"FOLLOWUPD_DELIVERY": "carrier-pigeon"})
    assert found[0].startswith("FOLLOWUPD_DELIVERY (overrides delivery.backend): ")


def test_next_specialty_chain(home):
    config = configuration.load(home, environ={}).config
    assert config.next_specialty("Internal Medicine") == "OB/GYN"
    assert config.next_specialty("internist") == "OB/GYN"
    assert config.next_specialty("obstetrics and gynecology") == "pediatrician"
    assert config.next_specialty("dermatology") is None


def test_cli_exits_2_with_no_traceback(home):
    edit(home, "after: 1 month", "after: 1 mnth")
    ran = run_cli("--home", str(home), "check", log_to=home.parent, env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 2
    assert "rules[3].after" in ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout


def test_check_passes_on_a_good_home(home):
    ran = run_cli("check", "--home", str(home), log_to=home.parent, env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    assert "is valid" in ran.stdout
    assert not (home / "followupd.sqlite3").exists()  # check changes nothing


def test_a_lease_shorter_than_two_call_timeouts_is_refused(home):
    edit(home, "  lease: 5 minutes", "  lease: 30 seconds")
    [problem] = problems(home)
    assert "schedule.lease (30 s) must be at least twice google.timeout (30 s)" in problem


# --- hostile or malformed YAML: refused quickly, with a line, never a traceback ------------

ALIASES_REFUSED = (
    "YAML anchors and aliases (&name, *name) are not allowed in followupd.yaml; write the value out"
)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Under 1 KB that expands to width**levels strings when aliases are followed."""
    names = [chr(ord("a") + level) for level in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(['"x"'] * width) + "]"]
    for previous, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]")
    return "\n".join(lines) + "\n"


# Runs load() in a child process, so a regression (hours of work, gigabytes of memory, a
# RecursionError) fails this test instead of hanging or exhausting the test run.
CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from followupd import config
start = time.monotonic()
try:
    config.load(sys.argv[1], environ={})
    result = {"problems": None}
except config.ConfigError as exc:
    result = {"problems": exc.problems}
except BaseException as exc:
    result = {"crash": f"{type(exc).__name__}: {str(exc)[:200]}"}
result["seconds"] = time.monotonic() - start
print(json.dumps(result))
"""


def load_in_a_child(home, deadline: float = 20.0) -> dict:
    try:
        ran = subprocess.run(
            [sys.executable, "-c", CHILD, str(home)],
            capture_output=True,
            text=True,
            timeout=deadline,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"config.load() was still running after {deadline:.0f} s")
    assert ran.returncode == 0, ran.stderr[-2000:]
    return json.loads(ran.stdout)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (billion_laughs(), 1),
        ("a: &a [*a]\n", 1),
        ("practice:\n  therapist: x\nrules: &r\n  - *r\n", 3),
    ],
    ids=["billion-laughs", "self-reference", "self-reference-nested"],
)
def test_yaml_aliases_are_refused_within_a_second(home, text, line):
    assert len(text.encode()) < 1024
    (home / "followupd.yaml").write_text(text)
    result = load_in_a_child(home)
    assert "crash" not in result, result["crash"]
    assert result["problems"] == [f"{home / 'followupd.yaml'}:{line}: {ALIASES_REFUSED}"]
    assert result["seconds"] < 1.0, result


def line_of(home, text: str) -> int:
    lines = (home / "followupd.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_an_anchor_or_an_alias_alone_is_refused_with_its_line(home):
    edit(home, "schedule:\n", "schedule: &times\n")
    assert problems(home) == [
        f"{home / 'followupd.yaml'}:{line_of(home, '&times')}: {ALIASES_REFUSED}"
    ]

    edit(home, "schedule: &times\n", "schedule:\n")
    edit(home, "  lease: 5 minutes\n", "  lease: 5 minutes\n  <<: *times\n")
    assert problems(home) == [
        f"{home / 'followupd.yaml'}:{line_of(home, '*times')}: {ALIASES_REFUSED}"
    ]


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ("  closed: []", "  closed: [2026-02-30]", "day is out of range"),
        ("batch_size: 50", "batch_size: " + "9" * 5000, "digits"),
    ],
    ids=["impossible-date", "huge-number"],
)
def test_a_value_yaml_cannot_read_is_refused_with_its_line(home, old, new, what):
    edit(home, old, new)
    [problem] = problems(home)
    line = line_of(home, new.strip())
    assert problem.startswith(f"{home / 'followupd.yaml'}:{line}: not valid YAML: ")
    assert what in problem


def test_yaml_nested_too_deeply_is_refused_not_a_recursion_error(home):
    (home / "followupd.yaml").write_text("practice: " + "[" * 2000 + "]" * 2000 + "\n")
    result = load_in_a_child(home)
    assert "crash" not in result, result["crash"]
    [problem] = result["problems"]
    assert problem.startswith(f"{home / 'followupd.yaml'}:1: ")
    assert "nested too deeply" in problem


def test_an_unknown_key_named_like_a_type_is_reported(home):
    """Found by the YAML fuzzer: a top-level `date:` crashed the error report."""
    (home / "followupd.yaml").write_text("date: null\n")
    with pytest.raises(configuration.ConfigError) as refused:
        configuration.load(home, environ={})
    assert any("date: unknown key" in problem for problem in refused.value.problems)


# --- a YAML mistake is reported at its own line (issue 15) ------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ('  therapist: "Dana Reyes"', '  therapist: "Dana Reyes', "never closed"),
        ('  phone: "(612) 555-0142"', "  phone: '(612) 555-0142", "never closed"),
        ("  poll: 5 minutes", "  poll: [5 minutes", "`[` opened here is never closed"),
        ("  poll: 5 minutes", "\tpoll: 5 minutes", "a tab character"),
        ("  sync: 15 minutes", "  sync:\t15 minutes", "a tab character"),
        ("  poll: 5 minutes", " poll: 5 minutes", "indented differently"),
        ("  poll: 5 minutes", "     poll: 5 minutes", "indented differently"),
        ("  sync: 15 minutes", " sync: 15 minutes", "indented differently"),
        ("  sync: 15 minutes", "    sync: 15 minutes", "indented"),
        ("  poll: 5 minutes", "  poll 5 minutes", "expected `key: value`"),
        ("  poll: 5 minutes", "  poll:5 minutes", "expected `key: value`"),
        ('  therapist: "Dana Reyes"', "  therapist: Dana: Reyes", "put the value in quotes"),
        ("  poll: 5 minutes", "  poll: 5 minutes\x07", "#x0007 is not allowed"),
    ],
    ids=[
        "unclosed-double-quote",
        "unclosed-single-quote",
        "unclosed-bracket",
        "tab-indent",
        "tab-after-colon",
        "first-key-less",
        "first-key-more",
        "key-less",
        "key-more",
        "no-colon",
        "no-space",
        "colon-in-value",
        "control-character",
    ],
)
def test_a_yaml_mistake_names_its_own_line_and_column(home, old, new, what):
    """The parser notices an unclosed quote or a key without its colon lines later (after a
    comment, at the next key, at the end of the file); the report names the line to fix."""
    edit(home, old, new)
    [problem] = problems(home)
    line = line_of(home, new.strip().rstrip("\x07"))
    match = re.fullmatch(
        rf"{re.escape(str(home / 'followupd.yaml'))}:(\d+): (.*) \(column (\d+)\)", problem
    )
    assert match, problem
    assert int(match.group(1)) == line, problem
    assert match.group(2).startswith("not valid YAML: ") and what in match.group(2), problem
    assert "\n" not in problem and "<block" not in problem and "scalar" not in problem
