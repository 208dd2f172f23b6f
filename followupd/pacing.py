"""Pacing calls to a per-minute budget: a token bucket.

In memory here, for one process; `store.SharedTokenBucket` keeps the same bucket in the
database, so replicas delivering for one mailbox share its budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Spend at most `per_minute` units in any sixty seconds, whatever the burst.

    The bucket holds `burst` units and refills at (per_minute - burst) a minute, so a full
    bucket plus a minute of refill never exceeds the budget: zero 429s from our own pace. A
    take reserves its units at once, going into debt if need be, then waits the debt out.
    """

    def __init__(
        self,
        per_minute: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        burst = min(burst, per_minute / 2)
        self.rate = (per_minute - burst) / 60.0
        self.capacity = burst
        self.clock = clock
        self.sleep = sleep
        self.waited = 0.0
        self.tokens = burst
        self.updated = clock()

    def take(self, cost: float) -> None:
        """Wait until `cost` units are spent (costs above the bucket are spent in
        bucket-sized steps)."""
        while cost > 0:
            step = min(cost, self.capacity)
            debt = self._reserve(step)
            if debt > 0:
                pause = debt / self.rate
                self.waited += pause
                self.sleep(pause)
            cost -= step

    def _reserve(self, step: float) -> float:
        """Spend `step` units now; returns how far the bucket went below empty."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate) - step
        self.updated = now
        return -self.tokens
