"""One retry loop for every Google adapter: a few attempts within a tick, then a later tick.

An adapter's attempt makes its pending items (and first looks for any an earlier try may have
made: a draft whose create may have acted); this loop judges the answers, the same way for
drafts and events:

- an answer settles the item (`Delivered`, or a `DeliveryError` the adapter decided on);
- a refused call (not retryable) fails the item for good;
- a systemic error (credentials) stops what is left once the attempt's answers are recorded:
  every further call would fail alike;
- a call that got no answer at all (`in_flight`) may still be running at Google: an adapter
  that cannot tell a second try from the first (a draft) passes `in_flight`, and the item
  waits for a later tick, when a look will find what that call made; one whose second try
  is harmless (an event under its own id answers 409) just retries;
- anything else is tried again after a backoff (googleapi.backoff) at least as long as the
  longest Retry-After of the attempt.

After `max_attempts` attempts what is still pending waits for a later tick with its last error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from followupd.delivery import DeliveryError, Outcome
from followupd.delivery.googleapi import CallError, backoff

T = TypeVar("T")

# One attempt: make (or find) these pending items; {follow-up id: final outcome or CallError}.
# An item left out of the answer stays pending.
Attempt = Callable[[Sequence[T]], Mapping[int, Outcome | CallError]]


@dataclass(frozen=True)
class Attempts:
    """How often a tick tries (`google.max_attempts`) and how it waits between tries."""

    max_attempts: int
    sleep: Callable[[float], None]

    def run(
        self,
        pending: dict[int, T],
        attempt: Attempt[T],
        in_flight: Callable[[CallError], DeliveryError] | None = None,
    ) -> dict[int, Outcome]:
        """Attempt the pending items (by follow-up id) until each has an outcome, a systemic
        error stops them all, or `max_attempts` attempts have gone by."""
        done: dict[int, Outcome] = {}
        last: dict[int, CallError] = {}
        pending = dict(pending)
        for tried in range(self.max_attempts):
            if not pending:
                break
            answers = attempt(list(pending.values()))
            retry_after = 0.0
            stop: CallError | None = None
            for follow_up_id, answer in answers.items():
                if isinstance(answer, CallError):
                    last[follow_up_id] = answer
                    answer = _settle(answer, in_flight)
                if isinstance(answer, CallError):  # retry: the server may ask us to wait
                    stop = stop or (answer if answer.systemic else None)
                    retry_after = max(retry_after, answer.retry_after or 0.0)
                    continue
                done[follow_up_id] = answer
                pending.pop(follow_up_id)
                last.pop(follow_up_id, None)
            if stop is not None:  # every call would fail the same way: stop all that is left
                return done | {i: DeliveryError(stop.reason, systemic=True) for i in pending}
            if pending and tried + 1 < self.max_attempts:
                self.sleep(backoff(tried, retry_after))
        return done | {i: _waits(last.get(i)) for i in pending}


def _settle(
    error: CallError, in_flight: Callable[[CallError], DeliveryError] | None
) -> DeliveryError | CallError:
    """A failed call's verdict: final (a DeliveryError) or to be tried again (the error)."""
    if not error.retryable:
        return DeliveryError(error.reason, permanent=True)
    if error.in_flight and in_flight is not None and not error.systemic:
        return in_flight(error)
    return error


def _waits(error: CallError | None) -> DeliveryError:
    """What is still pending after the tick's tries waits for a later tick."""
    if error is None:
        return DeliveryError("not delivered")
    return DeliveryError(error.reason, retry_after=error.retry_after)
