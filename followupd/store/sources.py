"""What each watched source's reads found, kept for `followupd sources` and `health`."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import SourceState, now_utc
from followupd.store.dialect import put


def read_source_states(session: Session) -> dict[str, dict]:
    """{source name: its last state} (a source never read is absent)."""
    rows = session.execute(sa.select(SourceState.name, SourceState.state)).all()
    return {name: json.loads(state) for name, state in rows}


def write_source_state(session: Session, name: str, state: dict) -> None:
    """Record a read's outcome: counts, row errors by row and column, the last error."""
    put(session, SourceState, {"name": name}, {"state": json.dumps(state), "updated_at": now_utc()})
