"""Gmail drafts, exactly once: created, followed (sent? deleted?) and taken back.

A draft carries a fixed identity (its Message-ID and X-Followupd-Id header), so "was it
already made?" always has an answer. On its first try a draft is simply created; on any later
try (an earlier answer was lost: a timeout, a 5xx, a crash before the commit) it is looked for
first (gmail_lookup) and created only if it is not there. After a call that got no answer at
all, the look waits for a later tick: the first request may still be running at Google, and a
look too soon would miss what it is about to make.

A delivered draft is found again the same way to tell what became of it (`draft_states`) and
to take it back (`withdraw`), since a therapist's edit may have saved it anew.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

from followupd.delivery import Delivered, DeliveryError, Draft, DraftRef, DraftState, Withdrawn
from followupd.delivery.gmail_lookup import DraftLookup, Found, GmailApi, Sent
from followupd.delivery.googleapi import CallError, per_item
from followupd.delivery.retry import Attempts

GMAIL_COST = {
    "drafts.create": 10,
    "drafts.list": 5,
    "drafts.get": 5,
    "drafts.delete": 10,
    "messages.list": 5,
    "messages.get": 5,
    "threads.get": 10,
}

# What became of a draft: found among drafts, sent, not found anywhere (None), or unknown.
Resolution = Found | Sent | CallError | None
# A look: (refs still to find, found so far, errors so far, dead draft ids) -> None.
Step = Callable[[list[DraftRef], dict[int, Any], dict[int, CallError], Collection[str]], None]


class GmailDrafts:
    """Drafts in the therapist's mailbox: never sent, never made twice."""

    def __init__(
        self, api: GmailApi, attempts: Attempts, *, read_scope: bool, settle_seconds: float
    ):
        self.api = api
        self.attempts = attempts
        self.read_scope = read_scope  # sent mail can be read: sent and deleted told apart
        self.settle_seconds = settle_seconds  # after a call with no answer, look this late
        self.lookup = DraftLookup(api)
        # The drafts this round has tried to create: a lost answer among those needs a
        # fresh read of the recent drafts (see _find).
        self._tried: set[int] = set()

    def begin(self) -> None:
        self.lookup.forget()
        self._tried = set()

    # --- creating ------------------------------------------------------------------------

    def create(self, drafts: Sequence[Draft]) -> dict[int, Delivered | DeliveryError]:
        """Create each draft once, retrying within the tick; look before re-creating."""
        uncertain = {d.follow_up_id for d in drafts if d.attempt > 1}
        return self.attempts.run(
            {d.follow_up_id: d for d in drafts}, partial(self._attempt, uncertain), self._settle
        )

    def _attempt(
        self, uncertain: set[int], pending: Sequence[Draft]
    ) -> dict[int, Delivered | DeliveryError | CallError]:
        """Look for the drafts an earlier try may have made, then create the rest; a failed
        look blocks its draft's create (it may exist), and a create that may have acted
        makes its draft one to look for next time."""
        answers: dict[int, Delivered | DeliveryError | CallError] = {}
        looked = [d for d in pending if d.follow_up_id in uncertain]
        if looked:
            answers.update(self._find(looked))
            if any(isinstance(a, CallError) and a.systemic for a in answers.values()):
                return answers  # every call would fail the same way: create nothing
        creatable = [d for d in pending if d.follow_up_id not in answers]
        self._tried.update(d.follow_up_id for d in creatable)
        results = per_item(
            self.api.calls,
            "drafts.create",
            creatable,
            lambda d: self.api.drafts.create(userId="me", body={"message": {"raw": _raw(d)}}),
        )
        for follow_up_id, result in results.items():
            if isinstance(result, CallError):
                if result.maybe_acted:
                    uncertain.add(follow_up_id)
                answers[follow_up_id] = result
            else:
                thread_id = (result.get("message") or {}).get("threadId")
                answers[follow_up_id] = Delivered(f"gmail:{result['id']}", thread_id=thread_id)
        return answers

    def _find(self, drafts: list[Draft]) -> dict[int, Delivered | CallError]:
        """{follow-up id: the draft found, or why we cannot tell}; those not found are
        missing from the answer (to be created).

        By Message-ID search, then (always, when the search finds nothing: the index lags
        behind new drafts) by the headers of recent drafts, read afresh when one of those
        still missing was tried this round (it may have appeared since the last read).
        """
        found: dict[int, Found] = {}
        errors: dict[int, CallError] = {}
        self.lookup.draft_search(drafts, found, errors, ())
        missing = [d for d in drafts if d.follow_up_id not in found]
        if missing:
            self.lookup.draft_headers(missing, found, errors, (), fresh_for=self._tried)
        answers: dict[int, Delivered | CallError] = {}
        for follow_up_id, draft in found.items():
            answers[follow_up_id] = Delivered(f"gmail:{draft.draft_id}", thread_id=draft.thread_id)
        for follow_up_id, error in errors.items():
            answers.setdefault(follow_up_id, _as_lookup_error(error))
        return answers

    def _settle(self, error: CallError) -> DeliveryError:
        """No answer at all: the request may still be running at Google, and a look now
        could miss a draft that appears a moment later. Look on a later tick instead."""
        return DeliveryError(
            f"{error.reason}; will look for the draft before trying again",
            retry_after=self.settle_seconds,
        )

    # --- finding them again: sync and withdraw ------------------------------------------

    def draft_states(self, refs: Sequence[DraftRef]) -> dict[int, DraftState | None]:
        """What became of these drafts, by follow-up id (None: could not tell this time).

        "present" (`draft_id` set when it was saved anew under another id; `thread_id`
        whenever known), "sent" (with the sent message's time), "deleted" (read scope: not
        a draft, not sent), or "gone" (no read scope: not a draft; sent or deleted unknown).
        """
        resolved = self._resolve(refs)
        out: dict[int, DraftState | None] = {}
        for ref in refs:
            result = resolved[ref.follow_up_id]
            if isinstance(result, Found):
                out[ref.follow_up_id] = DraftState(
                    "present",
                    draft_id=result.draft_id if result.draft_id != ref.draft_id else None,
                    thread_id=result.thread_id or ref.thread_id,
                )
            elif isinstance(result, Sent):
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

    def _resolve(
        self, refs: Sequence[DraftRef], dead: Collection[str] = (), look_in_drafts: bool = True
    ) -> dict[int, Resolution]:
        """Where each draft is now: found among drafts, sent, nowhere (None), or unknown.

        The cheap looks come first and the two reads of recent mail (a hundred calls each)
        last, so a draft found or sent the usual way costs a few calls. A positive finding
        settles a draft; nowhere is concluded only when every look answered. A draft whose
        recorded id could not be asked (a 5xx, no answer) is unknown this time.
        """
        look = self.lookup
        found: dict[int, Found | Sent] = {}
        errors: dict[int, CallError] = {}
        unknown: dict[int, CallError] = {}  # could not be asked: settled as unknown
        steps: list[Step] = []
        if look_in_drafts:
            unknown = look.by_draft_id(refs, found, errors, dead)
            errors.update(unknown)
            steps.append(look.draft_search)
        if self.read_scope:
            steps += [look.sent_in_thread, look.sent_search]
        if look_in_drafts:
            steps.append(look.draft_headers)
        if self.read_scope:
            steps.append(look.sent_headers)
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

    # --- taking them back ----------------------------------------------------------------

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
        for look_in_drafts in (True, True, False):
            if not pending:
                break
            resolved = self._resolve(pending, dead, look_in_drafts=look_in_drafts)
            stop = next(
                (r for r in resolved.values() if isinstance(r, CallError) and r.systemic), None
            )
            if stop is not None:
                for ref in refs:
                    outcomes.setdefault(ref.follow_up_id, DeliveryError(stop.reason, systemic=True))
                break
            deletes: list[tuple[DraftRef, str]] = []
            for ref in pending:
                result = resolved[ref.follow_up_id]
                if isinstance(result, Found):
                    deletes.append((ref, result.draft_id))
                elif isinstance(result, CallError):
                    error = _as_lookup_error(result)
                    outcomes[ref.follow_up_id] = DeliveryError(
                        error.reason, retry_after=error.retry_after
                    )
                else:
                    outcomes[ref.follow_up_id] = self._not_a_draft(result)
            pending = self._delete(deletes, outcomes, dead)
        return [outcomes[ref.follow_up_id] for ref in refs]

    def _delete(
        self,
        deletes: list[tuple[DraftRef, str]],
        outcomes: dict[int, Withdrawn | DeliveryError],
        dead: set[str],
    ) -> list[DraftRef]:
        """Send each delete once; the refs whose draft had already gone (404) are returned."""
        draft_ids = {ref.follow_up_id: draft_id for ref, draft_id in deletes}
        results = per_item(
            self.api.calls,
            "drafts.delete",
            [ref for ref, _ in deletes],
            lambda r: self.api.drafts.delete(userId="me", id=draft_ids[r.follow_up_id]),
        )
        gone = []
        for ref, draft_id in deletes:
            result = results[ref.follow_up_id]
            if isinstance(result, CallError) and result.status == 404:
                dead.add(draft_id)
                gone.append(ref)
            else:
                outcomes[ref.follow_up_id] = self._deleted(result)
        return gone

    def _deleted(self, result: object) -> Withdrawn | DeliveryError:
        """The outcome of a delete that did not answer 404."""
        if not isinstance(result, CallError):
            return Withdrawn("withdrawn")
        if result.systemic:
            return DeliveryError(result.reason, systemic=True)
        if result.maybe_acted:
            return DeliveryError(
                f"{result.reason}; will look for the draft before deleting again",
                retry_after=self.settle_seconds if result.in_flight else result.retry_after,
                maybe_done=True,
            )
        if result.retryable:
            return DeliveryError(result.reason, retry_after=result.retry_after)
        return DeliveryError(result.reason, permanent=True)

    def _not_a_draft(self, result: Sent | None) -> Withdrawn:
        if isinstance(result, Sent):
            return Withdrawn("sent", result.sent_at)
        return Withdrawn("withdrawn" if self.read_scope else "gone")


def _raw(draft: Draft) -> str:
    return base64.urlsafe_b64encode(draft.as_bytes()).decode()


def _as_lookup_error(error: CallError) -> CallError:
    """Why an earlier draft could not be looked for; a systemic error says it all as it is."""
    if error.systemic:
        return error
    return CallError(
        f"could not check for an earlier draft: {error.reason}",
        error.status,
        retryable=True,
        retry_after=error.retry_after,
        systemic=error.systemic,
    )
