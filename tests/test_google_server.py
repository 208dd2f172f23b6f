"""The fake Google server, exercised through the REAL google-api-python-client stack.

Why through the real client: the server is only useful if googleapiclient + httplib2 +
google-auth behave against it as they do against Google (URL building, batch wire format,
token refresh on 401, httplib2's hidden replay of a request whose answer was lost).
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import google_auth_httplib2
import httplib2
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from google_server import FAULTS, GoogleServer, message_of, running_server
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from conftest import wait_for

# --------------------------------------------------------------------------- helpers


class _NoReplayConnection(httplib2.HTTPConnectionWithTimeout):
    """Turns "server closed without answering" on a POST into an error httplib2 won't replay.

    httplib2 replays any request once on BadStatusLine (RemoteDisconnected is one); raising a
    plain ConnectionResetError instead takes its ``socket.error`` branch, which re-raises on
    the first attempt.
    """

    def getresponse(self) -> http.client.HTTPResponse:
        try:
            return super().getresponse()
        except http.client.RemoteDisconnected as exc:
            if getattr(self, "_method", None) in ("POST", "PATCH"):
                raise ConnectionResetError(f"no answer to {self._method}") from exc  # type: ignore[attr-defined]
            raise


class NoReplayHttp(httplib2.Http):
    """``httplib2.Http`` that never re-sends a POST whose answer was lost (http:// only)."""

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        redirections: int = httplib2.DEFAULT_MAX_REDIRECTS,
        connection_type: Any = None,
    ) -> Any:
        if connection_type is None and uri.startswith("http://"):
            connection_type = _NoReplayConnection
        return super().request(uri, method, body, headers, redirections, connection_type)


@pytest.fixture(scope="module")
def module_server() -> Iterator[GoogleServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def server(module_server: GoogleServer) -> GoogleServer:
    module_server.reset()
    return module_server


def credentials(server: GoogleServer) -> Credentials:
    return server.credentials()


def authorized_http(
    server: GoogleServer, timeout: float = 5.0, base: httplib2.Http | None = None
) -> google_auth_httplib2.AuthorizedHttp:
    return google_auth_httplib2.AuthorizedHttp(
        credentials(server), http=base or httplib2.Http(timeout=timeout)
    )


def gmail(server: GoogleServer, http: Any = None) -> Any:
    return build(
        "gmail",
        "v1",
        http=http or authorized_http(server),
        static_discovery=True,
        client_options={"api_endpoint": server.gmail_endpoint},
    )


def calendar(server: GoogleServer, http: Any = None) -> Any:
    return build(
        "calendar",
        "v3",
        http=http or authorized_http(server),
        static_discovery=True,
        client_options={"api_endpoint": server.calendar_endpoint},
    )


def raw_message(message_id: str = "<note-1@followupd.test>", subject: str = "Follow-up") -> str:
    msg = EmailMessage()
    msg["From"] = "therapist@example.com"
    msg["To"] = "referrer@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content("Thank you for the referral.")
    return base64.urlsafe_b64encode(msg.as_bytes()).decode("ascii")


def draft_body(message_id: str = "<note-1@followupd.test>") -> dict[str, Any]:
    return {"message": {"raw": raw_message(message_id)}}


def event_body(event_id: str = "fud0001abc", **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "summary": "Follow up with referrer",
        "start": {"dateTime": "2030-05-01T09:00:00+02:00"},
        "end": {"dateTime": "2030-05-01T09:15:00+02:00"},
        "extendedProperties": {"private": {"followupd": "1", "key": event_id}},
        **extra,
    }


def error_reason(error: HttpError) -> str:
    return json.loads(error.content)["error"]["errors"][0]["reason"]


# --------------------------------------------------------------------------- addressing


def test_api_endpoint_forms(server: GoogleServer) -> None:
    """api_endpoint replaces rootUrl+servicePath: Gmail wants base, Calendar base/calendar/v3/."""
    creds = credentials(server)
    for endpoint in (server.base_url, server.base_url + "/"):
        service = build(
            "gmail",
            "v1",
            credentials=creds,
            static_discovery=True,
            client_options={"api_endpoint": endpoint},
        )
        assert service.users().drafts().list(userId="me").execute() == {"resultSizeEstimate": 0}
    wrong = build(
        "calendar",
        "v3",
        credentials=creds,
        static_discovery=True,
        client_options={"api_endpoint": server.base_url + "/"},
    )
    with pytest.raises(HttpError) as caught:
        wrong.events().list(calendarId="primary").execute()
    assert caught.value.resp.status == 404
    assert server.requests[-1].path.startswith("/calendars/primary/events")
    for endpoint in (server.base_url + "/calendar/v3", server.calendar_endpoint):
        service = build(
            "calendar",
            "v3",
            credentials=creds,
            static_discovery=True,
            client_options={"api_endpoint": endpoint},
        )
        assert service.events().list(calendarId="primary").execute()["items"] == []


def test_unknown_path_and_method_are_404(server: GoogleServer) -> None:
    http = authorized_http(server)
    for method, path in (
        ("GET", "/gmail/v1/users/me/labels"),
        ("PUT", "/gmail/v1/users/me/drafts/x"),
        ("PATCH", "/calendar/v3/calendars/primary/events/abcde"),
    ):
        resp, content = http.request(server.base_url + path, method, body=b"{}")
        assert resp.status == 404
        assert json.loads(content)["error"]["errors"][0]["reason"] == "notFound"


# --------------------------------------------------------------------------- Gmail


def test_draft_create_search_get_delete(server: GoogleServer) -> None:
    drafts = gmail(server).users().drafts()
    created = drafts.create(userId="me", body=draft_body("<a1@followupd.test>")).execute()
    drafts.create(userId="me", body=draft_body("<other@followupd.test>")).execute()
    assert created["id"].startswith("r-")
    assert created["message"]["labelIds"] == ["DRAFT"]

    for query in ("rfc822msgid:<a1@followupd.test>", "rfc822msgid:a1@followupd.test"):
        found = drafts.list(userId="me", q=query).execute()
        assert [d["id"] for d in found["drafts"]] == [created["id"]]
        assert found["drafts"][0]["message"]["id"] == created["message"]["id"]
    assert drafts.list(userId="me", q="rfc822msgid:<nope@x>").execute() == {
        "resultSizeEstimate": 0
    }  # Gmail omits "drafts" when there are none

    meta = drafts.get(userId="me", id=created["id"], format="metadata").execute()
    headers = {h["name"]: h["value"] for h in meta["message"]["payload"]["headers"]}
    assert headers["Message-ID"] == "<a1@followupd.test>"
    assert headers["Subject"] == "Follow-up"
    raw = drafts.get(userId="me", id=created["id"], format="raw").execute()["message"]["raw"]
    assert b"Thank you for the referral." in base64.urlsafe_b64decode(raw)
    full = drafts.get(userId="me", id=created["id"]).execute()["message"]
    assert full["payload"]["mimeType"] == "text/plain"
    assert full["snippet"] == "Thank you for the referral."

    drafts.delete(userId="me", id=created["id"]).execute()
    assert [message_of(d)["Message-ID"] for d in server.drafts()] == ["<other@followupd.test>"]
    with pytest.raises(HttpError) as caught:
        drafts.get(userId="me", id=created["id"]).execute()
    assert caught.value.resp.status == 404


def test_drafts_are_per_mailbox_and_paginate(server: GoogleServer) -> None:
    users = gmail(server).users()
    for n in range(5):
        users.drafts().create(userId="me", body=draft_body(f"<p{n}@x>")).execute()
    users.drafts().create(userId="other@example.com", body=draft_body("<o@x>")).execute()
    request = users.drafts().list(userId="me", maxResults=2)
    seen: list[str] = []
    while request is not None:
        page = request.execute()
        seen += [d["id"] for d in page["drafts"]]
        request = users.drafts().list_next(request, page)
    assert seen == [d["id"] for d in reversed(server.drafts())]  # newest first, all five
    assert len(server.drafts("other@example.com")) == 1


def test_sent_draft_is_found_among_sent_messages(server: GoogleServer) -> None:
    users = gmail(server).users()
    created = users.drafts().create(userId="me", body=draft_body("<s1@x>")).execute()
    sent = server.send_draft("me", created["id"])
    assert sent["id"] == created["message"]["id"] and message_of(sent)["Message-ID"] == "<s1@x>"
    assert server.drafts() == [] and server.sent() == [sent]

    listed = users.messages().list(userId="me", q="in:sent rfc822msgid:<s1@x>").execute()
    assert [m["id"] for m in listed["messages"]] == [sent["id"]]
    assert users.messages().list(userId="me", q="in:drafts").execute()["resultSizeEstimate"] == 0
    by_label = users.messages().list(userId="me", labelIds=["SENT"]).execute()
    assert by_label["resultSizeEstimate"] == 1
    message = (
        users.messages()
        .get(userId="me", id=sent["id"], format="metadata", metadataHeaders=["Message-ID"])
        .execute()
    )
    assert message["payload"]["headers"] == [{"name": "Message-ID", "value": "<s1@x>"}]
    assert message["labelIds"] == ["SENT"]
    assert abs(int(message["internalDate"]) / 1000 - time.time()) < 60


def test_drafts_send_endpoint(server: GoogleServer) -> None:
    drafts = gmail(server).users().drafts()
    created = drafts.create(userId="me", body=draft_body()).execute()
    answer = drafts.send(userId="me", body={"id": created["id"]}).execute()
    assert answer["labelIds"] == ["SENT"] and answer["id"] == created["message"]["id"]


def test_user_deleting_a_draft(server: GoogleServer) -> None:
    drafts = gmail(server).users().drafts()
    created = drafts.create(userId="me", body=draft_body()).execute()
    server.delete_draft("me", created["id"])
    assert server.drafts() == [] and server.messages() == []
    with pytest.raises(HttpError) as caught:
        drafts.get(userId="me", id=created["id"]).execute()
    assert caught.value.resp.status == 404


def test_message_without_message_id_gets_one(server: GoogleServer) -> None:
    msg = EmailMessage()
    msg["To"] = "a@example.com"
    msg.set_content("x")
    body = {"message": {"raw": base64.urlsafe_b64encode(msg.as_bytes()).decode()}}
    gmail(server).users().drafts().create(userId="me", body=body).execute()
    assert message_of(server.drafts()[0])["Message-ID"].endswith("@mail.gmail.com>")


# --------------------------------------------------------------------------- Calendar


def test_event_insert_duplicate_get_list_and_cancelled(server: GoogleServer) -> None:
    events = calendar(server).events()
    stored = events.insert(calendarId="primary", body=event_body("fud0001abc")).execute()
    assert stored["status"] == "confirmed" and stored["id"] == "fud0001abc"
    for key in ("htmlLink", "etag", "created", "updated", "iCalUID"):
        assert stored[key]
    events.insert(calendarId="primary", body=event_body("fud0002abc")).execute()

    with pytest.raises(HttpError) as caught:
        events.insert(calendarId="primary", body=event_body("fud0001abc")).execute()
    assert caught.value.resp.status == 409
    assert json.loads(caught.value.content)["error"] == {
        "code": 409,
        "message": "The requested identifier already exists.",
        "errors": [
            {
                "domain": "global",
                "reason": "duplicate",
                "message": "The requested identifier already exists.",
            }
        ],
    }

    assert events.get(calendarId="primary", eventId="fud0001abc").execute()["summary"]
    listed = events.list(
        calendarId="primary", privateExtendedProperty=["followupd=1", "key=fud0002abc"]
    ).execute()
    assert [e["id"] for e in listed["items"]] == ["fud0002abc"]
    assert (
        len(
            events.list(calendarId="primary", privateExtendedProperty="followupd=1").execute()[
                "items"
            ]
        )
        == 2
    )

    server.delete_event("primary", "fud0001abc")
    assert events.get(calendarId="primary", eventId="fud0001abc").execute()["status"] == (
        "cancelled"
    )
    ids = [e["id"] for e in events.list(calendarId="primary").execute()["items"]]
    assert ids == ["fud0002abc"]
    with_deleted = events.list(calendarId="primary", showDeleted=True).execute()["items"]
    assert len(with_deleted) == 2
    with pytest.raises(HttpError) as caught:
        events.insert(calendarId="primary", body=event_body("fud0001abc")).execute()
    assert caught.value.resp.status == 409
    with pytest.raises(HttpError) as caught:
        events.get(calendarId="primary", eventId="nosuchevent").execute()
    assert caught.value.resp.status == 404 and error_reason(caught.value) == "notFound"


def test_calendar_id_with_at_sign_and_delete(server: GoogleServer) -> None:
    events = calendar(server).events()
    events.insert(calendarId="therapist@example.com", body=event_body("abcde")).execute()
    assert server.requests[-1].path.startswith("/calendar/v3/calendars/therapist%40example.com/")
    assert [e["id"] for e in server.events("therapist@example.com")] == ["abcde"]
    assert server.events("primary") == []
    events.delete(calendarId="therapist@example.com", eventId="abcde").execute()
    with pytest.raises(HttpError) as caught:
        events.delete(calendarId="therapist@example.com", eventId="abcde").execute()
    assert caught.value.resp.status == 410


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (event_body("UPPERCASE1"), 400, "invalid"),
        (event_body("abcd"), 400, "invalid"),
        (event_body("wxyz0"), 400, "invalid"),  # w..z are not base32hex
        ({**event_body(), "end": {}}, 400, "required"),
        ({**event_body(), "start": {"dateTime": "2030-05-01T09:00:00"}}, 400, "required"),
        ({**event_body(), "end": {"dateTime": "2030-05-01T08:00:00+02:00"}}, 400, "timeRangeEmpty"),
    ],
)
def test_event_rejections(
    server: GoogleServer, body: dict[str, Any], status: int, reason: str
) -> None:
    with pytest.raises(HttpError) as caught:
        calendar(server).events().insert(calendarId="primary", body=body).execute()
    assert caught.value.resp.status == status and error_reason(caught.value) == reason
    assert server.events() == []


def test_event_without_id_gets_a_base32hex_one(server: GoogleServer) -> None:
    body = event_body()
    del body["id"]
    stored = calendar(server).events().insert(calendarId="primary", body=body).execute()
    assert set(stored["id"]) <= set("abcdefghijklmnopqrstuv0123456789")


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize(
    ("api", "body", "message"),
    [
        (
            "calendar",
            {**event_body(), "foo": 1},
            "Invalid JSON payload received. Unknown name \"foo\" at 'event': Cannot find field.",
        ),
        (
            "calendar",
            {**event_body(), "start": {"dateTime": "2030-05-01T09:00:00Z", "tz": "x"}},
            "Invalid JSON payload received. Unknown name \"tz\" at 'event.start': "
            "Cannot find field.",
        ),
        (
            "calendar",
            {**event_body(), "attendees": [{"email": "a@b.c", "nmae": "x"}]},
            "Invalid JSON payload received. Unknown name \"nmae\" at 'event.attendees[0]': "
            "Cannot find field.",
        ),
        (
            "calendar",
            {**event_body(), "summary": 5},
            "Invalid value at 'event.summary' (TYPE_STRING), 5",
        ),
        (
            "calendar",
            {**event_body(), "extendedProperties": {"private": {"k": 1}}},
            "Invalid value at 'event.extendedProperties.private['k']' (TYPE_STRING), 1",
        ),
        (
            "calendar",
            {**event_body(), "reminders": {"useDefault": "no"}},
            "Invalid value at 'event.reminders.useDefault' (TYPE_BOOL), \"no\"",
        ),
        (
            "gmail",
            {"message": {"raw": "eA", "rawr": "x"}},
            "Invalid JSON payload received. Unknown name \"rawr\" at 'draft.message': "
            "Cannot find field.",
        ),
    ],
)
def test_bodies_are_validated_against_discovery_schemas(
    server: GoogleServer, api: str, body: dict[str, Any], message: str
) -> None:
    if api == "calendar":
        request = calendar(server).events().insert(calendarId="primary", body=body)
    else:
        request = gmail(server).users().drafts().create(userId="me", body=body)
    with pytest.raises(HttpError) as caught:
        request.execute()
    error = json.loads(caught.value.content)["error"]
    assert caught.value.resp.status == 400
    assert error["message"] == message and error["status"] == "INVALID_ARGUMENT"
    assert error["errors"][0]["reason"] == "invalid"
    assert server.events() == [] and server.drafts() == []


# --------------------------------------------------------------------------- batch


def test_batch_of_three_draft_creates(server: GoogleServer) -> None:
    http = authorized_http(server)
    users = gmail(server, http).users()
    answers: dict[str, Any] = {}

    def callback(request_id: str, response: Any, exception: Exception | None) -> None:
        answers[request_id] = exception or response

    batch = BatchHttpRequest(callback=callback, batch_uri=server.batch_uri("gmail"))
    for n in range(3):
        batch.add(
            users.drafts().create(userId="me", body=draft_body(f"<b{n}@x>")), request_id=f"note-{n}"
        )
    batch.execute(http=http)

    assert sorted(answers) == ["note-0", "note-1", "note-2"]
    assert all(a["id"].startswith("r-") for a in answers.values())
    assert [message_of(d)["Message-ID"] for d in server.drafts()] == ["<b0@x>", "<b1@x>", "<b2@x>"]
    assert server.stats.round_trips == 1 and server.stats.batches == 1
    assert server.stats.calls[("POST", "drafts.create")] == 3
    assert [r.path for r in server.requests] == ["/gmail/v1/users/me/drafts?alt=json"] * 3
    assert all(b"raw" in r.body for r in server.requests)


def test_batch_parts_get_their_own_errors(server: GoogleServer) -> None:
    http = authorized_http(server)
    events = calendar(server, http).events()
    events.insert(calendarId="primary", body=event_body("dupl1")).execute()
    server.inject("events.insert", "429", retry_after=7)
    results: list[tuple[str, Any, Any]] = []
    batch = BatchHttpRequest(
        batch_uri=server.batch_uri("calendar"), callback=lambda i, r, e: results.append((i, r, e))
    )
    for event_id in ("limit1", "dupl1", "fresh1"):
        batch.add(events.insert(calendarId="primary", body=event_body(event_id)))
    batch.add(events.get(calendarId="primary", eventId="dupl1"))
    batch.execute(http=http)

    by_id = {i: (r, e) for i, r, e in results}
    assert by_id["1"][1].resp.status == 429 and by_id["1"][1].resp["retry-after"] == "7"
    assert by_id["2"][1].resp.status == 409 and error_reason(by_id["2"][1]) == "duplicate"
    assert by_id["3"][0]["id"] == "fresh1" and by_id["4"][0]["id"] == "dupl1"
    assert [e["id"] for e in server.events()] == ["dupl1", "fresh1"]
    assert server.stats.rate_limited == 1


def test_batch_over_100_parts_is_refused(server: GoogleServer) -> None:
    http = authorized_http(server)
    events = calendar(server, http).events()
    batch = BatchHttpRequest(batch_uri=server.batch_uri("calendar"))
    for n in range(101):
        batch.add(events.get(calendarId="primary", eventId=f"e{n:05d}"))
    with pytest.raises(HttpError) as caught:
        batch.execute(http=http)
    assert caught.value.resp.status == 400
    assert server.stats.total_calls == 0


def test_batch_act_then_drop_is_replayed_whole_by_httplib2(server: GoogleServer) -> None:
    """The lost batch answer makes httplib2 send the whole batch again: 6 drafts, not 3."""
    http = authorized_http(server)
    users = gmail(server, http).users()
    server.inject("drafts.create", "act-then-drop")
    batch = BatchHttpRequest(batch_uri=server.batch_uri("gmail"))
    for n in range(3):
        batch.add(users.drafts().create(userId="me", body=draft_body(f"<r{n}@x>")))
    batch.execute(http=http)
    assert len(server.drafts()) == 6
    assert server.stats.batches == 2 and server.stats.dropped == 1


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        ("429", 429, "rateLimitExceeded"),
        ("500", 500, "backendError"),
        ("502", 502, "backendError"),
        ("503", 503, "backendError"),
        ("504", 504, "deadlineExceeded"),
        ("403-rate", 403, "userRateLimitExceeded"),
        ("403-ratelimit", 403, "rateLimitExceeded"),
        ("400", 400, "badRequest"),
        ("404", 404, "notFound"),
    ],
)
def test_error_faults_reach_the_client(
    server: GoogleServer, fault: str, status: int, reason: str
) -> None:
    users = gmail(server).users()
    server.inject("drafts.create", fault, retry_after=3)
    with pytest.raises(HttpError) as caught:
        users.drafts().create(userId="me", body=draft_body()).execute()
    assert caught.value.resp.status == status and error_reason(caught.value) == reason
    if status == 429:
        assert caught.value.resp["retry-after"] == "3"
    assert server.drafts() == []  # an error fault does not act
    users.drafts().create(userId="me", body=draft_body()).execute()  # used up after once
    assert len(server.drafts()) == 1


def test_wildcard_fault_and_times(server: GoogleServer) -> None:
    events = calendar(server).events()
    server.inject("*", "503", times=2)
    for _ in range(2):
        with pytest.raises(HttpError):
            events.list(calendarId="primary").execute()
    assert events.list(calendarId="primary").execute()["items"] == []
    assert server.pending_faults() == []
    with pytest.raises(ValueError):
        server.inject("drafts.craete", "500")
    assert {"drop", "act-then-drop", "slow", "429"} <= FAULTS


def test_injected_401_refreshes_token_through_this_server(server: GoogleServer) -> None:
    """google-auth refreshes at token_uri on 401 and replays; token_uri must be local."""
    server.inject("drafts.list", "401")
    assert gmail(server).users().drafts().list(userId="me").execute()["resultSizeEstimate"] == 0
    assert server.stats.count("drafts.list") == 2
    assert server.stats.count("oauth.token") == 1


def test_token_file_loader_ignores_token_uri(server: GoogleServer) -> None:
    """Why ``server.credentials()`` exists: the loader would send refreshes to Google."""
    loaded = Credentials.from_authorized_user_info(server.credentials_info())
    assert loaded.token_uri == "https://oauth2.googleapis.com/token"
    assert server.credentials().token_uri == server.base_url + "/token"


def test_missing_or_revoked_credentials(server: GoogleServer) -> None:
    resp, content = httplib2.Http(timeout=5).request(server.base_url + "/gmail/v1/users/me/drafts")
    assert resp.status == 401 and json.loads(content)["error"]["status"] == "UNAUTHENTICATED"
    server.revoke()
    with pytest.raises(RefreshError, match="invalid_grant"):
        gmail(server).users().drafts().list(userId="me").execute()


def test_slow_exceeds_client_timeout(server: GoogleServer) -> None:
    drafts = gmail(server, authorized_http(server, timeout=0.2)).users().drafts()
    server.inject("drafts.list", "slow", seconds=0.6)
    with pytest.raises(TimeoutError):
        drafts.list(userId="me").execute()


def test_act_then_slow_creates_then_times_out_and_retry_gets_409(server: GoogleServer) -> None:
    events = calendar(server, authorized_http(server, timeout=0.2)).events()
    server.inject("events.insert", "act-then-slow", seconds=0.6)
    with pytest.raises(TimeoutError):
        events.insert(calendarId="primary", body=event_body("late1")).execute()
    # The server acts before its slow answer; on a loaded machine its thread may only get
    # there after the client has given up.
    assert wait_for(server.events, 10)
    assert [e["id"] for e in server.events()] == ["late1"]
    retry = calendar(server).events()  # the usual timeout: a 409, not a slow machine's timeout
    with pytest.raises(HttpError) as caught:
        retry.insert(calendarId="primary", body=event_body("late1")).execute()
    assert caught.value.resp.status == 409


def test_act_then_500_acts(server: GoogleServer) -> None:
    events = calendar(server).events()
    server.inject("events.insert", "act-then-500")
    with pytest.raises(HttpError) as caught:
        events.insert(calendarId="primary", body=event_body("half1")).execute()
    assert caught.value.resp.status == 500
    assert [e["id"] for e in server.events()] == ["half1"]


def test_drop_once_is_invisible_because_httplib2_replays(server: GoogleServer) -> None:
    drafts = gmail(server).users().drafts()
    server.inject("drafts.create", "drop")
    drafts.create(userId="me", body=draft_body()).execute()
    assert len(server.drafts()) == 1 and server.stats.count("drafts.create") == 2
    server.inject("drafts.create", "drop", times=2)
    with pytest.raises(http.client.RemoteDisconnected):
        drafts.create(userId="me", body=draft_body()).execute()
    assert len(server.drafts()) == 1


def test_act_then_drop_makes_httplib2_create_two_drafts(
    server: GoogleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding that matters: one execute(), answer lost once -> TWO drafts, no error."""
    drafts = gmail(server, authorized_http(server)).users().drafts()
    server.inject("drafts.create", "act-then-drop")
    answer = drafts.create(userId="me", body=draft_body("<once@x>")).execute()
    assert [d["id"] for d in server.drafts()][-1] == answer["id"]
    assert len(server.drafts()) == 2

    server.reset()  # lost twice: still two drafts, and now the client does see an error
    server.inject("drafts.create", "act-then-drop", times=2)
    with pytest.raises(http.client.RemoteDisconnected):
        drafts.create(userId="me", body=draft_body("<twice@x>")).execute()
    assert len(server.drafts()) == 2

    server.reset()  # httplib2.RETRIES = 1 does not switch the replay off
    monkeypatch.setattr(httplib2, "RETRIES", 1)
    server.inject("drafts.create", "act-then-drop")
    drafts.create(userId="me", body=draft_body("<retries1@x>")).execute()
    assert len(server.drafts()) == 2


def test_no_replay_http_creates_exactly_one_draft(server: GoogleServer) -> None:
    http = authorized_http(server, base=NoReplayHttp(timeout=5))
    drafts = gmail(server, http).users().drafts()
    server.inject("drafts.create", "act-then-drop")
    with pytest.raises(ConnectionResetError):
        drafts.create(userId="me", body=draft_body("<nr@x>")).execute()
    assert len(server.drafts()) == 1
    # The recovery a client should do: look the Message-ID up before creating again.
    found = drafts.list(userId="me", q="rfc822msgid:<nr@x>").execute()
    assert [d["id"] for d in found["drafts"]] == [server.drafts()[0]["id"]]


# --------------------------------------------------------------------------- quota, latency


def test_rate_limit_per_calendar_and_gmail_units(server: GoogleServer) -> None:
    events = calendar(server).events()
    # A window of a second: the four calls below fit in it even on a loaded machine, and the
    # Retry-After it answers is still one second.
    window = 1.0
    server.rate_limit("calendar", 3, window=window)
    events.list(calendarId="primary").execute()
    first_answered = time.monotonic()  # the server counted the first call before this
    for _ in range(2):
        events.list(calendarId="primary").execute()
    with pytest.raises(HttpError) as caught:
        events.list(calendarId="primary").execute()
    assert caught.value.resp.status == 429 and caught.value.resp["retry-after"] == "1"
    events.list(calendarId="other@example.com").execute()  # another calendar, its own budget
    # The first call leaves the sliding window one window after it was counted: then there
    # is room for one more.
    time.sleep(max(0.0, first_answered + window - time.monotonic()) + 0.01)
    events.list(calendarId="primary").execute()

    drafts = gmail(server).users().drafts()
    server.rate_limit("gmail", 25, window=30)  # drafts.create costs 10 units, list 5
    drafts.create(userId="me", body=draft_body()).execute()
    drafts.create(userId="me", body=draft_body()).execute()
    drafts.list(userId="me").execute()
    with pytest.raises(HttpError) as caught:
        drafts.list(userId="me").execute()
    assert error_reason(caught.value) == "rateLimitExceeded"
    assert server.stats.rate_limited == 2
    server.rate_limit("gmail", None)
    drafts.list(userId="me").execute()


def test_delay_is_paid_once_per_round_trip(server: GoogleServer) -> None:
    http = authorized_http(server)
    users = gmail(server, http).users()
    server.delay = 0.1
    started = time.monotonic()
    batch = BatchHttpRequest(batch_uri=server.batch_uri("gmail"))
    for n in range(5):
        batch.add(users.drafts().create(userId="me", body=draft_body(f"<d{n}@x>")))
    batch.execute(http=http)
    elapsed = time.monotonic() - started
    # The answer came after the delay, and the delay is paid per round trip: five calls in
    # one batch are one round trip. (How long a round trip takes is bench/'s business: no
    # upper bound here for a loaded machine to break.)
    assert elapsed >= 0.1
    assert server.stats.round_trips == 1 and server.stats.batches == 1
    assert server.stats.count("drafts.create") == 5 and len(server.drafts()) == 5


def test_concurrent_clients(server: GoogleServer) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            drafts = gmail(server).users().drafts()
            for k in range(5):
                drafts.create(userId="me", body=draft_body(f"<c{n}-{k}@x>")).execute()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({d["id"] for d in server.drafts()}) == 20


def test_keep_alive_reuses_one_connection(server: GoogleServer) -> None:
    http = httplib2.Http(timeout=5)
    headers = {"authorization": "Bearer test-token"}
    sockets = set()
    for _ in range(3):
        resp, _ = http.request(server.base_url + "/gmail/v1/users/me/drafts", headers=headers)
        assert resp.status == 200
        (connection,) = http.connections.values()
        sockets.add(id(connection.sock))
    assert len(sockets) == 1


def test_reset_and_running_server() -> None:
    with running_server() as server:
        base = server.base_url
        gmail(server).users().drafts().create(userId="me", body=draft_body()).execute()
        server.inject("*", "500")
        server.reset()
        assert server.drafts() == [] and server.stats.round_trips == 0
        assert server.pending_faults() == [] and server.requests == []
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert base.startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------- threads, edits, lag


def test_routes_match_the_discovery_documents(server: GoogleServer) -> None:
    """Every kind the server answers is a method of the bundled discovery document, at the
    same HTTP method and path (so the real client's requests land on it)."""
    from google_server import CALENDAR_KINDS, GMAIL_KINDS, SHEETS_KINDS, _discovery

    for kinds, document, prefix, outer in (
        (GMAIL_KINDS, "gmail.v1", "/", ["users"]),
        (CALENDAR_KINDS, "calendar.v3", "/calendar/v3/", []),
        (SHEETS_KINDS, "sheets.v4", "/", []),  # e.g. spreadsheets.values.get
    ):
        for kind in sorted(kinds):
            *resources, method = [*outer, *kind.split(".")]
            node = _discovery(document)
            for resource in resources:
                node = node["resources"][resource]
            spec = node["methods"][method]
            path = spec["path"].replace("{+", "{")
            for name in ("userId", "id", "calendarId", "eventId", "spreadsheetId", "range"):
                path = path.replace("{" + name + "}", "x1234")
            route = server._route(spec["httpMethod"], prefix + path)
            assert route is not None and route.kind == kind, (kind, spec["httpMethod"], path)


def test_threads_get_lists_the_threads_messages(server: GoogleServer) -> None:
    from google_server import _check_schema, _discovery

    users = gmail(server).users()
    created = users.drafts().create(userId="me", body=draft_body("<t1@x>")).execute()
    thread_id = created["message"]["threadId"]
    server.send_draft("me", created["id"])
    reply = {"message": {"raw": raw_message("<t2@x>", "Re: Follow-up"), "threadId": thread_id}}
    users.drafts().create(userId="me", body=reply).execute()
    users.drafts().create(userId="me", body=draft_body("<elsewhere@x>")).execute()

    thread = (
        users.threads()
        .get(userId="me", id=thread_id, format="metadata", metadataHeaders=["Message-ID"])
        .execute()
    )
    assert thread["id"] == thread_id
    assert [m["labelIds"] for m in thread["messages"]] == [["SENT"], ["DRAFT"]]
    assert [m["payload"]["headers"] for m in thread["messages"]] == [
        [{"name": "Message-ID", "value": "<t1@x>"}],
        [{"name": "Message-ID", "value": "<t2@x>"}],
    ]
    assert all(m["internalDate"] for m in thread["messages"])
    _check_schema(thread, {"$ref": "Thread"}, _discovery("gmail.v1")["schemas"], "thread")
    minimal = users.threads().get(userId="me", id=thread_id, format="minimal").execute()
    assert all("payload" not in m for m in minimal["messages"])
    full = users.threads().get(userId="me", id=thread_id).execute()
    assert full["messages"][0]["payload"]["mimeType"] == "text/plain"
    with pytest.raises(HttpError) as caught:
        users.threads().get(userId="me", id="nosuchthread").execute()
    assert caught.value.resp.status == 404
    assert server.stats.count("threads.get") == 4


def test_search_lag_hides_new_messages_from_searches_only(server: GoogleServer) -> None:
    users = gmail(server).users()
    lag = 1.0  # long enough that the calls right after a write come inside it, loaded or not
    server.search_lag = lag
    written = time.monotonic()
    created = users.drafts().create(userId="me", body=draft_body("<lag@x>")).execute()
    search = {"userId": "me", "q": "rfc822msgid:<lag@x>"}
    assert "drafts" not in users.drafts().list(**search).execute()
    assert [d["id"] for d in users.drafts().list(userId="me").execute()["drafts"]] == [
        created["id"]
    ]  # a listing without a search sees it at once, and so does a get
    assert users.drafts().get(userId="me", id=created["id"]).execute()["id"] == created["id"]
    found = wait_for(lambda: users.drafts().list(**search).execute().get("drafts"), 10)
    assert [d["id"] for d in found] == [created["id"]]
    assert time.monotonic() - written >= lag  # found by a search only once the lag had passed
    sent = time.monotonic()
    server.send_draft("me", created["id"])  # a sent message is new to the index again
    sent_search = {"userId": "me", "q": "in:sent rfc822msgid:<lag@x>"}
    assert "messages" not in users.messages().list(**sent_search).execute()
    assert users.messages().list(userId="me", labelIds=["SENT"]).execute()["messages"]
    assert wait_for(lambda: users.messages().list(**sent_search).execute().get("messages"), 10)
    assert time.monotonic() - sent >= lag
    server.reset()
    assert server.search_lag == 0
    with running_server(search_lag=5) as lagging:
        assert lagging.search_lag == 5


def test_edit_draft_as_the_therapist_would(server: GoogleServer) -> None:
    users = gmail(server).users()
    created = users.drafts().create(userId="me", body=draft_body("<e1@x>")).execute()
    other = users.drafts().create(userId="me", body=draft_body("<e2@x>")).execute()
    original = server.drafts()[0]["message"]

    same = server.edit_draft("me", created["id"], text="Edited by hand.")
    assert same["id"] == created["id"] and same["message"]["id"] != original["id"]
    assert same["message"]["threadId"] == original["threadId"]
    assert message_of(same)["Message-ID"] == "<e1@x>"
    assert message_of(same).get_content().strip() == "Edited by hand."
    assert [d["id"] for d in server.drafts()] == [other["id"], created["id"]]  # newest last

    moved = server.edit_draft(
        "me", created["id"], new_draft_id=True, keep_message_id=False, keep_tag=False
    )
    assert moved["id"] != created["id"] and moved["message"]["threadId"] == original["threadId"]
    assert message_of(moved)["Message-ID"].endswith("@mail.gmail.com>")
    with pytest.raises(HttpError) as caught:
        users.drafts().get(userId="me", id=created["id"]).execute()
    assert caught.value.resp.status == 404
    assert len(server.messages()) == 2  # the replaced message is gone

    renamed = server.edit_draft("me", moved["id"], new_subject="New subject")
    assert renamed["id"] == moved["id"]
    assert renamed["message"]["threadId"] == renamed["message"]["id"] != original["threadId"]
    assert message_of(renamed)["Subject"] == "New subject"
    sent = server.send_draft("me", renamed["id"])
    assert sent["threadId"] == renamed["message"]["threadId"] and sent["labelIds"] == ["SENT"]
    with pytest.raises(KeyError):
        server.edit_draft("me", renamed["id"])
