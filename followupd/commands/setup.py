"""Setting a home up: `followupd init`, `check` and `auth`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from followupd import config as configuration
from followupd.commands.common import (
    EXIT_CONFIG,
    Home,
    err,
    fail,
    given_home,
    load_settings,
    out,
    shorten,
)
from followupd.engine import auth_hint
from followupd.permissions import make_private_dir, write_private
from followupd.render import Templates
from followupd.resources import default_config_dir, default_templates_dir
from followupd.store import Store, StoreError, mask_url, schema_state, sqlite_path


def init(
    directory: Annotated[Path | None, typer.Argument(help="The home to create.")] = None,
    home: Home = None,
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Write a working configuration, the default templates and .env.example to edit."""
    target = directory or given_home(home) or Path(".")
    try:
        written, kept = write_home(target, force)
    except OSError as exc:  # a file where the folder goes, a name too long, no permission
        reason = exc.strerror or type(exc).__name__
        fail(EXIT_CONFIG, f"cannot make a home in {shorten(str(target))}: {reason}")
    for path in written:
        out.print(f"wrote {path}", markup=False)
    for path in kept:
        out.print(f"kept  {path} (exists; --force overwrites)", markup=False)
    out.print(
        f"\nNext: edit {target / 'followupd.yaml'} (practice: name, email, time zone), "
        f"then `followupd --home {target} check`.",
        markup=False,
    )


def write_home(target: Path, force: bool) -> tuple[list[Path], list[Path]]:
    """Copy the default configuration, .env.example and templates into `target`, private;
    returns (written, kept): a file that exists is kept unless `force`."""
    make_private_dir(target)
    plan = [
        (default_config_dir() / "followupd.yaml", target / "followupd.yaml"),
        (default_config_dir() / "env.example", target / ".env.example"),
    ]
    templates = default_templates_dir()
    plan += [(path, target / "templates" / path.name) for path in sorted(templates.glob("*.j2"))]
    written, kept = [], []
    make_private_dir(target / "templates")  # templates are code: no one else may change them
    for source, dest in plan:
        if dest.exists() and not force:
            kept.append(dest)
            continue
        write_private(dest, source.read_bytes())
        written.append(dest)
    return written, kept


# The identity `followupd init` writes: a configuration still carrying it is not edited yet.
SAMPLE_NAMES = frozenset({"Dana Reyes"})
SAMPLE_EMAILS = frozenset({"dana@reyes-therapy.example"})


def check(home: Home = None) -> None:
    """Validate configuration, templates and database without changing anything."""
    settings = load_settings(home)
    out.print(
        f"configuration: {settings.config_path} is valid ({len(settings.config.rules)} rules)",
        markup=False,
    )
    practice = settings.config.practice
    if practice.email in SAMPLE_EMAILS or practice.therapist in SAMPLE_NAMES:
        err.print(
            f"WARNING: practice: still the sample identity ({practice.therapist}, "
            f"{practice.email}): every note would be signed and sent from someone else. "
            f"Put your own name, email and phone under practice: in {settings.config_path}",
            markup=False,
        )
    problems = Templates(settings.templates_dir).problems(settings.config.rules)
    if problems:
        fail(EXIT_CONFIG, *problems)
    from followupd.engine.core import closed_days  # the holidays package: only when asked

    try:
        closed_days(settings)
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)
    out.print(
        f"templates: {len(settings.config.rules)} rules' templates render-ready", markup=False
    )
    if settings.config.delivery.backend == "google":
        _check_google(settings)
    else:
        out.print(f"delivery: outbox {settings.outbox_dir}", markup=False)
    out.print(f"database: {_database_state(settings)}", markup=False)
    _check_sources(settings)


def _check_sources(settings: configuration.Settings) -> None:
    """Each watched source can be read and its header names the columns needed; a source
    that cannot is exit 2, after all of them were tried."""
    from followupd.sources import SourceProblem, probe

    failed = []
    for source in settings.config.sources:
        try:
            out.print(f"source {source.name}: {probe(settings, source)}", markup=False)
        except SourceProblem as exc:
            failed.append(f"source {source.name}: {exc}")
    if failed:
        fail(EXIT_CONFIG, *failed)


def _check_google(settings: configuration.Settings) -> None:
    """Each mailbox's credentials, as Google answers for them; a refused one is exit 2."""
    from followupd.delivery.google import check_credentials
    from followupd.delivery.googleapi import CredentialsProblem

    for therapist in settings.config.mailboxes():
        whose = f" ({therapist})" if therapist else ""
        try:
            line = check_credentials(settings.for_therapist(therapist))
        except CredentialsProblem as exc:
            fail(EXIT_CONFIG, f"google{whose}: {auth_hint(str(exc), therapist)}")
        out.print(f"google{whose}: {line}", markup=False)


def _database_state(settings: configuration.Settings) -> str:
    """Where the database stands, read without changing it; one that cannot be read is
    exit 2."""
    try:
        url = sa.make_url(settings.database_url)
    except (sa.exc.ArgumentError, ValueError):
        fail(
            EXIT_CONFIG,
            f"database: {mask_url(settings.database_url)!r} is not a SQLAlchemy "
            "URL (e.g. sqlite:///followupd.sqlite3 or "
            "postgresql+psycopg://user@host/db)",
        )
    database = sqlite_path(url)
    if database is not None and not database.exists():
        return f"{database} does not exist yet; it is created on first use"
    try:
        engine = Store(settings.database_url, migrate_schema=False).engine
        with engine.connect() as connection:
            current, head = schema_state(connection)
        engine.dispose()
    except (StoreError, sa.exc.OperationalError) as exc:
        fail(EXIT_CONFIG, f"database: {exc}")
    state = (
        "up to date"
        if current == head
        else f"at schema {current}; upgraded to {head} on first use"
        if current
        else "empty; its tables are created on first use"
    )
    return f"{mask_url(settings.database_url)} ({state})"


def auth(
    home: Home = None,
    port: Annotated[int, typer.Option(help="Local port for Google's redirect.")] = 8765,
    bind: Annotated[
        str,
        typer.Option(
            help="Address to listen on: 0.0.0.0 inside a container whose port is published."
        ),
    ] = "localhost",
    therapist: Annotated[
        str | None,
        typer.Option(
            help="A group practice: sign in as this therapist (a key from `therapists:`); "
            "the token goes to their token_file."
        ),
    ] = None,
) -> None:
    """Sign in to Google and store the token (mode 0600) for Gmail drafts and Calendar.

    On a headless server or in a container: forward the port first
    (ssh -L 8765:localhost:8765 server), then open the printed URL in your own browser.
    """
    from followupd.delivery.googleapi import scopes, wants_sheets

    settings = _signing_in(load_settings(home), therapist)
    google = settings.config.google
    secrets = settings.path(google.client_secrets_file)
    from google_auth_oauthlib.flow import InstalledAppFlow

    wanted = scopes(google.read_scope, wants_sheets(settings))
    flow = InstalledAppFlow.from_client_secrets_file(str(secrets), wanted)
    credentials = flow.run_local_server(
        host="localhost",
        bind_addr=bind,
        port=port,
        open_browser=False,
        access_type="offline",
        prompt="consent",
        authorization_prompt_message=(
            "Open this URL in a browser and allow access:\n\n{url}\n\n"
            f"(On a remote server, first run: ssh -L {port}:localhost:{port} <server>)"
        ),
        success_message="followupd is signed in; you can close this tab.",
    )
    token = settings.path(google.token_file)
    info = json.loads(credentials.to_json())
    if getattr(credentials, "granted_scopes", None):  # what the person allowed, not asked
        info["scopes"] = list(credentials.granted_scopes)
    write_private(token, json.dumps(info))
    out.print(f"signed in; token written to {token} (readable by you only)", markup=False)


def _signing_in(settings: configuration.Settings, therapist: str | None) -> configuration.Settings:
    """The settings of the mailbox to sign in for; exit 2 when there is no sign-in to do
    (an unknown therapist, a service account) or no OAuth client file to do it with."""
    try:
        settings = settings.for_therapist(therapist)
    except KeyError:
        fail(
            EXIT_CONFIG,
            f"--therapist {shorten(str(therapist))}: not in followupd.yaml (one of: "
            f"{', '.join(t.key for t in settings.config.therapists) or 'none'})",
        )
    google = settings.config.google
    if google.service_account_file:
        fail(
            EXIT_CONFIG,
            "a service account is configured (google.service_account_file); it needs no sign-in",
        )
    secrets = settings.path(google.client_secrets_file)
    if not secrets.is_file():
        fail(
            EXIT_CONFIG,
            f"{secrets}: no OAuth client file. In the Google Cloud console, "
            'create an OAuth client of type "Desktop app", download its JSON '
            f"and save it as {secrets} (google.client_secrets_file)",
        )
    problem = _client_file_problem(secrets)
    if problem:
        fail(EXIT_CONFIG, f"{secrets}: {problem}")
    return settings


def _client_file_problem(path) -> str | None:
    """Why the OAuth client file cannot be used for `auth`, or None."""
    import json

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return (
            "not an OAuth client file (not JSON); download the client's JSON again from "
            "the Google Cloud console (APIs & Services > Credentials)"
        )
    if isinstance(document, dict) and "installed" in document:
        return None
    if isinstance(document, dict) and "web" in document:
        return (
            'an OAuth client of type "Web application"; followupd signs in as a '
            '"Desktop app": create an OAuth client of that type and save its JSON here'
        )
    return (
        'not an OAuth client file (it has no "installed" client); create an OAuth '
        'client of type "Desktop app" and save its JSON here'
    )
