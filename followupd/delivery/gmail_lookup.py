"""The ways to look for a draft in Gmail, each one a batch of calls, by every signal Gmail leaves.

A therapist's edit may change any one of a draft's signals, so there are several looks: the
recorded draft id; among current drafts its Message-ID (search), the Message-ID or
X-Followupd-Id header of a recent draft (Gmail's search index lags behind new drafts, and a
rewritten Message-ID keeps the tag), or a draft that starts its thread (not a reply); and,
with the read scope, among sent mail a message in its thread, or carrying its Message-ID
(search) or either header (recent sent messages). Each look files what it finds in `found`
and why it could not tell in `errors`; which looks run, in what order, and what a miss
proves is the adapter's decision (gmail).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from followupd.delivery import Draft, DraftRef
from followupd.delivery.googleapi import CallError, Calls, per_item

RECENT_DRAFTS = 100  # how far back a lost draft is looked for by its headers
RECENT_SENT = 100  # how far back a sent draft is looked for by its headers
IDENTITY = ["Message-ID", "X-Followupd-Id"]
REPLY = ["In-Reply-To", "References"]  # a draft with these is a reply, never one of ours

V = TypeVar("V")


@dataclass
class GmailApi:
    """The Gmail resources and the paced calls they go through.

    googleapiclient builds a resource's methods anew on every users()/drafts() call (a fifth
    of the CPU a draft costs), so each resource is built once. `calls` is shared by every
    Gmail adapter, so whoever replaces it (a test stepping in before a call) sees them all.
    """

    drafts: Any
    messages: Any
    threads: Any
    calls: Calls


@dataclass(frozen=True)
class Found:
    """A draft found among the current drafts."""

    draft_id: str
    thread_id: str | None = None


@dataclass(frozen=True)
class Sent:
    """A sent message that was the draft."""

    sent_at: datetime | None
    thread_id: str | None = None


@dataclass(frozen=True)
class _DraftScan:
    """The most recent drafts, indexed by what identifies ours."""

    by_header: dict[str, Found]  # Message-ID or X-Followupd-Id -> draft
    by_thread: dict[str, Found]  # thread id -> the newest draft in it that is not a reply
    error: CallError | None = None  # some could not be read: a miss proves nothing


@dataclass(frozen=True)
class _SentScan:
    by_header: dict[str, Sent]  # Message-ID or X-Followupd-Id -> sent message
    error: CallError | None = None


Sought = Draft | DraftRef  # a draft to find: one being created, or one delivered


class DraftLookup:
    """The looks; the recent drafts are read at most once a round."""

    def __init__(self, api: GmailApi):
        self.api = api
        self._recent: _DraftScan | None = None

    def forget(self) -> None:
        """A new round: the recent drafts may have changed since they were read."""
        self._recent = None

    # --- among the drafts ----------------------------------------------------------------

    def by_draft_id(
        self, refs: Sequence[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> dict[int, CallError]:
        """The recorded draft id: present, or not there (404: look elsewhere); returns the
        drafts that could not be asked (a 5xx, a 429, no answer), unknown this time."""
        unknown: dict[int, CallError] = {}
        asked = [r for r in refs if r.draft_id and r.draft_id not in dead]
        results = per_item(
            self.api.calls,
            "drafts.get",
            asked,
            lambda r: self.api.drafts.get(userId="me", id=r.draft_id, format="minimal"),
        )
        for ref in asked:
            result = results[ref.follow_up_id]
            if not isinstance(result, CallError):
                thread_id = (result.get("message") or {}).get("threadId")
                found[ref.follow_up_id] = Found(str(ref.draft_id), thread_id)
            elif result.retryable:
                unknown[ref.follow_up_id] = result
            elif result.status != 404:  # refused (a 400: a malformed id): look elsewhere,
                errors[ref.follow_up_id] = result  # but conclude nothing from misses
        return unknown

    def draft_search(
        self, items: Sequence[Sought], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Gmail search for each one's Message-ID among the drafts."""
        results = per_item(
            self.api.calls,
            "drafts.list",
            items,
            lambda i: self.api.drafts.list(userId="me", q=_by_msgid(i), maxResults=10),
        )
        for item in items:
            result = results[item.follow_up_id]
            if isinstance(result, CallError):
                errors.setdefault(item.follow_up_id, result)
                continue
            hits = [d for d in result.get("drafts", []) if d.get("id") not in dead]
            if hits:
                found[item.follow_up_id] = Found(
                    hits[0]["id"], (hits[0].get("message") or {}).get("threadId")
                )

    def draft_headers(
        self,
        items: Sequence[Sought],
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
            match = _by_identity(scan.by_header, item)
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
        recent = self.api.drafts.list(userId="me", maxResults=RECENT_DRAFTS)
        listing = self.api.calls("drafts.list", [("recent", recent)])["recent"]
        if isinstance(listing, CallError):
            return _DraftScan({}, {}, listing)
        listed = listing.get("drafts", [])  # newest first
        # (drafts.get takes no metadataHeaders: all of them come)
        get = partial(self.api.drafts.get, userId="me", format="metadata")
        results = self.api.calls("drafts.get", [(e["id"], get(id=e["id"])) for e in listed])
        by_header: dict[str, Found] = {}
        by_thread: dict[str, Found] = {}
        error = None
        for entry in listed:
            result = results.get(entry["id"])
            if isinstance(result, CallError):
                if result.status != 404:  # 404: deleted since it was listed
                    error = error or result
                continue
            message = (result or {}).get("message") or {}
            thread_id = message.get("threadId") or (entry.get("message") or {}).get("threadId")
            draft = Found(entry["id"], thread_id)
            headers = _index(by_header, message, draft)
            if thread_id and not any(headers.get(name.lower()) for name in REPLY):
                by_thread.setdefault(thread_id, draft)
        return _DraftScan(by_header, by_thread, error)

    # --- among sent mail (read scope) -----------------------------------------------------

    def sent_in_thread(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """A sent message in its thread is this draft, sent: nothing else joins the thread of
        a draft nobody has seen (a reply the therapist began later comes after it)."""
        asked = [r for r in refs if r.thread_id]
        get = partial(
            self.api.threads.get, userId="me", format="metadata", metadataHeaders=IDENTITY
        )
        results = per_item(self.api.calls, "threads.get", asked, lambda r: get(id=r.thread_id))
        for ref in asked:
            result = results[ref.follow_up_id]
            if isinstance(result, CallError):
                if result.status != 404:  # 404: the whole thread is gone
                    errors.setdefault(ref.follow_up_id, result)
                continue
            sent = [m for m in result.get("messages", []) if "SENT" in m.get("labelIds", [])]
            if not sent:
                continue
            ours = [m for m in sent if _carries(m, ref)]
            first = ours[0] if ours else min(sent, key=lambda m: int(m.get("internalDate", 0)))
            found[ref.follow_up_id] = Sent(_sent_at(first), result.get("id") or ref.thread_id)

    def sent_search(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Gmail search for its Message-ID among sent mail (trash included: still sent)."""
        search = partial(self.api.messages.list, userId="me", maxResults=1, includeSpamTrash=True)
        results = per_item(
            self.api.calls, "messages.list", refs, lambda r: search(q=f"in:sent {_by_msgid(r)}")
        )
        hits: dict[int, dict] = {}
        for ref in refs:
            result = results[ref.follow_up_id]
            if isinstance(result, CallError):
                errors.setdefault(ref.follow_up_id, result)
            elif result.get("messages"):
                hits[ref.follow_up_id] = result["messages"][0]
        dates = per_item(
            self.api.calls,
            "messages.get",
            [r for r in refs if r.follow_up_id in hits],
            lambda r: self.api.messages.get(
                userId="me", id=hits[r.follow_up_id]["id"], format="minimal"
            ),
        )
        for follow_up_id, message in hits.items():
            answer = dates.get(follow_up_id)
            found[follow_up_id] = Sent(
                None if isinstance(answer, CallError) or not answer else _sent_at(answer),
                message.get("threadId"),
            )

    def sent_headers(
        self, refs: list[DraftRef], found: dict, errors: dict, dead: Collection[str]
    ) -> None:
        """Among recent sent messages, one carrying its Message-ID or X-Followupd-Id: the
        search index lags behind a message just sent."""
        scan = self._scan_recent_sent()
        for ref in refs:
            match = _by_identity(scan.by_header, ref)
            if match is not None:
                found[ref.follow_up_id] = match
            elif scan.error is not None:
                errors.setdefault(ref.follow_up_id, scan.error)

    def _scan_recent_sent(self) -> _SentScan:
        recent = self.api.messages.list(
            userId="me", labelIds=["SENT"], maxResults=RECENT_SENT, includeSpamTrash=True
        )
        listing = self.api.calls("messages.list", [("recent", recent)])["recent"]
        if isinstance(listing, CallError):
            return _SentScan({}, listing)
        listed = listing.get("messages", [])
        get = partial(
            self.api.messages.get, userId="me", format="metadata", metadataHeaders=IDENTITY
        )
        results = self.api.calls("messages.get", [(e["id"], get(id=e["id"])) for e in listed])
        by_header: dict[str, Sent] = {}
        error = None
        for entry in listed:
            result = results.get(entry["id"])
            if isinstance(result, CallError):
                if result.status != 404:
                    error = error or result
                continue
            _index(
                by_header,
                result or {},
                Sent(_sent_at(result or {}), (result or {}).get("threadId")),
            )
        return _SentScan(by_header, error)


def _index(by_header: dict[str, V], message: dict[str, Any], value: V) -> dict[str, str]:
    """File `value` under the message's identity headers (the first one filed wins: lists
    come newest first); returns the message's headers."""
    headers = _headers(message)
    for name in IDENTITY:
        if headers.get(name.lower()):
            by_header.setdefault(headers[name.lower()], value)
    return headers


def _by_identity(by_header: dict[str, V], item: Sought) -> V | None:
    """What is filed under the item's Message-ID, else under its X-Followupd-Id."""
    match = by_header.get(item.message_id)
    if match is None and item.tag:
        match = by_header.get(item.tag)
    return match


def _by_msgid(item: Sought) -> str:
    """The Gmail search for a Message-ID."""
    return f"rfc822msgid:{item.message_id.strip('<>')}"


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
