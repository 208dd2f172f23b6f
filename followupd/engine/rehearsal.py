"""A dry run: plan for real inside a transaction that is rolled back, and count what a
run would make, hold or skip, by rule.

The very planning code runs (`Store.rehearsal`), so a dry run cannot disagree with the run
it previews; an import's dry run imports inside the same rehearsal first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from followupd.engine.deliverer import Deliverer
from followupd.engine.planner import Planner
from followupd.models import State
from followupd.store import newest_follow_up, plan_summary

T = TypeVar("T")


@dataclass
class Rehearsal:
    """What a run would do now, by rule: {rule: Counter(now=, later=, held=, skipped=)}."""

    by_rule: dict[str, Counter] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # rule -> draft | reminder
    burst: int = 0  # notes due at once that would wait for `run --once --confirm`

    def total(self, bucket: str, kind: str | None = None) -> int:
        return sum(
            counts[bucket]
            for rule, counts in self.by_rule.items()
            if kind is None or self.kinds[rule] == kind
        )


def _bucket(state: str, now: bool) -> str | None:
    if state == State.planned:
        return "now" if now else "later"
    if state in (State.held, State.skipped):
        return state
    return None  # cancelled and the like: nothing a person needs to see here


class Rehearser(Deliverer, Planner):
    """`followupd run --dry-run` and `import --dry-run`."""

    def rehearse(self, first: Callable[[], T] | None = None) -> tuple[T | None, Rehearsal]:
        """Run `first` (an import), then plan, then count; everything is rolled back."""
        rehearsal = Rehearsal()
        with self.store.rehearsal():
            with self.store.session() as session:
                newest = newest_follow_up(session)
            result = first() if first is not None else None
            self.plan()
            rehearsal.burst = self.burst()
            with self.store.session() as session:
                rows = plan_summary(session, self.clock(), newest)
        # what planning remembers it did (the day it looked for quiet spells, the drafts and
        # digests it read) was rolled back with it
        self._quiet_day = self._drafts_until = self._digest_days = None
        self._positions = {}
        for rule, kind, state, now, count in rows:
            bucket = _bucket(state, bool(now))
            if bucket is not None:
                rehearsal.by_rule.setdefault(rule, Counter())[bucket] += count
                rehearsal.kinds[rule] = kind
        return result, rehearsal
