"""Talking to Google safely: credentials, a transport that never re-sends, errors, paced batches.

googleapiclient's default transport, httplib2, re-sends a request whose connection was closed
before an answer came, even with `RETRIES = 1`: for a POST that the server already carried
out, that is a second draft. followupd hands googleapiclient an httplib2-shaped transport over
google-auth's requests session instead: one request, one send, and our own retry policy
(which looks before it creates again) decides what happens next.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import google.auth.exceptions
import httplib2
import requests
import urllib3
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest, HttpRequest

from followupd.config import Settings
from followupd.pacing import TokenBucket
from followupd.permissions import exposure, write_private

SCOPE_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"  # create and read drafts
SCOPE_EVENTS = "https://www.googleapis.com/auth/calendar.events"  # create and read events
SCOPE_READ = "https://www.googleapis.com/auth/gmail.readonly"  # opt-in: was a draft sent?
GOOGLE_BATCH = {
    "gmail": "https://gmail.googleapis.com/batch/gmail/v1",
    "calendar": "https://www.googleapis.com/batch/calendar/v3",
}
REAUTH = "Google sign-in expired or was revoked: run `followupd auth`"
TIMEOUT = 30.0


SCOPE_SHEETS_READ = "https://www.googleapis.com/auth/spreadsheets.readonly"
SCOPE_SHEETS = "https://www.googleapis.com/auth/spreadsheets"  # read and write (write_status)


def scopes(read_scope: bool, sheets: bool | str = False) -> list[str]:
    """What followupd asks Google for: drafts and events; reading mail with `read_scope`;
    reading spreadsheets when a `google_sheet` source is configured, and writing them only
    when one keeps a status tab (`sheets == "write"`: the one scope that also reads)."""
    sheet_scope = SCOPE_SHEETS if sheets == "write" else SCOPE_SHEETS_READ
    return [
        SCOPE_COMPOSE,
        SCOPE_EVENTS,
        *([SCOPE_READ] if read_scope else []),
        *([sheet_scope] if sheets else []),
    ]


# A scope that allows what another does (reading and writing spreadsheets reads them).
COVERS = {SCOPE_SHEETS_READ: {SCOPE_SHEETS}}


def granted_scopes(info: Mapping) -> list[str] | None:
    """The scopes a token file says were granted (None: it does not say)."""
    found = info.get("scopes")
    if isinstance(found, str):
        found = found.split()
    return [str(scope) for scope in found] if found else None


def missing_scopes(wanted: Sequence[str], granted: Sequence[str] | None) -> set[str]:
    """The scopes followupd now wants that the sign-in did not grant (none when unknown)."""
    if granted is None:
        return set()
    have = set(granted)
    return {scope for scope in wanted if scope not in have and not COVERS.get(scope, set()) & have}


class CredentialsProblem(Exception):
    """The Google credentials cannot be used; the message says what to do."""


# --- credentials -----------------------------------------------------------------------------


# Token files are written with followupd.permissions.write_private (mode 0600 whatever the
# umask, replaced atomically); `followupd auth` imports it from here.


def refuse_exposed(path: Path, what: str) -> None:
    """A secret that other users may read or change is refused, not used (as ssh does)."""
    problem = exposure(path)
    if problem:
        raise CredentialsProblem(f"refusing the {what}: {problem}")


class TokenFile:
    """An authorized-user token file that is rewritten whenever google-auth refreshes it."""

    def __init__(self, path: Path, wanted_scopes: Sequence[str]):
        self.path = path
        refuse_exposed(path, "Google token file")
        try:
            info = json.loads(path.read_text())
            granted = granted_scopes(info)
            # A refresh asks for these scopes; asking for one never granted (a sheet source
            # added since `followupd auth`) is refused by Google, and would stop delivery.
            credentials = user_credentials.Credentials.from_authorized_user_info(
                info, granted or list(wanted_scopes)
            )
            self.granted = granted  # None: the file does not say
            self.missing = missing_scopes(wanted_scopes, granted)
        except FileNotFoundError:
            raise CredentialsProblem(
                f"no Google token at {path}: run `followupd auth` to sign in"
            ) from None
        except (ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise CredentialsProblem(
                f"{path} is not an authorized-user token file ({exc}); run `followupd auth` again"
            ) from None
        # google-auth ignores the file's token_uri; honour it (an emulator, a test server)
        if info.get("token_uri"):
            expiry = credentials.expiry  # the copy forgets it: an expired token looks fresh
            credentials = credentials.with_token_uri(info["token_uri"])
            credentials.expiry = expiry
        self.credentials = credentials
        self._saved = credentials.token

    def save_if_refreshed(self) -> None:
        if self.credentials.token and self.credentials.token != self._saved:
            write_private(self.path, self.credentials.to_json())
            self._saved = self.credentials.token


def wants_sheets(settings: Settings) -> str:
    """What the sign-in must allow on spreadsheets: "" (no `google_sheet` source), "read",
    or "write" when a sheet source keeps a status tab (`write_status: true`)."""
    sheets = [s for s in settings.config.sources if s.kind == "google_sheet"]
    if any(source.write_status for source in sheets):
        return "write"
    return "read" if sheets else ""


def load_credentials(settings: Settings) -> tuple[Any, TokenFile | None]:
    """(credentials, the token file to keep up to date, or None for a service account)."""
    google = settings.config.google
    wanted = scopes(google.read_scope, wants_sheets(settings))
    if google.service_account_file:
        path = settings.path(google.service_account_file)
        if not google.subject:
            raise CredentialsProblem(
                "google.subject (FOLLOWUPD_GOOGLE_SUBJECT) must name the "
                "mailbox the service account acts for"
            )
        refuse_exposed(path, "Google service account key")
        try:
            creds = service_account.Credentials.from_service_account_file(
                str(path), scopes=wanted, subject=google.subject
            )
        except FileNotFoundError:
            raise CredentialsProblem(f"no service account key at {path}") from None
        except ValueError as exc:
            raise CredentialsProblem(f"{path} is not a service account key ({exc})") from None
        return creds, None
    token = TokenFile(settings.path(google.token_file), wanted)
    return token.credentials, token


# --- transport -------------------------------------------------------------------------------


class Transport:
    """httplib2's `request()` for googleapiclient, over a session that sends each request once.

    google-auth's AuthorizedSession adds the bearer token and refreshes it on a 401 (the
    server did nothing on a 401, so sending again is safe); urllib3 retries nothing else.
    """

    def __init__(self, credentials: Any, timeout: float = TIMEOUT):
        self.session = AuthorizedSession(credentials)
        self.session.mount("https://", requests.adapters.HTTPAdapter(max_retries=0))
        self.session.mount("http://", requests.adapters.HTTPAdapter(max_retries=0))
        self.timeout = timeout
        self.round_trips = 0
        self._environment: dict[str, dict] = {}  # proxies and CA bundle by scheme and host

    def _settings_for(self, uri: str) -> dict:
        """The environment's proxies and CA bundle for a host, read once: requests reads
        them (every variable, and ~/.netrc) on each request otherwise, a third of its CPU."""
        parts = urllib.parse.urlsplit(uri)
        key = f"{parts.scheme}://{parts.netloc}"
        if key not in self._environment:
            self.session.trust_env = True
            found = self.session.merge_environment_settings(key + "/", {}, None, None, None)
            self.session.trust_env = False
            self._environment[key] = {"proxies": found["proxies"], "verify": found["verify"]}
        return self._environment[key]

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict | None = None,
        redirections: int = 5,
        connection_type: Any = None,
    ) -> tuple[httplib2.Response, bytes]:
        self.round_trips += 1
        answer = self.session.request(
            method,
            uri,
            data=body,
            headers=headers,
            timeout=self.timeout,
            allow_redirects=False,
            **self._settings_for(uri),
        )
        info = {
            k.lower(): v
            for k, v in answer.headers.items()
            if k.lower() not in ("content-encoding", "transfer-encoding")
        }
        info["status"] = str(answer.status_code)
        response = httplib2.Response(info)
        response.reason = answer.reason
        return response, answer.content

    def close(self) -> None:
        self.session.close()


SERVICE_PATH = {"gmail": "", "calendar": "calendar/v3/", "sheets": ""}  # discovery documents


def build_service(api: str, version: str, transport: Transport, endpoint: str | None):
    """A googleapiclient service from the bundled discovery document, at `endpoint`.

    `api_endpoint` replaces rootUrl *and* servicePath, so Calendar's path is added back:
    requests land at {endpoint}/gmail/v1/... and {endpoint}/calendar/v3/..., as at Google.
    """
    options = {"api_endpoint": endpoint.rstrip("/") + "/" + SERVICE_PATH[api]} if endpoint else None
    return build(
        api,
        version,
        http=transport,
        static_discovery=True,
        cache_discovery=False,
        client_options=options,
    )


def batch_uri(api: str, endpoint: str | None) -> str:
    """new_batch_http_request() ignores an overridden endpoint, so name the batch URI."""
    if endpoint:
        return f"{endpoint.rstrip('/')}/batch/{'gmail/v1' if api == 'gmail' else 'calendar/v3'}"
    return GOOGLE_BATCH[api]


# --- errors ----------------------------------------------------------------------------------


RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}


@dataclass(frozen=True)
class CallError:
    """Why one call failed, and what that allows next."""

    reason: str
    status: int | None = None
    retryable: bool = False  # trying again may work
    maybe_acted: bool = False  # Google may have carried it out: look before creating again
    in_flight: bool = False  # no answer at all: Google may still be working on it
    retry_after: float | None = None
    systemic: bool = False  # every call would fail the same way (credentials)


def _error_reasons(exc: HttpError) -> list[str]:
    details = exc.error_details if isinstance(exc.error_details, list) else []
    return [d.get("reason", "") for d in details if isinstance(d, dict)]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def classify(exc: BaseException) -> CallError:
    """Map an exception from a Google call to what the retry policy may do with it."""
    if isinstance(exc, HttpError):
        return _classify_http(exc)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return CallError(REAUTH, retryable=True, systemic=True)
    cause = unreachable(exc)
    if cause is not None:
        # No request reached Google (or the sign-in could not be refreshed, so the call was
        # not sent): nothing happened, and every other call would fail alike this tick.
        return CallError(
            f"{UNREACHABLE} ({cause}); tried again later", retryable=True, systemic=True
        )
    if isinstance(exc, requests.exceptions.RequestException | OSError | httplib2.HttpLib2Error):
        return CallError(
            f"no answer from Google ({type(exc).__name__})",
            retryable=True,
            maybe_acted=True,
            in_flight=True,
        )
    raise exc


def _classify_http(exc: HttpError) -> CallError:
    """An answer from Google that is an error: rate limits, 5xx, 401, or a refusal."""
    status = exc.resp.status
    message = (exc.reason or "")[:200]
    after = _retry_after(exc.resp.get("retry-after"))
    if status == 429 or (status == 403 and RATE_REASONS & set(_error_reasons(exc))):
        return CallError(
            f"rate limited by Google ({status})", status, retryable=True, retry_after=after
        )
    if status in (500, 502, 503, 504):
        return CallError(
            f"Google answered {status}",
            status,
            retryable=True,
            maybe_acted=True,
            retry_after=after,
        )
    if status == 401:
        return CallError(
            f"Google refused the credentials (401): {REAUTH}",
            status,
            retryable=True,
            systemic=True,
        )
    return CallError(f"Google answered {status}: {message}", status)


UNREACHABLE = "Google could not be reached"


def unreachable(exc: BaseException) -> str | None:
    """A short cause when `exc` means no request reached Google (a refused connection, a name
    not resolved, a connect timeout, a failed TLS handshake, a sign-in that could not be
    refreshed); None when a request may have reached it (a dropped answer, a read timeout)."""
    if isinstance(exc, google.auth.exceptions.TransportError):
        inner = exc.__cause__ or (exc.args[0] if exc.args else None)
        why = _connect_failure(inner) if isinstance(inner, BaseException) else None
        return f"refreshing the sign-in: {why or type(inner or exc).__name__}"
    return _connect_failure(exc)


def _connect_failure(exc: BaseException) -> str | None:
    """Why a connection to Google could not be made, or None if one was."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):  # an SSLError is one too
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, urllib3.exceptions.MaxRetryError):  # connecting: nothing was sent
            return _socket_failure(inner.reason) or "no connection"
        return None  # the connection broke with the request on it: it may have acted
    if isinstance(exc, httplib2.ServerNotFoundError):
        return "name not found"
    return _socket_failure(exc)


def _socket_failure(exc: BaseException | None) -> str | None:
    """A connection's failure to be made, from the socket error under urllib3's wrapper."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return _socket_failure(exc.__cause__) or "no connection"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror | urllib3.exceptions.NameResolutionError):
        return "name not found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLCertVerificationError):
        return "secure connection failed"
    if isinstance(exc, OSError) and exc.errno in UNREACHABLE_ERRNOS:
        return "network unreachable"
    return None


UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


# The exceptions classify() knows, caught around each call; any other is a bug, not an answer
# from Google, and goes up.
CLASSIFIED = (
    HttpError,
    google.auth.exceptions.RefreshError,
    google.auth.exceptions.TransportError,
    requests.exceptions.RequestException,
    OSError,
    httplib2.HttpLib2Error,
)


def call(request: HttpRequest) -> Any:
    """Execute one request; never with googleapiclient's num_retries (it re-sends POSTs)."""
    return request.execute(num_retries=0)


def execute_batch(
    uri: str, transport: Transport, requests_by_key: Sequence[tuple[str, HttpRequest]]
) -> dict[str, Any]:
    """Run requests in one HTTP batch: {key: response or CallError}.

    A failure of the batch as a whole (its connection, or a 5xx on the envelope) leaves
    every part uncertain.
    """
    results: dict[str, Any] = {}

    def collect(request_id: str, response: Any, exception: BaseException | None) -> None:
        results[request_id] = classify(exception) if exception else response

    batch = BatchHttpRequest(callback=collect, batch_uri=uri)
    for key, request in requests_by_key:
        batch.add(request, request_id=key)
    try:
        batch.execute(http=transport)
    except CLASSIFIED as exc:
        failure = classify(exc)
        for key, _ in requests_by_key:
            results.setdefault(key, failure)
    return results


def run_calls(
    uri: str, transport: Transport, calls: Sequence[tuple[str, HttpRequest]], use_batch: bool
) -> dict[str, Any]:
    """Many calls: one HTTP batch when allowed and worth it, else one request each."""
    if use_batch and len(calls) > 1:
        return execute_batch(uri, transport, calls)
    results = {}
    for key, request in calls:
        try:
            results[key] = call(request)
        except CLASSIFIED as exc:
            results[key] = classify(exc)
    return results


# --- paced batches ---------------------------------------------------------------------------


# What one API's calls go through: (kind, [(key, request)]) -> {key: response or CallError}.
Calls = Callable[[str, Sequence[tuple[str, HttpRequest]]], dict[str, Any]]


@dataclass
class Counters:
    """What this backend asked of Google (for `bench/` and the tests)."""

    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + n


@dataclass
class PacedCalls:
    """One API's calls, in HTTP batches of up to `batch_size`, each batch paid for in the
    API's token bucket before it goes (`costs`: quota units per call, by kind), so a backlog
    drains at the configured budget instead of drawing 429s."""

    uri: str  # the API's batch endpoint
    transport: Transport
    batch_size: int
    bucket: TokenBucket
    costs: Mapping[str, int]
    counters: Counters

    def run(self, kind: str, calls: Sequence[tuple[str, HttpRequest]]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        size = self.chunk_size(kind)
        for start in range(0, len(calls), size):
            chunk = calls[start : start + size]
            self.bucket.take(self.costs[kind] * len(chunk))
            self.counters.add(kind, len(chunk))
            results.update(run_calls(self.uri, self.transport, chunk, use_batch=True))
        return results

    def chunk_size(self, kind: str) -> int:
        """Calls per batch: `batch_size`, or fewer when a small budget's bucket cannot hold
        a whole batch (a take larger than the bucket would go out at once, over budget)."""
        fits = int(getattr(self.bucket, "capacity", float("inf")) // max(1, self.costs[kind]))
        return max(1, min(self.batch_size, fits))


class Keyed(Protocol):
    """What one call is made for: a draft, a reminder or a draft's ref."""

    @property
    def follow_up_id(self) -> int: ...


K = TypeVar("K", bound=Keyed)


def per_item(
    calls: Calls, kind: str, items: Sequence[K], request: Callable[[K], HttpRequest]
) -> dict[int, Any]:
    """One call per item (a draft, a reminder, a ref): {follow-up id: response or CallError}."""
    answers = calls(kind, [(str(item.follow_up_id), request(item)) for item in items])
    return {int(key): answer for key, answer in answers.items()}


# --- retrying --------------------------------------------------------------------------------


def backoff(attempt: int, retry_after: float | None, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    delay = random.uniform(0, min(cap, base * 2**attempt))
    return max(delay, retry_after or 0.0)
