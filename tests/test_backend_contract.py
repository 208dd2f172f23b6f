"""The delivery backend contract: one set of tests that every backend passes.

Like vdirsyncer's StorageTests: each test speaks only the Backend protocol (`begin`,
`deliver`, `draft_states`, `withdraw`, `close`) and looks at the destination through a small
`Case` (how many drafts and reminders exist there, what the therapist may do to a draft).
The backends: the local outbox on a temporary folder, and the real GoogleBackend with the
real google-api-python-client against tests/google_server.py (with and without the read
scope). What a backend cannot tell is a capability of its case (`tells`), and each test
asserts exactly what that backend promises.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from google_server import GoogleServer, running_server

from followupd import config as configuration
from followupd.delivery import (
    Backend,
    Delivered,
    DeliveryError,
    Draft,
    DraftRef,
    Reminder,
    Withdrawn,
)
from followupd.delivery.google import GoogleBackend
from followupd.delivery.outbox import OutboxBackend

INSTALLATION = "0123456789abcdef"
ZONE = "America/Chicago"

# What a backend's draft_states can tell of a draft that left the drafts:
SENT_OR_DELETED = "sent-or-deleted"  # Gmail with the read scope
GONE = "gone"  # Gmail without it: no longer a draft, sent or deleted unknown
NOTHING = "nothing"  # the outbox: a file cannot say whether it was sent


@dataclass
class Case:
    """A backend and what the test can see and do at its destination."""

    backend: Backend
    drafts: Callable[[], int]  # how many drafts exist
    reminders: Callable[[], int]  # how many reminders exist
    discard: Callable[[DraftRef], None]  # the therapist deletes the draft
    send: Callable[[DraftRef], None] | None  # the therapist sends it (None: cannot happen)
    lose_answers: Callable[[], None]  # the next create's answer is lost after it acted
    tells: str  # SENT_OR_DELETED, GONE or NOTHING

    @property
    def withdrawn_when_missing(self) -> str:
        """A withdrawal's state for a draft that is no longer there and was not sent."""
        return "gone" if self.tells == GONE else "withdrawn"


# --- the items --------------------------------------------------------------------------------


def event_id(n: int) -> str:
    """A Calendar event id as followupd makes one: base32hex, lower case, only this one's."""
    digest = hashlib.sha256(f"{INSTALLATION}:{n}".encode()).digest()[:20]
    return base64.b32hexencode(digest).decode().lower()


def make_draft(n: int, attempt: int = 1) -> Draft:
    message_id = f"<followupd.{n}.{INSTALLATION}@practice.example>"
    tag = f"{INSTALLATION}.{n}"
    message = EmailMessage(policy=SMTP)
    message["From"] = "Dana Reyes <dana@reyes-therapy.example>"
    message["To"] = "Dr. Test <dr@clinic.example>"
    message["Subject"] = "Your referral"
    message["Message-ID"] = message_id
    message["X-Followupd-Id"] = tag
    message.set_content("Thank you for the referral.")
    return Draft(n, message_id, message, attempt=attempt, tag=tag, raw=message.as_bytes())


def make_reminder(n: int, attempt: int = 1) -> Reminder:
    start = datetime(2030, 5, 1, 9, 0, tzinfo=ZoneInfo(ZONE)) + timedelta(days=n)
    return Reminder(
        follow_up_id=n,
        uid=f"followupd-{INSTALLATION}-{n}@practice.example",
        event_id=event_id(n),
        title="Revisit Clinic",
        description="Bring cards and handouts.",
        start=start,
        end=start + timedelta(minutes=30),
        timezone=ZONE,
        attempt=attempt,
    )


def again(item: Draft | Reminder) -> Draft | Reminder:
    """The same item on a later tick: an earlier try's answer may have been lost."""
    if isinstance(item, Draft):
        return make_draft(item.follow_up_id, attempt=item.attempt + 1)
    return make_reminder(item.follow_up_id, attempt=item.attempt + 1)


def ref_of(draft: Draft, outcome: Delivered, attempt: int = 1) -> DraftRef:
    """The ref the engine keeps for a delivered draft (as engine/syncer.py makes it)."""
    external = outcome.external_id
    return DraftRef(
        draft.follow_up_id,
        external.removeprefix("gmail:") if external.startswith("gmail:") else None,
        draft.message_id,
        draft.tag,
        outcome.thread_id,
        attempt=attempt,
    )


def delivered(case: Case, draft: Draft) -> DraftRef:
    [outcome] = case.backend.deliver([draft])
    assert isinstance(outcome, Delivered) and outcome.state == "done", outcome
    return ref_of(draft, outcome)


# --- the backends -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_server() -> Iterator[GoogleServer]:
    with running_server() as server:
        yield server


def outbox_case(folder: Path) -> Case:
    def discard(ref: DraftRef) -> None:
        (folder / "drafts" / f"{ref.follow_up_id}.eml").unlink()

    return Case(
        backend=OutboxBackend(folder),
        drafts=lambda: len(list(folder.glob("drafts/*.eml"))),
        reminders=lambda: len(list(folder.glob("reminders/*.ics"))),
        discard=discard,
        send=None,
        # A lost answer here is a crash after the rename: the file is there, the outcome was
        # never recorded; delivering again is the test.
        lose_answers=lambda: None,
        tells=NOTHING,
    )


def google_case(home: Path, server: GoogleServer, *, read_scope: bool) -> Case:
    (home / "google-token.json").write_text(json.dumps(server.credentials_info()))
    settings = home / "followupd.yaml"
    text = settings.read_text().replace("timeout: 30", "timeout: 2")
    settings.write_text(text.replace("read_scope: false", f"read_scope: {str(read_scope).lower()}"))

    def lose_answers() -> None:  # Google makes it, then the connection drops: no answer
        server.inject("drafts.create", "act-then-drop")
        server.inject("events.insert", "act-then-drop")

    def send(ref: DraftRef) -> None:
        server.send_draft("me", str(ref.draft_id))

    return Case(
        backend=GoogleBackend(configuration.load(home), sleep=lambda _: None),
        drafts=lambda: len(server.drafts()),
        reminders=lambda: len(server.events()),
        discard=lambda ref: server.delete_draft("me", str(ref.draft_id)),
        send=send,
        lose_answers=lose_answers,
        tells=SENT_OR_DELETED if read_scope else GONE,
    )


@pytest.fixture(params=["outbox", "google", "google-compose-only"])
def case(
    request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Case]:
    if request.param == "outbox":
        made = outbox_case(home / "outbox")
    else:
        server = request.getfixturevalue("module_server")
        server.reset()
        monkeypatch.setenv("FOLLOWUPD_DELIVERY", "google")
        monkeypatch.setenv("FOLLOWUPD_GOOGLE_API_ENDPOINT", server.base_url)
        made = google_case(home, server, read_scope=request.param == "google")
    made.backend.begin()
    yield made
    made.backend.close()


# --- the contract -----------------------------------------------------------------------------


def test_a_draft_and_a_reminder_are_made(case):
    outcomes = case.backend.deliver([make_draft(1), make_reminder(2)])
    assert [type(o) for o in outcomes] == [Delivered, Delivered]
    assert [o.state for o in outcomes] == ["done", "done"]
    assert outcomes[0].external_id != outcomes[1].external_id
    assert (case.drafts(), case.reminders()) == (1, 1)


def test_delivering_again_finds_what_exists_instead_of_making_a_second(case):
    items = [make_draft(1), make_reminder(2)]
    first = case.backend.deliver(items)
    case.backend.begin()  # a later tick
    second = case.backend.deliver([again(item) for item in items])
    assert [o.external_id for o in second] == [o.external_id for o in first]
    assert all(isinstance(o, Delivered) and o.state == "done" for o in second)
    assert (case.drafts(), case.reminders()) == (1, 1)


def test_a_lost_answer_is_found_on_the_next_try_not_made_again(case):
    items = [make_draft(1), make_reminder(2)]
    case.lose_answers()
    first = case.backend.deliver(items)  # whatever it could tell; never a permanent failure
    assert not any(isinstance(o, DeliveryError) and o.permanent for o in first), first
    case.backend.begin()
    second = case.backend.deliver([again(item) for item in items])
    assert all(isinstance(o, Delivered) and o.state == "done" for o in second), second
    assert (case.drafts(), case.reminders()) == (1, 1)


def test_a_withdrawn_draft_is_gone_and_withdrawing_again_is_harmless(case):
    ref = delivered(case, make_draft(1))
    kept = delivered(case, make_draft(2))
    assert case.backend.withdraw([ref]) == [Withdrawn("withdrawn")]
    assert case.drafts() == 1  # the other one stays
    later = DraftRef(ref.follow_up_id, ref.draft_id, ref.message_id, ref.tag, attempt=2)
    assert case.backend.withdraw([later]) == [Withdrawn(case.withdrawn_when_missing)]
    assert case.backend.withdraw([ref]) == [Withdrawn(case.withdrawn_when_missing)]
    assert case.drafts() == 1
    assert case.backend.withdraw([kept]) == [Withdrawn("withdrawn")]
    assert case.drafts() == 0


def test_withdrawing_a_draft_never_made_is_harmless(case):
    never = ref_of(make_draft(7), Delivered("never recorded"))
    assert case.backend.withdraw([never]) == [Withdrawn(case.withdrawn_when_missing)]
    assert case.drafts() == 0


def test_a_draft_the_therapist_discarded_is_withdrawn_without_error(case):
    ref = delivered(case, make_draft(1))
    case.discard(ref)
    assert case.backend.withdraw([ref]) == [Withdrawn(case.withdrawn_when_missing)]


def test_draft_states_say_present_where_the_backend_can_tell(case):
    ref = delivered(case, make_draft(1))
    [state] = case.backend.draft_states([ref]).values()
    if case.tells == NOTHING:
        assert state is None
    else:
        assert state is not None and state.state == "present" and state.draft_id is None


def test_draft_states_report_a_deleted_draft_as_the_backend_can(case):
    ref = delivered(case, make_draft(1))
    case.discard(ref)
    [state] = case.backend.draft_states([ref]).values()
    expected = {SENT_OR_DELETED: "deleted", GONE: "gone", NOTHING: None}[case.tells]
    assert (state.state if state else None) == expected


def test_draft_states_report_a_sent_draft_as_the_backend_can(case):
    if case.send is None:
        pytest.skip("nothing is sent from this backend's destination")
    ref = delivered(case, make_draft(1))
    case.send(ref)
    [state] = case.backend.draft_states([ref]).values()
    assert state is not None
    if case.tells == SENT_OR_DELETED:
        assert state.state == "sent" and state.sent_at is not None
    else:
        assert state.state == "gone"


def test_a_sent_draft_is_not_withdrawn_but_reported(case):
    if case.send is None:
        pytest.skip("nothing is sent from this backend's destination")
    ref = delivered(case, make_draft(1))
    case.send(ref)
    [outcome] = case.backend.withdraw([ref])
    assert isinstance(outcome, Withdrawn)
    if case.tells == SENT_OR_DELETED:
        assert outcome.state == "sent" and outcome.sent_at is not None
    else:
        assert outcome.state == "gone"
