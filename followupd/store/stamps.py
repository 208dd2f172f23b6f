"""Change stamps: the `updated_at` a change to a referral or visit gets.

Planning reads the rows changed after a cursor, so a stamp must never fall behind one
already written, whatever the system clock does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import now_utc


def change_stamp(session: Session, table: sa.Table | type) -> datetime:
    """The updated_at for a change to `table` (referral, visit): now, or just after its
    newest stamp if the clock has gone back (an NTP step, a VM resumed), because the
    planner reads changes after a cursor and would never see a row stamped behind it."""
    column = sa.inspect(table).c.updated_at if isinstance(table, type) else table.c.updated_at
    newest = session.execute(sa.select(sa.func.max(column))).scalar()
    now = now_utc()
    if newest is not None:
        newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
        if newest >= now:
            return newest + timedelta(microseconds=1)
    return now
