"""Gmail drafts and Google Calendar reminders, exactly once: the `google` backend.

This module wires the two adapters to one set of credentials and one transport that never
re-sends (googleapi): Gmail drafts (gmail, finding them again in gmail_lookup) and Calendar
events (calendar), both retried within a tick by the same loop (retry). Calls go out in HTTP
batches of up to `google.batch_size`, paced by a token bucket per mailbox and per calendar so
a backlog drains at the configured budget without 429s; what is still failing after
`google.max_attempts` attempts waits for a later tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from followupd.config import Settings
from followupd.delivery import (
    DeliveryError,
    Draft,
    DraftRef,
    DraftState,
    Item,
    Outcome,
    Reminder,
    Withdrawal,
)
from followupd.delivery.calendar import CALENDAR_COST, CalendarReminders, event_body
from followupd.delivery.gmail import GMAIL_COST, GmailDrafts
from followupd.delivery.gmail_lookup import GmailApi
from followupd.delivery.googleapi import (
    CLASSIFIED,
    REAUTH,
    Calls,
    Counters,
    CredentialsProblem,
    PacedCalls,
    Transport,
    batch_uri,
    build_service,
    classify,
    load_credentials,
    unreachable,
)
from followupd.delivery.retry import Attempts
from followupd.pacing import TokenBucket

__all__ = [
    "GMAIL_COST",
    "BucketFactory",
    "Counters",
    "GoogleBackend",
    "check_credentials",
    "event_body",
]

# (name, units per minute, burst) -> the bucket that paces one mailbox or calendar; replicas
# on PostgreSQL share theirs through the database (store.SharedTokenBucket).
BucketFactory = Callable[[str, float, float], TokenBucket]


class GoogleBackend:
    """The Backend protocol over Gmail and Calendar; saves a refreshed token after each use."""

    name = "google"

    def __init__(
        self,
        settings: Settings,
        sleep: Callable[[float], None] = time.sleep,
        transport: Transport | None = None,
        bucket: BucketFactory | None = None,
    ):
        google = settings.config.google
        self.settings = settings
        self.read_scope = google.read_scope
        self.token_file = None
        if transport is None:
            credentials, self.token_file = load_credentials(settings)
            transport = Transport(credentials, timeout=google.timeout)
        self.transport = transport
        if bucket is None:

            def bucket(name: str, per_minute: float, burst: float) -> TokenBucket:
                return TokenBucket(per_minute, burst=burst, sleep=sleep)

        mailbox = settings.config.practice.email  # one bucket per mailbox and per calendar
        calendar_id = settings.config.practice.calendar_id
        self.gmail_bucket = bucket(
            f"gmail:{mailbox}",
            google.quota.gmail_units_per_minute,
            GMAIL_COST["drafts.create"] * google.batch_size,
        )
        self.calendar_bucket = bucket(
            f"calendar:{mailbox}:{calendar_id}",
            google.quota.calendar_requests_per_minute,
            google.batch_size,
        )
        self.counters = Counters()

        def paced(api: str, bucket: TokenBucket, costs: dict[str, int]) -> Calls:
            uri = batch_uri(api, google.api_endpoint)
            return PacedCalls(uri, transport, google.batch_size, bucket, costs, self.counters).run

        gmail = build_service("gmail", "v1", transport, google.api_endpoint)
        users = gmail.users()
        self.gmail_api = GmailApi(
            users.drafts(),
            users.messages(),
            users.threads(),
            paced("gmail", self.gmail_bucket, GMAIL_COST),
        )
        self.drafts_api = self.gmail_api.drafts
        attempts = Attempts(google.max_attempts, sleep)
        # After a call that got no answer, wait this long before looking for what it made.
        settle = max(60.0, 2 * google.timeout)
        self.gmail = GmailDrafts(
            self.gmail_api, attempts, read_scope=google.read_scope, settle_seconds=settle
        )
        calendar = build_service("calendar", "v3", transport, google.api_endpoint)
        self.calendar = CalendarReminders(
            paced("calendar", self.calendar_bucket, CALENDAR_COST),
            calendar.events(),
            calendar_id,
            attempts,
        )

    @property
    def _gmail_calls(self) -> Calls:
        """Every Gmail call goes through this; a test may replace it to step in before one."""
        return self.gmail_api.calls

    @_gmail_calls.setter
    def _gmail_calls(self, calls: Calls) -> None:
        self.gmail_api.calls = calls

    # --- the Backend interface ----------------------------------------------------------

    def begin(self) -> None:
        self.gmail.begin()

    def deliver(self, items: Sequence[Item]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        try:
            outcomes.update(self.gmail.create([i for i in items if isinstance(i, Draft)]))
            outcomes.update(self.calendar.insert([i for i in items if isinstance(i, Reminder)]))
        except CLASSIFIED as exc:  # escaped a call's own handling: only "unreachable" waits
            error = _unreached(exc)
            return [outcomes.get(item.follow_up_id, error) for item in items]
        finally:
            self._save_token()
        return [outcomes[item.follow_up_id] for item in items]

    def draft_states(self, refs: Sequence[DraftRef]) -> dict[int, DraftState | None]:
        try:
            return self.gmail.draft_states(refs)
        finally:
            self._save_token()

    def withdraw(self, refs: Sequence[DraftRef]) -> list[Withdrawal]:
        try:
            return self.gmail.withdraw(refs)
        except CLASSIFIED as exc:  # escaped a call's own handling: only "unreachable" waits
            return [_unreached(exc)] * len(refs)
        finally:
            self._save_token()

    def close(self) -> None:
        self.transport.close()

    def _save_token(self) -> None:
        if self.token_file is not None:
            self.token_file.save_if_refreshed()


def _unreached(exc: BaseException) -> DeliveryError:
    """Google could not be reached: a transient stop for this mailbox; anything else is a
    bug and goes up."""
    if unreachable(exc) is None:
        raise exc
    return DeliveryError(classify(exc).reason, systemic=True)


def check_credentials(settings: Settings) -> str:
    """One line on the Google credentials, refreshing in memory only (nothing is written)."""
    from google.auth.exceptions import RefreshError, TransportError
    from google.auth.transport.requests import Request

    credentials, token = load_credentials(settings)
    what = (
        f"token file {token.path}"
        if token
        else f"service account for {settings.config.google.subject}"
    )
    try:  # a refresh proves the grant is still good; the new token is not saved
        credentials.refresh(Request())
    except RefreshError:
        raise CredentialsProblem(f"{what}: {REAUTH}") from None
    except TransportError:
        return f"{what} loaded; Google could not be reached to confirm the grant"
    return f"{what}: the grant is valid"
