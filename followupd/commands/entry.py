"""Entering data one at a time: `followupd physician`, `referral` and `visit`.

A row typed here is validated exactly as a CSV row would be (followupd.records), then
written through the same upsert; a bad value names the option to fix, never a stored value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, NoReturn

import typer

from followupd import config as configuration
from followupd import logs
from followupd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    Home,
    TherapistOption,
    date_option,
    fail,
    load_settings,
    opened_engine,
    opened_store,
    out,
    session_for,
    therapists,
    today,
)
from followupd.daemon import wake
from followupd.models import Recipient, Referral
from followupd.records import (
    PhysicianRecord,
    RowError,
    clean_text,
    parse_email,
    parse_fax,
    parse_referral,
    parse_visit,
    required_text,
)
from followupd.store import (
    Directory,
    Store,
    change_referral,
    confirm_address,
    disclosed_notes,
    record_release,
    referral_exists,
    upsert_referrals,
    upsert_visits,
)

physician_app = typer.Typer(help="Physicians who refer to you.", no_args_is_help=True)
referral_app = typer.Typer(help="Referrals: add, close, record a release.", no_args_is_help=True)
visit_app = typer.Typer(help="Outreach visits to physicians' offices.", no_args_is_help=True)

# The option that carries each column: a bad value is reported by the name typed.
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

Ref = Annotated[str, typer.Argument(help="The referral's id, e.g. R-12.")]
Day = Annotated[str | None, typer.Option(help="YYYY-MM-DD [default: today].")]
SignedOn = Annotated[
    str | None, typer.Option(help="Date signed (or revoked), YYYY-MM-DD [default: today].")
]


def _bad_option(exc: RowError) -> NoReturn:
    fail(EXIT_CONFIG, f"{OPTION_NAMES.get(exc.column, exc.column)}: {exc.message}")


def _entry(settings: configuration.Settings, parse, upsert, row: dict, **how) -> str:
    """Validate one row as the CSV import would, then write it with `upsert` (`how`: its
    further arguments); returns the outcome."""
    try:
        record = parse(row, therapists(settings))
    except RowError as exc:
        _bad_option(exc)
    with session_for(settings) as session:
        outcome = upsert(session, [record], Directory(trusted=True), **how)[0]
    wake(settings.home)
    return outcome


# --- physicians ------------------------------------------------------------------------------


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
        option = {"physician": "--name", "physician_email": "--email", "physician_fax": "--fax"}
        fail(EXIT_CONFIG, f"{option.get(exc.column, exc.column)}: {exc.message}")
    with session_for(settings) as session:
        physician_id, changed = Directory(trusted=True).physician(session, record)
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
    with session_for(settings) as session:
        confirmed = confirm_address(session, physician_id)
    if confirmed is None:
        fail(EXIT_FAILED, f"no physician {physician_id}")
    wake(settings.home)
    name, email = confirmed
    out.print(
        f"physician {physician_id} ({name}): {email or 'no address'} confirmed; notes "
        "held for it are planned on the next tick",
        markup=False,
    )


# --- referrals -------------------------------------------------------------------------------


@referral_app.command("add")
def referral_add(
    ref: Annotated[str, typer.Option(help="Your own id for the referral, e.g. R-12.")],
    physician: Annotated[str, typer.Option(help="The referring physician's name.")],
    client_name: Annotated[str, typer.Option(help="The client's name (stays in the database).")],
    received_on: Day = None,
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
    _entry(settings, parse_referral, upsert_referrals, row, by="cli", today=today(settings))
    out.print(f"referral {ref}: added", markup=False)


def _referral_exists(settings: configuration.Settings, ref: str) -> bool:
    with session_for(settings) as session:
        return referral_exists(session, ref)


def _change_referral(
    settings: configuration.Settings, ref: str, change: Callable[[Referral], None]
) -> None:
    """Apply `change` to one referral and mark it changed, so the next tick re-plans it."""
    try:
        with session_for(settings) as session:
            found = change_referral(session, ref, change)
    except RowError as exc:  # a value the change refused: nothing was written
        _bad_option(exc)
    if not found:
        fail(EXIT_FAILED, f"no referral {ref} (add it, or import your referral log)")
    wake(settings.home)


@referral_app.command("close")
def referral_close(
    ref: Ref,
    summary: Annotated[
        str | None, typer.Option(help="Outcome and recommendations, for the closing note.")
    ] = None,
    on: Day = None,
    home: Home = None,
) -> None:
    """Record the close of treatment (its closing note is planned on the next tick)."""
    settings = load_settings(home)
    closed_on = date_option("--on", on, settings)

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
    ref: Ref,
    on: SignedOn = None,
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
    when = date_option("--on", on, settings)
    recipient = Recipient.prescriber if prescriber else Recipient.physician
    with opened_store(settings) as store:
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


def _withdraw_now(settings: configuration.Settings, store: Store, ref: str) -> None:
    """Take back, now, what a revoke withdraws; say what was already disclosed."""
    logs.setup("ERROR", settings.config.logging.format)
    with opened_engine(settings, store) as engine:
        report = engine.withdraw_now()
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


# --- visits ----------------------------------------------------------------------------------


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
    on: Day = None,
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
