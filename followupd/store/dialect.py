"""Statements that differ by database: INSERT ... ON CONFLICT, where the dialect has it.

Replicas (and planners) may race to insert the same row; PostgreSQL and SQLite settle that
in the statement itself. Any other database gets plain statements, and a race there raises.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session


def dialect_insert(session: Session, model):
    """The dialect's INSERT, which knows ON CONFLICT (replicas may race to insert a row)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other databases: a plain insert, conflicts raise
        return None
    return insert(model)


def put(session: Session, model, key: dict, values: dict) -> None:
    """Insert or update one row by its primary key, in one statement where the dialect can."""
    insert = dialect_insert(session, model)
    if insert is None:  # pragma: no cover
        if not session.execute(sa.update(model).filter_by(**key).values(**values)).rowcount:
            session.execute(sa.insert(model).values(**key, **values))
        return
    session.execute(
        insert.values(**key, **values).on_conflict_do_update(index_elements=list(key), set_=values)
    )
