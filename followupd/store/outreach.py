"""What the outreach reminders and the digest show: a physician's history, and the week's
referrals, waiting drafts, held notes, quiet physicians and prospects. Refs, physician and
practice names, dates, counts and followupd's own reasons: never a patient field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import FollowUp, Physician, Practice, Referral, State, Visit
from followupd.records import fold

DIGEST_LINES = 20  # each list of a digest shows at most this many, then "and N more"


def physician_history(session: Session, physician_id: int) -> dict[str, Any]:
    """A physician's referrals (how many, the first and the last) and the last visit to
    them or their office."""
    referrals = session.execute(
        sa.select(
            sa.func.count(), sa.func.min(Referral.received_on), sa.func.max(Referral.received_on)
        ).where(Referral.physician_id == physician_id)
    ).one()
    last_ref = session.execute(
        sa.select(Referral.ref)
        .where(Referral.physician_id == physician_id)
        .order_by(Referral.received_on.desc(), Referral.id.desc())
        .limit(1)
    ).scalar()
    practice_id = session.execute(
        sa.select(Physician.practice_id).where(Physician.id == physician_id)
    ).scalar()
    met = Visit.physician_id == physician_id
    if practice_id is not None:
        met = sa.or_(met, Visit.practice_id == practice_id)
    last_visit = session.execute(sa.select(sa.func.max(Visit.visited_on)).where(met)).scalar()
    return {
        "referrals": referrals[0],
        "first_on": referrals[1],
        "last_on": referrals[2],
        "last_ref": last_ref,
        "last_visit_on": last_visit,
    }


@dataclass(frozen=True)
class Window:
    """What a digest covers: referrals received in [start, end); physicians whose last
    referral was on or before `quiet_upto` are quiet; a draft made before `unsent_before`
    counts as unsent."""

    start: date
    end: date
    quiet_upto: date
    unsent_before: datetime


def _shown(items: list, limit: int) -> dict[str, Any]:
    return {"items": items[:limit], "total": len(items), "more": max(0, len(items) - limit)}


def digest_facts(session: Session, window: Window, limit: int = DIGEST_LINES) -> dict[str, Any]:
    """Everything a digest lists, as plain values: each list is {items, total, more}."""
    return {
        "referrals": _shown(_new_referrals(session, window), limit),
        "drafts": _shown(_waiting_drafts(session, window), limit),
        "held": _shown(_held(session), limit),
        "quiet": _shown(_quiet(session, window.quiet_upto), limit),
        "prospects": _shown(_prospects(session), limit),
    }


def _new_referrals(session: Session, window: Window) -> list[dict[str, Any]]:
    """The referrals received in the window, by physician (most referrals first)."""
    rows = session.execute(
        sa.select(Referral.ref, Referral.received_on, Physician.id, Physician.name, Practice.name)
        .join(Physician, Physician.id == Referral.physician_id)
        .outerjoin(Practice, Practice.id == Physician.practice_id)
        .where(Referral.received_on >= window.start, Referral.received_on < window.end)
        .order_by(Referral.received_on, Referral.id)
    ).all()
    by_physician: dict[int, dict[str, Any]] = {}
    for ref, _received, physician_id, name, practice in rows:
        entry = by_physician.setdefault(
            physician_id, {"physician": name, "practice": practice, "count": 0, "refs": []}
        )
        entry["count"] += 1
        entry["refs"].append(ref)
    return sorted(by_physician.values(), key=lambda e: (-e["count"], fold(e["physician"])))


def _subject_names(session: Session, rows: Sequence[FollowUp]) -> dict[int, dict[str, Any]]:
    """For ledger rows: {id: {ref, physician, prescriber and their ids}} of their subjects
    (names and ids only)."""
    referral_ids = {r.subject_id for r in rows if r.subject_type == "referral"}
    visit_ids = {r.subject_id for r in rows if r.subject_type == "visit"}
    physician_ids = {r.subject_id for r in rows if r.subject_type == "physician"}
    prescriber = sa.orm.aliased(Physician)
    referrals = {
        row.id: row
        for row in session.execute(
            sa.select(
                Referral.id,
                Referral.ref,
                Referral.physician_id,
                Referral.prescriber_id,
                Physician.name.label("physician"),
                prescriber.name.label("prescriber"),
            )
            .join(Physician, Physician.id == Referral.physician_id)
            .outerjoin(prescriber, prescriber.id == Referral.prescriber_id)
            .where(Referral.id.in_(referral_ids))
        )
    }
    visits = {
        row.id: row
        for row in session.execute(
            sa.select(
                Visit.id,
                Visit.physician_id,
                Physician.name.label("physician"),
                Practice.name.label("practice"),
            )
            .join(Practice, Practice.id == Visit.practice_id)
            .outerjoin(Physician, Physician.id == Visit.physician_id)
            .where(Visit.id.in_(visit_ids))
        )
    }
    physicians = dict(
        session.execute(
            sa.select(Physician.id, Physician.name).where(Physician.id.in_(physician_ids))
        ).all()
    )
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        names: dict[str, Any] = dict.fromkeys(
            ("ref", "physician", "prescriber", "physician_id", "prescriber_id")
        )
        if row.subject_type == "referral" and row.subject_id in referrals:
            found = referrals[row.subject_id]
            names.update(
                ref=found.ref,
                physician=found.physician,
                prescriber=found.prescriber,
                physician_id=found.physician_id,
                prescriber_id=found.prescriber_id,
            )
        elif row.subject_type == "visit" and row.subject_id in visits:
            found = visits[row.subject_id]
            names.update(
                physician=found.physician or found.practice, physician_id=found.physician_id
            )
        elif row.subject_type == "physician":
            names.update(physician=physicians.get(row.subject_id), physician_id=row.subject_id)
        out[row.id] = names
    return out


def _waiting_drafts(session: Session, window: Window) -> list[dict[str, Any]]:
    """Notes still in Drafts (as far as the sync knows), oldest first."""
    rows = (
        session.execute(
            sa.select(FollowUp)
            .where(
                FollowUp.kind == "draft",
                FollowUp.state == State.done,
                FollowUp.subject_type != "digest",
            )
            .order_by(FollowUp.made_at, FollowUp.id)
        )
        .scalars()
        .all()
    )
    names = _subject_names(session, rows)
    return [
        {
            "id": row.id,
            "rule": row.rule,
            "made_at": row.made_at,
            "unsent": row.made_at is not None and row.made_at < window.unsent_before,
            **names[row.id],
        }
        for row in rows
    ]


def _held(session: Session) -> list[dict[str, Any]]:
    """Notes held, and followupd's own reason for each (ids and refs, no patient field)."""
    rows = (
        session.execute(
            sa.select(FollowUp)
            .where(FollowUp.state == State.held)
            .order_by(FollowUp.due_at, FollowUp.id)
        )
        .scalars()
        .all()
    )
    names = _subject_names(session, rows)
    return [
        {"id": row.id, "rule": row.rule, "kind": row.kind, "reason": row.reason, **names[row.id]}
        for row in rows
    ]


def _quiet(session: Session, upto: date) -> list[dict[str, Any]]:
    """Physicians who have referred and whose last referral was on or before `upto`, the
    most recently quiet first."""
    sent = (
        sa.select(
            Referral.physician_id,
            sa.func.count().label("referrals"),
            sa.func.max(Referral.received_on).label("last_on"),
        )
        .group_by(Referral.physician_id)
        .subquery()
    )
    rows = session.execute(
        sa.select(
            Physician.id,
            Physician.name,
            Physician.practice_id,
            Practice.name.label("practice"),
            sent.c.referrals,
            sent.c.last_on,
        )
        .join(sent, sent.c.physician_id == Physician.id)
        .outerjoin(Practice, Practice.id == Physician.practice_id)
        .where(sent.c.last_on <= upto)
        .order_by(sent.c.last_on.desc(), Physician.name)
    ).all()
    visited = _last_visits(session)
    return [
        {
            "physician": row.name,
            "practice": row.practice,
            "referrals": row.referrals,
            "last_on": row.last_on,
            "last_visit_on": max(
                (
                    d
                    for d in (visited[0].get(row.id), visited[1].get(row.practice_id))
                    if d is not None
                ),
                default=None,
            ),
        }
        for row in rows
    ]


def _last_visits(session: Session) -> tuple[dict[int, date], dict[int, date]]:
    """The last visit to each physician met, and to each practice."""
    by_physician = dict(
        session.execute(
            sa.select(Visit.physician_id, sa.func.max(Visit.visited_on))
            .where(Visit.physician_id.is_not(None))
            .group_by(Visit.physician_id)
        ).all()
    )
    by_practice = dict(
        session.execute(
            sa.select(Visit.practice_id, sa.func.max(Visit.visited_on)).group_by(Visit.practice_id)
        ).all()
    )
    return by_physician, by_practice


def _prospects(session: Session) -> list[dict[str, Any]]:
    """Practices and physicians named in answer to the ask that have not been visited since
    (no visit to that practice, nor a meeting with that physician, after the naming)."""
    asker = sa.orm.aliased(Physician)
    named = session.execute(
        sa.select(
            Visit.named_practice,
            Visit.named_physician,
            Visit.named_specialty,
            Visit.visited_on,
            asker.name.label("named_by"),
            Practice.name.label("named_at"),
        )
        .join(Practice, Practice.id == Visit.practice_id)
        .outerjoin(asker, asker.id == Visit.physician_id)
        .where(sa.or_(Visit.named_practice.is_not(None), Visit.named_physician.is_not(None)))
        .order_by(Visit.visited_on, Visit.id)
    ).all()
    if not named:
        return []
    practices = dict(
        session.execute(
            sa.select(Practice.key, sa.func.max(Visit.visited_on))
            .join(Visit, Visit.practice_id == Practice.id)
            .group_by(Practice.key)
        ).all()
    )
    met: dict[str, date] = {}
    for name, day in session.execute(
        sa.select(Physician.name, sa.func.max(Visit.visited_on))
        .join(Visit, Visit.physician_id == Physician.id)
        .group_by(Physician.name)
    ):
        met[fold(name)] = max(day, met.get(fold(name), day))
    waiting: dict[tuple[str, str], dict[str, Any]] = {}
    for row in named:
        key = (fold(row.named_practice), fold(row.named_physician))
        if key in waiting:
            continue
        seen = [
            practices.get(key[0]) if row.named_practice else None,
            met.get(key[1]) if row.named_physician else None,
        ]
        if any(day is not None and day > row.visited_on for day in seen):
            continue
        waiting[key] = {
            "physician": row.named_physician,
            "practice": row.named_practice,
            "specialty": row.named_specialty,
            "named_on": row.visited_on,
            "named_by": row.named_by or row.named_at,
        }
    return list(waiting.values())
