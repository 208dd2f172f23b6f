"""The Dockerfile's own steps, proven without a Docker engine.

The test reads the Dockerfile and runs its install command, its environment, its user (any
non-root one), its entrypoint and command, and its HEALTHCHECK, in a fresh virtual environment,
so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO

NOBODY = 65534


def dockerfile() -> dict:
    """ENV, the pip install line, ENTRYPOINT, CMD and HEALTHCHECK of our Dockerfile."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    found: dict = {"env": {}}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            found["env"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif word == "RUN" and "pip install" in rest:
            install = rest.split("&&")[0].strip()
            found["install"] = shlex.split(install)
        elif word in ("ENTRYPOINT", "CMD"):
            found[word.lower()] = json.loads(rest)
        elif word == "HEALTHCHECK":
            found["healthcheck"] = json.loads(rest.split("CMD", 1)[1])
        elif word == "USER":
            found["user"] = rest
    return found


def as_unprivileged(args: list[str]) -> list[str]:
    """Drop to `nobody` when the tests run as root (CI); otherwise we are non-root already."""
    if os.geteuid() != 0:
        return args
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]


@pytest.fixture(scope="module")
def installed():
    """A fresh venv with followupd installed exactly as the Dockerfile installs it."""
    spec = dockerfile()
    assert spec["install"][:2] == ["pip", "install"]
    root = Path(tempfile.mkdtemp(prefix="followupd-container-"))
    root.chmod(0o755)  # the unprivileged user must reach the venv
    venv = root / "venv"
    umask = os.umask(0o022)  # an installed package is readable by every user, as in an image
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        args = [str(venv / "bin" / "pip"), *spec["install"][1:]]
        args = [arg.replace("/src", str(REPO)) for arg in args]
        subprocess.run(args, check=True, capture_output=True, timeout=600)
    finally:
        os.umask(umask)
    yield spec, venv, root
    shutil.rmtree(root, ignore_errors=True)


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    spec = dockerfile()
    assert spec["user"] not in ("root", "0", "0:0")
    assert spec["env"]["FOLLOWUPD_HOME"] == "/data"
    assert spec["entrypoint"] == ["followupd"] and spec["cmd"] == ["run"]
    assert spec["healthcheck"] == ["followupd", "health"]
    assert "dev" not in " ".join(spec["install"])  # no development dependencies


@pytest.mark.slow  # a fresh venv and a pip install: about a minute
def test_the_image_steps_start_serve_pass_health_and_stop(installed):
    spec, venv, root = installed
    data = root / "data"  # the volume
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(data, NOBODY, NOBODY)
    bin_dir = venv / "bin"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        **spec["env"],
        "FOLLOWUPD_HOME": str(data),
        "HOME": str(data),
    }
    subprocess.run(
        as_unprivileged([str(bin_dir / "followupd"), "init", str(data)]),
        check=True,
        env=env,
        capture_output=True,
    )
    config = data / "followupd.yaml"
    config.write_text(config.read_text().replace("poll: 5 minutes", "poll: 1 second"))
    command = [str(bin_dir / spec["entrypoint"][0]), *spec["entrypoint"][1:], *spec["cmd"]]
    daemon = subprocess.Popen(
        as_unprivileged(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        health = [str(bin_dir / spec["healthcheck"][0]), *spec["healthcheck"][1:]]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            check = subprocess.run(as_unprivileged(health), env=env, capture_output=True, text=True)
            if check.returncode == 0:
                break
            time.sleep(0.5)
        assert check.returncode == 0, check.stderr
        database = data / "followupd.sqlite3"
        assert database.stat().st_mode & 0o077 == 0  # private to its owner
        if os.geteuid() == 0:
            assert database.stat().st_uid == NOBODY  # written by the unprivileged user
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=15)
        _, errors = daemon.communicate()
    assert code == 0, errors
    assert "event=started" in errors and "event=stopped" in errors


def test_the_replicas_compose_file_runs_postgres_and_several_daemons_on_it():
    """compose.replicas.yaml: the daemons wait for a healthy PostgreSQL, point at it with
    the psycopg driver the image installs, and share one data volume (config and tokens)."""
    import yaml

    compose = yaml.safe_load((REPO / "compose.replicas.yaml").read_text())
    postgres, daemon = compose["services"]["postgres"], compose["services"]["followupd"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert daemon["deploy"]["replicas"] >= 2
    url = daemon["environment"]["FOLLOWUPD_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres/" in url
    assert any("[postgres]" in arg for arg in dockerfile()["install"])
    assert daemon["volumes"] == ["followupd-data:/data"]
    assert daemon["stop_grace_period"] == "15s"  # longer than a tick's 9 s stop timeout
