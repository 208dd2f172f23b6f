"""Small facts a database keeps about itself: its installation id, meta values, cursors.

`meta` holds one value a key (the installation id, the heartbeat, each mailbox's credentials
state); `cursor` holds how far planning has read each table, by rule set.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Cursor, Meta, now_utc
from followupd.store.dialect import put


def installation_id(session: Session) -> str:
    """This database's random id; external ids derive from it so two homes never collide."""
    return session.execute(sa.select(Meta.value).where(Meta.key == "installation_id")).scalar_one()


def read_meta(session: Session, key: str) -> str | None:
    """A fact about this database (None: never written)."""
    return session.execute(sa.select(Meta.value).where(Meta.key == key)).scalar()


def read_meta_prefix(session: Session, prefix: str) -> dict[str, str]:
    """Facts whose key starts with `prefix` (one mailbox's credentials state each)."""
    return dict(
        session.execute(sa.select(Meta.key, Meta.value).where(Meta.key.startswith(prefix))).all()
    )


def write_meta(session: Session, key: str, value: str) -> None:
    """Set a fact about this database (a heartbeat, the state of the credentials)."""
    put(session, Meta, {"key": key}, {"value": value})


def read_cursor(session: Session, name: str) -> datetime | None:
    """Where a planning cursor stands (None: this rule set has read nothing yet)."""
    return session.execute(sa.select(Cursor.position).where(Cursor.name == name)).scalar()


def write_cursor(session: Session, name: str, position: datetime, *, prefix: str) -> None:
    """Move a planning cursor; cursors for other rule sets of the same table are dropped."""
    session.execute(sa.delete(Cursor).where(Cursor.name.startswith(prefix), Cursor.name != name))
    put(
        session,
        Cursor,
        {"name": name},
        {"position": position, "last_id": 0, "updated_at": now_utc()},
    )
