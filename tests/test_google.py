"""Google delivery against the local Gmail/Calendar server, with the real API client.

Nothing here reaches Google: `google_server` speaks Google's REST paths on 127.0.0.1 and the
real google-api-python-client talks to it through FOLLOWUPD_GOOGLE_API_ENDPOINT.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
import time
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
import trust
from google_server import running_server

from conftest import write_service_account_key
from followupd import config as configuration
from followupd.delivery.google import GoogleBackend
from followupd.demo import SAMPLE_CLIENTS, load_samples
from followupd.engine import Engine
from followupd.models import FollowUp
from followupd.records import parse_referral, parse_visit
from followupd.store import Directory, Store, upsert_referrals, upsert_visits
from followupd.timing import utcnow

PATIENT_VALUES = [value for client in SAMPLE_CLIENTS for value in client]


@pytest.fixture
def server():
    with running_server() as running:
        yield running


def write_token(home, token_uri=None):
    token = {
        "token": "test-token",
        "refresh_token": "refresh-me",
        "client_id": "client",
        "client_secret": "secret",
        "expiry": "2099-01-01T00:00:00Z",
    }
    if token_uri:
        token["token_uri"] = token_uri
    (home / "google-token.json").write_text(json.dumps(token))


def set_config(home, text_old, text_new):
    path = home / "followupd.yaml"
    content = path.read_text()
    assert text_old in content
    path.write_text(content.replace(text_old, text_new))


@pytest.fixture
def google_home(home, server, db_url, monkeypatch):
    """A home delivering to the local server; returns a factory of engines on it."""
    write_token(home, token_uri=f"{server.base_url}/token")  # a refresh never leaves the host
    set_config(home, "timeout: 30", "timeout: 2")
    # batches, pacing and backlogs of hundreds: no person's yes to wait for (test_history)
    set_config(home, "confirm_over: 50", "confirm_over: null")
    environ = {
        "FOLLOWUPD_DELIVERY": "google",
        "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url,
        "FOLLOWUPD_DATABASE_URL": db_url,
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    return home


class Clock:
    """The engine's clock, moved forward by hand so waiting follow-ups come due."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += timedelta(**kw)


def open_engine(home, clock=None, sleep=lambda _: None):
    settings = configuration.load(home)
    store = Store(settings.database_url)
    backend = GoogleBackend(settings, sleep=sleep)
    return Engine(settings, store, backend=backend, clock=clock or utcnow), store


def add_referrals(store, count, *, release=True, start=0):
    rows = [
        {
            "ref": f"R-{i}",
            "received_on": (date.today() - timedelta(days=10)).isoformat(),
            "physician": f"Dr. Test {i % 7}",
            "physician_email": f"dr{i % 7}@clinic.example",
            "specialty": "internal medicine",
            "practice": "Clinic",
            "client_name": "Harriet Vandermolen",
            "client_dob": "1970-05-04",
            "presenting_problem": "Insomnia with nightmares",
            "treatment_focus": "CBT-I",
            "release_on_file": "yes" if release else "no",
        }
        for i in range(start, start + count)
    ]
    with store.session() as session:
        upsert_referrals(session, [parse_referral(r) for r in rows], Directory())


def add_visits(store, count):
    rows = [
        {
            "visited_on": (date.today() - timedelta(days=i + 1)).isoformat(),
            "practice": f"Practice {i}",
            "physician": f"Dr. Visit {i}",
            "specialty": "internal medicine",
            "business_manager": "Pat",
        }
        for i in range(count)
    ]
    with store.session() as session:
        upsert_visits(session, [parse_visit(v) for v in rows], Directory())


def ledger(store):
    with store.session() as session:
        return list(session.execute(sa.select(FollowUp).order_by(FollowUp.id)).scalars())


def converge(engine, clock, ticks=8, server=None):
    """Tick until nothing is pending, moving the clock past waits and leases.

    With `server`, wait between ticks until it has finished any request the client gave up
    on: the clock's two hours would have let Google finish it too.
    """
    for _ in range(ticks):
        engine.tick()
        states = {row.state for row in ledger(engine.store)}
        if not states & {"planned", "claimed", "waiting"}:
            return
        clock.advance(hours=2)
        if server is not None:
            server.wait_idle()
    raise AssertionError(f"did not converge: {sorted(states)}")


def assert_exactly_once(server, store):
    """One draft or event per follow-up on the server, and a ledger that agrees."""
    rows = ledger(store)
    drafts = server.drafts("me")
    by_tag = {}
    for draft in drafts:
        raw = base64.urlsafe_b64decode(draft["message"]["raw"] + "==")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        by_tag.setdefault(message["X-Followupd-Id"].split(".")[-1], []).append(draft["id"])
    events = {event["id"]: event for event in server.events("primary")}
    for row in rows:
        if row.kind == "draft" and row.state == "done":
            assert by_tag.get(str(row.id)) == [row.external_id.removeprefix("gmail:")], row.id
        if row.kind == "reminder" and row.state == "done":
            assert row.external_id.removeprefix("calendar:") in events
    done_drafts = [r for r in rows if r.kind == "draft" and r.state == "done"]
    assert len(drafts) == len(done_drafts)
    assert all(len(ids) == 1 for ids in by_tag.values())
    done_events = [r for r in rows if r.kind == "reminder" and r.state == "done"]
    assert len(events) == len(done_events)


def test_referrals_and_visits_become_drafts_and_events_once(google_home, server):
    engine, store = open_engine(google_home)
    add_referrals(store, 12)
    add_visits(store, 3)
    report = engine.tick()
    assert report.ok and len(report.delivered) == 15
    assert len(server.drafts("me")) == 12 and len(server.events("primary")) == 3
    assert_exactly_once(server, store)
    creates = (
        server.stats.calls.get(("POST", "drafts.create"), 0),
        server.stats.calls.get(("POST", "events.insert"), 0),
    )
    engine.tick()
    again = (
        server.stats.calls.get(("POST", "drafts.create"), 0),
        server.stats.calls.get(("POST", "events.insert"), 0),
    )
    assert again == creates  # a second run makes no create call at all
    store.close()


def test_a_draft_is_a_faithful_gmail_draft(google_home, server):
    engine, store = open_engine(google_home)
    add_referrals(store, 1)
    engine.tick()
    [draft] = server.drafts("me")
    raw = base64.urlsafe_b64decode(draft["message"]["raw"] + "==")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    [row] = ledger(store)
    assert row.external_id == f"gmail:{draft['id']}"
    assert message["To"] == '"Dr. Test 0" <dr0@clinic.example>'
    assert message["Message-ID"].startswith(f"<followupd.{row.id}.")
    assert "Insomnia with nightmares" in message.get_content()
    store.close()


def test_calendar_events_carry_no_patient_details(google_home, server):
    engine, store = open_engine(google_home)
    load_samples(store, date.today())
    engine.tick()
    calendar_bodies = [
        body for method, path, body in server.requests if "/calendar/" in path and body
    ]
    assert calendar_bodies
    for body in calendar_bodies:
        text = body.decode("utf-8", "replace")
        for value in PATIENT_VALUES:
            assert value not in text
    [event, *_] = server.events("primary")
    assert event["start"]["timeZone"] == "America/Chicago"
    assert event["reminders"]["overrides"][0] == {"method": "popup", "minutes": 30}
    assert event["extendedProperties"]["private"]["followupd"].startswith("followupd-")
    store.close()


# Each fault at each call that makes something. "act-then-*": the server acted, then the
# answer was lost (a dropped connection, a 500, a timeout); "401": an expired token, refreshed.
FAULTS = [
    "429",
    "500",
    "502",
    "503",
    "504",
    "403-rate",
    "401",
    "act-then-drop",
    "act-then-500",
    "drop",
    "slow",
    "act-then-slow",
]
LOOKUP_FAULTS = ["429", "503", "403-rate", "401", "drop", "slow"]


def inject(server, home, kind, fault, times):
    """Inject `fault`; a 401 needs a token the server can refresh, as Google would."""
    if fault == "401":
        write_token(home, token_uri=f"{server.base_url}/token")
        server.valid_refresh_tokens.add("refresh-me")
    server.inject(kind, fault, times=times, **({"seconds": 3} if "slow" in fault else {}))


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", ["drafts.create", "events.insert"])
def test_fault_matrix_converges_to_exactly_one(google_home, server, kind, fault):
    trust.record("fault", tried=1)
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 3)
    add_visits(store, 3)
    inject(server, google_home, kind, fault, times=2)
    converge(engine, clock, server=server)
    assert {row.state for row in ledger(store)} == {"done"}
    assert len(server.drafts("me")) == 3 and len(server.events("primary")) == 3
    assert_exactly_once(server, store)
    store.close()
    trust.record("fault", converged=1)


@pytest.mark.parametrize("fault", LOOKUP_FAULTS)
@pytest.mark.parametrize("kind", ["drafts.list", "drafts.get", "events.get"])
def test_faults_on_the_lookups_too(google_home, server, kind, fault):
    """The lookup after a lost answer can fail as well: still never a second one."""
    trust.record("fault", tried=1)
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 2)
    add_visits(store, 2)
    server.inject("drafts.create", "act-then-500", times=2)  # made, but answered 500
    server.inject("events.insert", "act-then-drop", times=2)
    inject(server, google_home, kind, fault, times=3)
    converge(engine, clock, server=server)
    assert_exactly_once(server, store)
    assert {row.state for row in ledger(store)} == {"done"}
    store.close()
    trust.record("fault", converged=1)


@pytest.mark.parametrize("kind", ["drafts.create", "events.insert"])
def test_a_400_fails_that_follow_up_with_googles_reason(google_home, server, kind):
    """A request Google refuses as malformed is not retried: that one follow-up fails, with
    Google's reason and no patient detail; the others are delivered."""
    trust.record("fault", tried=1)
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 2)
    add_visits(store, 2)
    server.inject(kind, "400", times=1)
    converge(engine, clock, server=server)
    rows = ledger(store)
    failed = [row for row in rows if row.state == "failed"]
    assert len(failed) == 1 and failed[0].kind == (
        "draft" if kind == "drafts.create" else "reminder"
    )
    assert failed[0].reason.startswith("Google answered 400")
    assert not any(value in failed[0].reason for value in PATIENT_VALUES)
    assert sum(row.state == "done" for row in rows) == 3
    assert_exactly_once(server, store)
    store.close()
    trust.record("fault", converged=1)


def test_crash_between_the_call_and_the_commit(google_home, server):
    """The draft was made, then the process died before recording it: found, not remade."""
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 3)

    class Crash(BaseException):  # like SIGKILL: nothing in the engine may absorb it
        pass

    real = engine.backend.deliver

    def deliver_then_die(items):
        real(items)
        raise Crash

    engine.backend.deliver = deliver_then_die
    with pytest.raises(Crash):
        engine.deliver_due(engine.plan())
    assert len(server.drafts("me")) == 3
    assert {row.state for row in ledger(store)} == {"claimed"}
    engine.backend.deliver = real
    clock.advance(minutes=10)  # the dead process's leases expire
    creates = server.stats.calls.get(("POST", "drafts.create"), 0)
    converge(engine, clock)
    assert server.stats.calls.get(("POST", "drafts.create"), 0) == creates
    assert_exactly_once(server, store)
    store.close()


def test_an_event_the_therapist_deleted_is_recorded_and_never_recreated(google_home, server):
    set_config(google_home, "max_attempts: 5", "max_attempts: 1")
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_visits(store, 1)
    server.inject("events.insert", "act-then-drop", times=1)
    engine.tick()  # made, answer lost: waiting
    [event] = server.events("primary")
    server.delete_event("primary", event["id"])
    clock.advance(hours=2)
    converge(engine, clock)
    [row] = ledger(store)
    assert row.state == "deleted"
    [event] = server.events("primary")
    assert event["status"] == "cancelled"
    store.close()


def test_batching_saves_round_trips(google_home, server):
    engine, store = open_engine(google_home)
    add_referrals(store, 100)
    engine.tick()
    batched = server.stats.round_trips
    assert len(server.drafts("me")) == 100
    assert batched <= 4  # two batches of 50 creates
    store.close()


@pytest.mark.slow  # 2,000 drafts paced by the quota: 13-60 s
def test_a_backlog_drains_at_the_budget_with_no_429(google_home, server):
    budget = 120_000  # units a minute: 2,000 drafts of 10 units take about ten seconds
    set_config(google_home, "gmail_units_per_minute: 6000", f"gmail_units_per_minute: {budget}")
    server.rate_limit("gmail", budget)
    engine, store = open_engine(google_home, sleep=time.sleep)
    add_referrals(store, 2000)
    report = engine.tick()
    assert len(report.delivered) == 2000
    assert server.stats.rate_limited == 0
    assert len(server.drafts("me")) == 2000
    store.close()


def sent_deleted_and_kept(google_home, server):
    """Three delivered drafts, then the therapist sends the first and deletes the second."""
    set_config(google_home, "read_scope: false", "read_scope: true")
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 3)
    engine.tick()
    first, second, third = ledger(store)
    server.send_draft("me", first.external_id.removeprefix("gmail:"))
    server.delete_draft("me", second.external_id.removeprefix("gmail:"))
    return clock, engine, store, (first, second, third)


def test_sync_notices_sent_and_deleted_drafts(google_home, server):
    clock, engine, store, (first, second, third) = sent_deleted_and_kept(google_home, server)
    clock.advance(hours=1)
    engine.tick()
    states = {row.id: row for row in ledger(store)}
    assert states[first.id].state == "sent" and states[first.id].reason.startswith("sent ")
    assert states[second.id].state == "deleted"
    assert states[third.id].state == "done"  # still a draft, perhaps edited: left alone
    store.close()


def test_a_failed_sync_check_changes_nothing_and_is_tried_again(google_home, server):
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 2)
    engine.tick()
    server.inject("drafts.get", "503", times=2)
    clock.advance(hours=1)
    engine.tick()
    assert {row.state for row in ledger(store)} == {"done"}
    first = ledger(store)[0]
    server.delete_draft("me", first.external_id.removeprefix("gmail:"))
    clock.advance(hours=1)
    engine.tick()
    assert ledger(store)[0].state == "gone"


def test_without_the_read_scope_a_vanished_draft_is_gone(google_home, server):
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 1)
    engine.tick()
    [row] = ledger(store)
    server.send_draft("me", row.external_id.removeprefix("gmail:"))
    clock.advance(hours=1)
    engine.tick()
    [row] = ledger(store)
    assert row.state == "gone" and "sent or deleted" in row.reason
    store.close()


@pytest.fixture
def token_server():
    """An OAuth token endpoint that answers invalid_grant, as Google does for a revoked grant."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(
                {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
            )
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/token"
    httpd.shutdown()


def test_a_revoked_grant_makes_follow_ups_wait_and_says_run_auth(
    google_home, server, token_server, cli
):
    write_token(google_home, token_uri=token_server)
    server.valid_tokens.clear()  # Google now refuses the access token: refresh, which fails
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 3)
    report = engine.tick()
    assert report.stopped and "followupd auth" in report.stopped
    rows = ledger(store)
    assert {row.state for row in rows} == {"waiting"}
    assert all("followupd auth" in row.reason for row in rows)
    assert "followupd auth" in cli("status").stdout
    check = cli("check")
    assert check.code == 2 and "followupd auth" in check.stderr
    store.close()


def test_the_token_file_is_rewritten_private_when_refreshed(google_home, server):
    """An expired access token is refreshed and the new one stored, mode 0600."""
    import stat

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(
                {"access_token": "fresh-token", "expires_in": 3600, "token_type": "Bearer"}
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    token = {
        "token": "stale-token",
        "refresh_token": "r",
        "client_id": "c",
        "client_secret": "s",
        "expiry": "2000-01-01T00:00:00Z",
        "token_uri": f"http://127.0.0.1:{httpd.server_port}/token",
    }
    (google_home / "google-token.json").write_text(json.dumps(token))
    server.valid_tokens.add("fresh-token")
    engine, store = open_engine(google_home)
    add_referrals(store, 1)
    assert engine.tick().ok
    saved = json.loads((google_home / "google-token.json").read_text())
    assert saved["token"] == "fresh-token"
    assert stat.S_IMODE((google_home / "google-token.json").stat().st_mode) == 0o600
    httpd.shutdown()
    store.close()


def test_a_service_account_acts_for_the_configured_mailbox(google_home, server, monkeypatch):
    """Workspace domain-wide delegation: a signed JWT naming the subject, smallest scopes."""
    write_service_account_key(google_home / "sa.json", f"{server.base_url}/token")
    (google_home / "google-token.json").unlink()
    monkeypatch.setenv("FOLLOWUPD_GOOGLE_SERVICE_ACCOUNT_FILE", "sa.json")
    monkeypatch.setenv("FOLLOWUPD_GOOGLE_SUBJECT", "dana@reyes-therapy.example")
    engine, store = open_engine(google_home)
    add_referrals(store, 2)
    assert engine.tick().ok
    assert len(server.drafts("dana@reyes-therapy.example")) == 2  # the subject's mailbox
    assert not server.drafts("me")
    claims = server.jwt_claims[-1]
    assert claims["sub"] == "dana@reyes-therapy.example"
    assert set(claims["scope"].split()) == {
        "https://www.googleapis.com/auth/gmail.compose",
        "https://www.googleapis.com/auth/calendar.events",
    }
    store.close()


def test_google_delivery_without_a_token_says_run_auth(google_home, server, cli):
    (google_home / "google-token.json").unlink()
    ran = cli("run", "--once")
    assert ran.code == 2 and "run `followupd auth`" in ran.stderr


def test_auth_without_an_oauth_client_file_says_how_to_get_one(google_home, cli):
    ran = cli("auth")
    assert ran.code == 2
    assert "client_secret.json" in ran.stderr and "Desktop app" in ran.stderr


def test_a_round_of_lookups_reads_the_recent_drafts_once(google_home, server):
    """After an outage, every retry looks before it creates; the recent drafts are read once
    a round, not once per claimed batch (120 follow-ups are three batches)."""
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 120)
    server.inject("drafts.create", "drop", times=1000)  # nothing made, no answer
    engine.tick()
    assert not server.drafts("me") and {row.state for row in ledger(store)} == {"waiting"}
    server.clear_faults()
    clock.advance(hours=2)
    before = len(server.requests)
    engine.tick()
    scans = [
        path
        for method, path, _ in server.requests[before:]
        if method == "GET" and path.split("?")[0].endswith("/drafts") and "q=" not in path
    ]
    assert len(scans) == 1
    assert {row.state for row in ledger(store)} == {"done"}
    assert_exactly_once(server, store)
    store.close()


@pytest.mark.parametrize("fault", ["429", "500", "503", "403-rate", "401", "drop", "400"])
@pytest.mark.parametrize("kind", ["drafts.get", "messages.list"])
def test_faults_on_the_draft_sync_leave_states_right(google_home, server, kind, fault):
    """The sync that notices sent and deleted drafts can fail too: a state is recorded only
    from an answer, so a failed check changes nothing and a later one gets it right."""
    trust.record("fault", tried=1)
    clock, engine, store, (first, second, third) = sent_deleted_and_kept(google_home, server)
    inject(server, google_home, kind, fault, times=2)
    for _ in range(4):
        clock.advance(hours=1)
        engine.tick()
        server.wait_idle()
    states = {row.id: row.state for row in ledger(store)}
    assert states == {first.id: "sent", second.id: "deleted", third.id: "done"}
    store.close()
    trust.record("fault", converged=1)


# --- a revoked release takes the draft back out of Gmail ----------------------------------------


def revoke(store, ref: str) -> None:
    from followupd.models import Recipient
    from followupd.store import record_release

    with store.session() as session:
        assert record_release(
            session, ref, Recipient.physician, grant=False, on=date.today(), by="cli"
        )


def test_a_revoke_deletes_the_edited_gmail_draft_exactly_once(google_home, server):
    """The therapist edited the draft (Gmail saved it under a new id and Message-ID); the
    client then revoked the release: that draft is found and deleted, once."""
    trust.record("revoke", cases=1)
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 2)
    engine.tick()
    first, second = ledger(store)
    edited = server.edit_draft(
        "me", first.external_id.removeprefix("gmail:"), new_draft_id=True, keep_message_id=False
    )
    revoke(store, "R-0")
    report = engine.withdraw_now()
    assert report.withdrawn == [(first.id, "withdrawn")]
    assert server.stats.count("drafts.delete") == 1
    remaining = [d["id"] for d in server.drafts("me")]
    assert edited["id"] not in remaining and len(remaining) == 1
    rows = {row.id: row for row in ledger(store)}
    assert rows[first.id].state == "withdrawn"
    assert rows[first.id].reason == (
        "withdrawn from Gmail drafts: the release of information was revoked"
    )
    assert rows[second.id].state == "done"  # another client's note stays
    clock.advance(hours=2)
    engine.tick()
    assert server.stats.count("drafts.delete") == 1 and server.stats.count("drafts.create") == 2
    store.close()


def test_a_lost_answer_to_the_delete_looks_again_and_deletes_nothing_more(google_home, server):
    trust.record("revoke", cases=1)
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 1)
    engine.tick()
    server.inject("drafts.delete", "act-then-drop")  # deleted at Google; the answer is lost
    revoke(store, "R-0")
    engine.withdraw_now()
    [row] = ledger(store)
    assert row.state == "withdraw" and row.reason.startswith("to withdraw: ")
    assert server.drafts("me") == []
    server.wait_idle()
    clock.advance(hours=2)
    engine.tick()
    [row] = ledger(store)
    assert row.state == "withdrawn" and server.stats.count("drafts.delete") == 1
    store.close()


def test_a_note_sent_before_the_revoke_is_reported_as_disclosed(google_home, server):
    trust.record("revoke", cases=1)
    set_config(google_home, "read_scope: false", "read_scope: true")
    write_token(google_home, token_uri=f"{server.base_url}/token")
    clock = Clock()
    engine, store = open_engine(google_home, clock)
    add_referrals(store, 1)
    engine.tick()
    [row] = ledger(store)
    server.send_draft("me", row.external_id.removeprefix("gmail:"))
    revoke(store, "R-0")  # before the sync noticed the send
    engine.withdraw_now()
    [row] = ledger(store)
    assert row.state == "sent" and row.reason.startswith(
        "disclosed: sent before the release of information was revoked"
    )
    assert server.stats.count("drafts.delete") == 0
    store.close()


# --- Google cannot be reached (issue 15) ------------------------------------------------------


def closed_port() -> int:
    """A local port where nothing listens: every connection to it is refused."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("expired", [False, True], ids=["api-call", "token-refresh"])
def test_google_unreachable_waits_and_says_so(cli, home, expired):
    """A refused connection, to the API or to the token server, is no internal error: the
    notes wait for a later tick and the ledger and the log say Google could not be reached."""
    nowhere = f"http://127.0.0.1:{closed_port()}"
    write_token(home, token_uri=f"{nowhere}/token")
    if expired:  # the access token must be refreshed first, at the unreachable token server
        token = json.loads((home / "google-token.json").read_text())
        (home / "google-token.json").write_text(
            json.dumps(token | {"expiry": "2000-01-01T00:00:00Z"})
        )
    set_config(home, "timeout: 30", "timeout: 2")
    env = {"FOLLOWUPD_DELIVERY": "google", "FOLLOWUPD_GOOGLE_API_ENDPOINT": nowhere}
    day = (date.today() - timedelta(days=7)).isoformat()
    for ref in ("R-1", "R-2"):
        added = cli(
            "referral", "add", "--ref", ref, "--physician", "Dr. Miriam Okafor",
            "--physician-email", "m.okafor@lakeside-im.example",
            "--client-name", "Harriet Vandermolen", "--received-on", day, "--release", env=env,
        )  # fmt: skip
        assert added.code == 0, added.stderr
    ran = cli("run", "--once", env=env)
    assert ran.code == 0 and "Traceback" not in ran.stderr
    said = ran.stdout + ran.stderr  # the tick's summary, or its log
    assert "Google could not be reached (" in said and "internal error" not in said
    status = cli("status", "--json", env=env)
    rows = [json.loads(line) for line in status.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    cause = "refreshing the sign-in: connection refused" if expired else "connection refused"
    for row in rows:
        assert row["state"] == "waiting", row
        assert row["reason"] == f"Google could not be reached ({cause}); tried again later"


def test_unreachable_errors_are_told_from_lost_answers():
    """No connection (refused, no such name, connect timeout, TLS, a failed refresh) is a
    systemic wait; a dropped answer or a read timeout may have acted and is looked for."""
    import socket

    import google.auth.exceptions
    import httplib2
    import requests
    import urllib3

    from followupd.delivery.googleapi import classify

    refused = urllib3.exceptions.NewConnectionError(None, "refused")
    refused.__cause__ = ConnectionRefusedError(111, "refused")
    unreachable = {
        "connection refused": requests.ConnectionError(
            urllib3.exceptions.MaxRetryError(None, "/", refused)
        ),
        "name not found": socket.gaierror(-2, "Name or service not known"),
        "name not found ": httplib2.ServerNotFoundError("no such host"),
        "connection timed out": requests.ConnectTimeout("timed out"),
        "secure connection failed": requests.exceptions.SSLError(
            urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.SSLError("handshake"))
        ),
    }
    for cause, exc in unreachable.items():
        error = classify(exc)
        assert error.reason == f"Google could not be reached ({cause.strip()}); tried again later"
        assert error.systemic and error.retryable and not error.maybe_acted
    refresh = google.auth.exceptions.TransportError("no route")
    refresh.__cause__ = requests.ConnectTimeout("timed out")
    assert "(refreshing the sign-in: connection timed out)" in classify(refresh).reason
    dropped = requests.ConnectionError(urllib3.exceptions.ProtocolError("aborted"))
    broken = requests.exceptions.SSLError(urllib3.exceptions.SSLError("EOF while reading"))
    for lost in (dropped, broken, requests.ReadTimeout("read timed out"), TimeoutError()):
        error = classify(lost)
        assert error.in_flight and error.maybe_acted and not error.systemic, lost
