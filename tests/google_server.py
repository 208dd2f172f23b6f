"""A local stand-in for the Gmail v1, Calendar v3 and Sheets v4 REST APIs (tests, benchmarks).

Why: no test may reach Google (DESIGN.md, "Testing without the internet"), yet the code under
test must talk through the *real* google-api-python-client, httplib2 and google-auth stack,
because that stack is where the surprises are (hidden retries, batch wire format, token
refresh). So this is a real HTTP/1.1 server on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a
background thread, keep-alive with exact Content-Length) that answers at Google's own paths.

Pointing the client at it (verified against google-api-python-client 2.202)
--------------------------------------------------------------------------
``client_options["api_endpoint"]`` REPLACES ``rootUrl + servicePath`` of the discovery document
(discovery.py: ``base = client_options.api_endpoint``); method paths are then joined with one
``/`` (``_urljoin``), so a trailing slash on the endpoint makes no difference. The two
documents differ in where the version prefix lives:

* Gmail: rootUrl ``https://gmail.googleapis.com/``, servicePath ``""``, method paths
  ``gmail/v1/users/{userId}/...``  ->  ``api_endpoint = base``  (``server.gmail_endpoint``)
* Calendar: rootUrl ``https://www.googleapis.com/``, servicePath ``calendar/v3/``, method paths
  ``calendars/{calendarId}/events...``  ->  ``api_endpoint = base + "/calendar/v3/"``
  (``server.calendar_endpoint``). With plain ``base`` the Calendar client requests
  ``{base}/calendars/primary/events`` and this server answers 404, exactly as Google would.
* Sheets (sheets.v4.json): rootUrl ``https://sheets.googleapis.com/``, servicePath ``""``,
  method paths ``v4/spreadsheets/{spreadsheetId}/values/{range}``, ``v4/spreadsheets/
  {spreadsheetId}:batchUpdate``  ->  ``api_endpoint = base`` (``server.sheets_endpoint``),
  as for Gmail: requests land at ``{base}/v4/spreadsheets/...``. ``{range}`` is a simple (not
  ``{+...}``) expansion, so the client %-encodes the whole range into one path segment:
  ``'My Tab'!A:F`` travels as ``%27My%20Tab%27%21A%3AF``, a ``/`` in a tab title as ``%2F``.

So ONE override URL cannot serve all three services unchanged: code that takes a single
``FOLLOWUPD_GOOGLE_API_ENDPOINT`` uses it as is for Gmail and Sheets and must append
``calendar/v3/`` for Calendar. ``server.endpoint("gmail"|"calendar"|"sheets")`` gives the
right value.

Batches: ``service.new_batch_http_request()`` takes its URL from the discovery document's
rootUrl + batchPath (``https://gmail.googleapis.com/batch``, ``https://www.googleapis.com/batch/
calendar/v3``, ``https://sheets.googleapis.com/batch``) and ignores ``api_endpoint``, so build
``BatchHttpRequest(batch_uri=...)`` yourself with ``server.batch_uri("gmail"|"calendar"|
"sheets")`` (``{base}/batch/gmail/v1``, ``{base}/batch/calendar/v3``, ``{base}/batch/sheets/v4``;
plain ``{base}/batch`` is accepted too).

Batch wire format (googleapiclient/http.py ``BatchHttpRequest._execute``)
------------------------------------------------------------------------
Request: ``POST`` with ``content-type: multipart/mixed; boundary="==...=="``; each part has
``Content-Type: application/http``, ``Content-Transfer-Encoding: binary`` and
``Content-ID: <{uuid} + {n}>`` (note the spaces around ``+``), and its payload is an HTTP
request serialised with ``\\n`` line ends: ``POST /gmail/v1/users/me/drafts?alt=json HTTP/1.1``
(path + query only, no host), then the part's own headers including ``authorization: Bearer``
and ``content-length``, a blank line and the JSON body. The envelope carries its own
``Authorization`` too; as at Google, a part inherits envelope headers it does not override.
Response: the client parses the envelope's ``content-type`` boundary, and for each part maps
``Content-ID`` back by splitting on ``" + "`` -- so the answer's Content-ID must be
``<response-{uuid} + {n}>`` -- then splits the status line on the first ``\\n`` and takes the
body after the first ``\\r\\n\\r\\n``. Parts are therefore written with CRLF and always carry at
least one header. Each part counts as one call; the envelope is one round trip.

httplib2 replays a POST whose answer was lost (the act-then-drop finding)
-----------------------------------------------------------------------
``httplib2.Http._conn_request`` (httplib2 0.32.1) catches ``http.client.BadStatusLine`` from
``getresponse()`` -- and ``RemoteDisconnected``, what a server closing the socket without an
answer produces, IS a BadStatusLine -- and on the first attempt reconnects and SENDS THE SAME
REQUEST AGAIN "regardless of the number of RETRIES set". Observed with the real client
(tests/test_google_server.py): ``inject("drafts.create", "act-then-drop")`` followed by one
``drafts().create().execute()`` leaves TWO drafts in the mailbox and the client sees SUCCESS
(the second, duplicate draft's answer), no error at all. With ``times=2`` there are two drafts
and the client gets ``RemoteDisconnected``. A whole batch is replayed the same way.
``httplib2.RETRIES = 1`` does NOT prevent this (it only limits the retry of errors while
*sending*). What does: an ``httplib2.Http`` whose connection class turns
``RemoteDisconnected`` on a POST into a plain ``ConnectionResetError`` (see
``NoReplayHttp`` in the tests) -- but the caller must then also keep googleapiclient's own
``num_retries`` at 0 for POSTs, since ``_retry_request`` retries ``ConnectionError`` too. The
robust answer is to make creates idempotent: client-chosen Calendar event ids (a replay gets
409 duplicate) and, for Gmail drafts, a Message-ID search (``rfc822msgid:``) before creating
again and after any transport error.

Other behaviour worth knowing (deliberately like Google)
-------------------------------------------------------
* Gmail list answers OMIT ``drafts`` / ``messages`` when empty (``{"resultSizeEstimate": 0}``);
  Calendar lists always have ``items``. Gmail lists are newest first.
* A 401 makes google-auth's ``AuthorizedHttp`` refresh the token at the credentials'
  ``token_uri`` and replay the request once. The server implements ``POST {base}/token``, but
  ``Credentials.from_authorized_user_info()`` / ``_file()`` ALWAYS set token_uri to
  ``https://oauth2.googleapis.com/token`` (ignoring the file's value), so credentials built
  that way try the internet on any 401. ``server.credentials()`` applies ``with_token_uri``;
  code under test that loads a token file needs the same hook (or must never see a 401).
  ``server.revoke()`` makes both the access token and the refresh token invalid, so the client
  gets ``google.auth.exceptions.RefreshError('invalid_grant: Token has been expired or
  revoked.')``.
* Calendar rejects an event id outside base32hex (``a-v``, ``0-9``, 5..1024 chars) with 400
  reason ``invalid`` / "Invalid resource id value.", a known id (even of a deleted event) with
  409 ``duplicate``, a missing start/end with 400 ``required``, a dateTime without offset or
  timeZone with 400 "Missing time zone definition for start time.".
* userId / calendarId are opaque keys: ``me`` and the account's address are different
  mailboxes here. Gmail search understands only ``rfc822msgid:``, ``in:sent``, ``in:drafts``,
  ``is:draft``, ``label:...`` terms (ANDed); any other term is ignored (matches all).
* Gmail's search index lags behind the mailbox: a search (``q=``) seconds after a draft is
  made may not find it. ``GoogleServer(search_lag=N)`` (or ``server.search_lag = N``) hides
  each message from ``q=`` searches of drafts.list and messages.list for its first N seconds
  (an edited draft and a sent message count as new); listings without ``q`` and gets see it
  at once.
* ``send_draft`` keeps the message id and the Message-ID header, as the brief asked; whether
  real Gmail rewrites a client-set Message-ID on send has not been verified here.
  ``edit_draft`` simulates the therapist editing a draft in Gmail and saving it: a new message
  id always, and, as asked, a new draft id, a new Message-ID header, the X-Followupd-Id
  header dropped, or (a new subject) a new thread -- reports disagree on which of these
  Gmail does, so the client must cope with each.
* ``threads.get`` answers with every message of the thread (drafts and sent alike, oldest
  first), each with its ``labelIds`` and, per ``format``, its headers.
* Scopes are opt-in: ``server.set_scopes(["spreadsheets.readonly"], token=...,
  refresh_token=...)`` limits a token (and the tokens refreshed from that refresh token) to
  those scopes; a call whose discovery method lists none of them gets 403
  ``insufficientPermissions`` "Request had insufficient authentication scopes." with
  ``WWW-Authenticate: ... error="insufficient_scope"``. Without it any token may call anything.
  The token endpoint answers the granted scopes (else echoes those the client asked for).

Sheets v4: spreadsheets.get, spreadsheets.batchUpdate, spreadsheets.values.get / update / clear
-------------------------------------------------------------------------------------------
* A test puts a tab in with ``server.put_sheet(spreadsheet_id, tab, rows)`` (cells: ``str``,
  numbers, ``bool``, ``date``/``datetime``, ``None``/``""`` empty; grid 1000 x 26 or larger)
  and changes it as the therapist would with ``set_cell(id, tab, "B3", v)``, ``append_row``,
  ``insert_row``, ``delete_row`` (rows below move up), ``rename_tab``,
  ``set_sheet_access(id, "read"|"none")`` and ``delete_spreadsheet``; ``sheet(id, tab)`` and
  ``spreadsheet(id)`` read it back, ``tab_text(id, tab)`` as the sheet shows it (every cell a
  string) and ``grid_size(id, tab)`` its row and column count.
* Ranges in A1 notation: ``Referrals``, ``Referrals!A1:Z``, ``'My Tab'!A:F`` (``''`` for a
  quote), ``Referrals!2:5``, ``Referrals!B3``; without a tab (``A1:C``) the first tab. Tab
  titles match exactly: whether Google ignores case there is unverified, so this is stricter.
  Unknown tab or unparsable range: 400 "Unable to parse range: <range>"; past the grid: 400
  "Range (Tab!A1:AB) exceeds grid limits. Max rows: 1000, max columns: 26"; unknown
  spreadsheet: 404 "Requested entity was not found."; no access: 403 "The caller does not
  have permission". Named ranges and R1C1 are not understood.
* values.get answers a ValueRange whose ``range`` is Google's spelling of the whole requested
  range, open ends at the grid's edge (``Referrals!A1:Z1000``), not the extent of the data;
  trailing empty cells of each row and trailing empty rows are left out, empty cells between
  values are ``""``, and a range with no values has no ``values`` key at all.
  ``majorDimension=COLUMNS`` transposes. ``valueRenderOption``: FORMATTED_VALUE (default)
  gives strings as the sheet shows them (``"12"``, ``"TRUE"``, a date cell in the
  spreadsheet's locale: ``11/3/2026`` en_US, ``03/11/2026`` en_GB); UNFORMATTED_VALUE and
  FORMULA give numbers and booleans as such and date cells as serial numbers (days since
  1899-12-30; ``dateTimeRenderOption=FORMATTED_STRING``: the shown text). No custom number
  formats. A formula (text typed with ``=`` first, see values.update) is kept, never computed:
  FORMULA gives its text, the other render options ``#N/A`` (what Sheets shows for an
  ``IMPORTXML`` that cannot fetch), so a test can tell a formula from text.
* values.update: ``valueInputOption`` is required (400 "'valueInputOption' is required but
  not specified"; the discovery document does not mark it required, so the client does not
  catch it). RAW stores values as given (``=IMPORTXML(...)`` stays text); USER_ENTERED reads
  text as if typed (numbers, TRUE/FALSE, dates ISO or in the locale's order, ``=...`` a
  formula, a leading ``'`` keeps text). ``null`` leaves a cell alone, ``""`` clears it. A
  single cell or bare tab is where writing starts (the values may run on from it); a bounded
  range refuses more: 400 "Requested writing within range [Tab!A1:B2], but tried writing to
  row [3]" (or column [C]). The grid does not grow: writing past it is 400 "exceeds grid
  limits", as reported of Google: Sage-Bionetworks/schematic#1318 ("Range
  (Sheet1!A11539:N15385) exceeds grid limits. Max rows: 11538, max columns: 25" on a
  values.update), nithinmurali/pygsheets#124 (2306 rows into a 2280-row grid; the fix was to
  resize first, #375), SpartanPlume/Tosurnament#43 ("the update of a spreadsheet can fail
  because there are not enough rows/columns"). Those wrote bounded ranges; that values run on
  from a single start cell past the grid fail too is unverified, and refused here as well
  (the stricter reading). Grow the grid with batchUpdate ``appendDimension`` (values.append,
  which would grow it, is not implemented).
* values.clear (``POST .../values/{range}:clear``, body ``{}``) empties the range's cells;
  as its discovery document says, a range past the grid is not an error: what is cleared is
  bounded to the grid, and ``clearedRange`` says so.
* batchUpdate applies all its requests or none: ``addSheet`` (titles unique regardless of
  case: 400 'A sheet with the name "x" already exists. Please enter another name.') and
  ``appendDimension``; any other request is 400 here. Under ``act-then-drop`` httplib2
  replays the POST (see above), so the client sees the replay's 400 "already exists" for a
  tab that its first request did create: treat that as done, or look with spreadsheets.get.
* Query parameters are checked against the discovery method (an undeclared one: 400 "Cannot
  bind query parameter"; a bad enum value: 400), and ``fields=`` partial responses are
  honoured on Sheets methods (checked against the response schema).
* ``rate_limit("sheets", 60)`` gives each user 60 reads and, separately, 60 writes a window,
  as Google's per-minute-per-user quotas (off by default, like the others).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import make_msgid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import googleapiclient
from google.oauth2.credentials import Credentials

__all__ = [
    "CALENDAR_KINDS",
    "FAULTS",
    "GMAIL_KINDS",
    "GMAIL_UNITS",
    "SHEETS_KINDS",
    "SHEET_LOCALES",
    "Formula",
    "GoogleServer",
    "RecordedRequest",
    "ServerStats",
    "discovery_method",
    "message_of",
    "running_server",
]

GMAIL_KINDS = frozenset(
    {
        "drafts.create",
        "drafts.list",
        "drafts.get",
        "drafts.delete",
        "drafts.send",
        "messages.list",
        "messages.get",
        "threads.get",
    }
)
CALENDAR_KINDS = frozenset({"events.insert", "events.get", "events.list", "events.delete"})
# Named after the discovery method ids (sheets.spreadsheets.values.get, ...).
SHEETS_KINDS = frozenset(
    {
        "spreadsheets.get",
        "spreadsheets.batchUpdate",
        "spreadsheets.values.get",
        "spreadsheets.values.update",
        "spreadsheets.values.clear",
    }
)
# Sheets counts reads and writes against separate per-minute quotas.
SHEETS_WRITES = frozenset(
    {"spreadsheets.batchUpdate", "spreadsheets.values.update", "spreadsheets.values.clear"}
)
SCOPE_PREFIX = "https://www.googleapis.com/auth/"
TOKEN_KIND = "oauth.token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
UNKNOWN_KIND = "unknown"

# Gmail's published per-method quota units; Calendar counts plain requests.
GMAIL_UNITS: dict[str, int] = {
    "drafts.create": 10,
    "drafts.delete": 10,
    "drafts.get": 5,
    "drafts.list": 5,
    "drafts.send": 100,
    "messages.list": 5,
    "messages.get": 5,
    "threads.get": 10,
}

# fault name -> (status, reason, message, error domain)
_ERROR_FAULTS: dict[str, tuple[int, str, str, str]] = {
    "400": (400, "badRequest", "Bad Request", "global"),
    "401": (401, "authError", "Invalid Credentials", "global"),
    "403-rate": (403, "userRateLimitExceeded", "User Rate Limit Exceeded", "usageLimits"),
    "403-ratelimit": (403, "rateLimitExceeded", "Rate Limit Exceeded", "usageLimits"),
    "404": (404, "notFound", "Requested entity was not found.", "global"),
    "429": (429, "rateLimitExceeded", "Too many requests. Retry later.", "usageLimits"),
    "500": (500, "backendError", "Internal error encountered.", "global"),
    "502": (502, "backendError", "Bad Gateway", "global"),
    "503": (503, "backendError", "The service is currently unavailable.", "global"),
    "504": (504, "deadlineExceeded", "Deadline exceeded.", "global"),
}
_ACTING_FAULTS = frozenset({"act-then-drop", "act-then-500", "act-then-slow"})
FAULTS = frozenset(_ERROR_FAULTS) | _ACTING_FAULTS | {"slow", "drop"}

_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    410: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_WWW_AUTHENTICATE = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
_BATCH_PATHS = frozenset({"/batch", "/batch/gmail/v1", "/batch/calendar/v3", "/batch/sheets/v4"})
_MAX_BATCH_PARTS = 100
_EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
_HAS_OFFSET = re.compile(r"(?:[zZ]|[+-]\d\d:?\d\d)$")
_DOCUMENTS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


# --------------------------------------------------------------------------- public records


class RecordedRequest(NamedTuple):
    """One API call as received (batch parts individually); ``path`` includes the query."""

    method: str
    path: str
    body: bytes


@dataclass
class ServerStats:
    """Counters for tests and benchmarks; mutated by the server under its lock."""

    round_trips: int = 0  # HTTP requests received, a batch envelope counting once
    batches: int = 0
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, kind)
    statuses: Counter[int] = field(default_factory=Counter)  # per call, batch parts included
    dropped: int = 0  # calls whose connection was closed without an answer

    @property
    def rate_limited(self) -> int:
        """How many 429 answers were sent (injected or from the rate limiter)."""
        return self.statuses[429]

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def count(self, kind: str) -> int:
        """Calls of one kind (e.g. ``"drafts.create"``), whatever the method."""
        return sum(n for (_, k), n in self.calls.items() if k == kind)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _b64decode_lenient(text: str) -> bytes:
    """Decode base64 or base64url, padded or not, as Google's JSON ``bytes`` fields accept."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


@dataclass(frozen=True)
class _StoredMessage:
    """A message in a fake mailbox; ``raw`` is the RFC 5322 bytes as Gmail stores them."""

    id: str
    thread_id: str
    raw: bytes
    label_ids: tuple[str, ...]
    internal_date_ms: int
    stored_at: float = field(default_factory=time.monotonic)  # for the search lag

    @functools.cached_property
    def email(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.raw)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, str(value)) for name, value in self.email.items()]

    def header(self, name: str) -> str | None:
        value = self.email.get(name)
        return None if value is None else str(value)

    @property
    def message_id(self) -> str | None:
        return self.header("Message-ID")

    def body_text(self) -> str:
        """The text/plain body (or the first text part), decoded."""
        part = self.email.get_body(preferencelist=("plain", "html"))
        return "" if part is None else str(part.get_content())


# --------------------------------------------------------------------------- internals


class _ApiError(Exception):
    """Raised by handlers; becomes a Google-format error answer."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str,
        *,
        domain: str = "global",
        rpc_status: bool = True,
        headers: tuple[tuple[str, str], ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason
        self.domain, self.rpc_status, self.headers = domain, rpc_status, headers
        self.extra = extra or {}

    def reply(self) -> _Reply:
        detail: dict[str, Any] = {
            "message": self.message,
            "domain": self.domain,
            "reason": self.reason,
            **self.extra,
        }
        error: dict[str, Any] = {"code": self.code, "message": self.message, "errors": [detail]}
        if self.rpc_status:
            error["status"] = _RPC_STATUS.get(self.code, "UNKNOWN")
        return _Reply.json(self.code, {"error": error}, headers=self.headers)


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
        return cls(status, json.dumps(obj, indent=1).encode(), headers=headers)


@dataclass
class _FaultRule:
    kind: str
    fault: str
    remaining: int
    options: dict[str, Any]


@dataclass
class _Mailbox:
    messages: dict[str, _StoredMessage] = field(default_factory=dict)
    drafts: dict[str, str] = field(default_factory=dict)  # draft id -> message id


@dataclass
class _Window:
    """One sliding quota window: (time, units) entries and their running sum."""

    log: deque[tuple[float, int]] = field(default_factory=deque)
    used: int = 0


@dataclass
class _Route:
    kind: str
    api: str  # "gmail" | "calendar" | "sheets" | "oauth"
    owner: str  # userId or calendarId (Sheets: the token's user): the quota/rate-limit key
    handler: Callable[..., _Reply]
    args: tuple[str, ...] = ()


@functools.cache
def _discovery(name: str) -> dict[str, Any]:
    return json.loads((_DOCUMENTS / f"{name}.json").read_text(encoding="utf-8"))


@functools.cache
def _methods(document: str) -> dict[str, dict[str, Any]]:
    """Every method of a discovery document, by its id (``sheets.spreadsheets.values.get``)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any]) -> None:
        for spec in node.get("methods", {}).values():
            found[spec["id"]] = spec
        for child in node.get("resources", {}).values():
            walk(child)

    walk(_discovery(document))
    return found


def discovery_method(kind: str) -> dict[str, Any]:
    """The shipped discovery document's method for a call kind (its path, scopes, params)."""
    if kind in GMAIL_KINDS:
        return _methods("gmail.v1")["gmail.users." + kind]
    if kind in CALENDAR_KINDS:
        return _methods("calendar.v3")["calendar." + kind]
    if kind in SHEETS_KINDS:
        return _methods("sheets.v4")["sheets." + kind]
    raise KeyError(kind)


def _check_schema(value: Any, schema: dict[str, Any], schemas: dict[str, Any], at: str) -> None:  # noqa: C901 -- one branch per JSON schema type
    """Validate ``value`` against a discovery schema: unknown names and basic types.

    Why: the real API rejects a misspelt field with 400 while a lenient fake would accept it,
    hiding the bug until production. Formats (int64 as string, date-time, byte) are only
    checked for their JSON type, as proto3 JSON parsing does.
    """
    while "$ref" in schema:
        schema = schemas[schema["$ref"]]
    if value is None:
        return
    kind = schema.get("type", "any")
    fmt = schema.get("format")

    def bad_value(type_name: str) -> _ApiError:
        message = f"Invalid value at '{at}' ({type_name}), {json.dumps(value)}"
        return _ApiError(400, message, "invalid")

    if kind == "object":
        if not isinstance(value, dict):
            raise bad_value("TYPE_MESSAGE")
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if properties is not None and name in properties:
                _check_schema(item, properties[name], schemas, f"{at}.{name}" if at else name)
            elif extra is not None:
                _check_schema(item, extra, schemas, f"{at}[{name!r}]")
            elif properties is not None:
                where = f" at '{at}'" if at else ""
                message = (
                    f'Invalid JSON payload received. Unknown name "{name}"{where}: '
                    "Cannot find field."
                )
                raise _ApiError(400, message, "invalid")
    elif kind == "array":
        if not isinstance(value, list):
            raise bad_value("TYPE_LIST")
        for index, item in enumerate(value):
            _check_schema(item, schema.get("items", {}), schemas, f"{at}[{index}]")
    elif kind == "string":
        numeric = fmt in ("int64", "uint64") and isinstance(value, int)
        if not isinstance(value, str) and not (numeric and not isinstance(value, bool)):
            raise bad_value("TYPE_STRING")
    elif kind == "integer":
        ok = isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
        if not ok or isinstance(value, bool):
            raise bad_value("TYPE_INT32" if fmt == "int32" else "TYPE_INT64")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise bad_value("TYPE_DOUBLE")
    elif kind == "boolean" and not isinstance(value, bool):
        raise bad_value("TYPE_BOOL")


def _validate_body(document: str, schema_name: str, root: str, body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ApiError(400, f"Invalid JSON payload received. {exc}", "parseError") from None
    if not isinstance(value, dict):
        raise _ApiError(400, "Invalid JSON payload received. Expected an object.", "parseError")
    schemas = _discovery(document)["schemas"]
    _check_schema(value, {"$ref": schema_name}, schemas, root)
    return value


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _page(
    items: list[Any], params: dict[str, list[str]], default: int, cap: int, calendar: bool
) -> tuple[list[Any], str | None]:
    """Offset pagination with an opaque token, like Google's (but deterministic)."""
    try:
        size = min(int(params.get("maxResults", [default])[0]), cap)
        token = params.get("pageToken", [""])[0]
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except (ValueError, binascii.Error):
        raise _ApiError(
            400, "Invalid pageToken or maxResults.", "invalid", rpc_status=not calendar
        ) from None
    size = max(size, 1)
    chunk = items[start : start + size]
    more = start + size < len(items)
    token_out = base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else None
    return chunk, token_out


def _normalise_msgid(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._track(self, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._track(self, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests read ``server.requests`` instead."""

    def _dispatch(self) -> None:
        self.server.app._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: GoogleServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (killed, timed out) is expected; others print."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------- the server


class GoogleServer:
    """Fake Gmail v1 + Calendar v3 + Sheets v4 on 127.0.0.1: faults, counters, quotas, scopes.

    Thread-safe: every handler thread takes ``self._lock`` for state; sleeps (latency, slow
    faults) happen outside it so concurrent clients overlap as they would against Google.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0, search_lag: float = 0.0
    ) -> None:
        self._address = (host, port)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Handler] = set()
        self._busy = 0  # requests being answered right now
        self._idle = threading.Condition(threading.Lock())
        self.delay = delay
        self.part_delay = 0.0
        # Seconds a new message stays out of `q=` search answers (Gmail's index lags).
        self.search_lag = search_lag
        self._init_state()

    def _init_state(self) -> None:
        self.stats = ServerStats()
        self.requests: list[RecordedRequest] = []
        self.valid_tokens: set[str] = {"test-token"}
        # Access token -> the mailbox it signs in to (its "me" and "primary"); tokens not
        # here all share the mailbox "me".
        self.token_users: dict[str, str] = {}
        self.valid_refresh_tokens: set[str] = {"test-refresh-token", "r"}
        self.jwt_claims: list[dict] = []  # what service accounts asked for, newest last
        self.revoked_service_accounts = False
        self._mailboxes: dict[str, _Mailbox] = {}
        self._calendars: dict[str, dict[str, dict[str, Any]]] = {}
        self._books: dict[str, _Spreadsheet] = {}  # spreadsheet id -> its tabs
        # Opt-in OAuth scopes (set_scopes): tokens not here may call anything.
        self.token_scopes: dict[str, frozenset[str]] = {}
        self.refresh_scopes: dict[str, frozenset[str]] = {}
        self._faults: list[_FaultRule] = []
        self._limits: dict[str, tuple[float, float]] = {}
        self._usage: dict[tuple[str, str], _Window] = {}
        self._counter = 0

    # ---- lifecycle

    def start(self) -> GoogleServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(self._address, _Handler)
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="google-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections so clients notice at once."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            handlers = list(self._connections)
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)  # socket.SHUT_RDWR
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GoogleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all mail, events, counters, faults, rate limits; tokens back to defaults."""
        with self._lock:
            self._init_state()
            self.delay = 0.0
            self.part_delay = 0.0
            self.search_lag = 0.0

    # ---- addresses and credentials

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def gmail_endpoint(self) -> str:
        return self.base_url + "/"

    @property
    def calendar_endpoint(self) -> str:
        return self.base_url + "/calendar/v3/"

    @property
    def sheets_endpoint(self) -> str:
        """Sheets' method paths carry their ``v4/`` (servicePath is empty), as Gmail's do."""
        return self.base_url + "/"

    def endpoint(self, api: str) -> str:
        """The ``client_options["api_endpoint"]`` for ``"gmail"``, ``"calendar"``, ``"sheets"``."""
        return {
            "gmail": self.gmail_endpoint,
            "calendar": self.calendar_endpoint,
            "sheets": self.sheets_endpoint,
        }[api]

    def batch_uri(self, api: str) -> str:
        """The ``batch_uri`` for ``BatchHttpRequest`` (the discovery one points at Google)."""
        paths = {
            "gmail": "/batch/gmail/v1",
            "calendar": "/batch/calendar/v3",
            "sheets": "/batch/sheets/v4",
        }
        return self.base_url + paths[api]

    def credentials_info(
        self, token: str = "test-token", refresh_token: str = "test-refresh-token"
    ) -> dict[str, str]:
        """Authorized-user info (as in a token file) valid until 2099; ``token_uri`` is here.

        Beware: ``from_authorized_user_info/_file`` drop ``token_uri``; see ``credentials()``.
        """
        return {
            "token": token,
            "refresh_token": refresh_token,
            "client_id": "test-client",
            "client_secret": "test-secret",
            "token_uri": self.base_url + "/token",
            "expiry": "2099-01-01T00:00:00Z",
        }

    def credentials(
        self, token: str = "test-token", refresh_token: str = "test-refresh-token"
    ) -> Credentials:
        """google-auth credentials for this server, refreshing here rather than at Google.

        ``Credentials.from_authorized_user_info`` ignores ``token_uri`` in the info (it always
        sets Google's), hence the ``with_token_uri``.
        """
        info = self.credentials_info(token, refresh_token)
        return Credentials.from_authorized_user_info(info).with_token_uri(info["token_uri"])

    def add_user(self, email: str, token: str | None = None) -> dict[str, str]:
        """A mailbox and calendar of their own for `email`; returns its token file's info."""
        token = token or f"token-{email}"
        with self._lock:
            self.valid_tokens.add(token)
            self.token_users[token] = email
        return self.credentials_info(token)

    def revoke(self) -> None:
        """Invalidate every access and refresh token (the user revoked the app's grant)."""
        with self._lock:
            self.valid_tokens.clear()
            self.valid_refresh_tokens.clear()

    def set_scopes(
        self,
        scopes: Iterable[str] | None,
        token: str = "test-token",
        refresh_token: str | None = "test-refresh-token",
    ) -> None:
        """Grant ``token`` (and tokens refreshed with ``refresh_token``) only these scopes.

        Scopes are full URLs or short names (``"spreadsheets.readonly"``). A call whose
        discovery method lists none of them gets 403 insufficientPermissions, as at Google.
        ``None`` lifts the restriction (the default: a token may call anything).
        """
        granted = None if scopes is None else frozenset(_full_scope(s) for s in scopes)
        with self._lock:
            for table, key in ((self.token_scopes, token), (self.refresh_scopes, refresh_token)):
                if key is None:
                    continue
                if granted is None:
                    table.pop(key, None)
                else:
                    table[key] = granted

    # ---- fault injection and quotas

    def inject(self, kind: str, fault: str, times: int = 1, **options: Any) -> None:
        """Make the next ``times`` calls of ``kind`` (or ``"*"``: any API call) fail.

        ``options``: ``retry_after`` for "429", ``seconds`` for "slow"/"act-then-slow".
        Rules are consumed in the order they were added; batch parts consume them too.
        """
        known = GMAIL_KINDS | CALENDAR_KINDS | SHEETS_KINDS | {TOKEN_KIND, "*"}
        if kind not in known:
            raise ValueError(f"unknown call kind {kind!r}; one of {sorted(known)}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        if fault in ("slow", "act-then-slow") and "seconds" not in options:
            raise ValueError(f"fault {fault!r} needs seconds=...")
        with self._lock:
            self._faults.append(_FaultRule(kind, fault, times, dict(options)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[tuple[str, str, int]]:
        """(kind, fault, remaining) of rules not yet used up."""
        with self._lock:
            return [(r.kind, r.fault, r.remaining) for r in self._faults if r.remaining > 0]

    def rate_limit(self, api: str, per_minute: float | None, *, window: float = 60.0) -> None:
        """Emulate a per-mailbox (Gmail, in quota units) or per-calendar (requests) budget.

        A sliding ``window`` (default 60 s) per userId / calendarId; a call that would exceed
        ``per_minute`` gets 429 rateLimitExceeded with a Retry-After and is not charged.
        ``per_minute=None`` removes the limit. A shorter ``window`` keeps tests fast.
        Sheets (``"sheets"``): per user (the token's), reads and writes each get
        ``per_minute`` requests, as Google's 60 read and 60 write requests a minute per user.
        """
        if api not in ("gmail", "calendar", "sheets"):
            raise ValueError("api must be 'gmail', 'calendar' or 'sheets'")
        with self._lock:
            if per_minute is None:
                self._limits.pop(api, None)
            else:
                self._limits[api] = (float(per_minute), float(window))
            self._usage = {k: v for k, v in self._usage.items() if k[0] != api}

    # ---- inspection and test helpers

    def drafts(self, user: str = "me") -> list[dict[str, Any]]:
        """Drafts of one mailbox, oldest first, as ``drafts.get(format="raw")`` returns them.

        ``message_of(draft)`` parses one into an ``EmailMessage``.
        """
        with self._lock:
            box = self._mailboxes.get(user, _Mailbox())
            return [
                {"id": d, "message": _render_raw(box.messages[m])} for d, m in box.drafts.items()
            ]

    def messages(self, user: str = "me") -> list[dict[str, Any]]:
        """Every message of one mailbox (drafts' included), oldest first, in raw format."""
        with self._lock:
            return [_render_raw(m) for m in self._mailboxes.get(user, _Mailbox()).messages.values()]

    def sent(self, user: str = "me") -> list[dict[str, Any]]:
        return [m for m in self.messages(user) if "SENT" in m["labelIds"]]

    def events(self, calendar: str = "primary") -> list[dict[str, Any]]:
        """Copies of all events of a calendar, cancelled ones included, in insertion order."""
        with self._lock:
            return copy.deepcopy(list(self._calendars.get(calendar, {}).values()))

    def send_draft(self, user: str, draft_id: str) -> dict[str, Any]:
        """Simulate the therapist pressing Send: the draft becomes a SENT message.

        Keeps the message id, thread id and Message-ID header; the draft id disappears.
        Returns the sent message (raw format).
        """
        with self._lock:
            box = self._mailboxes.get(user, _Mailbox())
            if draft_id not in box.drafts:
                raise KeyError(f"no draft {draft_id!r} in mailbox {user!r}")
            return _render_raw(self._send_locked(box, draft_id))

    def delete_draft(self, user: str, draft_id: str) -> None:
        """Simulate the therapist discarding a draft in the Gmail UI (gone, like drafts.delete)."""
        with self._lock:
            box = self._mailboxes.get(user, _Mailbox())
            if draft_id not in box.drafts:
                raise KeyError(f"no draft {draft_id!r} in mailbox {user!r}")
            del box.messages[box.drafts.pop(draft_id)]

    def edit_draft(
        self,
        user: str,
        draft_id: str,
        *,
        new_draft_id: bool = False,
        keep_message_id: bool = True,
        keep_tag: bool = True,
        new_subject: str | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        """Simulate the therapist editing a draft in Gmail and saving it.

        The draft's message is replaced by a new one with a new Gmail message id (as Gmail
        does on every save). As asked: ``new_draft_id`` saves it under a new draft id (the old
        one answers 404), ``keep_message_id=False`` gives it a new Message-ID header,
        ``keep_tag=False`` drops its X-Followupd-Id header, ``new_subject`` changes the
        subject and starts a new thread, ``text`` replaces the body. The saved draft becomes
        the newest. Returns it as ``drafts()`` does (``{"id", "message"}``, raw format).
        """
        with self._lock:
            box = self._mailboxes.get(user, _Mailbox())
            if draft_id not in box.drafts:
                raise KeyError(f"no draft {draft_id!r} in mailbox {user!r}")
            old = box.messages.pop(box.drafts.pop(draft_id))
            edited = BytesParser(policy=policy.default).parsebytes(old.raw)
            if not keep_message_id:
                del edited["Message-ID"]
                edited["Message-ID"] = make_msgid(domain="mail.gmail.com")
            if not keep_tag:
                del edited["X-Followupd-Id"]
            thread_id: str | None = old.thread_id
            if new_subject is not None:
                del edited["Subject"]
                edited["Subject"] = new_subject
                thread_id = None  # Gmail threads by subject: a new one starts a new thread
            if text is not None:
                edited.set_content(text)
            stored = self._store_message(box, edited.as_bytes(), ("DRAFT",), thread_id)
            saved_as = self._new_draft_id() if new_draft_id else draft_id
            box.drafts[saved_as] = stored.id
            return {"id": saved_as, "message": _render_raw(stored)}

    def add_message(
        self,
        user: str,
        raw: bytes | Message,
        labels: tuple[str, ...] = ("SENT",),
        thread_id: str | None = None,
    ) -> dict[str, Any]:
        """Put a message into a mailbox directly (e.g. one the therapist wrote by hand)."""
        data = raw.as_bytes() if isinstance(raw, Message) else raw
        with self._lock:
            return _render_raw(self._store_message(self._mailbox(user), data, labels, thread_id))

    def delete_event(self, calendar: str, event_id: str) -> None:
        """Delete as a user in the Calendar UI would: the event stays, ``status: cancelled``."""
        with self._lock:
            event = self._calendars.get(calendar, {}).get(event_id)
            if event is None:
                raise KeyError(f"no event {event_id!r} in calendar {calendar!r}")
            self._cancel_event(event)

    # ---- Sheets: what the practice keeps in its spreadsheet (test helpers)

    def put_sheet(
        self,
        spreadsheet_id: str,
        tab: str,
        rows: Sequence[Sequence[Any]],
        *,
        row_count: int | None = None,
        column_count: int | None = None,
        title: str | None = None,
        locale: str | None = None,
        time_zone: str | None = None,
    ) -> int:
        """Create or replace a tab (and its spreadsheet, if new); returns the tab's sheetId.

        ``rows`` hold cells as the sheet does: ``str`` (text as typed), ``int``/``float``,
        ``bool``, ``date``/``datetime`` (a date cell: shown in the spreadsheet's ``locale``,
        a serial number when unformatted), ``None`` or ``""`` (empty). The grid is Google's
        default 1000 rows x 26 columns, or as large as ``rows`` (or ``row_count`` /
        ``column_count``). A new spreadsheet has ``locale`` ``en_US`` unless told; its first
        tab gets sheetId 0, as at Google.
        """
        data = [_cells_in(row) for row in rows]
        width = max((len(row) for row in data), default=0)
        if locale is not None and locale not in SHEET_LOCALES:
            raise ValueError(f"locale must be one of {sorted(SHEET_LOCALES)}")
        if (row_count or len(data)) < len(data) or (column_count or width) < width:
            raise ValueError(f"{len(data)}x{width} cells do not fit the grid")
        with self._lock:
            book = self._books.get(spreadsheet_id)
            if book is None:
                book = _Spreadsheet(spreadsheet_id, "Referral log", "en_US", "America/New_York")
                self._books[spreadsheet_id] = book
            book.title = title or book.title
            book.locale = locale or book.locale
            book.time_zone = time_zone or book.time_zone
            sheet = book.tab(tab)
            if sheet is None:
                sheet = _Tab(_new_sheet_id(book.tabs), tab)
                book.tabs.append(sheet)
            sheet.rows = data
            sheet.row_count = row_count or max(sheet.row_count, len(data))
            sheet.column_count = column_count or max(sheet.column_count, width)
            return sheet.sheet_id

    def set_cell(self, spreadsheet_id: str, tab: str, cell: str, value: Any) -> None:
        """Type ``value`` into one cell (``"B3"``), as the therapist would; grows the grid."""
        ref = _ref(cell)
        if ref is None or None in ref:
            raise ValueError(f"not a cell: {cell!r}")
        column, row = ref
        assert column is not None and row is not None
        with self._lock:
            sheet = self._sheet(spreadsheet_id, tab)
            sheet.put(row, column, _cells_in([value])[0])
            sheet.row_count = max(sheet.row_count, row + 1)
            sheet.column_count = max(sheet.column_count, column + 1)

    def append_row(self, spreadsheet_id: str, tab: str, row: Sequence[Any]) -> int:
        """Add a row below the last non-empty one; returns its row number (1-based)."""
        with self._lock:
            sheet = self._sheet(spreadsheet_id, tab)
            number = sheet.used_rows() + 1
            self._place_row(sheet, number, row)
            return number

    def insert_row(self, spreadsheet_id: str, tab: str, number: int, row: Sequence[Any]) -> None:
        """Insert a row at row ``number`` (1-based), moving the rows below it down."""
        with self._lock:
            sheet = self._sheet(spreadsheet_id, tab)
            while len(sheet.rows) < number - 1:
                sheet.rows.append([])
            sheet.rows.insert(number - 1, [])
            sheet.row_count += 1
            self._place_row(sheet, number, row)

    def delete_row(self, spreadsheet_id: str, tab: str, number: int) -> None:
        """Delete row ``number`` (1-based) as the Sheets UI does: the rows below move up."""
        with self._lock:
            sheet = self._sheet(spreadsheet_id, tab)
            if not 1 <= number <= sheet.row_count:
                raise IndexError(f"no row {number} in {tab!r}")
            if number <= len(sheet.rows):
                del sheet.rows[number - 1]
            sheet.row_count -= 1

    def rename_tab(self, spreadsheet_id: str, tab: str, new_title: str) -> None:
        with self._lock:
            self._sheet(spreadsheet_id, tab).title = new_title

    def delete_spreadsheet(self, spreadsheet_id: str) -> None:
        """The spreadsheet is gone (deleted, or moved out of reach): its calls get 404."""
        with self._lock:
            del self._books[spreadsheet_id]

    def set_sheet_access(self, spreadsheet_id: str, access: str) -> None:
        """``"write"`` (default), ``"read"`` (shared view-only: writes get 403) or ``"none"``."""
        if access not in ("write", "read", "none"):
            raise ValueError("access must be 'write', 'read' or 'none'")
        with self._lock:
            self._books[spreadsheet_id].access = access

    def sheet(self, spreadsheet_id: str, tab: str) -> list[list[Any]]:
        """A tab's cells as stored (dates as ``date``), trailing empties trimmed, gaps ``None``."""
        with self._lock:
            rows = [_trim(list(row)) for row in self._sheet(spreadsheet_id, tab).rows]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def spreadsheet(self, spreadsheet_id: str) -> dict[str, Any]:
        """The spreadsheet as ``spreadsheets.get`` answers (properties and its tabs)."""
        with self._lock:
            return _spreadsheet_resource(self._books[spreadsheet_id])

    def tab_text(self, spreadsheet_id: str, tab: str) -> list[list[str]]:
        """A tab as a person sees it: every cell's shown text (empty ``""``), rows trimmed."""
        with self._lock:
            locale = self._books[spreadsheet_id].locale
            rows = self.sheet(spreadsheet_id, tab)
        return [[_cell_out(value, "FORMATTED_VALUE", "", locale) for value in row] for row in rows]

    def grid_size(self, spreadsheet_id: str, tab: str) -> tuple[int, int]:
        """(rowCount, columnCount) of a tab's grid."""
        with self._lock:
            sheet = self._sheet(spreadsheet_id, tab)
            return sheet.row_count, sheet.column_count

    def _sheet(self, spreadsheet_id: str, tab: str) -> _Tab:
        book = self._books.get(spreadsheet_id)
        sheet = book.tab(tab) if book else None
        if sheet is None:
            raise KeyError(f"no tab {tab!r} in spreadsheet {spreadsheet_id!r}")
        return sheet

    @staticmethod
    def _place_row(sheet: _Tab, number: int, row: Sequence[Any]) -> None:
        cells = _cells_in(row)
        for column, value in enumerate(cells):
            sheet.put(number - 1, column, value)
        sheet.row_count = max(sheet.row_count, number)
        sheet.column_count = max(sheet.column_count, len(cells))

    # ---- connection tracking

    def _track(self, handler: _Handler, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(handler)
            else:
                self._connections.discard(handler)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # ---- request entry point

    @property
    def busy(self) -> int:
        """Requests being answered right now."""
        with self._idle:
            return self._busy

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no request is being answered (an abandoned slow call has finished)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._busy == 0, timeout):
                raise TimeoutError(f"server still busy after {timeout} s")

    def _serve(self, handler: _Handler) -> None:
        with self._idle:
            self._busy += 1
        try:
            self._serve_one(handler)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _serve_one(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.stats.round_trips += 1
        self._wait(self.delay)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = urlsplit(handler.path).path
        if handler.command == "POST" and path in _BATCH_PATHS:
            outcome = self._batch(headers, body)
        else:
            outcome = self._call(handler.command, handler.path, headers, body)
        if outcome is None:
            handler.close_connection = True
            return
        try:
            handler.send_response(outcome.status)
            handler.send_header("Content-Type", outcome.content_type)
            handler.send_header("Content-Length", str(len(outcome.body)))
            for name, value in outcome.headers:
                handler.send_header(name, value)
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(outcome.body)
        except OSError:  # the client gave up (e.g. timed out during a slow fault)
            handler.close_connection = True

    def _call(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Reply | None:
        """One API call (plain request or batch part): auth, faults, quota, handler."""
        route = self._route(method, target)
        kind = route.kind if route else UNKNOWN_KIND
        with self._lock:
            self.requests.append(RecordedRequest(method, target, body))
            self.stats.calls[(method, kind)] += 1
        outcome = self._call_inner(route, method, target, headers, body)
        with self._lock:
            if outcome is None:
                self.stats.dropped += 1
            else:
                self.stats.statuses[outcome.status] += 1
        return outcome

    def _call_inner(
        self, route: _Route | None, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Reply | None:
        """Order as at Google: routing, then auth, then (injected) faults, quota, the action.

        A ``None`` answer means: close the connection without answering.
        """
        if route is None:
            path = urlsplit(target).path
            return _ApiError(404, f"Not Found: {method} {path}", "notFound").reply()
        if route.api != "oauth":
            try:
                token = self._authorize(headers)
                self._check_scopes(route.kind, token)
            except _ApiError as error:
                return error.reply()
            route = self._as_user(route, token)
        fault = self._take_fault(route.kind)
        name = fault.fault if fault else None
        options = fault.options if fault else {}
        if name == "drop":
            return None
        if name in _ERROR_FAULTS:
            return self._fault_reply(name, options)
        if name == "slow":
            self._wait(float(options["seconds"]))
        try:
            self._charge(route)
            query = parse_qs(urlsplit(target).query, keep_blank_values=True)
            reply = route.handler(*route.args, query=query, body=body)
        except _ApiError as error:
            reply = error.reply()
        # The act-then-* faults spoil the answer whatever it was: the action has happened.
        if name == "act-then-drop":
            return None
        if name == "act-then-500":
            return self._fault_reply("500", {})
        if name == "act-then-slow":
            self._wait(float(options["seconds"]))
        return reply

    def _as_user(self, route: _Route, token: str) -> _Route:
        """``me`` and ``primary`` are the token's own mailbox and calendar, as at Google.

        Sheets calls name no user: the token's user is only their quota key.
        """
        with self._lock:
            user = self.token_users.get(token)
        if user is None or route.owner not in ("me", "primary"):
            return route
        args = route.args if route.api == "sheets" else (user, *route.args[1:])
        return _Route(route.kind, route.api, user, route.handler, args)

    def _check_scopes(self, kind: str, token: str) -> None:
        with self._lock:
            granted = self.token_scopes.get(token)
        if granted is None:
            return
        accepted = discovery_method(kind).get("scopes", [])
        if granted.isdisjoint(accepted):
            challenge = (
                'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
                f'scope="{" ".join(accepted)}"'
            )
            raise _ApiError(
                403,
                "Request had insufficient authentication scopes.",
                "insufficientPermissions",
                extra={"message": "Insufficient Permission"},
                headers=(("WWW-Authenticate", challenge),),
            )

    def _authorize(self, headers: dict[str, str]) -> str:
        value = headers.get("authorization", "")
        if not value:
            raise _ApiError(
                401,
                "Request is missing required authentication credential.",
                "required",
                extra={"location": "Authorization", "locationType": "header"},
            )
        scheme, _, token = value.partition(" ")
        with self._lock:
            ok = scheme.lower() == "bearer" and token.strip() in self.valid_tokens
        if not ok:
            raise _ApiError(
                401,
                "Request had invalid authentication credentials.",
                "authError",
                extra={"location": "Authorization", "locationType": "header"},
                headers=(("WWW-Authenticate", _WWW_AUTHENTICATE),),
            )
        return token.strip()

    def _take_fault(self, kind: str) -> _FaultRule | None:
        with self._lock:
            for rule in self._faults:
                matches = rule.kind == kind or (rule.kind == "*" and kind != TOKEN_KIND)
                if rule.remaining > 0 and matches:
                    rule.remaining -= 1
                    return rule
        return None

    @staticmethod
    def _fault_reply(name: str, options: dict[str, Any]) -> _Reply:
        status, reason, message, domain = _ERROR_FAULTS[name]
        headers: tuple[tuple[str, str], ...] = ()
        if status == 429:
            headers = (("Retry-After", str(options.get("retry_after", 1))),)
        return _ApiError(status, message, reason, domain=domain, headers=headers).reply()

    def _charge(self, route: _Route) -> None:
        if route.api not in ("gmail", "calendar", "sheets"):
            return
        with self._lock:
            limit = self._limits.get(route.api)
            if limit is None:
                return
            per_window, window = limit
            cost = GMAIL_UNITS.get(route.kind, 5) if route.api == "gmail" else 1
            owner, message = route.owner, "Quota exceeded for quota metric 'Queries' per user."
            if route.api == "sheets":
                what = "Write" if route.kind in SHEETS_WRITES else "Read"
                owner = f"{route.owner} {what}"
                message = (
                    f"Quota exceeded for quota metric '{what} requests' and limit "
                    f"'{what} requests per minute per user' of service 'sheets.googleapis.com' "
                    "for consumer 'project_number:0'."
                )
            now = time.monotonic()
            usage = self._usage.setdefault((route.api, owner), _Window())
            while usage.log and usage.log[0][0] <= now - window:
                usage.used -= usage.log.popleft()[1]
            if usage.used + cost > per_window:
                wait = usage.log[0][0] + window - now if usage.log else window
                raise _ApiError(
                    429,
                    message,
                    "rateLimitExceeded",
                    domain="usageLimits",
                    headers=(("Retry-After", str(max(1, math.ceil(wait)))),),
                )
            usage.log.append((now, cost))
            usage.used += cost

    # ---- routing

    def _route(self, method: str, target: str) -> _Route | None:  # noqa: C901 -- a case a route
        segments = [unquote(s) for s in urlsplit(target).path.split("/")[1:]]
        match method, segments:
            case "POST", ["token"]:
                return _Route(TOKEN_KIND, "oauth", "", self._token)
            case _, ["gmail", "v1", "users", user, "drafts", *rest]:
                table: dict[tuple[str, int], tuple[str, Callable[..., _Reply]]] = {
                    ("POST", 0): ("drafts.create", self._drafts_create),
                    ("GET", 0): ("drafts.list", self._drafts_list),
                    ("GET", 1): ("drafts.get", self._drafts_get),
                    ("DELETE", 1): ("drafts.delete", self._drafts_delete),
                }
                if method == "POST" and rest == ["send"]:
                    return _Route("drafts.send", "gmail", user, self._drafts_send, (user,))
                found = table.get((method, len(rest)))
                if found is None:
                    return None
                return _Route(found[0], "gmail", user, found[1], (user, *rest))
            case "GET", ["gmail", "v1", "users", user, "messages"]:
                return _Route("messages.list", "gmail", user, self._messages_list, (user,))
            case "GET", ["gmail", "v1", "users", user, "messages", message_id]:
                return _Route("messages.get", "gmail", user, self._messages_get, (user, message_id))
            case "GET", ["gmail", "v1", "users", user, "threads", thread_id]:
                return _Route("threads.get", "gmail", user, self._threads_get, (user, thread_id))
            case "POST", ["calendar", "v3", "calendars", cal, "events"]:
                return _Route("events.insert", "calendar", cal, self._events_insert, (cal,))
            case "GET", ["calendar", "v3", "calendars", cal, "events"]:
                return _Route("events.list", "calendar", cal, self._events_list, (cal,))
            case "GET", ["calendar", "v3", "calendars", cal, "events", event_id]:
                return _Route("events.get", "calendar", cal, self._events_get, (cal, event_id))
            case "DELETE", ["calendar", "v3", "calendars", cal, "events", event_id]:
                return _Route(
                    "events.delete", "calendar", cal, self._events_delete, (cal, event_id)
                )
            case _, ["v4", "spreadsheets", *rest]:
                return self._sheets_route(method, rest)
        return None

    def _sheets_route(self, method: str, rest: list[str]) -> _Route | None:
        """``{id}``, ``{id}:batchUpdate``, ``{id}/values/{range}`` (the range %-encoded)."""
        handler: Callable[..., dict[str, Any]]
        match method, rest:
            case "GET", [book, "values", cells]:
                kind, handler, args = "spreadsheets.values.get", self._values_get, (book, cells)
            case "PUT", [book, "values", cells]:
                kind, handler = "spreadsheets.values.update", self._values_update
                args = (book, cells)
            case "POST", [book, "values", target] if target.endswith(":clear"):
                kind, handler = "spreadsheets.values.clear", self._values_clear
                args = (book, target.removesuffix(":clear"))
            case "GET", [book] if ":" not in book:
                kind, handler, args = "spreadsheets.get", self._spreadsheets_get, (book,)
            case "POST", [target] if target.endswith(":batchUpdate"):
                kind, handler = "spreadsheets.batchUpdate", self._spreadsheets_batch_update
                args = (target.removesuffix(":batchUpdate"),)
            case _:
                return None
        call = functools.partial(self._sheets_call, kind, handler)
        return _Route(kind, "sheets", "me", call, args)

    # ---- batch

    def _batch(self, headers: dict[str, str], body: bytes) -> _Reply | None:
        """Answer a multipart/mixed batch the way googleapiclient's BatchHttpRequest parses."""
        with self._lock:
            self.stats.batches += 1
        content_type = headers.get("content-type", "")
        envelope = BytesParser(policy=policy.compat32).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not envelope.is_multipart():
            return _ApiError(400, "Batch request must be multipart/mixed.", "badRequest").reply()
        parts = envelope.get_payload()
        assert isinstance(parts, list)
        if len(parts) > _MAX_BATCH_PARTS:
            return _ApiError(
                400, f"A batch may hold at most {_MAX_BATCH_PARTS} requests.", "badRequest"
            ).reply()
        answers: list[tuple[str, _Reply]] = []
        drop = False
        for part in parts:
            self._wait(self.part_delay)
            content_id = (part.get("Content-ID") or "").strip()
            try:
                method, target, part_headers, part_body = self._parse_part(part)
            except ValueError as exc:
                answers.append((content_id, _ApiError(400, str(exc), "badRequest").reply()))
                continue
            outcome = self._call(method, target, {**headers, **part_headers}, part_body)
            if outcome is None:
                drop = True
                outcome = _Reply(503)  # never sent: the whole connection is dropped
            answers.append((content_id, outcome))
        if drop:
            return None
        boundary = "batch_" + secrets.token_hex(12)
        chunks: list[bytes] = []
        for content_id, reply in answers:
            inner = content_id[1:-1] if content_id.startswith("<") else content_id
            status = HTTPStatus(reply.status)
            head = [
                f"HTTP/1.1 {status.value} {status.phrase}",
                f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(reply.body)}",
                *(f"{name}: {value}" for name, value in reply.headers),
            ]
            chunks.append(
                (
                    f"--{boundary}\r\nContent-Type: application/http\r\n"
                    f"Content-ID: <response-{inner}>\r\n\r\n" + "\r\n".join(head) + "\r\n\r\n"
                ).encode()
                + reply.body
                + b"\r\n"
            )
        chunks.append(f"--{boundary}--\r\n".encode())
        return _Reply(200, b"".join(chunks), content_type=f"multipart/mixed; boundary={boundary}")

    @staticmethod
    def _parse_part(part: Message) -> tuple[str, str, dict[str, str], bytes]:
        payload = part.get_payload()
        if not isinstance(payload, str):
            raise ValueError("batch part must be application/http")
        data = payload.encode("utf-8", "surrogateescape")
        request_line, _, rest = data.partition(b"\n")
        pieces = request_line.decode("latin-1").strip().split(" ")
        if len(pieces) < 2:
            raise ValueError(f"bad request line in batch part: {request_line!r}")
        method, url = pieces[0].upper(), pieces[1]
        split = urlsplit(url)
        target = split.path + (f"?{split.query}" if split.query else "")
        crlf, lf = rest.find(b"\r\n\r\n"), rest.find(b"\n\n")
        if rest.startswith((b"\n", b"\r\n")):
            head, body = b"", rest.split(b"\n", 1)[1]
        elif lf < 0 and crlf < 0:
            head, body = rest, b""
        elif crlf >= 0 and (lf < 0 or crlf < lf):
            head, body = rest[:crlf], rest[crlf + 4 :]
        else:
            head, body = rest[:lf], rest[lf + 2 :]
        part_headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, sep, value = line.partition(":")
            if sep:
                part_headers[name.strip().lower()] = value.strip()
        if "content-length" in part_headers:
            body = body[: int(part_headers["content-length"])]
        else:
            body = body.rstrip(b"\r\n")
        return method, target, part_headers, body

    # ---- OAuth token endpoint (refresh tokens, and service accounts' JWT bearer grant)

    def _token(self, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        with self._lock:
            ok = (
                form.get("grant_type") == "refresh_token"
                and form.get("refresh_token") in self.valid_refresh_tokens
            )
            # A service account's signed JWT (domain-wide delegation); the claims are kept so
            # a test can see which mailbox (`sub`) it asked for. The signature is not checked.
            if form.get("grant_type") == JWT_BEARER and form.get("assertion"):
                payload = form["assertion"].split(".")[1]
                self.jwt_claims.append(json.loads(base64.urlsafe_b64decode(payload + "==")))
                ok = not self.revoked_service_accounts
            if not ok:
                return _Reply.json(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    },
                )
            self._counter += 1
            token = f"test-token-{self._counter}"
            self.valid_tokens.add(token)
            # The grant's scopes: those set_scopes() gave the refresh token, else what the
            # client asked for (google-auth sends its scopes and warns when some are missing).
            granted = self.refresh_scopes.get(form.get("refresh_token", ""))
            if granted is not None:
                self.token_scopes[token] = granted
                scope = " ".join(sorted(granted))
            else:
                scope = form.get("scope") or "https://www.googleapis.com/auth/gmail.compose"
            subject = (
                self.jwt_claims[-1].get("sub") if form.get("grant_type") == JWT_BEARER else None
            )
            if subject:  # a service account acting for a mailbox: "me" is that mailbox
                self.token_users[token] = subject
        return _Reply.json(
            200,
            {
                "access_token": token,
                "expires_in": 3599,
                "token_type": "Bearer",
                "scope": scope,
            },
        )

    # ---- Gmail

    def _mailbox(self, user: str) -> _Mailbox:
        return self._mailboxes.setdefault(user, _Mailbox())

    def _new_gmail_id(self) -> str:
        self._counter += 1
        return f"{0x18F0000000000000 + self._counter:x}"

    def _new_draft_id(self) -> str:
        self._counter += 1
        return f"r-{7000000000000000000 + self._counter}"

    def _searchable(self, message: _StoredMessage, terms: str) -> bool:
        """A search (``q=``) does not see a message until the index has caught up with it."""
        if not terms.strip() or self.search_lag <= 0:
            return True
        return time.monotonic() - message.stored_at >= self.search_lag

    def _store_message(
        self, box: _Mailbox, raw: bytes, labels: tuple[str, ...], thread_id: str | None
    ) -> _StoredMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        if parsed.get("Message-ID") is None:  # Gmail adds one, as the sending MTA would
            parsed["Message-ID"] = make_msgid(domain="mail.gmail.com")
            raw = parsed.as_bytes()
        message_id = self._new_gmail_id()
        message = _StoredMessage(
            message_id, thread_id or message_id, raw, labels, int(time.time() * 1000)
        )
        box.messages[message_id] = message
        return message

    def _send_locked(self, box: _Mailbox, draft_id: str) -> _StoredMessage:
        message = box.messages[box.drafts.pop(draft_id)]
        sent = _StoredMessage(
            message.id, message.thread_id, message.raw, ("SENT",), int(time.time() * 1000)
        )
        box.messages[message.id] = sent
        return sent

    @staticmethod
    def _gmail_not_found() -> _ApiError:
        return _ApiError(404, "Requested entity was not found.", "notFound")

    def _drafts_create(self, user: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        draft = _validate_body("gmail.v1", "Draft", "draft", body)
        message = draft.get("message") or {}
        raw_text = message.get("raw")
        if not raw_text:
            raise _ApiError(400, "Missing draft message", "invalidArgument")
        try:
            raw = _b64decode_lenient(raw_text)
        except (binascii.Error, ValueError):
            raise _ApiError(
                400, "Invalid value at 'draft.message.raw' (TYPE_BYTES)", "invalid"
            ) from None
        with self._lock:
            box = self._mailbox(user)
            stored = self._store_message(box, raw, ("DRAFT",), message.get("threadId"))
            draft_id = self._new_draft_id()
            box.drafts[draft_id] = stored.id
        return _Reply.json(
            200,
            {
                "id": draft_id,
                "message": {"id": stored.id, "threadId": stored.thread_id, "labelIds": ["DRAFT"]},
            },
        )

    def _drafts_list(self, user: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        terms = query.get("q", [""])[0]
        with self._lock:
            box = self._mailbox(user)
            found = [
                (d, box.messages[m])
                for d, m in reversed(box.drafts.items())
                if self._matches(box.messages[m], terms, [])
                and self._searchable(box.messages[m], terms)
            ]
        chunk, token = _page(found, query, default=100, cap=500, calendar=False)
        answer: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if chunk:
            answer["drafts"] = [
                {"id": d, "message": {"id": m.id, "threadId": m.thread_id}} for d, m in chunk
            ]
        if token:
            answer["nextPageToken"] = token
        return _Reply.json(200, answer)

    def _drafts_get(
        self, user: str, draft_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        with self._lock:
            box = self._mailbox(user)
            message_id = box.drafts.get(draft_id)
            if message_id is None:
                raise self._gmail_not_found()
            message = box.messages[message_id]
        return _Reply.json(200, {"id": draft_id, "message": _render(message, query)})

    def _drafts_delete(
        self, user: str, draft_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        with self._lock:
            box = self._mailbox(user)
            message_id = box.drafts.pop(draft_id, None)
            if message_id is None:
                raise self._gmail_not_found()
            del box.messages[message_id]
        return _Reply(204, content_type="text/html")

    def _drafts_send(self, user: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        draft = _validate_body("gmail.v1", "Draft", "draft", body)
        with self._lock:
            box = self._mailbox(user)
            if draft.get("id") not in box.drafts:
                raise self._gmail_not_found()
            sent = self._send_locked(box, draft["id"])
        return _Reply.json(200, {"id": sent.id, "threadId": sent.thread_id, "labelIds": ["SENT"]})

    def _messages_list(self, user: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        terms = query.get("q", [""])[0]
        labels = query.get("labelIds", [])
        with self._lock:
            found = [
                m
                for m in reversed(self._mailbox(user).messages.values())
                if self._matches(m, terms, labels) and self._searchable(m, terms)
            ]
        chunk, token = _page(found, query, default=100, cap=500, calendar=False)
        answer: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if chunk:
            answer["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in chunk]
        if token:
            answer["nextPageToken"] = token
        return _Reply.json(200, answer)

    def _messages_get(
        self, user: str, message_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        with self._lock:
            message = self._mailbox(user).messages.get(message_id)
        if message is None:
            raise self._gmail_not_found()
        return _Reply.json(200, _render(message, query))

    def _threads_get(
        self, user: str, thread_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        fmt = query.get("format", ["full"])[0].lower()
        if fmt not in ("full", "metadata", "minimal"):  # no "raw" for threads
            raise _ApiError(400, f"Invalid value for format: {fmt}", "invalidArgument")
        with self._lock:
            messages = [
                m for m in self._mailbox(user).messages.values() if m.thread_id == thread_id
            ]
        if not messages:
            raise self._gmail_not_found()
        rendered = [_render(m, query) for m in messages]
        return _Reply.json(
            200, {"id": thread_id, "historyId": rendered[-1]["historyId"], "messages": rendered}
        )

    @staticmethod
    def _matches(message: _StoredMessage, terms: str, label_ids: list[str]) -> bool:
        """Gmail search, reduced to the terms followupd uses; unknown terms match all."""
        labels = set(message.label_ids)
        if not set(label_ids) <= labels:
            return False
        for term in terms.split():
            key, _, value = term.partition(":")
            key, value = key.lower(), value.strip('"')
            if key == "rfc822msgid":
                if _normalise_msgid(message.message_id or "") != _normalise_msgid(value):
                    return False
            elif key in ("in", "label", "is"):
                wanted = {"sent": "SENT", "draft": "DRAFT", "drafts": "DRAFT"}.get(
                    value.lower(), value.upper()
                )
                if wanted not in labels:
                    return False
        return True

    # ---- Calendar

    def _events_insert(self, cal: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        event = _validate_body("calendar.v3", "Event", "event", body)
        event_id = event.get("id")
        if event_id is not None and not _EVENT_ID.fullmatch(event_id):
            raise _ApiError(400, "Invalid resource id value.", "invalid", rpc_status=False)
        for edge in ("start", "end"):
            when = event.get(edge) or {}
            if not when.get("date") and not when.get("dateTime"):
                raise _ApiError(400, f"Missing {edge} time.", "required", rpc_status=False)
            if when.get("dateTime") and not (
                _HAS_OFFSET.search(when["dateTime"]) or when.get("timeZone")
            ):
                raise _ApiError(
                    400,
                    f"Missing time zone definition for {edge} time.",
                    "required",
                    rpc_status=False,
                )
        _check_range(event)
        with self._lock:
            events = self._calendars.setdefault(cal, {})
            if event_id is None:
                while event_id is None or event_id in events:
                    event_id = base64.b32hexencode(secrets.token_bytes(10)).decode().lower()
            if event_id in events:
                raise _ApiError(
                    409, "The requested identifier already exists.", "duplicate", rpc_status=False
                )
            now = _rfc3339(time.time())
            owner = cal if "@" in cal else "therapist@example.com"
            stored = {
                "kind": "calendar#event",
                "etag": f'"{time.time_ns() // 1000}"',
                "id": event_id,
                "status": "confirmed",
                "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
                "created": now,
                "updated": now,
                "creator": {"email": owner, "self": True},
                "organizer": {"email": owner, "self": True},
                "iCalUID": f"{event_id}@google.com",
                "sequence": 0,
                "reminders": {"useDefault": True},
                "eventType": "default",
            }
            server_owned = {
                "kind",
                "etag",
                "htmlLink",
                "created",
                "updated",
                "creator",
                "organizer",
                "iCalUID",
            }
            stored.update({k: v for k, v in event.items() if k not in server_owned})
            stored["id"] = event_id
            if stored.get("status") not in ("confirmed", "tentative"):
                stored["status"] = "confirmed"
            events[event_id] = stored
            return _Reply.json(200, stored)

    def _events_get(
        self, cal: str, event_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        with self._lock:
            event = self._calendars.get(cal, {}).get(event_id)
            if event is None:
                raise _ApiError(404, "Not Found", "notFound", rpc_status=False)
            return _Reply.json(200, event)

    def _events_delete(
        self, cal: str, event_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        with self._lock:
            event = self._calendars.get(cal, {}).get(event_id)
            if event is None:
                raise _ApiError(404, "Not Found", "notFound", rpc_status=False)
            if event["status"] == "cancelled":
                raise _ApiError(410, "Resource has been deleted", "deleted", rpc_status=False)
            self._cancel_event(event)
        return _Reply(204, content_type="text/html")

    @staticmethod
    def _cancel_event(event: dict[str, Any]) -> None:
        event["status"] = "cancelled"
        event["updated"] = _rfc3339(time.time())
        event["etag"] = f'"{time.time_ns() // 1000}"'

    def _events_list(self, cal: str, *, query: dict[str, list[str]], body: bytes) -> _Reply:
        show_deleted = query.get("showDeleted", ["false"])[0].lower() == "true"
        wanted = {
            scope: [entry.partition("=")[::2] for entry in query.get(param, [])]
            for scope, param in (
                ("private", "privateExtendedProperty"),
                ("shared", "sharedExtendedProperty"),
            )
        }
        uid = query.get("iCalUID", [None])[0]
        with self._lock:
            found = []
            for event in self._calendars.get(cal, {}).values():
                if event["status"] == "cancelled" and not show_deleted:
                    continue
                if uid is not None and event.get("iCalUID") != uid:
                    continue
                props = event.get("extendedProperties") or {}
                if all(
                    (props.get(scope) or {}).get(k) == v
                    for scope, pairs in wanted.items()
                    for k, v in pairs
                ):
                    found.append(copy.deepcopy(event))
        chunk, token = _page(found, query, default=250, cap=2500, calendar=True)
        answer: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"{time.time_ns() // 1000}"',
            "summary": cal,
            "updated": _rfc3339(time.time()),
            "timeZone": "UTC",
            "accessRole": "owner",
            "defaultReminders": [{"method": "popup", "minutes": 10}],
            "items": chunk,
        }
        if token:
            answer["nextPageToken"] = token
        return _Reply.json(200, answer)

    # ---- Sheets

    def _sheets_call(
        self,
        kind: str,
        handler: Callable[..., dict[str, Any]],
        *args: str,
        query: dict[str, list[str]],
        body: bytes,
    ) -> _Reply:
        """Query parameters checked against the discovery method; ``fields`` applied."""
        spec = discovery_method(kind)
        _check_query(spec, query)
        answer = handler(*args, query=query, body=body)
        fields = query.get("fields", [""])[0]
        if fields:
            answer = _select_fields(answer, fields, spec["response"]["$ref"])
        return _Reply.json(200, answer)

    def _book(self, spreadsheet_id: str, *, write: bool) -> _Spreadsheet:
        book = self._books.get(spreadsheet_id)
        if book is None:
            raise _ApiError(404, "Requested entity was not found.", "notFound")
        if book.access == "none" or (write and book.access != "write"):
            raise _ApiError(403, "The caller does not have permission", "forbidden")
        return book

    def _spreadsheets_get(
        self, book_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> dict[str, Any]:
        with self._lock:
            return _spreadsheet_resource(self._book(book_id, write=False))

    def _values_get(
        self, book_id: str, cells: str, *, query: dict[str, list[str]], body: bytes
    ) -> dict[str, Any]:
        major = _option(query, "majorDimension", "ROWS")
        render = _option(query, "valueRenderOption", "FORMATTED_VALUE")
        dates = _option(query, "dateTimeRenderOption", "SERIAL_NUMBER")
        with self._lock:
            book = self._book(book_id, write=False)
            sheet, box = _resolve(book, cells)
            bottom, right = _within_grid(sheet, box, cells)
            area = (box.top, box.left, bottom, right)
            return _value_range(book, sheet, area, major, render, dates)

    def _values_update(
        self, book_id: str, cells: str, *, query: dict[str, list[str]], body: bytes
    ) -> dict[str, Any]:
        option = _option(query, "valueInputOption", "")
        if option in ("", "INPUT_VALUE_OPTION_UNSPECIFIED"):
            raise _ApiError(400, "'valueInputOption' is required but not specified", "badRequest")
        data = _validate_body("sheets.v4", "ValueRange", "value_range", body)
        values = _values_in(data.get("values") or [], data.get("majorDimension"))
        with self._lock:
            book = self._book(book_id, write=True)
            sheet, box = _resolve(book, cells)
            if data.get("range"):
                other, other_box = _resolve(book, data["range"])
                if other is not sheet or other_box != box:
                    raise _ApiError(
                        400,
                        f"Invalid ValueRange: its range ({data['range']}) does not match the "
                        f"range in the request URL ({cells}).",
                        "badRequest",
                    )
            area = _write_area(sheet, box, cells, values)
            written = 0
            for i, line in enumerate(values):
                for j, value in enumerate(line):
                    if value is not None:
                        sheet.put(area[0] + i, area[1] + j, _cell_from_json(value, option, book))
                        written += 1
            answer: dict[str, Any] = {
                "spreadsheetId": book.id,
                "updatedRange": _a1(sheet, *area),
            }
            if written:  # proto3 JSON leaves zero counts out
                answer["updatedRows"] = sum(any(v is not None for v in line) for line in values)
                answer["updatedColumns"] = len(
                    {j for line in values for j, v in enumerate(line) if v is not None}
                )
                answer["updatedCells"] = written
            if _option(query, "includeValuesInResponse", "false").lower() == "true":
                render = _option(query, "responseValueRenderOption", "FORMATTED_VALUE")
                dates = _option(query, "responseDateTimeRenderOption", "SERIAL_NUMBER")
                answer["updatedData"] = _value_range(book, sheet, area, "ROWS", render, dates)
            return answer

    def _values_clear(
        self, book_id: str, cells: str, *, query: dict[str, list[str]], body: bytes
    ) -> dict[str, Any]:
        """Empty the range's cells, bounded to the grid (a range past it is no error)."""
        _validate_body("sheets.v4", "ClearValuesRequest", "", body)
        with self._lock:
            book = self._book(book_id, write=True)
            sheet, box = _resolve(book, cells)
            bottom = sheet.row_count - 1 if box.bottom is None else box.bottom
            right = sheet.column_count - 1 if box.right is None else box.right
            bottom, right = min(bottom, sheet.row_count - 1), min(right, sheet.column_count - 1)
            for line in sheet.rows[box.top : bottom + 1]:
                for column in range(box.left, min(right + 1, len(line))):
                    line[column] = None
            return {
                "spreadsheetId": book.id,
                "clearedRange": _a1(sheet, box.top, box.left, bottom, right),
            }

    def _spreadsheets_batch_update(
        self, book_id: str, *, query: dict[str, list[str]], body: bytes
    ) -> dict[str, Any]:
        request = _validate_body("sheets.v4", "BatchUpdateSpreadsheetRequest", "", body)
        requests = request.get("requests") or []
        if not requests:
            raise _ApiError(400, "Must specify at least one request.", "badRequest")
        with self._lock:
            book = self._book(book_id, write=True)
            # All or nothing, as at Google: the requests change copies of the tabs (their
            # cells are shared: no supported request changes cells), kept only if all apply.
            tabs = [replace(tab) for tab in book.tabs]
            replies = [_apply_request(tabs, i, item) for i, item in enumerate(requests)]
            book.tabs = tabs
            answer: dict[str, Any] = {"spreadsheetId": book.id, "replies": replies}
            if request.get("includeSpreadsheetInResponse"):
                answer["updatedSpreadsheet"] = _spreadsheet_resource(book)
            return answer


def _check_range(event: dict[str, Any]) -> None:
    """Google refuses an event that ends before it starts."""
    try:
        start = datetime.fromisoformat(event["start"].get("dateTime") or event["start"]["date"])
        end = datetime.fromisoformat(event["end"].get("dateTime") or event["end"]["date"])
    except (KeyError, TypeError, ValueError):
        raise _ApiError(400, "Invalid start or end time.", "invalid", rpc_status=False) from None
    if (start.tzinfo is None) != (end.tzinfo is None):
        return  # mixed date/dateTime; Google rejects these differently, not worth faking
    if end < start:
        raise _ApiError(
            400, "The specified time range is empty.", "timeRangeEmpty", rpc_status=False
        )


# --------------------------------------------------------------------------- Sheets model

_DEFAULT_ROWS, _DEFAULT_COLUMNS = 1000, 26
_SERIAL_EPOCH = datetime(1899, 12, 30)
# A spreadsheet's locale -> how its date cells show by default: (order, separator,
# zero-padded day and month). Approximations of Google's defaults for these locales.
SHEET_LOCALES: dict[str, tuple[str, str, bool]] = {
    "en_US": ("mdy", "/", False),  # 11/3/2026
    "en_GB": ("dmy", "/", True),  # 03/11/2026
    "de_DE": ("dmy", ".", False),  # 3.11.2026
}
_REF = re.compile(r"\$?([A-Za-z]{0,3})\$?(\d{0,7})")
_PLAIN_TITLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CELL_LIKE = re.compile(r"[A-Za-z]{1,3}\d+|[Rr]\d*[Cc]\d*")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")
_ENUM_TYPES = {
    "majorDimension": "Dimension",
    "valueRenderOption": "ValueRenderOption",
    "responseValueRenderOption": "ValueRenderOption",
    "dateTimeRenderOption": "DateTimeRenderOption",
    "responseDateTimeRenderOption": "DateTimeRenderOption",
    "valueInputOption": "ValueInputOption",
}


@dataclass(frozen=True)
class Formula:
    """A formula cell (USER_ENTERED text with ``=`` first): kept as typed, never computed."""

    text: str


@dataclass(eq=False)
class _Tab:
    """One tab: ragged rows of cells (``None`` empty) inside a row_count x column_count grid."""

    sheet_id: int
    title: str
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = _DEFAULT_ROWS
    column_count: int = _DEFAULT_COLUMNS

    def put(self, row: int, column: int, value: Any) -> None:
        while len(self.rows) <= row:
            self.rows.append([])
        line = self.rows[row]
        while len(line) <= column:
            line.append(None)
        line[column] = value

    def used_rows(self) -> int:
        """Rows down to the last one with a value."""
        for index in range(len(self.rows) - 1, -1, -1):
            if any(value is not None for value in self.rows[index]):
                return index + 1
        return 0

    def properties(self, index: int) -> dict[str, Any]:
        return {
            "sheetId": self.sheet_id,
            "title": self.title,
            "index": index,
            "sheetType": "GRID",
            "gridProperties": {"rowCount": self.row_count, "columnCount": self.column_count},
        }


@dataclass
class _Spreadsheet:
    id: str
    title: str
    locale: str
    time_zone: str
    tabs: list[_Tab] = field(default_factory=list)
    access: str = "write"  # "write" | "read" | "none", for every caller

    def tab(self, title: str) -> _Tab | None:
        """By exact title: whether Google matches titles in a range case-insensitively has
        not been verified, so the stricter reading is taken."""
        return next((tab for tab in self.tabs if tab.title == title), None)


@dataclass(frozen=True)
class _Box:
    """A range within a tab, 0-based; ``None`` runs to the edge of the grid."""

    top: int
    left: int
    bottom: int | None
    right: int | None
    start_only: bool = False  # a bare tab name or a single cell: a write may run on from it


def _full_scope(name: str) -> str:
    return name if "://" in name else SCOPE_PREFIX + name


def _new_sheet_id(tabs: list[_Tab]) -> int:
    if not tabs:
        return 0  # a spreadsheet's first tab, as at Google
    used = {tab.sheet_id for tab in tabs}
    while True:
        candidate = secrets.randbelow(2**31 - 2) + 1
        if candidate not in used:
            return candidate


def _cells_in(row: Sequence[Any]) -> list[Any]:
    """A row as a test hands it over: ``""`` is an empty cell, as in the Sheets UI."""
    cells: list[Any] = []
    for value in row:
        if value is None or (isinstance(value, str) and value == ""):
            cells.append(None)
        elif isinstance(value, str | int | float | date | Formula):
            cells.append(value)
        else:
            raise TypeError(f"a cell holds text, a number, a bool or a date, not {value!r}")
    return cells


def _trim(line: list[Any]) -> list[Any]:
    while line and line[-1] is None:
        line.pop()
    return line


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _column_index(letters: str) -> int:
    number = 0
    for char in letters.upper():
        number = number * 26 + ord(char) - 64
    return number - 1


def _ref(text: str) -> tuple[int | None, int | None] | None:
    """``"B3"`` -> (1, 2), ``"B"`` -> (1, None), ``"3"`` -> (None, 2); else None."""
    match = _REF.fullmatch(text)
    if match is None or not (match[1] or match[2]) or (match[2] and int(match[2]) == 0):
        return None
    column = _column_index(match[1]) if match[1] else None
    return column, (int(match[2]) - 1 if match[2] else None)


def _quote_title(title: str) -> str:
    if _PLAIN_TITLE.fullmatch(title) and not _CELL_LIKE.fullmatch(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def _a1(sheet: _Tab, top: int, left: int, bottom: int, right: int) -> str:
    """Google's own spelling of a range: the tab quoted if need be, both corners."""
    start = f"{_column_letters(left)}{top + 1}"
    if (top, left) == (bottom, right):
        return f"{_quote_title(sheet.title)}!{start}"
    return f"{_quote_title(sheet.title)}!{start}:{_column_letters(right)}{bottom + 1}"


def _split_a1(text: str) -> tuple[str | None, str | None]:
    """(tab title or None, cell part or None) of an A1 range; ``'It''s'!A1`` unquoted."""
    if not text.startswith("'"):
        if "!" in text:
            title, _, cells = text.partition("!")
            return title, cells
        return None, text
    pieces, at = [], 1
    while True:
        end = text.find("'", at)
        if end < 0:
            raise ValueError(text)
        pieces.append(text[at:end])
        if text.startswith("''", end):
            pieces.append("'")
            at = end + 2
            continue
        rest = text[end + 1 :]
        break
    if rest and not rest.startswith("!"):
        raise ValueError(text)
    return "".join(pieces), (rest[1:] if rest else None)


def _parse_cells(cells: str) -> _Box | None:
    """``B2``, ``A1:Z``, ``A:F``, ``2:5``, ``A5:A``... (``$`` allowed); None if not a range."""
    start, colon, end = cells.partition(":")
    first = _ref(start)
    if not colon:
        if first is None or first[0] is None or first[1] is None:
            return None
        return _Box(first[1], first[0], first[1], first[0], start_only=True)
    last = _ref(end)
    if first is None or last is None:
        return None
    (c1, r1), (c2, r2) = first, last
    top, left = r1 if r1 is not None else 0, c1 if c1 is not None else 0
    if r2 is not None and r2 < top:
        top, r2 = r2, top
    if c2 is not None and c2 < left:
        left, c2 = c2, left
    return _Box(top, left, r2, c2)


def _resolve(book: _Spreadsheet, text: str) -> tuple[_Tab, _Box]:
    """The tab and box an A1 range names; a range without a tab means the first tab."""
    unparsable = _ApiError(400, f"Unable to parse range: {text}", "badRequest")
    try:
        title, cells = _split_a1(text)
    except ValueError:
        raise unparsable from None
    whole = _Box(0, 0, None, None, start_only=True)
    if title is None:
        named = book.tab(text)
        if named is not None:
            return named, whole
        sheet = book.tabs[0] if book.tabs else None
    else:
        sheet = book.tab(title)
    box = whole if cells is None else _parse_cells(cells)
    if sheet is None or box is None:
        raise unparsable
    return sheet, box


def _grid_error(sheet: _Tab, cells: str) -> _ApiError:
    return _ApiError(
        400,
        f"Range ({_quote_title(sheet.title)}!{cells}) exceeds grid limits. "
        f"Max rows: {sheet.row_count}, max columns: {sheet.column_count}",
        "badRequest",
    )


def _within_grid(sheet: _Tab, box: _Box, text: str) -> tuple[int, int]:
    """The box's bottom and right, open ends at the grid's edge; 400 beyond the grid."""
    bottom = sheet.row_count - 1 if box.bottom is None else box.bottom
    right = sheet.column_count - 1 if box.right is None else box.right
    if max(box.top, bottom) >= sheet.row_count or max(box.left, right) >= sheet.column_count:
        raise _grid_error(sheet, text.rpartition("!")[2])
    return bottom, right


def _write_area(
    sheet: _Tab, box: _Box, text: str, values: list[list[Any]]
) -> tuple[int, int, int, int]:
    """Where ``values`` go: within a bounded range, from a start cell on, inside the grid."""
    bottom, right = _within_grid(sheet, box, text)
    height, width = len(values), max((len(line) for line in values), default=0)
    if not (height and width):
        return box.top, box.left, bottom, right
    within = f"Requested writing within range [{_a1(sheet, box.top, box.left, bottom, right)}]"
    if not box.start_only and height > bottom - box.top + 1:
        raise _ApiError(400, f"{within}, but tried writing to row [{bottom + 2}]", "badRequest")
    if not box.start_only and width > right - box.left + 1:
        column = _column_letters(right + 1)
        raise _ApiError(400, f"{within}, but tried writing to column [{column}]", "badRequest")
    if box.top + height > sheet.row_count:
        raise _grid_error(sheet, f"{_column_letters(box.left)}{sheet.row_count + 1}")
    if box.left + width > sheet.column_count:
        raise _grid_error(sheet, f"{_column_letters(sheet.column_count)}{box.top + 1}")
    return box.top, box.left, box.top + height - 1, box.left + width - 1


def _option(query: dict[str, list[str]], name: str, default: str) -> str:
    return query.get(name, [default])[0]


def _check_query(spec: dict[str, Any], query: dict[str, list[str]]) -> None:
    """Only the parameters the discovery method (or every method) declares, valid values."""
    known = {**_discovery("sheets.v4")["parameters"], **spec.get("parameters", {})}
    for name, values in query.items():
        param = known.get(name)
        if param is None or param.get("location") != "query":
            raise _ApiError(
                400,
                f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query '
                f"parameter. Field '{name}' could not be found in request message.",
                "invalid",
            )
        for value in values:
            if "enum" in param and value not in param["enum"]:
                kind = "type.googleapis.com/google.apps.sheets.v4." + _ENUM_TYPES.get(name, name)
            elif param.get("type") == "boolean" and value.lower() not in ("true", "false"):
                kind = "TYPE_BOOL"
            else:
                continue
            snake = re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
            raise _ApiError(400, f"Invalid value at '{snake}' ({kind}), \"{value}\"", "invalid")


def _values_in(values: list[list[Any]], major: str | None) -> list[list[Any]]:
    """A ValueRange's values, row-major; objects and lists are not cell values."""
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            if isinstance(value, dict | list):
                kind = "struct_value" if isinstance(value, dict) else "list_value"
                message = f"Invalid values[{i}][{j}]: {kind} {json.dumps(value)}"
                raise _ApiError(400, message, "badRequest")
    if major == "COLUMNS":
        width = max((len(line) for line in values), default=0)
        return [[line[k] if k < len(line) else None for line in values] for k in range(width)]
    return values


def _cell_from_json(value: Any, option: str, book: _Spreadsheet) -> Any:
    """RAW stores what came; USER_ENTERED parses text as if typed into the sheet."""
    if isinstance(value, str) and value == "":
        return None  # Google: an empty string clears the cell
    if option != "USER_ENTERED" or not isinstance(value, str):
        return value
    if value.startswith("'"):
        return value[1:] or None
    if value.startswith("=") and len(value) > 1:
        return Formula(value)
    if value.upper() in ("TRUE", "FALSE"):
        return value.upper() == "TRUE"
    plain = value.strip()
    if _NUMBER.fullmatch(plain) and any(char.isdigit() for char in plain):
        number = float(plain.replace(",", ""))
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    parsed = _parse_date(plain, book.locale)
    return value if parsed is None else parsed


def _parse_date(text: str, locale: str) -> date | None:
    """ISO 8601, or the locale's own order (``11/3/2026`` in en_US), with an optional time."""
    order, separator, _ = SHEET_LOCALES[locale]
    match = _ISO_DATE.fullmatch(text)
    if match is not None:
        year, month, day = match[1], match[2], match[3]
    else:
        sep = re.escape(separator)
        match = re.fullmatch(
            rf"(\d{{1,2}}){sep}(\d{{1,2}}){sep}(\d{{4}})(?: (\d{{1,2}}):(\d{{2}})(?::(\d{{2}}))?)?",
            text,
        )
        if match is None:
            return None
        month, day = (match[1], match[2]) if order == "mdy" else (match[2], match[1])
        year = match[3]
    hour, minute, second = match.group(4, 5, 6)
    try:
        if hour is None:
            return date(int(year), int(month), int(day))
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError:
        return None


def _format_date(value: date, locale: str) -> str:
    order, separator, padded = SHEET_LOCALES[locale]
    parts = {"d": value.day, "m": value.month, "y": value.year}
    return separator.join(
        f"{parts[key]:02}" if padded and key != "y" else str(parts[key]) for key in order
    )


def _formatted(value: Any, locale: str) -> str:
    """FORMATTED_VALUE: what the cell shows (default formats; no custom number formats)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return f"{_format_date(value, locale)} {value.hour}:{value:%M:%S}"
    if isinstance(value, date):
        return _format_date(value, locale)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.10g}"
    return str(value)


def _serial(value: date) -> int | float:
    """Days since 1899-12-30, the fraction the time of day (Lotus 1-2-3's serial numbers)."""
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=None)
    else:
        moment = datetime(value.year, value.month, value.day)
    delta = moment - _SERIAL_EPOCH
    days = delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400
    return int(days) if days.is_integer() else days


def _cell_out(value: Any, render: str, dates: str, locale: str) -> Any:
    if value is None:
        return ""
    if isinstance(value, Formula):  # never computed here: its text, or an error value
        return value.text if render == "FORMULA" else "#N/A"
    if render == "FORMATTED_VALUE" or (isinstance(value, date) and dates == "FORMATTED_STRING"):
        return _formatted(value, locale)
    if isinstance(value, date):
        return _serial(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _value_range(
    book: _Spreadsheet,
    sheet: _Tab,
    area: tuple[int, int, int, int],
    major: str,
    render: str,
    dates: str,
) -> dict[str, Any]:
    """A ValueRange as Google answers: trailing empty cells and rows left out, gaps ``""``."""
    top, left, bottom, right = area
    grid = [row[left : right + 1] for row in sheet.rows[top : bottom + 1]]
    if major == "COLUMNS":
        width = max((len(row) for row in grid), default=0)
        grid = [[row[k] if k < len(row) else None for row in grid] for k in range(width)]
    lines = [_trim(list(line)) for line in grid]
    while lines and not lines[-1]:
        lines.pop()
    answer: dict[str, Any] = {
        "range": _a1(sheet, *area),
        "majorDimension": "COLUMNS" if major == "COLUMNS" else "ROWS",
    }
    if lines:
        answer["values"] = [
            [_cell_out(value, render, dates, book.locale) for value in line] for line in lines
        ]
    return answer


def _spreadsheet_resource(book: _Spreadsheet) -> dict[str, Any]:
    return {
        "spreadsheetId": book.id,
        "properties": {
            "title": book.title,
            "locale": book.locale,
            "autoRecalc": "ON_CHANGE",
            "timeZone": book.time_zone,
        },
        "sheets": [{"properties": tab.properties(i)} for i, tab in enumerate(book.tabs)],
        "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{book.id}/edit",
    }


def _apply_request(tabs: list[_Tab], index: int, request: dict[str, Any]) -> dict[str, Any]:
    """One batchUpdate request (a oneof): addSheet and appendDimension are implemented."""
    kinds = [name for name, value in request.items() if value is not None]
    if len(kinds) != 1:
        problem = "No request set." if not kinds else f"More than one request set: {kinds}."
        raise _ApiError(400, f"Invalid requests[{index}]: {problem}", "badRequest")
    (kind,) = kinds
    where = f"Invalid requests[{index}].{kind}"
    if kind == "addSheet":
        return {"addSheet": {"properties": _add_sheet(tabs, where, request[kind])}}
    if kind == "appendDimension":
        _append_dimension(tabs, where, request[kind])
        return {}
    raise _ApiError(
        400,
        f"Invalid requests[{index}]: {kind} is not implemented by the test server.",
        "badRequest",
    )


def _add_sheet(tabs: list[_Tab], where: str, request: dict[str, Any]) -> dict[str, Any]:
    properties = request.get("properties") or {}
    title = properties.get("title")
    if title is None:
        number = len(tabs) + 1
        while any(tab.title == f"Sheet{number}" for tab in tabs):
            number += 1
        title = f"Sheet{number}"
    if any(tab.title.lower() == title.lower() for tab in tabs):  # unique regardless of case
        message = (
            f'{where}: A sheet with the name "{title}" already exists. Please enter another name.'
        )
        raise _ApiError(400, message, "badRequest")
    sheet_id = properties.get("sheetId")
    if sheet_id is None:
        sheet_id = _new_sheet_id(tabs)
    elif any(tab.sheet_id == int(sheet_id) for tab in tabs):
        raise _ApiError(400, f"{where}: Sheet with id {sheet_id} already exists.", "badRequest")
    grid = properties.get("gridProperties") or {}
    tab = _Tab(
        int(sheet_id),
        title,
        row_count=int(grid.get("rowCount", _DEFAULT_ROWS)),
        column_count=int(grid.get("columnCount", _DEFAULT_COLUMNS)),
    )
    position = properties.get("index")
    position = len(tabs) if position is None else min(max(int(position), 0), len(tabs))
    tabs.insert(position, tab)
    return tab.properties(position)


def _append_dimension(tabs: list[_Tab], where: str, request: dict[str, Any]) -> None:
    sheet_id = int(request.get("sheetId", 0))
    tab = next((tab for tab in tabs if tab.sheet_id == sheet_id), None)
    if tab is None:
        raise _ApiError(400, f"{where}: No grid with id: {sheet_id}", "badRequest")
    length = int(request.get("length", 0))
    if length <= 0:
        raise _ApiError(400, f"{where}: length must be greater than zero.", "badRequest")
    if request.get("dimension") == "ROWS":
        tab.row_count += length
    elif request.get("dimension") == "COLUMNS":
        tab.column_count += length
    else:
        raise _ApiError(400, f"{where}: dimension must be ROWS or COLUMNS.", "badRequest")


def _select_fields(answer: dict[str, Any], text: str, schema_name: str) -> dict[str, Any]:
    """A partial response (``fields=``): ``a.b,c(d,e)``, checked against the response schema."""
    tree = _parse_fields(text.replace(" ", ""))
    _check_fields(tree, {"$ref": schema_name}, _discovery("sheets.v4")["schemas"])
    return _select(answer, tree)


def _parse_fields(text: str) -> dict[str, Any]:
    tree, at = _parse_field_list(text, 0)
    if at != len(text):
        raise _ApiError(400, f"Invalid field selection {text}", "invalidParameter")
    return tree


def _parse_field_list(text: str, at: int) -> tuple[dict[str, Any], int]:
    """A selection tree: name -> None (all of it) or a tree of the names chosen inside."""
    tree: dict[str, Any] = {}
    while True:
        match = re.compile(r"[A-Za-z_*][A-Za-z0-9_]*(?:[./][A-Za-z_*][A-Za-z0-9_]*)*").match(
            text, at
        )
        if match is None:
            raise _ApiError(400, f"Invalid field selection {text}", "invalidParameter")
        names, at = re.split(r"[./]", match[0]), match.end()
        inner: dict[str, Any] | None = None
        if text.startswith("(", at):
            inner, at = _parse_field_list(text, at + 1)
            if not text.startswith(")", at):
                raise _ApiError(400, f"Invalid field selection {text}", "invalidParameter")
            at += 1
        _merge_fields(tree, names, inner)
        if not text.startswith(",", at):
            return tree, at
        at += 1


def _merge_fields(tree: dict[str, Any], names: list[str], inner: dict[str, Any] | None) -> None:
    node = tree
    for name in names[:-1]:
        if name in node and node[name] is None:
            return  # the whole of it is selected already
        node = node.setdefault(name, {})
    last = names[-1]
    if inner is None or (last in node and node[last] is None):
        node[last] = None
        return
    target = node.setdefault(last, {})
    for name, sub in inner.items():
        _merge_fields(target, [name], sub)


def _check_fields(tree: dict[str, Any], schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    while "$ref" in schema or schema.get("type") == "array":
        schema = schemas[schema["$ref"]] if "$ref" in schema else schema.get("items", {})
    properties = schema.get("properties", {})
    for name, inner in tree.items():
        if name == "*":
            continue
        if name not in properties:
            raise _ApiError(400, f"Invalid field selection {name}", "invalidParameter")
        if inner is not None:
            _check_fields(inner, properties[name], schemas)


def _select(value: Any, tree: dict[str, Any] | None) -> Any:
    if tree is None or "*" in tree:
        return value
    if isinstance(value, list):
        return [_select(item, tree) for item in value]
    if isinstance(value, dict):
        return {name: _select(value[name], inner) for name, inner in tree.items() if name in value}
    return value


def _render_raw(message: _StoredMessage) -> dict[str, Any]:
    return _render(message, {"format": ["raw"]})


def message_of(resource: dict[str, Any]) -> EmailMessage:
    """Parse a draft or message resource in raw format (as ``drafts()`` returns) to an email."""
    message = resource.get("message", resource)
    parsed = BytesParser(policy=policy.default).parsebytes(_b64decode_lenient(message["raw"]))
    assert isinstance(parsed, EmailMessage)
    return parsed


def _render(message: _StoredMessage, query: dict[str, list[str]]) -> dict[str, Any]:
    """A Gmail ``Message`` resource in the requested ``format``."""
    fmt = query.get("format", ["full"])[0].lower()
    if fmt not in ("minimal", "full", "raw", "metadata"):
        raise _ApiError(400, f"Invalid value for format: {fmt}", "invalidArgument")
    text = " ".join(message.body_text().split())
    answer: dict[str, Any] = {
        "id": message.id,
        "threadId": message.thread_id,
        "labelIds": list(message.label_ids),
        "snippet": text[:200],
        "sizeEstimate": len(message.raw),
        "historyId": str(message.internal_date_ms),
        "internalDate": str(message.internal_date_ms),
    }
    if fmt == "raw":
        answer["raw"] = _b64url(message.raw)
    elif fmt == "metadata":
        wanted = {h.lower() for h in query.get("metadataHeaders", [])}
        headers = [
            {"name": n, "value": v} for n, v in message.headers if not wanted or n.lower() in wanted
        ]
        answer["payload"] = {"mimeType": message.email.get_content_type(), "headers": headers}
    elif fmt == "full":
        answer["payload"] = _payload(message.email, "")
    return answer


def _payload(part: Message, part_id: str) -> dict[str, Any]:
    """Gmail's ``MessagePart`` rendering of a parsed message (format=full)."""
    answer: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": [{"name": n, "value": str(v)} for n, v in part.items()],
    }
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        answer["body"] = {"size": 0}
        answer["parts"] = [
            _payload(child, f"{part_id}.{i}" if part_id else str(i))
            for i, child in enumerate(children)
        ]
    else:
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        answer["body"] = {"size": len(data), **({"data": _b64url(data)} if data else {})}
    return answer


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[GoogleServer]:
    """``with running_server() as server:`` -- started on a free port, stopped afterwards."""
    server = GoogleServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
