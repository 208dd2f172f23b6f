"""The Dockerfile's declarations, and the checks CI runs on the image built from it.

CI builds the image for real and runs it as the Dockerfile declares (.ci/image.sh, in its slow
tier; root and podman). These fast tests read the Dockerfile with the same code
(.ci/image.py), so what they require and what the built image is checked against cannot
drift apart, and they show that the checks name a broken Dockerfile.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from conftest import REPO

if not (REPO / ".ci" / "image.py").exists():  # an sdist carries the tests, not .ci/
    pytest.skip("no .ci/image.py beside the tests", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("ci_image", REPO / ".ci" / "image.py")
image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image)


@pytest.fixture
def failures():
    """What the checks of .ci/image.py reported as failed during the test."""
    image.FAILED.clear()
    yield image.FAILED
    image.FAILED.clear()


def broken(tmp_path, old: str, new: str):
    """The Dockerfile with one thing changed."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(old, text, re.M), old
    path = tmp_path / "Dockerfile"
    path.write_text(re.sub(old, new, text, flags=re.M))
    return path


def inspected(spec: dict) -> dict:
    """What `podman image inspect` reports for an image built as the Dockerfile declares."""
    return {
        "Config": {
            "User": spec["user"],
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                *(f"{k}={v}" for k, v in spec["env"].items()),
            ],
            "WorkingDir": spec["workdir"],
            "Volumes": {volume: {} for volume in spec["volumes"]},
            "ExposedPorts": {port: {} for port in spec["expose"]},
            "Entrypoint": spec["entrypoint"],
            "Cmd": spec["cmd"],
        },
        "Healthcheck": spec["healthcheck"],
    }


def test_the_dockerfile_declares_what_the_image_must_be():
    spec = image.declared(REPO / "Dockerfile")
    assert image.requirements(spec) == []
    assert spec["from"] == "python:3.11-slim"  # .ci/image.sh's stand-in base is this one
    assert spec["user"] == "10001:10001"
    assert spec["env"]["FOLLOWUPD_HOME"] == "/data" == spec["workdir"]
    assert spec["volumes"] == ["/data"]
    assert spec["entrypoint"] == ["followupd"] and spec["cmd"] == ["run"]
    assert spec["healthcheck"] == {
        "Test": ["CMD", "followupd", "health"],
        "Interval": 60 * 10**9,
        "Timeout": 15 * 10**9,
        "StartPeriod": 60 * 10**9,
        "Retries": 3,
    }  # as docs/operations.md says: every 60 s, timeout 15 s, start period 60 s, 3 retries
    (install,) = [run for run in spec["runs"] if "pip install" in run]
    assert '"/src[postgres]"' in install and "dev" not in install
    # the group is made with the USER's gid: /data is 10001:10001, as the process is
    assert "--gid 10001" in install and "chown followupd:followupd /data" in install


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (r"^USER .*$", "USER root", "USER is root"),
        (r"^USER .*$", "", "USER is not set"),
        (r"^VOLUME .*$", "", "FOLLOWUPD_HOME=/data is not a VOLUME"),
        (r"^WORKDIR .*$", "WORKDIR /", "WORKDIR is /, not FOLLOWUPD_HOME=/data"),
        (r"^HEALTHCHECK (.|\n)*?CMD .*$", "HEALTHCHECK NONE", "HEALTHCHECK is none"),
        (r'^CMD \["run"\]$', 'CMD ["run", "--once"]', "CMD is ['run', '--once']"),
        (r"\[postgres\]", "[postgres,dev]", "pip installs the dev extra"),
    ],
)
def test_a_broken_dockerfile_is_named(tmp_path, old, new, named):
    problems = image.requirements(image.declared(broken(tmp_path, old, new)))
    assert any(named in problem for problem in problems), problems


def test_the_built_image_is_compared_with_the_dockerfile(tmp_path, failures, capsys):
    dockerfile = REPO / "Dockerfile"
    found = inspected(image.declared(dockerfile))
    report = tmp_path / "inspect.json"
    report.write_text(json.dumps([found]))
    image.config(dockerfile, report)
    assert failures == []

    found["Config"]["User"] = "0"  # what an image built from another file would show
    del found["Config"]["Volumes"]
    found["Healthcheck"] = None  # podman's OCI format drops it without --format docker
    report.write_text(json.dumps([found]))
    image.config(dockerfile, report)
    assert failures == [
        "the Dockerfile declares USER 10001:10001, the image has '0'",
        "the Dockerfile declares VOLUME ['/data'], the image has []",
        "the Dockerfile declares HEALTHCHECK {'Test': ['CMD', 'followupd', 'health'], "
        "'Interval': 60000000000, 'Timeout': 15000000000, 'StartPeriod': 60000000000, "
        "'Retries': 3}, the image has None",
    ]
    assert "FAIL: the Dockerfile declares USER" in capsys.readouterr().out


def test_a_development_package_in_the_image_fails_the_check(tmp_path, failures):
    listing = tmp_path / "pip-list.json"
    runtime = [{"name": "followupd", "version": "0.1.0"}, {"name": "psycopg", "version": "3.2"}]
    listing.write_text(json.dumps(runtime))
    image.packages(REPO / "pyproject.toml", listing)
    assert failures == []
    listing.write_text(json.dumps([*runtime, {"name": "pytest_xdist", "version": "3.6"}]))
    image.packages(REPO / "pyproject.toml", listing)
    assert failures == ["test or development packages in the image: pytest-xdist"]


def test_the_compose_files_use_the_image_as_declared():
    """compose.yaml and compose.replicas.yaml mount a volume on the image's VOLUME; the
    replicas wait for a healthy PostgreSQL, point at it with the psycopg driver the image
    installs, and share one data volume (config and tokens)."""
    import yaml

    spec = image.declared(REPO / "Dockerfile")
    (volume,) = spec["volumes"]
    single = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["followupd"]
    assert single["volumes"] == [f"followupd-data:{volume}"]
    compose = yaml.safe_load((REPO / "compose.replicas.yaml").read_text())
    postgres, daemon = compose["services"]["postgres"], compose["services"]["followupd"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert daemon["deploy"]["replicas"] >= 2
    url = daemon["environment"]["FOLLOWUPD_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres/" in url
    assert any("[postgres]" in run for run in spec["runs"])
    assert daemon["volumes"] == [f"followupd-data:{volume}"]
    assert daemon["stop_grace_period"] == "15s"  # longer than a tick's 9 s stop timeout
