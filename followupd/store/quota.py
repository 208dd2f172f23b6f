"""A mailbox's API quota, shared by every replica that delivers for it."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from followupd.models import QuotaBucket
from followupd.pacing import TokenBucket
from followupd.store.database import Store
from followupd.store.dialect import dialect_insert


class SharedTokenBucket(TokenBucket):
    """A token bucket every replica draws on, kept in the database: one mailbox's quota
    holds however many processes deliver for it. A take's reservation is made under the
    row's lock, so the next taker, in any replica, waits behind it.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        per_minute: float,
        burst: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(per_minute, burst, clock, sleep)
        self.store, self.name = store, name

    def _reserve(self, step: float) -> float:
        """Spend `step` units now; returns how far the bucket went below empty."""
        with self.store.session() as session:
            insert = dialect_insert(session, QuotaBucket)
            now = self.clock()
            if insert is not None:
                session.execute(
                    insert.values(
                        name=self.name, tokens=self.capacity, refilled_at=now
                    ).on_conflict_do_nothing()
                )
            row = session.execute(
                sa.select(QuotaBucket.tokens, QuotaBucket.refilled_at)
                .where(QuotaBucket.name == self.name)
                .with_for_update()
            ).one()
            now = self.clock()
            tokens = (
                min(self.capacity, row.tokens + max(0.0, now - row.refilled_at) * self.rate) - step
            )
            session.execute(
                sa.update(QuotaBucket)
                .where(QuotaBucket.name == self.name)
                .values(tokens=tokens, refilled_at=max(now, row.refilled_at))
            )
        return -tokens
