"""Shared fixtures: a fresh followupd home, the CLI, and a database URL for each backend.

Tests that take `db_url` run against SQLite and, when FOLLOWUPD_TEST_POSTGRES_URL is set,
against the real PostgreSQL in a schema of their own that is dropped afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import trust
from typer.testing import CliRunner

from followupd.cli import app
from followupd.resources import default_config_dir

# What the suite writes (homes, configuration, templates, CSV files) is private, as followupd
# requires of its own files: refused when others may read or change them. Tests of that refusal
# set their own umask.
os.umask(0o077)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "sample"
POSTGRES_URL = os.environ.get("FOLLOWUPD_TEST_POSTGRES_URL")

# Patient values in the shipped sample files: none may ever appear outside the database.
SAMPLE_PATIENT_VALUES = (
    "Avery Quinlan",
    "1984-03-09",
    "Panic attacks",
    "Jordan Pelletier",
    "1991-07-22",
    "Low mood",
    "Casey Fairbanks",
    "1978-12-01",
    "Generalized worry",
)


def pytest_report_header(config):
    if POSTGRES_URL:
        return f"PostgreSQL tests: on ({sa.make_url(POSTGRES_URL).render_as_string()})"
    return "PostgreSQL tests: SKIPPED (set FOLLOWUPD_TEST_POSTGRES_URL to run them)"


# Tests marked `slow` (pyproject.toml: more than ~15 s on their own) start first, so the
# workers finish together rather than one of them starting the kill harness when everything
# else is done. The sort is stable: every worker collects the same order, as xdist requires.
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Files the suite leaves behind that may hold patient values by design: the database, the
# drafts (a note to the physician, released), and the CSV files fed in.
PHI_ALLOWED = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".eml", ".csv", ".pyc")


def scan_for_patient_values(root: Path) -> tuple[int, list[str]]:
    """(files read, "path: value" hits) over everything under `root` except PHI_ALLOWED."""
    scanned, hits = 0, []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.name.endswith(PHI_ALLOWED):
            continue
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        scanned += 1
        hits += [f"{path}: {value}" for value in SAMPLE_PATIENT_VALUES if value in text]
    return scanned, hits


def pytest_sessionfinish(session, exitstatus):
    """Patient data scan over every file the whole suite wrote (logs, .ics, status files,
    the kill harness's run logs): once, on the controller, after the workers are done."""
    if hasattr(session.config, "workerinput"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    scanned, hits = scan_for_patient_values(factory.getbasetemp())
    trust.record("phi", files=scanned, hits=len(hits))
    session.config._followupd_phi = (scanned, hits)
    if hits and session.exitstatus == 0:
        session.exitstatus = 1


# Files a test saved for a person to look at (a screenshot): `record_property("artifact",
# "what: path")`, listed at the end of the run (xdist hands each report to the controller).
ARTIFACTS: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        ARTIFACTS.extend(str(v) for name, v in report.user_properties if name == "artifact")


def pytest_terminal_summary(terminalreporter):
    for artifact in ARTIFACTS:
        terminalreporter.write_line(f"saved: {artifact}")
    scanned, hits = getattr(terminalreporter.config, "_followupd_phi", (0, []))
    terminalreporter.write_line(
        f"patient data scan: {scanned} files the suite wrote, "
        f"{len(hits)} with a sample patient's details"
    )
    for hit in hits:
        terminalreporter.write_line(f"  PATIENT DATA IN {hit}", red=True)
    if not POSTGRES_URL:
        terminalreporter.write_line(
            "PostgreSQL tests were skipped: FOLLOWUPD_TEST_POSTGRES_URL is not set"
        )


@pytest.fixture
def postgres_url():
    """A URL into a fresh, private schema of the test PostgreSQL database."""
    if not POSTGRES_URL:
        pytest.skip("FOLLOWUPD_TEST_POSTGRES_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'followupd.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A followupd home with the default configuration, and a clean environment."""
    for name in list(os.environ):
        if name.startswith("FOLLOWUPD_") and not name.startswith("FOLLOWUPD_TEST_"):
            monkeypatch.delenv(name)
    path = tmp_path / "home"
    path.mkdir()
    shutil.copyfile(default_config_dir() / "followupd.yaml", path / "followupd.yaml")
    return path


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(home, db_url):
    """Run a followupd command on the test home and database, as a user would.

    What it printed (and any traceback) is kept beside the home for the suite's patient-data
    scan; a preview's standard output is the note itself, which may carry patient details.
    """
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict | None = None) -> Ran:
        full_env = {"FOLLOWUPD_DATABASE_URL": db_url, **(env or {})}
        result = runner.invoke(app, ["--home", str(home), *args], input=input, env=full_env)
        crashed = result.exception and not isinstance(result.exception, SystemExit)
        keep_output(
            home.parent,
            result.stderr,
            "" if "preview" in args else result.stdout,
            "".join(traceback.format_exception(result.exception)) if crashed else "",
        )
        if crashed:
            raise result.exception
        return Ran(result.exit_code, result.stdout, result.stderr)

    return run


def keep_output(where: Path, *texts: str) -> None:
    """Keep what a command printed where the patient-data scan will read it."""
    with (where / "cli-output.log").open("a", encoding="utf-8") as handle:
        handle.write("".join(texts))


def run_cli(*args: str, log_to: Path, **options) -> subprocess.CompletedProcess:
    """`python -m followupd ARGS` in a process of its own, as a user runs it; its standard
    error is kept in `log_to` for the patient-data scan."""
    ran = subprocess.run(
        [sys.executable, "-m", "followupd", *args], capture_output=True, text=True, **options
    )
    keep_output(log_to, ran.stderr)
    return ran


# --- helpers tests import ----------------------------------------------------------------------


def wait_for(condition, timeout: float, step: float = 0.05):
    """Poll `condition` until it returns something true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def write_service_account_key(path: Path, token_uri: str, project: str = "practice") -> None:
    """A Workspace service account's JSON key (a fresh RSA key) whose tokens come from
    `token_uri`: the test server, which records the JWT's claims."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": f"followupd@{project}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
