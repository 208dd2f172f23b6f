"""Configuration and templates are code, `.env` is a secret: a home where other users may read
or change them is refused before anything is parsed, naming each file and the `chmod` that
fixes it (as ssh refuses a private key that others can read).

Each case counts into the trust summary (`tests/trust.py`) as `permission.cases`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat

import pytest
import trust

from conftest import run_cli
from followupd import config as configuration
from followupd.resources import default_templates_dir


def problems(home) -> list[str]:
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(home, environ={})
    return caught.value.problems


def loads(home) -> None:
    assert configuration.load(home, environ={}).home == home


def with_templates(home):
    """The home's own templates (0700 folder, 0600 files), as `followupd init` should write."""
    folder = home / "templates"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    for source in sorted(default_templates_dir().glob("*.j2")):
        shutil.copyfile(source, folder / source.name)
        os.chmod(folder / source.name, 0o600)
    return folder


def line(path, mode: int, how: str, fix: int) -> str:
    return (
        f"{path}: {how} by other users (mode {mode:04o}); "
        f"fix it with: chmod {fix:o} {shlex.quote(str(path))}"
    )


CASES = [
    ("followupd.yaml", 0o644, "readable", 0o600),
    ("followupd.yaml", 0o666, "readable and writable", 0o600),
    ("followupd.yaml", 0o620, "writable", 0o600),
    (".env", 0o644, "readable", 0o600),
    ("templates", 0o755, "readable", 0o700),
    ("templates", 0o777, "readable and writable", 0o700),
    ("templates/acknowledgement.txt.j2", 0o644, "readable", 0o600),
    ("templates/letters/custom.txt.j2", 0o604, "readable", 0o600),
    ("templates/letters", 0o770, "readable and writable", 0o700),
]


@pytest.mark.parametrize(
    ("name", "mode", "how", "fix"), CASES, ids=[f"{name}-{mode:o}" for name, mode, _, _ in CASES]
)
def test_a_file_others_may_read_or_write_is_refused_with_its_chmod(home, name, mode, how, fix):
    trust.record("permission", cases=1)
    with_templates(home)
    (home / "templates" / "letters").mkdir(mode=0o700)
    (home / "templates" / "letters" / "custom.txt.j2").write_text("{{ practice.therapist }}\n")
    (home / ".env").write_text("FOLLOWUPD_DELIVERY=outbox\n")
    loads(home)  # all private: fine

    target = home / name
    os.chmod(target, mode)
    assert problems(home) == [line(target, mode, how, fix)]

    os.chmod(target, fix)
    loads(home)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o720], ids=oct)
def test_a_home_others_may_write_is_refused_with_chmod_700(home, mode):
    """Someone who may write the home may swap followupd.yaml or templates/ for their own."""
    trust.record("permission", cases=1)
    os.chmod(home, mode)
    try:
        assert problems(home) == [line(home, mode, "writable", 0o700)]
    finally:
        os.chmod(home, 0o700)
    loads(home)


def test_a_shared_folder_as_home_is_refused_without_advice_to_chmod_it(home):
    """A sticky folder others may write (like /tmp) is shared by design: chmod 700 would
    break it for everyone; the fix is a home of one's own."""
    trust.record("permission", cases=1)
    os.chmod(home, 0o1777)
    try:
        [problem] = problems(home)
    finally:
        os.chmod(home, 0o700)
    assert problem.startswith(f"{home}: writable by other users (mode 1777); ")
    assert "chmod" not in problem and "--home" in problem


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755], ids=oct)
def test_a_home_others_may_only_read_is_accepted(home, mode):
    trust.record("permission", cases=1)
    os.chmod(home, mode)
    loads(home)
    os.chmod(home, 0o700)


def test_every_problem_is_reported_at_once_and_before_parsing(home):
    """An exposed configuration is not read at all: its (broken) YAML is not reported."""
    trust.record("permission", cases=1)
    folder = with_templates(home)
    (home / "followupd.yaml").write_text("practice: [unclosed\n")
    (home / ".env").write_text("FOLLOWUPD_OUTBOX=elsewhere\n")
    template = folder / "closing.txt.j2"
    for path, mode in (
        (home / "followupd.yaml", 0o644),
        (home / ".env", 0o644),
        (folder, 0o755),
        (template, 0o666),
        (home, 0o777),
    ):
        os.chmod(path, mode)
    try:
        found = problems(home)
    finally:
        os.chmod(home, 0o700)
    assert found == [
        line(home, 0o777, "writable", 0o700),
        line(home / "followupd.yaml", 0o644, "readable", 0o600),
        line(home / ".env", 0o644, "readable", 0o600),
        line(folder, 0o755, "readable", 0o700),
        line(template, 0o666, "readable and writable", 0o600),
    ]
    assert not any("YAML" in problem for problem in found)


def test_the_shipped_templates_belong_to_the_installation_and_are_not_checked(home):
    """A home without templates/ uses the package's own, whatever their mode (0644 there)."""
    trust.record("permission", cases=1)
    shipped = sorted(default_templates_dir().glob("*.j2"))
    assert shipped
    modes = {stat.S_IMODE(path.stat().st_mode) for path in shipped}
    assert not (home / "templates").exists()
    loads(home)
    if not any(mode & 0o077 for mode in modes):
        pytest.skip("the shipped templates are private in this installation")


def test_check_exits_2_naming_the_file_and_the_fix(home):
    trust.record("permission", cases=1)
    os.chmod(home / "followupd.yaml", 0o644)
    ran = run_cli("--home", str(home), "check", log_to=home.parent, env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 2, ran.stdout + ran.stderr
    shown = home / "followupd.yaml"
    assert line(shown, 0o644, "readable", 0o600) in ran.stderr.splitlines()
    assert "Traceback" not in ran.stderr + ran.stdout
