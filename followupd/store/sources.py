"""What each watched source's reads found, kept for `followupd sources` and `health`."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Referral, SourceState, now_utc
from followupd.store.dialect import put
from followupd.store.stamps import change_stamp


def mark_gone(session: Session, source: str, present: set[str], reason: str) -> int:
    """Referrals last read from `source` whose rows are no longer in it: not deleted, but
    marked (their pending notes are held with `reason`) until they return. How many."""
    rows = session.execute(
        sa.select(Referral.id, Referral.ref).where(
            Referral.source == source, Referral.gone.is_(None)
        )
    ).all()
    missing = [referral_id for referral_id, ref in rows if ref not in present]
    if missing:
        stamp = change_stamp(session, Referral)  # planned again: their notes are held
        for start in range(0, len(missing), 500):
            session.execute(
                sa.update(Referral)
                .where(Referral.id.in_(missing[start : start + 500]))
                .values(gone=reason, updated_at=stamp)
            )
    return len(missing)


def read_source_states(session: Session) -> dict[str, dict]:
    """{source name: its last state} (a source never read is absent)."""
    rows = session.execute(sa.select(SourceState.name, SourceState.state)).all()
    return {name: json.loads(state) for name, state in rows}


def write_source_state(session: Session, name: str, state: dict) -> None:
    """Record a read's outcome: counts, row errors by row and column, the last error."""
    put(session, SourceState, {"name": name}, {"state": json.dumps(state), "updated_at": now_utc()})
