"""The `followupd` command: parse, call the engine or the store, print.

Exit statuses: 0 all went well; 1 some item (a CSV row, a follow-up) was rejected or failed
and the rest were done; 2 the configuration, the command line or the database needs fixing
before anything can run (a database that is locked or cannot be reached included: one line
says what to do, and no traceback or value is ever printed).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import sqlalchemy as sa
import typer
import typer.core
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from followupd import config as configuration
from followupd import logs
from followupd.daemon import wake
from followupd.delivery import Draft
from followupd.delivery.outbox import reminder_calendar
from followupd.engine import Engine, auth_hint
from followupd.intake import ImportRefused, import_csv
from followupd.models import FollowUp, Recipient, Referral
from followupd.permissions import make_private_dir, write_private
from followupd.records import (
    PhysicianRecord,
    RowError,
    Therapists,
    clean_text,
    parse_date,
    parse_email,
    parse_fax,
    parse_referral,
    parse_visit,
    required_text,
)
from followupd.render import RenderError, Templates
from followupd.resources import default_config_dir, default_templates_dir
from followupd.store import (
    Directory,
    Store,
    StoreError,
    change_stamp,
    confirm_address,
    disclosed_notes,
    mask_url,
    record_release,
    schema_state,
    upsert_referrals,
    upsert_visits,
)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def database_problem(exc: BaseException) -> str:
    """One line on a database error, with what to do: never its statement or values."""
    text = str(getattr(exc, "orig", None) or "").strip().splitlines()
    first = text[0].casefold() if text else ""
    if "locked" in first or "busy" in first:
        return (
            "the database is busy: another process held it too long (a long import, a "
            "backup?); nothing was changed by this command, try it again"
        )
    if "unable to open" in first or "readonly" in first or "read-only" in first:
        return (
            "the database file cannot be opened for writing; check that the folder "
            "exists and is yours (ls -l), or set FOLLOWUPD_DATABASE_URL"
        )
    if "connect" in first or "connection" in first or "server" in first:
        return (
            "the database server cannot be reached; check that it is running and that "
            "FOLLOWUPD_DATABASE_URL names it"
        )
    if isinstance(exc, sa.exc.IntegrityError):
        return "the database refused the change (a conflicting row); nothing was changed"
    kind = type(getattr(exc, "orig", None) or exc).__name__
    return f"the database failed ({kind}); nothing was changed by this command"


class _Commands(typer.core.TyperGroup):
    """Turns a database error in any command into one line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except sa.exc.SQLAlchemyError as exc:
            err.print(f"database: {database_problem(exc)}", markup=False)
            raise typer.Exit(EXIT_CONFIG) from None
        except StoreError as exc:
            err.print(f"database: {exc}", markup=False)
            raise typer.Exit(EXIT_CONFIG) from None


app = typer.Typer(
    cls=_Commands,
    name="followupd",
    help="Follow-up notes to referring physicians and outreach reminders, "
    "as Gmail drafts and Calendar events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
physician_app = typer.Typer(help="Physicians who refer to you.", no_args_is_help=True)
referral_app = typer.Typer(help="Referrals: add, close, record a release.", no_args_is_help=True)
visit_app = typer.Typer(help="Outreach visits to physicians' offices.", no_args_is_help=True)
import_app = typer.Typer(
    help="Import a CSV export of your referral or visit log.", no_args_is_help=True
)
app.add_typer(physician_app, name="physician")
app.add_typer(referral_app, name="referral")
app.add_typer(visit_app, name="visit")
app.add_typer(import_app, name="import")

# Piped or redirected output is not cut to 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="FOLLOWUPD_HOME",
        show_envvar=True,
        help="Folder with followupd.yaml, templates/, .env and the database "
        "[default: current folder].",
    ),
]


_given_home: Path | None = None


@app.callback()
def _root(home: Home = None) -> None:
    """`followupd --home DIR COMMAND` is the same as `followupd COMMAND --home DIR`."""
    global _given_home
    _given_home = home


def _home(home: Path | None) -> Path | None:
    """The command's own --home, else the one given before the command."""
    return home if home is not None else _given_home


def fail(code: int, *lines: str) -> NoReturn:
    for line in lines:
        err.print(line, markup=False)
    raise typer.Exit(code)


def load_settings(home: Path | None) -> configuration.Settings:
    try:
        return configuration.load(_home(home))
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)


def open_store(settings: configuration.Settings) -> Store:
    try:
        return Store(settings.database_url)
    except StoreError as exc:
        fail(EXIT_CONFIG, f"database: {exc}")


def today(settings: configuration.Settings) -> date:
    return datetime.now(settings.config.practice.zone).date()


# --- init and check ------------------------------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path | None, typer.Argument(help="The home to create.")] = None,
    home: Home = None,
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Write a working configuration, the default templates and .env.example to edit."""
    target = directory or _home(home) or Path(".")
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
    for path in written:
        out.print(f"wrote {path}", markup=False)
    for path in kept:
        out.print(f"kept  {path} (exists; --force overwrites)", markup=False)
    out.print(
        f"\nNext: edit {target / 'followupd.yaml'} (practice: name, email, time zone), "
        f"then `followupd --home {target} check`.",
        markup=False,
    )


@app.command()
def check(home: Home = None) -> None:
    """Validate configuration, templates and database without changing anything."""
    settings = load_settings(home)
    out.print(
        f"configuration: {settings.config_path} is valid ({len(settings.config.rules)} rules)",
        markup=False,
    )
    problems = Templates(settings.templates_dir).problems(settings.config.rules)
    if problems:
        fail(EXIT_CONFIG, *problems)
    out.print(
        f"templates: {len(settings.config.rules)} rules' templates render-ready", markup=False
    )
    if settings.config.delivery.backend == "google":
        from followupd.delivery.google import check_credentials
        from followupd.delivery.googleapi import CredentialsProblem

        for therapist in settings.config.mailboxes():
            whose = f" ({therapist})" if therapist else ""
            try:
                line = check_credentials(settings.for_therapist(therapist))
            except CredentialsProblem as exc:
                fail(EXIT_CONFIG, f"google{whose}: {auth_hint(str(exc), therapist)}")
            out.print(f"google{whose}: {line}", markup=False)
    else:
        out.print(f"delivery: outbox {settings.outbox_dir}", markup=False)
    try:
        url = sa.make_url(settings.database_url)
    except (sa.exc.ArgumentError, ValueError):
        fail(
            EXIT_CONFIG,
            f"database: {mask_url(settings.database_url)!r} is not a SQLAlchemy "
            "URL (e.g. sqlite:///followupd.sqlite3 or "
            "postgresql+psycopg://user@host/db)",
        )
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        out.print(
            f"database: {url.database} does not exist yet; it is created on first use", markup=False
        )
        return
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
    out.print(f"database: {mask_url(settings.database_url)} ({state})", markup=False)


# --- data entry ------------------------------------------------------------------------------


def therapists(settings: configuration.Settings) -> Therapists:
    """The therapist keys data entry accepts (a group practice's `therapists:`)."""
    config = settings.config
    return Therapists(frozenset(t.key for t in config.therapists), config.default_therapist())


TherapistOption = Annotated[
    str | None,
    typer.Option(
        help="Whose it is, in a group practice: a key from `therapists:` in followupd.yaml."
    ),
]


def _entry(settings: configuration.Settings, parse, upsert, row: dict) -> str:
    """Validate one row as the CSV import would, then write it; returns the outcome."""
    try:
        record = parse(row, therapists(settings))
    except RowError as exc:
        fail(EXIT_CONFIG, f"{OPTION_NAMES.get(exc.column, exc.column)}: {exc.message}")
    store = open_store(settings)
    try:
        with store.session() as session:
            entered_by = (
                {"by": "cli", "today": today(settings)} if upsert is upsert_referrals else {}
            )
            outcome = upsert(session, [record], Directory(trusted=True), **entered_by)[0]
    finally:
        store.close()
    wake(settings.home)
    return outcome


@physician_app.command("add")
def physician_add(
    name: Annotated[str, typer.Option(help='As the physician signs, e.g. "Dr. Ann Lee".')],
    specialty: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option(help="Where notes to this physician go.")] = None,
    fax: Annotated[str | None, typer.Option()] = None,
    practice: Annotated[str | None, typer.Option(help="The physician's office.")] = None,
    home: Home = None,
) -> None:
    """Add a physician, or update the specialty, email or fax of one you have."""
    settings = load_settings(home)
    try:
        record = PhysicianRecord(
            name=required_text("physician", name),
            practice=practice,
            specialty=specialty,
            email=parse_email("physician_email", email),
            fax=parse_fax("physician_fax", fax),
        )
    except RowError as exc:
        fail(EXIT_CONFIG, f"--{exc.column.replace('physician_', '')}: {exc.message}")
    store = open_store(settings)
    try:
        with store.session() as session:
            physician_id, changed = Directory(trusted=True).physician(session, record)
    finally:
        store.close()
    wake(settings.home)
    out.print(f"physician {physician_id}: {'saved' if changed else 'unchanged'}")


@physician_app.command("confirm")
def physician_confirm(
    physician_id: Annotated[
        int,
        typer.Argument(
            metavar="ID", help="The physician's id, as the import summary or `status` names it."
        ),
    ],
    home: Home = None,
) -> None:
    """Confirm a physician's email address that an import changed or that looks like another
    physician's: notes held for it may then go out."""
    settings = load_settings(home)
    store = open_store(settings)
    try:
        with store.session() as session:
            confirmed = confirm_address(session, physician_id)
    finally:
        store.close()
    if confirmed is None:
        fail(EXIT_FAILED, f"no physician {physician_id}")
    wake(settings.home)
    name, email = confirmed
    out.print(
        f"physician {physician_id} ({name}): {email or 'no address'} confirmed; notes "
        "held for it are planned on the next tick",
        markup=False,
    )


OPTION_NAMES = {
    "ref": "--ref",
    "received_on": "--received-on",
    "physician": "--physician",
    "physician_email": "--physician-email",
    "client_name": "--client-name",
    "client_dob": "--client-dob",
    "presenting_problem": "--problem",
    "treatment_focus": "--focus",
    "closed_on": "--on",
    "release_on": "--on",
    "closing_summary": "--summary",
    "visited_on": "--on",
    "cards_left": "--cards",
    "handouts_left": "--handouts",
    "business_manager": "--business-manager",
    "therapist": "--therapist",
}


@referral_app.command("add")
def referral_add(
    ref: Annotated[str, typer.Option(help="Your own id for the referral, e.g. R-12.")],
    physician: Annotated[str, typer.Option(help="The referring physician's name.")],
    client_name: Annotated[str, typer.Option(help="The client's name (stays in the database).")],
    received_on: Annotated[str | None, typer.Option(help="YYYY-MM-DD [default: today].")] = None,
    practice: Annotated[str | None, typer.Option(help="The physician's office.")] = None,
    physician_email: Annotated[str | None, typer.Option()] = None,
    specialty: Annotated[str | None, typer.Option(help="The physician's specialty.")] = None,
    client_dob: Annotated[str | None, typer.Option(help="YYYY-MM-DD.")] = None,
    problem: Annotated[str | None, typer.Option(help="Presenting problem.")] = None,
    focus: Annotated[str | None, typer.Option(help="Planned focus of treatment.")] = None,
    release: Annotated[
        bool, typer.Option(help="A release of information for this physician is on file.")
    ] = False,
    therapist: TherapistOption = None,
    home: Home = None,
) -> None:
    """Add a referral (its acknowledgement note is planned on the next tick)."""
    settings = load_settings(home)
    if _referral_exists(settings, ref):
        fail(
            EXIT_FAILED,
            f"referral {ref} exists already: use `referral close` or "
            "`referral release`, or `import referrals` to change it",
        )
    row = {
        "ref": ref,
        "received_on": received_on or today(settings).isoformat(),
        "physician": physician,
        "physician_email": physician_email,
        "specialty": specialty,
        "practice": practice,
        "client_name": client_name,
        "client_dob": client_dob,
        "presenting_problem": problem,
        "treatment_focus": focus,
        "release_on_file": "yes" if release else "no",
        "therapist": therapist,
    }
    _entry(settings, parse_referral, upsert_referrals, row)
    out.print(f"referral {ref}: added", markup=False)


def _referral_exists(settings: configuration.Settings, ref: str) -> bool:
    store = open_store(settings)
    try:
        with store.session() as session:
            return (
                session.execute(sa.select(Referral.id).where(Referral.ref == ref.strip())).first()
                is not None
            )
    finally:
        store.close()


def _change_referral(
    settings: configuration.Settings, ref: str, change: Callable[[Referral], None]
) -> None:
    """Apply `change` to one referral and mark it changed, so the next tick re-plans it."""
    store = open_store(settings)
    try:
        with store.session() as session:
            referral = session.execute(
                sa.select(Referral).where(Referral.ref == ref.strip())
            ).scalar_one_or_none()
            if referral is None:
                fail(EXIT_FAILED, f"no referral {ref} (add it, or import your referral log)")
            try:
                change(referral)
            except RowError as exc:
                fail(EXIT_CONFIG, f"{OPTION_NAMES.get(exc.column, exc.column)}: {exc.message}")
            referral.updated_at = change_stamp(session, Referral)
    finally:
        store.close()
    wake(settings.home)


def _date_option(option: str, value: str | None, settings: configuration.Settings) -> date:
    """A date option (default: today in the practice's zone); a bad one is exit 2."""
    try:
        return parse_date(option, value or today(settings).isoformat(), required=True)
    except RowError as exc:
        fail(EXIT_CONFIG, f"{option}: {exc.message}")


@referral_app.command("close")
def referral_close(
    ref: Annotated[str, typer.Argument(help="The referral's id, e.g. R-12.")],
    summary: Annotated[
        str | None, typer.Option(help="Outcome and recommendations, for the closing note.")
    ] = None,
    on: Annotated[str | None, typer.Option(help="YYYY-MM-DD [default: today].")] = None,
    home: Home = None,
) -> None:
    """Record the close of treatment (its closing note is planned on the next tick)."""
    settings = load_settings(home)
    closed_on = _date_option("--on", on, settings)

    def close(referral: Referral) -> None:
        if closed_on < referral.received_on:
            raise RowError("closed_on", "is before the referral was received")
        referral.closed_on = closed_on
        if summary is not None:
            referral.closing_summary = clean_text("closing_summary", summary)

    _change_referral(settings, ref, close)
    out.print(f"referral {ref}: closed on {closed_on.isoformat()}", markup=False)


@referral_app.command("release")
def referral_release(
    ref: Annotated[str, typer.Argument(help="The referral's id, e.g. R-12.")],
    on: Annotated[
        str | None, typer.Option(help="Date signed (or revoked), YYYY-MM-DD [default: today].")
    ] = None,
    revoke: Annotated[bool, typer.Option(help="The client revoked the release.")] = False,
    prescriber: Annotated[
        bool,
        typer.Option(
            "--prescriber",
            help="The release names the client's prescriber, not the referring physician.",
        ),
    ] = False,
    home: Home = None,
) -> None:
    """Record (or revoke) the client's release of information for one recipient.

    A release names its recipient: the referring physician's (the default) does not cover
    the prescriber (--prescriber). Revoking takes back every unsent note with patient details
    for that recipient at once (the outbox file or the Gmail draft is deleted; if Google cannot
    be reached now, the daemon does it) and lists any that were already sent.
    """
    settings = load_settings(home)
    when = _date_option("--on", on, settings)
    recipient = Recipient.prescriber if prescriber else Recipient.physician
    store = open_store(settings)
    try:
        with store.session() as session:
            found = record_release(
                session, ref.strip(), recipient, grant=not revoke, on=when, by="cli"
            )
        if found is None:
            fail(EXIT_FAILED, f"no referral {ref} (add it, or import your referral log)")
        if found is False:
            fail(
                EXIT_FAILED,
                f"referral {ref} names no prescriber (import it with a prescriber column)",
            )
        wake(settings.home)
        whom = f"for the {recipient.value}"
        out.print(
            f"referral {ref}: release {whom} {'revoked' if revoke else 'on file'} "
            f"({when.isoformat()})",
            markup=False,
        )
        if revoke:
            _withdraw_now(settings, store, ref.strip())
    finally:
        store.close()


def _withdraw_now(settings: configuration.Settings, store: Store, ref: str) -> None:
    """Take back, now, what a revoke withdraws; say what was already disclosed."""
    logs.setup("ERROR", settings.config.logging.format)
    engine = open_engine(settings, store)
    try:
        report = engine.withdraw_now()
    finally:
        engine.close()
    for follow_up_id, state in report.withdrawn:
        out.print(f"  follow-up {follow_up_id}: {state}", markup=False)
    for follow_up_id, reason in report.waiting:
        out.print(
            f"  follow-up {follow_up_id}: not yet: {reason} (the daemon tries again)", markup=False
        )
    with store.session() as session:
        disclosed = disclosed_notes(session, ref)
    for row in disclosed:
        out.print(f"  follow-up {row.id} ({row.rule}): {row.reason}", markup=False)


@visit_app.command("add")
def visit_add(
    practice: Annotated[str, typer.Option(help="The office you visited.")],
    physician: Annotated[str | None, typer.Option(help="The physician you met, if any.")] = None,
    specialty: Annotated[str | None, typer.Option(help="The physician's specialty.")] = None,
    business_manager: Annotated[
        str | None, typer.Option(help="The business manager you met.")
    ] = None,
    cards: Annotated[int, typer.Option(help="Business cards left.")] = 10,
    handouts: Annotated[int, typer.Option(help="Handouts left.")] = 1,
    notes: Annotated[str | None, typer.Option()] = None,
    on: Annotated[str | None, typer.Option(help="YYYY-MM-DD [default: today].")] = None,
    therapist: TherapistOption = None,
    home: Home = None,
) -> None:
    """Log an outreach visit (its revisit reminder goes on the calendar on the next tick)."""
    settings = load_settings(home)
    row = {
        "visited_on": on or today(settings).isoformat(),
        "practice": practice,
        "physician": physician,
        "specialty": specialty,
        "business_manager": business_manager,
        "cards_left": str(cards),
        "handouts_left": str(handouts),
        "notes": notes,
        "therapist": therapist,
    }
    outcome = _entry(settings, parse_visit, upsert_visits, row)
    out.print(f"visit to {practice} on {row['visited_on']}: {outcome}", markup=False)


# --- import ----------------------------------------------------------------------------------


def _import(kind: str, file: str, home: Path | None) -> None:
    settings = load_settings(home)
    store = open_store(settings)
    progress = None
    bar = None
    if sys.stderr.isatty():
        bar = Progress(
            "importing",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        task = bar.add_task("import", total=None)
        bar.start()

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

    try:
        report = import_csv(
            store,
            file,
            kind,
            progress=progress,  # type: ignore[arg-type]
            therapists=therapists(settings),
            today=today(settings),
        )
    except ImportRefused as exc:
        fail(EXIT_FAILED, f"refused: {exc}")
    finally:
        if bar:
            bar.stop()
        store.close()
    if report.counts.added or report.counts.updated:
        wake(settings.home)
    if report.ignored_columns:
        err.print(
            f"ignored columns (not followupd's): {', '.join(report.ignored_columns)}", markup=False
        )
    for problem in report.problems[:50]:
        err.print(f"rejected: {problem}", markup=False)
    if len(report.problems) > 50:
        err.print(f"... and {len(report.problems) - 50} more rejected rows", markup=False)
    for notice in report.notices[:50]:
        out.print(f"note: {notice}", markup=False)
    if len(report.notices) > 50:
        out.print(f"... and {len(report.notices) - 50} more notes", markup=False)
    for physician_id, why in sorted(report.flagged.items()):
        out.print(
            f"address held: physician {physician_id}: {why}; notes to it wait until you "
            f"check it and run `followupd physician confirm {physician_id}`",
            markup=False,
        )
    out.print(f"{kind}: {report.counts}", markup=False)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


File = Annotated[str, typer.Argument(help="A UTF-8 CSV file with a header row; - reads stdin.")]


@import_app.command("referrals")
def import_referrals(file: File, home: Home = None) -> None:
    """Import referrals; the same `ref` again updates that referral instead of adding one."""
    _import("referrals", file, home)


@import_app.command("visits")
def import_visits(file: File, home: Home = None) -> None:
    """Import office visits; the same date, practice and physician again updates that visit."""
    _import("visits", file, home)


# --- Google sign-in --------------------------------------------------------------------------


@app.command()
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
    from followupd.delivery.googleapi import scopes, write_private

    settings = load_settings(home)
    try:
        settings = settings.for_therapist(therapist)
    except KeyError:
        fail(
            EXIT_CONFIG,
            f"--therapist {therapist}: not in followupd.yaml (one of: "
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
    from google_auth_oauthlib.flow import InstalledAppFlow

    flow = InstalledAppFlow.from_client_secrets_file(str(secrets), scopes(google.read_scope))
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
    write_private(token, credentials.to_json())
    out.print(f"signed in; token written to {token} (readable by you only)", markup=False)


# --- run, preview, demo ----------------------------------------------------------------------


def open_engine(settings: configuration.Settings, store: Store) -> Engine:
    try:
        return Engine(settings, store)
    except configuration.ConfigError as exc:
        store.close()
        fail(EXIT_CONFIG, *exc.problems)


def setup_logging(settings: configuration.Settings) -> None:
    logs.setup(settings.config.logging.level, settings.config.logging.format)


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="Run one tick and exit.")] = False,
    home: Home = None,
) -> None:
    """The daemon: plan and deliver follow-ups on a schedule (--once: one tick, then exit).

    With --once the exit status is 0 if nothing failed, 1 if some follow-up failed (the
    others were still done), 2 for a configuration that must be fixed first.
    """
    settings = load_settings(home)
    setup_logging(settings)
    if not once:
        _run_daemon(settings, home)
        return
    store = open_store(settings)
    engine = open_engine(settings, store)
    try:
        engine.check_backends()  # missing credentials: exit 2, whether or not anything is due
        report = engine.tick()
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)
    finally:
        engine.close()
        store.close()
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _run_daemon(settings: configuration.Settings, home: Path | None) -> None:
    from followupd.daemon import AlreadyRunning, Daemon, single_daemon_lock

    try:
        lock = single_daemon_lock(settings)
    except AlreadyRunning as exc:
        fail(EXIT_CONFIG, str(exc))
    store = open_store(settings)

    def make_engine(current: configuration.Settings) -> Engine:
        engine = Engine(current, store)
        engine.check_backends()  # fail at start (or reload) on missing credentials
        return engine

    try:
        daemon = Daemon(settings, make_engine, reload=lambda: configuration.load(_home(home)))
    except configuration.ConfigError as exc:
        store.close()
        fail(EXIT_CONFIG, *exc.problems)
    try:
        daemon.run()
    finally:
        store.close()
        if lock is not None:
            os.close(lock)


@app.command()
def preview(
    follow_up_id: Annotated[int, typer.Argument(metavar="ID", help="A follow-up id (status).")],
    home: Home = None,
) -> None:
    """Show a follow-up exactly as it would be delivered, without delivering it."""
    settings = load_settings(home)
    store = open_store(settings)
    engine = open_engine(settings, store)
    try:
        rendered, why_not = engine.preview(follow_up_id)
    except RenderError as exc:
        fail(EXIT_FAILED, f"follow-up {follow_up_id} would fail: {exc}")
    finally:
        store.close()
    if rendered is None:
        fail(EXIT_FAILED, f"follow-up {follow_up_id} would not go out: {why_not}")
    if isinstance(rendered, Draft):
        # the very bytes that were checked and would be delivered
        sys.stdout.write(rendered.as_bytes().decode("utf-8", "replace").replace("\r\n", "\n"))
    else:
        sys.stdout.write(reminder_calendar(rendered).to_ical().decode().replace("\r\n", "\n"))


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="The demo home to create.")] = Path(
        "followupd-demo"
    ),
) -> None:
    """A complete run on the embedded defaults: SQLite, a local outbox, sample data, one tick."""
    from followupd.demo import DemoRefused, load_samples, prepare_home

    try:
        prepare_home(directory)
    except DemoRefused as exc:
        fail(EXIT_CONFIG, str(exc))
    try:
        settings = configuration.load(directory, environ={})
    except configuration.ConfigError as exc:
        fail(EXIT_CONFIG, *exc.problems)
    setup_logging(settings)
    store = open_store(settings)
    engine = open_engine(settings, store)
    try:
        load_samples(store, today(settings))
        report = engine.tick()
        out.print()
        _print_ledger(settings, store, title="followupd demo: one tick on sample data")
    finally:
        engine.close()
        store.close()
    out.print(f"\nwrote {len(report.delivered)} files into {settings.outbox_dir}:", markup=False)
    for _, _, external in report.delivered:
        out.print(f"  {settings.outbox_dir / external.removeprefix('outbox:')}", markup=False)
    out.print(
        "\nNothing was sent: drafts wait for your review. Try:\n"
        f"  followupd --home {directory} status\n"
        f"  followupd --home {directory} preview {report.delivered[0][0]}\n"
        f"  followupd --home {directory} referral release R-1002 && "
        f"followupd --home {directory} run --once",
        markup=False,
    )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def health(home: Home = None) -> None:
    """Exit 0 if the daemon is ticking and can deliver, 1 if not (a container HEALTHCHECK)."""
    from followupd.health import judge

    settings = load_settings(home)
    verdict = judge(settings, datetime.now(UTC))
    for line in verdict.lines:
        out.print(line, markup=False)
    if not verdict.healthy:
        fail(EXIT_FAILED, *(f"unhealthy: {problem}" for problem in verdict.problems))
    out.print("healthy", markup=False)


# --- status ----------------------------------------------------------------------------------


STATUS_FIELDS = ("id", "rule", "kind", "state", "due_at", "external_id", "attempts", "reason")


@app.command()
def status(
    home: Home = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
) -> None:
    """The ledger: what is planned, held (and why), done, sent, failed. No patient details."""
    settings = load_settings(home)
    store = open_store(settings)
    try:
        if as_json:
            for row in _ledger(store, state):
                record = {name: getattr(row, name) for name in STATUS_FIELDS}
                record["due_at"] = row.due_at.isoformat()
                if settings.config.therapists:  # a group practice: whose mailbox holds it
                    record["therapist"] = row.therapist
                out.print(json.dumps(record), markup=False)
            return
        _print_ledger(settings, store, state)
    finally:
        store.close()


def _ledger(store: Store, states: list[str] | None = None) -> list[FollowUp]:
    with store.session() as session:
        query = sa.select(FollowUp).order_by(FollowUp.due_at, FollowUp.id)
        if states:
            query = query.where(FollowUp.state.in_(states))
        return list(session.execute(query).scalars().all())


def _print_ledger(
    settings: configuration.Settings,
    store: Store,
    states: list[str] | None = None,
    title: str | None = None,
) -> None:
    rows = _ledger(store, states)
    zone = settings.config.practice.zone
    table = Table(title=title or f"{len(rows)} follow-ups", title_justify="left")
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("when", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    group = bool(settings.config.therapists)  # a group practice: whose mailbox it went to
    if group:
        table.add_column("therapist", no_wrap=True)
    table.add_column("where it is, or why not", overflow="fold")
    for row in rows:  # cells are Text: a ref like "R-[/]" is not console markup
        when = (row.remind_at or row.due_at).astimezone(zone)
        where = (
            row.reason
            if row.reason
            and (not row.external_id or row.state in ("sent", "gone", "withdrawn", "withdraw"))
            else row.external_id
        )
        table.add_row(
            str(row.id),
            Text(row.rule),
            row.kind,
            row.state,
            when.strftime("%Y-%m-%d %H:%M"),
            str(row.attempts),
            *([Text(row.therapist or "")] if group else []),
            Text(where or ""),
        )
    out.print(table)
    counts = Counter(row.state for row in rows)
    out.print(
        ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "nothing yet",
        markup=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
