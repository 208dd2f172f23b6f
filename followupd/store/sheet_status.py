"""What a Google Sheet source's status tab shows: its referrals' refs, dates and notes.

Only columns that hold no patient value are selected (ref, received date, the ledger's rule,
kind, state, times and reason), so no client name, birth date, problem or summary can reach
the tab, whatever is done with these rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, Referral


@dataclass(frozen=True)
class NoteLine:
    """One follow-up of a referral, as the status tab shows it."""

    rule: str
    kind: str  # draft | reminder
    state: str
    due_at: datetime
    changed_at: datetime  # when the ledger row last changed (made, sent, held...)
    reason: str | None


@dataclass
class StatusLine:
    """One referral read from the source, with its follow-ups in the order they were made."""

    ref: str
    received_on: date
    gone: bool = False  # its row is no longer in the source
    notes: list[NoteLine] = field(default_factory=list)


def status_lines(session: Session, source: str) -> list[StatusLine]:
    """The referrals last read from `source`, oldest received first, each with its notes:
    one query, patient columns never selected."""
    rows = session.execute(
        sa.select(
            Referral.ref,
            Referral.received_on,
            Referral.gone.is_not(None),
            FollowUp.rule,
            FollowUp.kind,
            FollowUp.state,
            FollowUp.due_at,
            FollowUp.updated_at,
            FollowUp.reason,
        )
        .select_from(Referral)
        .outerjoin(
            FollowUp,
            sa.and_(FollowUp.subject_type == "referral", FollowUp.subject_id == Referral.id),
        )
        .where(Referral.source == source)
        .order_by(Referral.received_on, Referral.ref, FollowUp.id)
    ).all()
    lines: dict[str, StatusLine] = {}
    for ref, received_on, gone, rule, kind, state, due_at, changed_at, reason in rows:
        line = lines.setdefault(ref, StatusLine(ref, received_on, bool(gone)))
        if rule is not None:
            line.notes.append(NoteLine(rule, kind, state, due_at, changed_at, reason))
    return list(lines.values())
