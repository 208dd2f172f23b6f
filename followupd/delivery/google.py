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

A delivered draft is found again (to tell what became of it, `draft_states`, or to take it
back, `withdraw`) by every signal Gmail leaves, because a therapist's edit may change any one
of them: the recorded draft id; then among current drafts its Message-ID (search), the
Message-ID or X-Followupd-Id header of a recent draft (Gmail's search index lags behind new
drafts, and a rewritten Message-ID keeps the tag), or a draft that starts its thread (not a
reply); and, with the read scope, among sent mail a message in its thread, or carrying its
Message-ID (search) or either header (recent sent messages). A positive finding settles it;
"deleted" is concluded only when every one of those looks answered.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from followupd.config import Settings
from followupd.delivery import (
    Delivered,
    DeliveryError,
    Draft,
    DraftRef,
    DraftState,
    Item,
    Outcome,
    Reminder,
    Withdrawn,
)
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

GMAIL_COST = {
    "drafts.create": 10,
    "drafts.list": 5,
    "drafts.get": 5,
    "drafts.delete": 10,
    "messages.list": 5,
    "messages.get": 5,
    "threads.get": 10,
}
RECENT_DRAFTS = 100  # how far back a lost draft is looked for by its headers
RECENT_SENT = 100  # how far back a sent draft is looked for by its headers
IDENTITY = ["Message-ID", "X-Followupd-Id"]
REPLY = ["In-Reply-To", "References"]  # a draft with these is a reply, never one of ours


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
class _Found:
    """A draft found among the current drafts."""

    draft_id: str
    thread_id: str | None = None


@dataclass(frozen=True)
class _Sent:
    """A sent message that was the draft."""

    sent_at: datetime | None
    thread_id: str | None = None


@dataclass(frozen=True)
class _DraftScan:
    """The most recent drafts, indexed by what identifies ours."""

    by_header: dict[str, _Found]  # Message-ID or X-Followupd-Id -> draft
    by_thread: dict[str, _Found]  # thread id -> the newest draft in it that is not a reply
    error: CallError | None = None  # some could not be read: a miss proves nothing


@dataclass(frozen=True)
class _SentScan:
    by_header: dict[str, _Sent]  # Message-ID or X-Followupd-Id -> sent message
    error: CallError | None = None


# What became of a draft: found among drafts, sent, not found anywhere (None), or unknown.
Resolution = _Found | _Sent | CallError | None
# A look: (refs still to find, found so far, errors so far, dead draft ids) -> None.
Step = Callable[[list[DraftRef], dict[int, Any], dict[int, CallError], Collection[str]], None]


class GoogleBackend:
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
        self.threads_api = gmail.users().threads()
        self.events_api = calendar.events()
        quota = google.quota
        if bucket is None:

            def bucket(name: str, per_minute: float, burst: float) -> TokenBucket:
                return TokenBucket(per_minute, burst=burst, sleep=sleep)

        mailbox = settings.config.practice.email  # one bucket per mailbox and per calendar
        self.gmail_bucket = bucket(
            f"gmail:{mailbox}",
            quota.gmail_units_per_minute,
            GMAIL_COST["drafts.create"] * self.batch_size,
        )
        self.calendar_bucket = bucket(
            f"calendar:{mailbox}:{self.calendar_id}",
            quota.calendar_requests_per_minute,
            self.batch_size,
        )
        self.counters = Counters()
        # Recent drafts by header, read once a round (see _recent_drafts), and the drafts
        # this round has tried to create: a lost answer among those needs a fresh read.
        self._recent: _DraftScan | None = None
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
            chunk = calls[start : start + self.batch_size]
            self.gmail_bucket.take(GMAIL_COST[kind] * len(chunk))
            self.counters.add(kind, len(chunk))
            results.update(
                run_calls(batch_uri("gmail", self.endpoint), self.transport, chunk, use_batch=True)
            )
        return results

    def _calendar_calls(self, kind: str, calls: list[tuple[str, Any]]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for start in range(0, len(calls), self.batch_size):
            chunk = calls[start : start + self.batch_size]
            self.calendar_bucket.take(len(chunk))
            self.counters.add(kind, len(chunk))
            results.update(
                run_calls(
                    batch_uri("calendar", self.endpoint), self.transport, chunk, use_batch=True
                )
            )
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
                for follow_up_id, draft in found.items():
                    done[follow_up_id] = Delivered(
                        f"gmail:{draft.draft_id}", thread_id=draft.thread_id
                    )
                    pending.pop(follow_up_id)
                for follow_up_id, error in unknown.items():
                    if error.systemic:
                        return self._stop(done, pending, error)
                    last[follow_up_id] = error
                    blocked.add(follow_up_id)
            creatable = [d for d in pending.values() if d.follow_up_id not in blocked]
            self._tried.update(d.follow_up_id for d in creatable)
            results = self._gmail_calls(
                "drafts.create",
                [
                    (
                        str(d.follow_up_id),
                        self.drafts_api.create(userId="me", body={"message": {"raw": _raw(d)}}),
                    )
                    for d in creatable
                ],
            )
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
                            retry_after=self.settle_seconds,
                        )
                        pending.pop(follow_up_id)
                        continue
                    if result.maybe_acted:
                        uncertain.add(follow_up_id)
                    retry_after = max(retry_after, result.retry_after or 0.0)
                    continue
                done[follow_up_id] = Delivered(
                    f"gmail:{result['id']}", thread_id=(result.get("message") or {}).get("threadId")
                )
                pending.pop(follow_up_id)
                last.pop(follow_up_id, None)
            if pending and attempt + 1 < self.max_attempts:
                self.sleep(backoff(attempt, retry_after))
        return self._give_up(done, pending, last)

    @staticmethod
    def _give_up(
        done: dict[int, Outcome], pending: dict[int, Any], last: dict[int, CallError]
    ) -> dict[int, Outcome]:
        """What is still pending after the tick's tries waits for a later tick."""
        for follow_up_id in pending:
            error = last.get(follow_up_id)
            done[follow_up_id] = DeliveryError(
                error.reason if error else "not delivered",
                retry_after=error.retry_after if error else None,
            )
        return done

    @staticmethod
    def _stop(
        done: dict[int, Outcome], pending: dict[int, Any], error: CallError
    ) -> dict[int, Outcome]:
        for follow_up_id in pending:
            done[follow_up_id] = DeliveryError(error.reason, systemic=True)
        return done

    def _find_drafts(self, drafts: list[Draft]) -> tuple[dict[int, _Found], dict[int, CallError]]:
        """({follow-up id: draft} found, {follow-up id: error} for those we cannot tell)."""
        found: dict[int, _Found] = {}
        unknown: dict[int, CallError] = {}
        for follow_up_id, result in self._search_drafts(drafts, fresh_for=self._tried).items():
            if isinstance(result, _Found):
                found[follow_up_id] = result
            elif isinstance(result, CallError):
                unknown[follow_up_id] = _as_lookup_error(result)
        return found, unknown

    def _search_drafts(
        self,
        items: Sequence[Draft | DraftRef],
        *,
        fresh_for: Collection[int] | None = None,
        dead: Collection[str] = (),
    ) -> dict[int, _Found | CallError | None]:
        """Look for drafts by Message-ID search, then (always, when the search finds nothing:
        the index lags behind new drafts) by the headers of recent drafts and by thread.

        The recent drafts are read afresh when one of those still missing is in `fresh_for`
        (None: always). Draft ids in `dead` are known to be gone and never match.
        """
        found: dict[int, _Found] = {}
        errors: dict[int, CallError] = {}
        self._draft_search(list(items), found, errors, dead)
        missing = [i for i in items if i.follow_up_id not in found]
        if missing:
            self._draft_headers(missing, found, errors, dead, fresh_for=fresh_for)
        return {
            i.follow_up_id: found.get(i.follow_up_id) or errors.get(i.follow_up_id) for i in items
        }

    def _draft_search(
        self, items: Sequence[Draft | DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Gmail search for each one's Message-ID among the drafts."""
        results = self._gmail_calls(
            "drafts.list",
            [
                (
                    str(i.follow_up_id),
                    self.drafts_api.list(
                        userId="me", q=f"rfc822msgid:{i.message_id.strip('<>')}", maxResults=10
                    ),
                )
                for i in items
            ],
        )
        for item in items:
            result = results[str(item.follow_up_id)]
            if isinstance(result, CallError):
                errors.setdefault(item.follow_up_id, result)
                continue
            hits = [d for d in result.get("drafts", []) if d.get("id") not in dead]
            if hits:
                found[item.follow_up_id] = _Found(
                    hits[0]["id"], (hits[0].get("message") or {}).get("threadId")
                )

    def _draft_headers(
        self,
        items: Sequence[Draft | DraftRef],
        found: dict,
        errors: dict,
        dead: Collection[str],
        fresh_for: Collection[int] | None = None,
    ) -> None:
        """Among the recent drafts: one carrying its Message-ID or X-Followupd-Id, else one
        that starts its thread (a therapist's edit may have dropped both headers)."""
        scan = self._recent_drafts(
            fresh=fresh_for is None or any(i.follow_up_id in fresh_for for i in items)
        )
        for item in items:
            match = scan.by_header.get(item.message_id)
            if match is None and item.tag:
                match = scan.by_header.get(item.tag)
            thread_id = getattr(item, "thread_id", None)
            if (match is None or match.draft_id in dead) and thread_id:
                match = scan.by_thread.get(thread_id)
            if match is not None and match.draft_id not in dead:
                found[item.follow_up_id] = match
            elif scan.error is not None:
                errors.setdefault(item.follow_up_id, scan.error)

    def _recent_drafts(self, fresh: bool) -> _DraftScan:
        """The header index of recent drafts, read at most once a round unless `fresh`.

        A read made earlier this round holds every draft from earlier rounds; a draft this
        round tried to create may have appeared after it, so those ask for a `fresh` one.
        """
        if fresh or self._recent is None or self._recent.error is not None:
            self._recent = self._scan_recent_drafts()
        return self._recent

    def _scan_recent_drafts(self) -> _DraftScan:
        """The most recent drafts by Message-ID, X-Followupd-Id and thread."""
        listing = self._gmail_calls(
            "drafts.list", [("recent", self.drafts_api.list(userId="me", maxResults=RECENT_DRAFTS))]
        )["recent"]
        if isinstance(listing, CallError):
            return _DraftScan({}, {}, listing)
        listed = listing.get("drafts", [])  # newest first
        results = self._gmail_calls(
            "drafts.get",
            [
                (entry["id"], self.drafts_api.get(userId="me", id=entry["id"], format="metadata"))
                for entry in listed
            ],
        )  # (drafts.get takes no metadataHeaders: all of them come)
        by_header: dict[str, _Found] = {}
        by_thread: dict[str, _Found] = {}
        error = None
        for entry in listed:
            result = results.get(entry["id"])
            if isinstance(result, CallError):
                if result.status != 404:  # 404: deleted since it was listed
                    error = error or result
                continue
            message = (result or {}).get("message") or {}
            thread_id = message.get("threadId") or (entry.get("message") or {}).get("threadId")
            draft = _Found(entry["id"], thread_id)
            headers = _headers(message)
            for name in IDENTITY:
                if headers.get(name.lower()):
                    by_header.setdefault(headers[name.lower()], draft)
            if thread_id and not any(headers.get(name.lower()) for name in REPLY):
                by_thread.setdefault(thread_id, draft)
        return _DraftScan(by_header, by_thread, error)

    # --- reminders --------------------------------------------------------------------

    def _reminders(self, reminders: list[Reminder]) -> dict[int, Outcome]:
        """Insert each event under its own id; a 409 means it is there already."""
        done: dict[int, Outcome] = {}
        pending = {r.follow_up_id: r for r in reminders}
        last: dict[int, CallError] = {}
        for attempt in range(self.max_attempts):
            if not pending:
                break
            results = self._calendar_calls(
                "events.insert",
                [
                    (
                        str(r.follow_up_id),
                        self.events_api.insert(
                            calendarId=self.calendar_id, body=event_body(r), sendUpdates="none"
                        ),
                    )
                    for r in pending.values()
                ],
            )
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
                existing = self._calendar_calls(
                    "events.get",
                    [
                        (
                            str(r.follow_up_id),
                            self.events_api.get(calendarId=self.calendar_id, eventId=r.event_id),
                        )
                        for r in conflicts
                    ],
                )
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

    # --- finding delivered drafts again: sync and withdraw ----------------------------

    def draft_states(self, refs: Sequence[DraftRef]) -> dict[int, DraftState | None]:
        """What became of these drafts, by follow-up id (None: could not tell this time).

        "present" (`draft_id` set when it was saved anew under another id; `thread_id`
        whenever known), "sent" (with the sent message's time), "deleted" (read scope: not
        a draft, not sent), or "gone" (no read scope: not a draft; sent or deleted unknown).
        """
        try:
            resolved = self._resolve(refs)
        finally:
            self._save_token()
        out: dict[int, DraftState | None] = {}
        for ref in refs:
            result = resolved[ref.follow_up_id]
            if isinstance(result, _Found):
                out[ref.follow_up_id] = DraftState(
                    "present",
                    draft_id=result.draft_id if result.draft_id != ref.draft_id else None,
                    thread_id=result.thread_id or ref.thread_id,
                )
            elif isinstance(result, _Sent):
                out[ref.follow_up_id] = DraftState(
                    "sent", result.sent_at, thread_id=result.thread_id or ref.thread_id
                )
            elif isinstance(result, CallError):
                out[ref.follow_up_id] = None
            else:
                out[ref.follow_up_id] = DraftState(
                    "deleted" if self.read_scope else "gone", thread_id=ref.thread_id
                )
        return out

    def withdraw(self, refs: Sequence[DraftRef]) -> list[Withdrawn | DeliveryError]:
        """Delete each draft still among the drafts, found as `draft_states` finds it.

        A delete is sent at most once per call: one whose answer was lost (a 5xx, no answer)
        is a retryable error, and the next call (attempt > 1, or any) looks again first. A
        404 on the delete means it left the drafts meanwhile: looked for once more (it may
        have been saved anew), then judged as one not found: "sent" if a sent message is
        it, else "withdrawn" (read scope) or "gone" (no read scope: it may have been sent).
        """
        outcomes: dict[int, Withdrawn | DeliveryError] = {}
        pending = list(refs)
        dead: set[str] = set()  # draft ids whose delete answered 404
        try:
            for look_in_drafts in (True, True, False):
                if not pending:
                    break
                resolved = self._resolve(pending, dead, look_in_drafts=look_in_drafts)
                stop = next(
                    (r for r in resolved.values() if isinstance(r, CallError) and r.systemic), None
                )
                if stop is not None:
                    for ref in refs:
                        outcomes.setdefault(
                            ref.follow_up_id, DeliveryError(stop.reason, systemic=True)
                        )
                    break
                deletes: list[tuple[DraftRef, str]] = []
                for ref in pending:
                    result = resolved[ref.follow_up_id]
                    if isinstance(result, _Found):
                        deletes.append((ref, result.draft_id))
                    elif isinstance(result, CallError):
                        error = _as_lookup_error(result)
                        outcomes[ref.follow_up_id] = DeliveryError(
                            error.reason, retry_after=error.retry_after
                        )
                    else:
                        outcomes[ref.follow_up_id] = self._not_a_draft(result)
                pending = self._delete(deletes, outcomes, dead)
        finally:
            self._save_token()
        return [outcomes[ref.follow_up_id] for ref in refs]

    def _delete(
        self,
        deletes: list[tuple[DraftRef, str]],
        outcomes: dict[int, Withdrawn | DeliveryError],
        dead: set[str],
    ) -> list[DraftRef]:
        """Send each delete once; the refs whose draft had already gone (404) are returned."""
        results = self._gmail_calls(
            "drafts.delete",
            [
                (str(ref.follow_up_id), self.drafts_api.delete(userId="me", id=draft_id))
                for ref, draft_id in deletes
            ],
        )
        gone = []
        for ref, draft_id in deletes:
            result = results[str(ref.follow_up_id)]
            if not isinstance(result, CallError):
                outcomes[ref.follow_up_id] = Withdrawn("withdrawn")
            elif result.status == 404:
                dead.add(draft_id)
                gone.append(ref)
            elif result.systemic:
                outcomes[ref.follow_up_id] = DeliveryError(result.reason, systemic=True)
            elif result.maybe_acted:
                outcomes[ref.follow_up_id] = DeliveryError(
                    f"{result.reason}; will look for the draft before deleting again",
                    retry_after=self.settle_seconds if result.in_flight else result.retry_after,
                    maybe_done=True,
                )
            elif result.retryable:
                outcomes[ref.follow_up_id] = DeliveryError(
                    result.reason, retry_after=result.retry_after
                )
            else:
                outcomes[ref.follow_up_id] = DeliveryError(result.reason, permanent=True)
        return gone

    def _not_a_draft(self, result: _Sent | None) -> Withdrawn:
        if isinstance(result, _Sent):
            return Withdrawn("sent", result.sent_at)
        return Withdrawn("withdrawn" if self.read_scope else "gone")

    def _resolve(
        self, refs: Sequence[DraftRef], dead: Collection[str] = (), look_in_drafts: bool = True
    ) -> dict[int, Resolution]:
        """Where each draft is now: found among drafts, sent, nowhere (None), or unknown.

        The cheap looks come first and the two reads of recent mail (a hundred calls each)
        last, so a draft found or sent the usual way costs a few calls. A positive finding
        settles a draft; nowhere is concluded only when every look answered. A draft whose
        recorded id could not be asked (a 5xx, no answer) is unknown this time.
        """
        found: dict[int, _Found | _Sent] = {}
        errors: dict[int, CallError] = {}
        unknown: dict[int, CallError] = {}  # could not be asked: settled as unknown
        steps: list[Step] = []
        if look_in_drafts:
            unknown = self._by_draft_id(refs, found, errors, dead)
            errors.update(unknown)
            steps.append(self._draft_search)
        if self.read_scope:
            steps += [self._sent_in_thread, self._sent_search]
        if look_in_drafts:
            steps.append(self._draft_headers)
        if self.read_scope:
            steps.append(self._sent_headers)
        for step in steps:
            pending = [
                r for r in refs if r.follow_up_id not in found and r.follow_up_id not in unknown
            ]
            if not pending or any(e.systemic for e in errors.values()):
                break
            step(pending, found, errors, dead)
        stop = next((e for e in errors.values() if e.systemic), None)
        if stop is not None:  # every call would fail the same way: none was concluded
            for ref in refs:
                if ref.follow_up_id not in found:
                    errors[ref.follow_up_id] = stop
        return {
            r.follow_up_id: found.get(r.follow_up_id) or errors.get(r.follow_up_id) for r in refs
        }

    def _by_draft_id(
        self, refs: Sequence[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> dict[int, CallError]:
        """The recorded draft id: present, or not there (404: look elsewhere); returns the
        drafts that could not be asked (a 5xx, a 429, no answer), unknown this time."""
        unknown: dict[int, CallError] = {}
        asked = [(r, r.draft_id) for r in refs if r.draft_id and r.draft_id not in dead]
        results = self._gmail_calls(
            "drafts.get",
            [
                (
                    str(r.follow_up_id),
                    self.drafts_api.get(userId="me", id=draft_id, format="minimal"),
                )
                for r, draft_id in asked
            ],
        )
        for ref, draft_id in asked:
            result = results[str(ref.follow_up_id)]
            if not isinstance(result, CallError):
                found[ref.follow_up_id] = _Found(
                    draft_id, (result.get("message") or {}).get("threadId")
                )
            elif result.retryable:
                unknown[ref.follow_up_id] = result
            elif result.status != 404:  # refused (a 400: a malformed id): look elsewhere,
                errors[ref.follow_up_id] = result  # but conclude nothing from misses
        return unknown

    def _sent_in_thread(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """A sent message in its thread is this draft, sent: nothing else joins the thread of
        a draft nobody has seen (a reply the therapist began later comes after it)."""
        asked = [r for r in refs if r.thread_id]
        results = self._gmail_calls(
            "threads.get",
            [
                (
                    str(r.follow_up_id),
                    self.threads_api.get(
                        userId="me", id=r.thread_id, format="metadata", metadataHeaders=IDENTITY
                    ),
                )
                for r in asked
            ],
        )
        for ref in asked:
            result = results[str(ref.follow_up_id)]
            if isinstance(result, CallError):
                if result.status != 404:  # 404: the whole thread is gone
                    errors.setdefault(ref.follow_up_id, result)
                continue
            sent = [m for m in result.get("messages", []) if "SENT" in m.get("labelIds", [])]
            if not sent:
                continue
            ours = [m for m in sent if _carries(m, ref)]
            first = ours[0] if ours else min(sent, key=lambda m: int(m.get("internalDate", 0)))
            found[ref.follow_up_id] = _Sent(_sent_at(first), result.get("id") or ref.thread_id)

    def _sent_search(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Gmail search for its Message-ID among sent mail (trash included: still sent)."""
        results = self._gmail_calls(
            "messages.list",
            [
                (
                    str(r.follow_up_id),
                    self.messages_api.list(
                        userId="me",
                        q=f"in:sent rfc822msgid:{r.message_id.strip('<>')}",
                        maxResults=1,
                        includeSpamTrash=True,
                    ),
                )
                for r in refs
            ],
        )
        hits: dict[int, dict] = {}
        for ref in refs:
            result = results[str(ref.follow_up_id)]
            if isinstance(result, CallError):
                errors.setdefault(ref.follow_up_id, result)
            elif result.get("messages"):
                hits[ref.follow_up_id] = result["messages"][0]
        dates = self._gmail_calls(
            "messages.get",
            [
                (str(k), self.messages_api.get(userId="me", id=m["id"], format="minimal"))
                for k, m in hits.items()
            ],
        )
        for follow_up_id, message in hits.items():
            answer = dates.get(str(follow_up_id))
            found[follow_up_id] = _Sent(
                None if isinstance(answer, CallError) or not answer else _sent_at(answer),
                message.get("threadId"),
            )

    def _sent_headers(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Among recent sent messages, one carrying its Message-ID or X-Followupd-Id: the
        search index lags behind a message just sent."""
        scan = self._scan_recent_sent()
        for ref in refs:
            match = scan.by_header.get(ref.message_id)
            if match is None and ref.tag:
                match = scan.by_header.get(ref.tag)
            if match is not None:
                found[ref.follow_up_id] = match
            elif scan.error is not None:
                errors.setdefault(ref.follow_up_id, scan.error)

    def _scan_recent_sent(self) -> _SentScan:
        listing = self._gmail_calls(
            "messages.list",
            [
                (
                    "recent",
                    self.messages_api.list(
                        userId="me",
                        labelIds=["SENT"],
                        maxResults=RECENT_SENT,
                        includeSpamTrash=True,
                    ),
                )
            ],
        )["recent"]
        if isinstance(listing, CallError):
            return _SentScan({}, listing)
        listed = listing.get("messages", [])
        results = self._gmail_calls(
            "messages.get",
            [
                (
                    entry["id"],
                    self.messages_api.get(
                        userId="me", id=entry["id"], format="metadata", metadataHeaders=IDENTITY
                    ),
                )
                for entry in listed
            ],
        )
        by_header: dict[str, _Sent] = {}
        error = None
        for entry in listed:
            result = results.get(entry["id"])
            if isinstance(result, CallError):
                if result.status != 404:
                    error = error or result
                continue
            sent = _Sent(_sent_at(result or {}), (result or {}).get("threadId"))
            headers = _headers(result or {})
            for name in IDENTITY:
                if headers.get(name.lower()):
                    by_header.setdefault(headers[name.lower()], sent)
        return _SentScan(by_header, error)

    def _save_token(self) -> None:
        if self.token_file is not None:
            self.token_file.save_if_refreshed()


def _headers(message: dict[str, Any]) -> dict[str, str]:
    """{lower-case name: value} of a message in metadata format."""
    return {
        h.get("name", "").lower(): h.get("value", "")
        for h in (message.get("payload") or {}).get("headers", [])
    }


def _carries(message: dict[str, Any], ref: DraftRef) -> bool:
    headers = _headers(message)
    return headers.get("message-id") == ref.message_id or (
        bool(ref.tag) and headers.get("x-followupd-id") == ref.tag
    )


def _sent_at(message: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(message["internalDate"]) / 1000, UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _raw(draft: Draft) -> str:
    return base64.urlsafe_b64encode(draft.as_bytes()).decode()


def _as_lookup_error(error: CallError) -> CallError:
    return CallError(
        f"could not check for an earlier draft: {error.reason}",
        error.status,
        retryable=True,
        retry_after=error.retry_after,
        systemic=error.systemic,
    )


def event_body(reminder: Reminder) -> dict[str, Any]:
    """The Calendar event: no patient data (reminder templates cannot reach any)."""
    return {
        "id": reminder.event_id,
        "summary": reminder.title,
        "description": reminder.description,
        "start": {"dateTime": reminder.start.isoformat(), "timeZone": reminder.timezone},
        "end": {"dateTime": reminder.end.isoformat(), "timeZone": reminder.timezone},
        "transparency": "transparent",
        "reminders": {
            "useDefault": False,
            "overrides": [
                {"method": "popup", "minutes": reminder.alarm_minutes},
                {"method": "email", "minutes": 24 * 60},
            ],
        },
        "extendedProperties": {"private": {"followupd": reminder.uid}},
    }


def check_credentials(settings: Settings) -> str:
    """One line on the Google credentials, refreshing in memory only (nothing is written)."""
    from google.auth.exceptions import RefreshError, TransportError
    from google.auth.transport.requests import Request

    from followupd.delivery.googleapi import REAUTH

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
