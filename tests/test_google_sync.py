"""Finding delivered drafts again, after the therapist edited them: sync and withdraw.

Backend-level tests: the real GoogleBackend and google-api-python-client against the local
Gmail server (tests/google_server.py), whose `edit_draft` saves a draft the ways reports say
Gmail may (a new message id always; as asked, a new draft id, a new Message-ID, no
X-Followupd-Id, a new thread when the subject changes) and whose `search_lag` makes new mail
invisible to searches for a while, as Gmail's index is.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from google_server import GoogleServer, message_of, running_server

from conftest import write_service_account_key
from followupd import config as configuration
from followupd.delivery import (
    Delivered,
    DeliveryError,
    Draft,
    DraftRef,
    DraftState,
    Withdrawn,
    googleapi,
)
from followupd.delivery.google import GoogleBackend
from followupd.delivery.googleapi import CredentialsProblem, load_credentials

PATIENT = ("Harriet Vandermolen", "1970-05-04", "Insomnia with nightmares")
INSTALLATION = "abcdef0123456789"


@pytest.fixture(scope="module")
def module_server() -> Iterator[GoogleServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def server(module_server: GoogleServer) -> GoogleServer:
    module_server.reset()
    return module_server


def set_config(home: Path, old: str, new: str) -> None:
    path = home / "followupd.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.fixture
def google_home(home: Path, server: GoogleServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    (home / "google-token.json").write_text(json.dumps(server.credentials_info()))
    set_config(home, "timeout: 30", "timeout: 2")
    monkeypatch.setenv("FOLLOWUPD_DELIVERY", "google")
    monkeypatch.setenv("FOLLOWUPD_GOOGLE_API_ENDPOINT", server.base_url)
    return home


def open_backend(home: Path, *, read_scope: bool = True) -> GoogleBackend:
    if read_scope:
        set_config(home, "read_scope: false", "read_scope: true")
    backend = GoogleBackend(configuration.load(home), sleep=lambda _: None)
    backend.begin()
    return backend


@pytest.fixture
def backend(google_home: Path) -> Iterator[GoogleBackend]:
    opened = open_backend(google_home)
    yield opened
    opened.close()


@pytest.fixture
def backend_without_read_scope(google_home: Path) -> Iterator[GoogleBackend]:
    opened = open_backend(google_home, read_scope=False)
    yield opened
    opened.close()


@pytest.fixture(params=[True, False], ids=["read-scope", "no-read-scope"])
def any_backend(request: pytest.FixtureRequest, google_home: Path) -> Iterator[GoogleBackend]:
    opened = open_backend(google_home, read_scope=request.param)
    yield opened
    opened.close()


def make_draft(n: int, attempt: int = 1) -> Draft:
    """A note carrying patient details, with followupd's identity headers."""
    message_id = f"<followupd.{n}.{INSTALLATION}@practice.example>"
    tag = f"{INSTALLATION}.{n}"
    msg = EmailMessage()
    msg["From"] = "Dana Reyes <dana@practice.example>"
    msg["To"] = "Dr. Test <dr@clinic.example>"
    msg["Subject"] = "Your referral"
    msg["Message-ID"] = message_id
    msg["X-Followupd-Id"] = tag
    msg.set_content(f"Thank you for referring {PATIENT[0]} (born {PATIENT[1]}): {PATIENT[2]}.")
    return Draft(n, message_id, msg, attempt=attempt, tag=tag)


def deliver(backend: GoogleBackend, n: int) -> DraftRef:
    """Deliver draft `n`; the ref the engine would keep for it."""
    draft = make_draft(n)
    [outcome] = backend.deliver([draft])
    assert isinstance(outcome, Delivered), outcome
    return DraftRef(
        n,
        outcome.external_id.removeprefix("gmail:"),
        draft.message_id,
        draft.tag,
        outcome.thread_id,
    )


def again(ref: DraftRef) -> DraftRef:
    """The same ref on a later call, after an answer was lost."""
    return DraftRef(
        ref.follow_up_id,
        ref.draft_id,
        ref.message_id,
        ref.tag,
        ref.thread_id,
        attempt=ref.attempt + 1,
    )


def draft_ids(server: GoogleServer) -> list[str]:
    return [d["id"] for d in server.drafts()]


def sent_time(sent: dict) -> datetime:
    return datetime.fromtimestamp(int(sent["internalDate"]) / 1000, UTC)


def assert_no_patient_value(*texts: str) -> None:
    for text in texts:
        assert not any(value in text for value in PATIENT), text


def start_a_reply(server: GoogleServer, backend: GoogleBackend, thread_id: str) -> str:
    """The therapist begins a reply in the thread (after the physician wrote back)."""
    reply = EmailMessage()
    reply["To"] = "dr@clinic.example"
    reply["Subject"] = "Re: Your referral"
    reply["In-Reply-To"] = "<answer@clinic.example>"
    reply["References"] = "<answer@clinic.example>"
    reply.set_content("Thanks, see you Tuesday.")
    raw = base64.urlsafe_b64encode(reply.as_bytes()).decode()
    created = backend.drafts_api.create(
        userId="me", body={"message": {"raw": raw, "threadId": thread_id}}
    ).execute()
    return created["id"]


# --- item 1: a delivered draft carries its thread ------------------------------------------


def test_a_delivered_draft_carries_its_thread(server, backend):
    [outcome] = backend.deliver([make_draft(1)])
    [stored] = server.drafts()
    assert outcome == Delivered(f"gmail:{stored['id']}", thread_id=stored["message"]["threadId"])


def test_a_lost_create_is_found_by_the_header_scan_while_search_lags(server, backend):
    """Gmail's search index lags behind a new draft: the retry after a lost answer finds it by
    reading the recent drafts' headers, and makes no second draft."""
    server.search_lag = 60
    server.inject("drafts.create", "act-then-drop")
    [lost] = backend.deliver([make_draft(1)])
    assert isinstance(lost, DeliveryError) and not lost.permanent and not lost.systemic
    assert_no_patient_value(lost.reason)
    [stored] = server.drafts()

    backend.begin()  # a later round
    [found] = backend.deliver([make_draft(1, attempt=2)])
    assert found == Delivered(f"gmail:{stored['id']}", thread_id=stored["message"]["threadId"])
    assert server.stats.count("drafts.create") == 1 and len(server.drafts()) == 1
    searches = [
        r.path
        for r in server.requests
        if r.method == "GET" and r.path.split("?")[0].endswith("/drafts")
    ]
    assert any("q=rfc822msgid" in path for path in searches)  # searched, found nothing
    assert any("q=" not in path for path in searches)  # then read the recent drafts


# --- item 2: draft_states -------------------------------------------------------------------


def test_an_untouched_draft_is_present_for_one_call(server, any_backend):
    ref = deliver(any_backend, 1)
    before = server.stats.total_calls
    states = any_backend.draft_states([ref])
    assert states == {1: DraftState("present", thread_id=ref.thread_id)}
    assert server.stats.total_calls - before == 1


# How the therapist changed a draft before sending it (server.edit_draft's options).
EDITS = {
    "untouched": None,
    "edited-same-ids": {},
    "new-message-id-same-thread": {"keep_message_id": False, "keep_tag": False},
    "new-draft-id-new-message-id-same-thread": {
        "new_draft_id": True,
        "keep_message_id": False,
        "keep_tag": False,
    },
    "new-subject-keeps-message-id": {"keep_tag": False, "new_subject": "Re: our patient"},
    "new-subject-keeps-only-the-tag": {
        "new_draft_id": True,
        "keep_message_id": False,
        "new_subject": "Re: our patient",
    },
}


def edit(server: GoogleServer, ref: DraftRef, how: dict | None) -> dict:
    """Apply an edit; the draft as it is now."""
    if how is None:
        return next(d for d in server.drafts() if d["id"] == ref.draft_id)
    return server.edit_draft("me", ref.draft_id, text="Edited by the therapist.", **how)


@pytest.mark.parametrize("lag", [0, 60], ids=["indexed", "search-lags"])
@pytest.mark.parametrize("how", list(EDITS))
def test_an_edited_draft_that_was_sent_is_sent(server, backend, how, lag):
    ref = deliver(backend, 1)
    server.search_lag = lag
    edited = edit(server, ref, EDITS[how])
    sent = server.send_draft("me", edited["id"])
    states = backend.draft_states([ref])
    assert states == {1: DraftState("sent", sent_time(sent), thread_id=sent["threadId"])}


def test_sent_the_usual_way_costs_a_few_calls(server, backend):
    """A sent draft that kept its thread is known from its thread: the hundred-call reads of
    recent drafts and sent mail are left for the drafts nothing cheaper explains."""
    refs = [deliver(backend, n) for n in (1, 2, 3)]
    for ref in refs:
        server.send_draft("me", ref.draft_id)
    before = {
        kind: server.stats.count(kind)
        for kind in ("drafts.get", "drafts.list", "threads.get", "messages.get")
    }
    states = backend.draft_states(refs)
    assert {state.state for state in states.values()} == {"sent"}
    spent = {kind: server.stats.count(kind) - n for kind, n in before.items()}
    assert spent == {"drafts.get": 3, "drafts.list": 3, "threads.get": 3, "messages.get": 0}


def test_without_the_read_scope_a_sent_draft_is_gone(server, backend_without_read_scope):
    ref = deliver(backend_without_read_scope, 1)
    server.send_draft("me", ref.draft_id)
    states = backend_without_read_scope.draft_states([ref])
    assert states == {1: DraftState("gone", thread_id=ref.thread_id)}
    assert server.stats.count("threads.get") == server.stats.count("messages.list") == 0


# How a draft may be saved anew under another id while still unsent.
RESAVES = {
    "keeps-message-id": {},
    "new-message-id-keeps-tag": {"keep_message_id": False},
    "new-message-id-no-tag-same-thread": {"keep_message_id": False, "keep_tag": False},
    "new-subject-keeps-tag": {"keep_message_id": False, "new_subject": "Re: our patient"},
}


@pytest.mark.parametrize("lag", [0, 60], ids=["indexed", "search-lags"])
@pytest.mark.parametrize("how", list(RESAVES))
def test_a_draft_saved_anew_under_another_id_is_present(server, any_backend, how, lag):
    ref = deliver(any_backend, 1)
    other = deliver(any_backend, 2)
    server.search_lag = lag
    saved = server.edit_draft("me", ref.draft_id, new_draft_id=True, **RESAVES[how])
    states = any_backend.draft_states([ref, other])
    assert states[1] == DraftState(
        "present", draft_id=saved["id"], thread_id=saved["message"]["threadId"]
    )
    assert states[2] == DraftState("present", thread_id=other.thread_id)


@pytest.mark.parametrize("resaved", [False, True], ids=["as-made", "saved-anew-first"])
def test_a_deleted_draft_is_deleted_or_gone_without_the_read_scope(server, any_backend, resaved):
    ref = deliver(any_backend, 1)
    kept = deliver(any_backend, 2)
    draft_id = ref.draft_id
    if resaved:
        draft_id = server.edit_draft("me", draft_id, new_draft_id=True, keep_message_id=False)["id"]
    server.delete_draft("me", draft_id)
    states = any_backend.draft_states([ref, kept])
    expected = "deleted" if any_backend.read_scope else "gone"
    assert states == {
        1: DraftState(expected, thread_id=ref.thread_id),
        2: DraftState("present", thread_id=kept.thread_id),
    }


def test_a_reply_begun_in_the_thread_is_not_taken_for_the_draft(server, any_backend):
    """The therapist sent the note, the physician answered, a reply is being written in the
    same thread: that draft is not ours."""
    ref = deliver(any_backend, 1)
    sent = server.send_draft("me", ref.draft_id)
    start_a_reply(server, any_backend, ref.thread_id)
    [state] = any_backend.draft_states([ref]).values()
    if any_backend.read_scope:
        assert state == DraftState("sent", sent_time(sent), thread_id=ref.thread_id)
    else:
        assert state == DraftState("gone", thread_id=ref.thread_id)


@pytest.mark.parametrize(
    "kind", ["drafts.get", "drafts.list", "threads.get", "messages.list", "messages.get"]
)
@pytest.mark.parametrize("fault", ["503", "drop"])
def test_a_vanished_draft_is_unknown_while_any_look_fails(server, backend, kind, fault):
    """ "Deleted" is concluded only when every look answered; a failed one says: ask again."""
    ref = deliver(backend, 1)
    server.add_message("me", b"To: x@example.com\r\nSubject: hi\r\n\r\nhello\r\n")  # unrelated
    server.delete_draft("me", ref.draft_id)
    server.inject(kind, fault, times=1000)
    assert backend.draft_states([ref]) == {1: None}
    server.clear_faults()
    assert backend.draft_states([ref]) == {1: DraftState("deleted", thread_id=ref.thread_id)}


def test_a_failed_look_does_not_hide_what_another_one_found(server, backend):
    ref = deliver(backend, 1)
    sent = server.send_draft("me", ref.draft_id)
    server.inject("threads.get", "503", times=10)
    assert backend.draft_states([ref]) == {
        1: DraftState("sent", sent_time(sent), thread_id=sent["threadId"])
    }


def test_revoked_credentials_leave_every_draft_unknown(server, backend):
    refs = [deliver(backend, n) for n in (1, 2)]
    server.delete_draft("me", refs[0].draft_id)
    server.revoke()
    assert backend.draft_states(refs) == {1: None, 2: None}
    # every call would fail the same way: no look after the first refusal
    assert server.stats.count("drafts.list") == server.stats.count("threads.get") == 0


# --- item 3: withdraw -----------------------------------------------------------------------


def test_withdraw_deletes_exactly_that_draft(server, any_backend):
    ref = deliver(any_backend, 1)
    kept = deliver(any_backend, 2)
    assert any_backend.withdraw([ref]) == [Withdrawn("withdrawn")]
    assert server.stats.count("drafts.delete") == 1
    assert draft_ids(server) == [kept.draft_id]


@pytest.mark.parametrize("lag", [0, 60], ids=["indexed", "search-lags"])
@pytest.mark.parametrize("how", list(RESAVES))
def test_withdraw_finds_a_draft_saved_anew(server, any_backend, how, lag):
    ref = deliver(any_backend, 1)
    kept = deliver(any_backend, 2)
    server.search_lag = lag
    server.edit_draft("me", ref.draft_id, new_draft_id=True, **RESAVES[how])
    assert any_backend.withdraw([ref]) == [Withdrawn("withdrawn")]
    assert server.stats.count("drafts.delete") == 1
    assert draft_ids(server) == [kept.draft_id]


@pytest.mark.parametrize("how", list(EDITS))
def test_withdraw_of_a_draft_already_sent_says_sent(server, backend, how):
    ref = deliver(backend, 1)
    kept = deliver(backend, 2)
    sent = server.send_draft("me", edit(server, ref, EDITS[how])["id"])
    assert backend.withdraw([ref]) == [Withdrawn("sent", sent_time(sent))]
    assert server.stats.count("drafts.delete") == 0
    assert draft_ids(server) == [kept.draft_id] and server.sent() == [sent]


def test_withdraw_without_the_read_scope_cannot_tell_sent_from_deleted(
    server, backend_without_read_scope
):
    backend = backend_without_read_scope
    sent, deleted = deliver(backend, 1), deliver(backend, 2)
    server.send_draft("me", sent.draft_id)
    server.delete_draft("me", deleted.draft_id)
    assert backend.withdraw([sent, deleted]) == [Withdrawn("gone"), Withdrawn("gone")]
    assert server.stats.count("drafts.delete") == 0


def test_withdraw_never_deletes_a_reply_in_the_thread(server, any_backend):
    ref = deliver(any_backend, 1)
    sent = server.send_draft("me", ref.draft_id)
    reply = start_a_reply(server, any_backend, ref.thread_id)
    expected = Withdrawn("sent", sent_time(sent)) if any_backend.read_scope else Withdrawn("gone")
    assert any_backend.withdraw([ref]) == [expected]
    assert draft_ids(server) == [reply] and server.stats.count("drafts.delete") == 0


def test_withdraw_answers_each_ref_in_order(server, backend):
    present, sent, deleted, resaved = (deliver(backend, n) for n in (1, 2, 3, 4))
    kept = deliver(backend, 5)
    sent_message = server.send_draft("me", sent.draft_id)
    server.delete_draft("me", deleted.draft_id)
    server.edit_draft(
        "me", resaved.draft_id, new_draft_id=True, keep_message_id=False, keep_tag=False
    )
    never_made = DraftRef(6, None, make_draft(6).message_id, make_draft(6).tag)
    outcomes = backend.withdraw([present, sent, deleted, resaved, never_made])
    assert outcomes == [
        Withdrawn("withdrawn"),
        Withdrawn("sent", sent_time(sent_message)),
        Withdrawn("withdrawn"),
        Withdrawn("withdrawn"),
        Withdrawn("withdrawn"),
    ]
    assert server.stats.count("drafts.delete") == 2
    assert draft_ids(server) == [kept.draft_id]


@pytest.mark.parametrize("fault", ["act-then-drop", "act-then-500"])
def test_a_delete_whose_answer_was_lost_is_never_sent_again(server, backend, fault):
    ref = deliver(backend, 1)
    kept = deliver(backend, 2)
    server.inject("drafts.delete", fault)
    [lost] = backend.withdraw([ref])
    assert isinstance(lost, DeliveryError)
    assert not lost.permanent and not lost.systemic
    assert_no_patient_value(lost.reason)
    if fault == "act-then-drop":  # no answer at all: the delete may still be running
        assert lost.retry_after is not None and lost.retry_after >= 60
    assert server.stats.count("drafts.delete") == 1 and draft_ids(server) == [kept.draft_id]

    assert backend.withdraw([again(ref)]) == [Withdrawn("withdrawn")]
    assert server.stats.count("drafts.delete") == 1  # looked, found it gone: no second delete
    assert draft_ids(server) == [kept.draft_id]


def test_a_delete_whose_answer_was_lost_without_acting_is_tried_next_time(server, backend):
    ref = deliver(backend, 1)
    server.inject("drafts.delete", "503")
    [lost] = backend.withdraw([ref])
    assert isinstance(lost, DeliveryError) and not lost.permanent
    assert server.stats.count("drafts.delete") == 1 and draft_ids(server) == [ref.draft_id]
    assert backend.withdraw([again(ref)]) == [Withdrawn("withdrawn")]
    assert server.stats.count("drafts.delete") == 2 and draft_ids(server) == []


def intercept_delete(backend: GoogleBackend, before_delete) -> None:
    """Run `before_delete()` just before the backend's first batch of deletes goes out."""
    real = backend._gmail_calls
    done = []

    def calls(kind, requests):
        if kind == "drafts.delete" and not done:
            done.append(kind)
            before_delete()
        return real(kind, requests)

    backend._gmail_calls = calls


def test_a_404_on_the_delete_means_it_left_the_drafts_meanwhile(server, backend):
    ref = deliver(backend, 1)
    sent: list[dict] = []
    intercept_delete(backend, lambda: sent.append(server.send_draft("me", ref.draft_id)))
    assert backend.withdraw([ref]) == [Withdrawn("sent", sent_time(sent[0]))]
    assert server.stats.count("drafts.delete") == 1


def test_a_draft_saved_anew_during_the_delete_is_deleted_under_its_new_id(server, backend):
    ref = deliver(backend, 1)
    intercept_delete(backend, lambda: server.edit_draft("me", ref.draft_id, new_draft_id=True))
    assert backend.withdraw([ref]) == [Withdrawn("withdrawn")]
    assert server.stats.count("drafts.delete") == 2  # the old id (404), then the new one
    assert draft_ids(server) == []


def test_a_failed_look_withdraws_nothing_and_says_try_again(server, backend):
    ref = deliver(backend, 1)
    server.delete_draft("me", ref.draft_id)
    server.inject("messages.list", "503", times=1000)
    [outcome] = backend.withdraw([ref])
    assert isinstance(outcome, DeliveryError) and not outcome.permanent
    assert not outcome.systemic and "could not" in outcome.reason
    server.clear_faults()
    assert backend.withdraw([again(ref)]) == [Withdrawn("withdrawn")]


def test_revoked_credentials_stop_the_withdrawal(server, backend):
    refs = [deliver(backend, n) for n in (1, 2)]
    server.revoke()
    outcomes = backend.withdraw(refs)
    assert all(isinstance(o, DeliveryError) and o.systemic for o in outcomes), outcomes
    assert "followupd auth" in outcomes[0].reason
    assert len(server.drafts()) == 2 and server.stats.count("drafts.delete") == 0


def test_what_withdraw_sends_carries_no_patient_value(server, backend):
    refs = [deliver(backend, n) for n in (1, 2)]
    server.edit_draft("me", refs[0].draft_id, new_draft_id=True, keep_message_id=False)
    assert PATIENT[0] in message_of(server.drafts()[-1]).get_content()
    start = len(server.requests)
    server.inject("drafts.delete", "act-then-500")
    outcomes = backend.withdraw(refs)
    assert outcomes[1] == Withdrawn("withdrawn")
    assert isinstance(outcomes[0], DeliveryError)
    assert_no_patient_value(outcomes[0].reason)
    for request in server.requests[start:]:
        assert_no_patient_value(request.path, request.body.decode("utf-8", "replace"))


# --- item 6: credential files are refused when others may read them --------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_token_file_others_may_read_or_write_is_refused(google_home, mode):
    token = google_home / "google-token.json"
    os.chmod(token, mode)
    with pytest.raises(CredentialsProblem) as caught:
        GoogleBackend(configuration.load(google_home))
    message = str(caught.value)
    assert str(token) in message and f"chmod 600 {token}" in message
    assert f"{mode:04o}" in message


def test_a_private_token_file_is_used(google_home):
    token = google_home / "google-token.json"
    os.chmod(token, 0o600)
    credentials, token_file = load_credentials(configuration.load(google_home))
    assert token_file is not None and token_file.path == token and credentials.token


def test_a_service_account_key_others_may_read_is_refused(google_home, server, monkeypatch):
    key = google_home / "sa.json"
    write_service_account_key(key, f"{server.base_url}/token")
    monkeypatch.setenv("FOLLOWUPD_GOOGLE_SERVICE_ACCOUNT_FILE", "sa.json")
    monkeypatch.setenv("FOLLOWUPD_GOOGLE_SUBJECT", "dana@practice.example")
    os.chmod(key, 0o644)
    with pytest.raises(CredentialsProblem, match=f"chmod 600 {key}"):
        load_credentials(configuration.load(google_home))
    os.chmod(key, 0o600)
    credentials, token_file = load_credentials(configuration.load(google_home))
    assert token_file is None and credentials.service_account_email


def test_a_token_is_written_private_whatever_the_umask(tmp_path):
    path = tmp_path / "token.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    previous = os.umask(0o022)
    try:
        googleapi.write_private(path, '{"token": "t"}')
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == '{"token": "t"}'


def test_a_refused_draft_id_is_looked_for_elsewhere_but_proves_nothing(server, backend):
    """A 400 for the recorded id (malformed): the draft is looked for by its identity; when
    nothing finds it, nothing is concluded either."""
    present, deleted = deliver(backend, 1), deliver(backend, 2)
    server.delete_draft("me", deleted.draft_id)
    server.inject("drafts.get", "400", times=2)
    states = backend.draft_states([present, deleted])
    assert states == {1: DraftState("present", thread_id=present.thread_id), 2: None}
