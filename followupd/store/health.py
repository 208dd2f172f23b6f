"""What `followupd health` reads from the database, in one place and one transaction.

The judgement (is the heartbeat recent, are the credentials good) is the caller's; this
module only gathers the facts, and never a patient value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from followupd.store.ledger import due_backlog, recent_failures
from followupd.store.meta import read_meta, read_meta_prefix

HEARTBEAT = "heartbeat"  # meta key: the last completed tick (JSON, written by the engine)
CREDENTIALS = "google_credentials"  # meta key prefix: each mailbox's credentials state
FAILURES_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class HealthFacts:
    """The heartbeat as written (None: no tick has completed), each mailbox's credentials
    state by meta key, follow-ups due and not yet delivered, and failures in the last day."""

    heartbeat: str | None
    credentials: dict[str, str]
    backlog: int
    failures: int


def health_facts(
    session: Session,
    now: datetime,
    *,
    heartbeat_key: str = HEARTBEAT,
    credentials_prefix: str = CREDENTIALS,
) -> HealthFacts:
    """Read what a health check judges from, as of `now`."""
    return HealthFacts(
        heartbeat=read_meta(session, heartbeat_key),
        credentials=read_meta_prefix(session, credentials_prefix),
        backlog=due_backlog(session, now),
        failures=recent_failures(session, now - FAILURES_WINDOW),
    )
