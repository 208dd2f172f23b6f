"""Gmail drafts and Google Calendar reminders, exactly once.

Every item carries a fixed identity (a draft's Message-ID and X-Followupd-Id header, an
event's client-chosen id), so "was it already made?" always has an answer:

- a reminder is inserted with its own id; a 409 means it exists (fetched and recorded), and
  an existing event whose status is `cancelled` was deleted by the therapist: recorded as
  deleted, never made again;
- a draft on its first try is simply created; on any later try (an earlier answer was lost:
  a timeout, a 5xx, a crash before the commit) it is looked for first, by
  `rfc822msgid:` search and, since Google does not promise to keep a client's Message-ID, by
  reading the headers of recent drafts, and created only if it is not there. After a call
  that got no answer at all, the look waits for a later tick: the first request may still
  be running at Google, and a look too soon would miss what it is about to make.

Calls go out in HTTP batches of up to `google.batch_size`, paced by a token bucket per
mailbox and calendar so a backlog drains at the configured budget without 429s. Failures are
retried within the tick with backoff; then the item waits for a later tick.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from followupd.config import Settings
from followupd.delivery import Delivered, DeliveryError, Draft, Item, Outcome, Reminder
from followupd.delivery.googleapi import (
    CallError,
    CredentialsProblem,
    Transport,
    backoff,
    batch_uri,
    build_service,
    load_credentials,
    run_calls,
)
from followupd.pacing import TokenBucket

GMAIL_COST = {"drafts.create": 10, "drafts.list": 5, "drafts.get": 5, "messages.list": 5,
              "messages.get": 5}
RECENT_DRAFTS = 100  # how far back a lost draft is looked for by its headers
SYNC_BATCH = 50


# (name, units per minute, burst) -> the bucket that paces one mailbox or calendar; replicas
# on PostgreSQL share theirs through the database (store.SharedTokenBucket).
BucketFactory = Callable[[str, float, float], TokenBucket]


@dataclass
class Counters:
    """What this backend asked of Google (for `bench/` and the tests)."""

    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + n


@dataclass(frozen=True)
class DraftState:
    state: str  # "present" | "sent" | "deleted" | "gone" (sent or deleted: no read scope)
    sent_at: datetime | None = None


class GoogleBackend:
    name = "google"

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep,
                 transport: Transport | None = None, bucket: BucketFactory | None = None):
        google = settings.config.google
        self.settings = settings
        self.endpoint = google.api_endpoint
        self.batch_size = google.batch_size
        self.max_attempts = google.max_attempts
        # After a call that got no answer, wait this long before looking for what it made.
        self.settle_seconds = max(60.0, 2 * google.timeout)
        self.read_scope = google.read_scope
        self.calendar_id = settings.config.practice.calendar_id
        self.sleep = sleep
        self.token_file = None
        if transport is None:
            credentials, self.token_file = load_credentials(settings)
            transport = Transport(credentials, timeout=google.timeout)
        self.transport = transport
        gmail = build_service("gmail", "v1", transport, self.endpoint)
        calendar = build_service("calendar", "v3", transport, self.endpoint)
        # googleapiclient builds a resource's methods anew on every users()/drafts() call
        # (a fifth of the CPU a draft costs): build each resource once.
        self.drafts_api = gmail.users().drafts()
        self.messages_api = gmail.users().messages()
        self.events_api = calendar.events()
        quota = google.quota
        if bucket is None:
            def bucket(name: str, per_minute: float, burst: float) -> TokenBucket:
                return TokenBucket(per_minute, burst=burst, sleep=sleep)
        mailbox = settings.config.practice.email  # one bucket per mailbox and per calendar
        self.gmail_bucket = bucket(f"gmail:{mailbox}", quota.gmail_units_per_minute,
                                   GMAIL_COST["drafts.create"] * self.batch_size)
        self.calendar_bucket = bucket(f"calendar:{mailbox}:{self.calendar_id}",
                                      quota.calendar_requests_per_minute, self.batch_size)
        self.counters = Counters()
        # Recent drafts by header, read once a round (see _recent_drafts), and the drafts
        # this round has tried to create: a lost answer among those needs a fresh read.
        self._recent: tuple[dict[str, str], CallError | None] | None = None
        self._tried: set[int] = set()

    def begin(self) -> None:
        self._recent = None
        self._tried = set()

    def close(self) -> None:
        self.transport.close()

    # --- the Backend interface --------------------------------------------------------

    def deliver(self, items: Sequence[Item]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        try:
            outcomes.update(self._drafts([i for i in items if isinstance(i, Draft)]))
            outcomes.update(self._reminders([i for i in items if isinstance(i, Reminder)]))
        finally:
            if self.token_file is not None:
                self.token_file.save_if_refreshed()
        return [outcomes[item.follow_up_id] for item in items]

    # --- calls ------------------------------------------------------------------------

    def _gmail_calls(self, kind: str, calls: list[tuple[str, Any]]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for start in range(0, len(calls), self.batch_size):
            chunk = calls[start:start + self.batch_size]
            self.gmail_bucket.take(GMAIL_COST[kind] * len(chunk))
            self.counters.add(kind, len(chunk))
            results.update(run_calls(batch_uri("gmail", self.endpoint), self.transport, chunk,
                                     use_batch=True))
        return results

    def _calendar_calls(self, kind: str, calls: list[tuple[str, Any]]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for start in range(0, len(calls), self.batch_size):
            chunk = calls[start:start + self.batch_size]
            self.calendar_bucket.take(len(chunk))
            self.counters.add(kind, len(chunk))
            results.update(run_calls(batch_uri("calendar", self.endpoint), self.transport,
                                     chunk, use_batch=True))
        return results

    # --- drafts -----------------------------------------------------------------------

    def _drafts(self, drafts: list[Draft]) -> dict[int, Outcome]:
        """Create each draft once, retrying within the tick; look before re-creating."""
        done: dict[int, Outcome] = {}
        pending = {d.follow_up_id: d for d in drafts}
        uncertain = {d.follow_up_id for d in drafts if d.attempt > 1}
        last: dict[int, CallError] = {}
        for attempt in range(self.max_attempts):
            if not pending:
                break
            blocked: set[int] = set()  # uncertain, and the lookup failed: do not create
            lookups = [pending[i] for i in uncertain if i in pending]
            if lookups:
                found, unknown = self._find_drafts(lookups)
                for follow_up_id, draft_id in found.items():
                    done[follow_up_id] = Delivered(f"gmail:{draft_id}")
                    pending.pop(follow_up_id)
                for follow_up_id, error in unknown.items():
                    if error.systemic:
                        return self._stop(done, pending, error)
                    last[follow_up_id] = error
                    blocked.add(follow_up_id)
            creatable = [d for d in pending.values() if d.follow_up_id not in blocked]
            self._tried.update(d.follow_up_id for d in creatable)
            results = self._gmail_calls("drafts.create", [
                (str(d.follow_up_id), self.drafts_api.create(
                    userId="me", body={"message": {"raw": _raw(d)}})) for d in creatable])
            retry_after = 0.0
            for key, result in results.items():
                follow_up_id = int(key)
                if isinstance(result, CallError):
                    last[follow_up_id] = result
                    if not result.retryable:
                        done[follow_up_id] = DeliveryError(result.reason, permanent=True)
                        pending.pop(follow_up_id)
                        continue
                    if result.systemic:
                        return self._stop(done, pending, result)
                    if result.in_flight:
                        # The request may still be running at Google: a lookup now could miss
                        # a draft that appears a moment later. Look on a later tick instead.
                        done[follow_up_id] = DeliveryError(
                            f"{result.reason}; will look for the draft before trying again",
                            retry_after=self.settle_seconds)
                        pending.pop(follow_up_id)
                        continue
                    if result.maybe_acted:
                        uncertain.add(follow_up_id)
                    retry_after = max(retry_after, result.retry_after or 0.0)
                    continue
                done[follow_up_id] = Delivered(f"gmail:{result['id']}")
                pending.pop(follow_up_id)
                last.pop(follow_up_id, None)
            if pending and attempt + 1 < self.max_attempts:
                self.sleep(backoff(attempt, retry_after))
        return self._give_up(done, pending, last)

    @staticmethod
    def _give_up(done: dict[int, Outcome], pending: dict[int, Any],
                 last: dict[int, CallError]) -> dict[int, Outcome]:
        """What is still pending after the tick's tries waits for a later tick."""
        for follow_up_id in pending:
            error = last.get(follow_up_id)
            done[follow_up_id] = DeliveryError(
                error.reason if error else "not delivered",
                retry_after=error.retry_after if error else None)
        return done

    @staticmethod
    def _stop(done: dict[int, Outcome], pending: dict[int, Any],
              error: CallError) -> dict[int, Outcome]:
        for follow_up_id in pending:
            done[follow_up_id] = DeliveryError(error.reason, systemic=True)
        return done

    def _find_drafts(self, drafts: list[Draft]) -> tuple[dict[int, str], dict[int, CallError]]:
        """({follow-up id: draft id} found, {follow-up id: error} for those we cannot tell)."""
        found: dict[int, str] = {}
        unknown: dict[int, CallError] = {}
        results = self._gmail_calls("drafts.list", [
            (str(d.follow_up_id), self.drafts_api.list(
                userId="me", q=f"rfc822msgid:{d.message_id.strip('<>')}", maxResults=10))
            for d in drafts])
        missing = []
        for draft in drafts:
            result = results[str(draft.follow_up_id)]
            if isinstance(result, CallError):
                unknown[draft.follow_up_id] = _as_lookup_error(result)
            elif result.get("drafts"):
                found[draft.follow_up_id] = result["drafts"][0]["id"]
            else:
                missing.append(draft)
        if missing:
            by_header, error = self._recent_drafts(
                fresh=any(d.follow_up_id in self._tried for d in missing))
            for draft in missing:
                match = by_header.get(draft.message_id) or by_header.get(draft.tag)
                if match:
                    found[draft.follow_up_id] = match
                elif error is not None:
                    unknown[draft.follow_up_id] = _as_lookup_error(error)
        return found, unknown

    def _recent_drafts(self, fresh: bool) -> tuple[dict[str, str], CallError | None]:
        """The header index of recent drafts, read at most once a round unless `fresh`.

        A read made earlier this round holds every draft from earlier rounds; a draft this
        round tried to create may have appeared after it, so those ask for a `fresh` one.
        """
        if fresh or self._recent is None or self._recent[1] is not None:
            self._recent = self._scan_recent_drafts()
        return self._recent

    def _scan_recent_drafts(self) -> tuple[dict[str, str], CallError | None]:
        """{Message-ID or X-Followupd-Id: draft id} over the most recent drafts."""
        listing = self._gmail_calls("drafts.list", [("recent", self.drafts_api.list(
            userId="me", maxResults=RECENT_DRAFTS))])["recent"]
        if isinstance(listing, CallError):
            return {}, listing
        ids = [d["id"] for d in listing.get("drafts", [])]
        results = self._gmail_calls("drafts.get", [
            (draft_id, self.drafts_api.get(userId="me", id=draft_id,
                                                       format="metadata"))
            for draft_id in ids])
        seen: dict[str, str] = {}
        for draft_id, result in results.items():
            if isinstance(result, CallError):
                return seen, result
            for header in result.get("message", {}).get("payload", {}).get("headers", []):
                if header.get("name", "").lower() in ("message-id", "x-followupd-id"):
                    seen[header.get("value", "")] = draft_id
        return seen, None

    # --- reminders --------------------------------------------------------------------

    def _reminders(self, reminders: list[Reminder]) -> dict[int, Outcome]:
        """Insert each event under its own id; a 409 means it is there already."""
        done: dict[int, Outcome] = {}
        pending = {r.follow_up_id: r for r in reminders}
        last: dict[int, CallError] = {}
        for attempt in range(self.max_attempts):
            if not pending:
                break
            results = self._calendar_calls("events.insert", [
                (str(r.follow_up_id), self.events_api.insert(
                    calendarId=self.calendar_id, body=event_body(r), sendUpdates="none"))
                for r in pending.values()])
            conflicts = []
            retry_after = 0.0
            for key, result in results.items():
                follow_up_id = int(key)
                if isinstance(result, CallError):
                    if result.status == 409:
                        conflicts.append(pending[follow_up_id])
                        continue
                    last[follow_up_id] = result
                    if result.systemic:
                        return self._stop(done, pending, result)
                    if not result.retryable:
                        done[follow_up_id] = DeliveryError(result.reason, permanent=True)
                        pending.pop(follow_up_id)
                    retry_after = max(retry_after, result.retry_after or 0.0)
                    continue
                done[follow_up_id] = Delivered(f"calendar:{result['id']}")
                pending.pop(follow_up_id)
            if conflicts:
                existing = self._calendar_calls("events.get", [
                    (str(r.follow_up_id), self.events_api.get(
                        calendarId=self.calendar_id, eventId=r.event_id)) for r in conflicts])
                for key, result in existing.items():
                    follow_up_id = int(key)
                    if isinstance(result, CallError):
                        last[follow_up_id] = result
                        continue
                    state = "deleted" if result.get("status") == "cancelled" else "done"
                    done[follow_up_id] = Delivered(f"calendar:{result['id']}", state)
                    pending.pop(follow_up_id)
            if pending and attempt + 1 < self.max_attempts:
                self.sleep(backoff(attempt, retry_after))
        return self._give_up(done, pending, last)

    # --- sync -------------------------------------------------------------------------

    def draft_states(self, drafts: Sequence[tuple[str, str]]) -> dict[str, DraftState | None]:
        """For (draft id, Message-ID) pairs: still a draft, sent, deleted, or gone (None:
        could not tell this time)."""
        out: dict[str, DraftState | None] = {}
        results = self._gmail_calls("drafts.get", [
            (draft_id, self.drafts_api.get(userId="me", id=draft_id,
                                                       format="minimal"))
            for draft_id, _ in drafts])
        vanished = []
        for draft_id, message_id in drafts:
            result = results[draft_id]
            if isinstance(result, CallError):
                if result.status == 404:
                    vanished.append((draft_id, message_id))
                else:
                    out[draft_id] = None
            else:
                out[draft_id] = DraftState("present")
        if vanished and not self.read_scope:
            out.update({draft_id: DraftState("gone") for draft_id, _ in vanished})
        elif vanished:
            sent = self._gmail_calls("messages.list", [
                (draft_id, self.messages_api.list(
                    userId="me", q=f"in:sent rfc822msgid:{message_id.strip('<>')}",
                    maxResults=1)) for draft_id, message_id in vanished])
            found = {k: v["messages"][0]["id"] for k, v in sent.items()
                     if not isinstance(v, CallError) and v.get("messages")}
            dates = self._gmail_calls("messages.get", [
                (k, self.messages_api.get(userId="me", id=m, format="minimal"))
                for k, m in found.items()])
            for draft_id, _ in vanished:
                if isinstance(sent[draft_id], CallError):
                    out[draft_id] = None
                elif draft_id in found:
                    when = dates.get(draft_id)
                    at = None if isinstance(when, CallError) or not when else \
                        datetime.fromtimestamp(int(when["internalDate"]) / 1000, UTC)
                    out[draft_id] = DraftState("sent", at)
                else:
                    out[draft_id] = DraftState("deleted")
        if self.token_file is not None:
            self.token_file.save_if_refreshed()
        return out


def _raw(draft: Draft) -> str:
    return base64.urlsafe_b64encode(draft.as_bytes()).decode()


def _as_lookup_error(error: CallError) -> CallError:
    return CallError(f"could not check for an earlier draft: {error.reason}", error.status,
                     retryable=True, retry_after=error.retry_after, systemic=error.systemic)


def event_body(reminder: Reminder) -> dict[str, Any]:
    """The Calendar event: no patient data (reminder templates cannot reach any)."""
    return {
        "id": reminder.event_id,
        "summary": reminder.title,
        "description": reminder.description,
        "start": {"dateTime": reminder.start.isoformat(), "timeZone": reminder.timezone},
        "end": {"dateTime": reminder.end.isoformat(), "timeZone": reminder.timezone},
        "transparency": "transparent",
        "reminders": {"useDefault": False, "overrides": [
            {"method": "popup", "minutes": reminder.alarm_minutes},
            {"method": "email", "minutes": 24 * 60},
        ]},
        "extendedProperties": {"private": {"followupd": reminder.uid}},
    }


def check_credentials(settings: Settings) -> str:
    """One line on the Google credentials, refreshing in memory only (nothing is written)."""
    from google.auth.exceptions import RefreshError, TransportError
    from google.auth.transport.requests import Request

    from followupd.delivery.googleapi import REAUTH

    credentials, token = load_credentials(settings)
    what = f"token file {token.path}" if token else \
        f"service account for {settings.config.google.subject}"
    try:  # a refresh proves the grant is still good; the new token is not saved
        credentials.refresh(Request())
    except RefreshError:
        raise CredentialsProblem(f"{what}: {REAUTH}") from None
    except TransportError:
        return f"{what} loaded; Google could not be reached to confirm the grant"
    return f"{what}: the grant is valid"
