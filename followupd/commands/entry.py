"""Entering data one at a time: `followupd physician`, `referral` and `visit`; and fixing
what was entered by mistake (`physician edit|merge`, `referral delete`).

A row typed here is validated exactly as a CSV row would be (followupd.records), then
written through the same upsert; a bad value names the option to fix, never a stored value.
"""

from __future__ import annotations

import sys
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
from followupd.models import Recipient, Referral
from followupd.records import (
    PhysicianRecord,
    RowError,
    clean_text,
    fold,
    parse_email,
    parse_fax,
    parse_referral,
    parse_visit,
    required_text,
)
from followupd.store import (
    AmbiguousPhysician,
    Directory,
    NoPhysician,
    PhysicianConflict,
    Store,
    change_referral,
    confirm_address,
    delete_referral,
    disclosed_notes,
    edit_physician,
    merge_physicians,
    record_release,
    referral_exists,
    revoke_releases,
    upsert_referrals,
    upsert_visits,
)
from followupd.wakeup import wake

physician_app = typer.Typer(help="Physicians who refer to you.", no_args_is_help=True)
referral_app = typer.Typer(
    help="Referrals: add, close, record a release, delete one entered by mistake.",
    no_args_is_help=True,
)
visit_app = typer.Typer(help="Outreach visits to physicians' offices.", no_args_is_help=True)

# The option that carries each column: a bad value is reported by the name typed.
OPTION_NAMES = {
    "ref": "--ref",
    "received_on": "--received-on",
    "physician": "--physician",
    "physician_email": "--physician-email",
    "practice": "--practice",
    "specialty": "--specialty",
    "prescriber": "--prescriber",
    "prescriber_email": "--prescriber-email",
    "prescriber_release_on_file": "--prescriber-release",
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
    "named_practice": "--named-practice",
    "named_physician": "--named-physician",
    "named_specialty": "--named-specialty",
}

Ref = Annotated[str, typer.Argument(help="The referral's id, e.g. R-12.")]
PhysicianId = Annotated[
    int,
    typer.Argument(
        metavar="ID", help="The physician's id, as `physician list` or the import summary names it."
    ),
]
Day = Annotated[str | None, typer.Option(help="YYYY-MM-DD [default: today].")]
SignedOn = Annotated[
    str | None, typer.Option(help="Date signed (or revoked), YYYY-MM-DD [default: today].")
]


def _bad_option(exc: RowError) -> NoReturn:
    fail(EXIT_CONFIG, f"{OPTION_NAMES.get(exc.column, exc.column)}: {exc.message}")


def _entry(
    settings: configuration.Settings,
    parse,
    upsert,
    row: dict,
    refused: Callable[[RowError], NoReturn] = _bad_option,
    **how,
) -> str:
    """Validate one row as the CSV import would, then write it with `upsert` (`how`: its
    further arguments); returns the outcome. What the upsert refuses (a physician's name
    that is several physicians) goes to `refused`, and nothing is written."""
    try:
        record = parse(row, therapists(settings))
    except RowError as exc:
        _bad_option(exc)
    try:
        with session_for(settings) as session:
            outcome = upsert(session, [record], Directory(trusted=True), **how)[0]
    except RowError as exc:
        refused(exc)
    wake(settings.home)
    return outcome


def _several_physicians(exc: RowError, row: dict) -> NoReturn:
    """A referral's physician or prescriber named by a name that several physicians share."""
    if not isinstance(exc, AmbiguousPhysician):
        _bad_option(exc)
    # A physician given with a practice is never ambiguous: then it is the prescriber.
    if not clean_text("practice", row.get("practice")) and fold(exc.name) == fold(row["physician"]):
        fail(EXIT_CONFIG, f"--physician: {exc.listing}; add --practice to say which")
    fail(
        EXIT_CONFIG,
        f"--prescriber: {exc.listing}; a prescriber is named without a practice: if they are "
        "one person run `followupd physician merge`, else tell them apart with "
        "`followupd physician edit`",
    )


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
            practice=clean_text("practice", practice),
            specialty=clean_text("specialty", specialty),
            email=parse_email("physician_email", email),
            fax=parse_fax("physician_fax", fax),
        )
    except RowError as exc:
        _bad_physician_option(exc)
    try:
        with session_for(settings) as session:
            physician_id, changed = Directory(trusted=True).physician(session, record)
    except AmbiguousPhysician as exc:
        fail(EXIT_CONFIG, f"--name: {exc.listing}; add --practice to say which")
    wake(settings.home)
    out.print(f"physician {physician_id}: {'saved' if changed else 'unchanged'}")


# The option of `physician add|edit` that carries each column.
PHYSICIAN_OPTIONS = {
    "physician": "--name",
    "physician_email": "--email",
    "physician_fax": "--fax",
    "specialty": "--specialty",
    "practice": "--practice",
}


def _bad_physician_option(exc: RowError) -> NoReturn:
    fail(EXIT_CONFIG, f"{PHYSICIAN_OPTIONS.get(exc.column, exc.column)}: {exc.message}")


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


@physician_app.command("edit")
def physician_edit(
    physician_id: PhysicianId,
    name: Annotated[str | None, typer.Option(help="As the physician signs.")] = None,
    email: Annotated[str | None, typer.Option(help="Where notes to this physician go.")] = None,
    fax: Annotated[str | None, typer.Option()] = None,
    specialty: Annotated[str | None, typer.Option()] = None,
    practice: Annotated[str | None, typer.Option(help="The physician's office.")] = None,
    home: Home = None,
) -> None:
    """Correct a physician entered with a mistake; "" clears an email, fax, specialty or
    practice. An address typed here needs no `confirm`; held notes are planned again."""
    settings = load_settings(home)
    changes = _physician_changes(
        {"name": name, "email": email, "fax": fax, "specialty": specialty, "practice": practice}
    )
    if not changes:
        fail(
            EXIT_CONFIG, "nothing to change: give --name, --email, --fax, --specialty or --practice"
        )
    try:
        with session_for(settings) as session:
            shown = edit_physician(session, physician_id, changes)
    except NoPhysician as exc:
        fail(EXIT_FAILED, str(exc))
    except PhysicianConflict as exc:
        fail(
            EXIT_CONFIG,
            f"--name/--practice: physician {exc.other_id} is already {exc.name} "
            f"({exc.practice or 'no practice'}); if they are one person run "
            f"`followupd physician merge {exc.other_id} {physician_id}`",
        )
    wake(settings.home)
    out.print(f"{shown}: saved; its notes are planned again on the next tick", markup=False)


def _physician_changes(given: dict[str, str | None]) -> dict[str, str | None]:
    """The options given, validated as data entry validates them ("" clears one)."""
    parsers = {
        "name": lambda v: required_text("physician", v),
        "email": lambda v: parse_email("physician_email", v),
        "fax": lambda v: parse_fax("physician_fax", v),
        "specialty": lambda v: clean_text("specialty", v),
        "practice": lambda v: clean_text("practice", v),
    }
    try:
        return {k: parsers[k](v) for k, v in given.items() if v is not None}
    except RowError as exc:
        _bad_physician_option(exc)


@physician_app.command("merge")
def physician_merge(
    keep: Annotated[int, typer.Argument(metavar="A", help="The physician to keep.")],
    merged: Annotated[int, typer.Argument(metavar="B", help="The duplicate, merged into A.")],
    home: Home = None,
) -> None:
    """Merge physician B into A (keeps A): B's referrals and visits move to A, A takes the
    email, fax, specialty and practice it lacks from B, and B is removed."""
    settings = load_settings(home)
    if keep == merged:
        fail(EXIT_CONFIG, f"A and B are both physician {keep}: give two different physicians")
    try:
        with session_for(settings) as session:
            done = merge_physicians(session, keep, merged)
    except NoPhysician as exc:
        fail(EXIT_FAILED, str(exc))
    wake(settings.home)
    took = f"; took {', '.join(done.took)} from {merged}" if done.took else ""
    out.print(
        f"physician {merged} merged into {done.kept}: moved {done.referrals} referrals, "
        f"{done.prescribed} as prescriber, {done.visits} visits{took}; physician {merged} "
        "removed; pending notes are planned again on the next tick",
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
    prescriber: Annotated[
        str | None,
        typer.Option(help="The client's prescriber, when not the referring physician."),
    ] = None,
    prescriber_email: Annotated[str | None, typer.Option(help="The prescriber's email.")] = None,
    prescriber_release: Annotated[
        bool, typer.Option(help="A release of information for the prescriber is on file.")
    ] = False,
    therapist: TherapistOption = None,
    home: Home = None,
) -> None:
    """Add a referral (its acknowledgement note is planned on the next tick). Without
    --practice, --physician names the one physician of that name you have."""
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
        **_prescriber_columns(prescriber, prescriber_email, prescriber_release),
    }
    _entry(
        settings,
        parse_referral,
        upsert_referrals,
        row,
        lambda exc: _several_physicians(exc, row),
        by="cli",
        today=today(settings),
    )
    out.print(f"referral {ref}: added", markup=False)


def _prescriber_columns(name: str | None, email: str | None, release: bool) -> dict:
    """The CSV import's prescriber columns from the options; the others need --prescriber."""
    if name is None:
        if email is not None or release:
            option = "--prescriber-email" if email is not None else "--prescriber-release"
            fail(EXIT_CONFIG, f"{option}: needs --prescriber (the prescriber's name)")
        return {}
    return {
        "prescriber": name,
        "prescriber_email": email,
        "prescriber_release_on_file": "yes" if release else "no",
    }


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


@referral_app.command("delete")
def referral_delete(
    ref: Ref,
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
    home: Home = None,
) -> None:
    """Delete a referral entered by mistake: its releases are revoked and its unsent notes
    taken back (as `release --revoke` does), then it is removed with its client's details.
    Notes already sent are listed as disclosed; the ledger keeps their history."""
    settings = load_settings(home)
    ref = ref.strip()
    if not _referral_exists(settings, ref):
        fail(EXIT_FAILED, f"no referral {ref}")
    _confirm(f"Delete referral {ref} with its client's details, and take back its notes?", yes)
    with opened_store(settings) as store:
        with store.session() as session:
            revoke_releases(session, ref, on=today(settings), by="delete")
        _withdraw_now(settings, store, ref)
        with store.session() as session:
            outcome = delete_referral(session, ref)
    wake(settings.home)
    if outcome is None:
        fail(EXIT_FAILED, f"no referral {ref}")
    if not outcome.deleted:
        fail(
            EXIT_FAILED,
            f"referral {ref}: kept for now: {outcome.unfinished} of its notes are still being "
            "taken back or delivered; the daemon finishes the withdrawal: run "
            f"`followupd referral delete {ref}` again later",
        )
    out.print(
        f"referral {ref}: deleted ({outcome.cancelled} pending notes cancelled)", markup=False
    )


def _interactive() -> bool:
    """Whether a person is at the keyboard to answer a question."""
    return sys.stdin.isatty()


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere only --yes goes ahead (a script must say so)."""
    if yes:
        return
    if not _interactive():
        fail(EXIT_CONFIG, "not a terminal, so nothing to confirm with: add --yes to go ahead")
    if not typer.confirm(question, default=False):
        fail(EXIT_FAILED, "nothing was deleted")


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
    named_practice: Annotated[
        str | None,
        typer.Option(help='Their answer to "Who is your favorite practice to refer to?"'),
    ] = None,
    named_physician: Annotated[
        str | None, typer.Option(help="The physician they named (a prospect).")
    ] = None,
    named_specialty: Annotated[
        str | None, typer.Option(help="The named physician's or practice's specialty.")
    ] = None,
    on: Day = None,
    therapist: TherapistOption = None,
    home: Home = None,
) -> None:
    """Log an outreach visit (its revisit reminder goes on the calendar on the next tick).
    A practice or physician they named (--named-practice, --named-physician) becomes a
    prospect: a reminder to introduce yourself, saying who suggested you."""
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
        "named_practice": named_practice,
        "named_physician": named_physician,
        "named_specialty": named_specialty,
    }
    outcome = _entry(settings, parse_visit, upsert_visits, row)
    out.print(f"visit to {practice} on {row['visited_on']}: {outcome}", markup=False)
