"""Data entry: referrals and visits written in batches, by their natural keys.

Every source (an import, a Google Sheet, a folder of exports, the command line) writes
through `upsert_referrals` / `upsert_visits`: one read of what exists, then one statement per
kind of change. A changed row gets a change stamp, so the next plan sees it; the release
columns go into the release history (`releases`) instead of being overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Recipient, Referral, Visit
from followupd.records import ReferralRecord, RowError, VisitRecord, visit_key
from followupd.store import releases
from followupd.store.directory import AmbiguousPhysician, Directory, touch_physicians
from followupd.store.stamps import change_stamp


@dataclass
class Counts:
    """How many rows of a batch were added, updated, unchanged and rejected."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def __str__(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}"
        )


REFERRAL_DEFAULTS = {
    "client_dob": None,
    "presenting_problem": None,
    "treatment_focus": None,
    "release_on_file": False,
    "release_on": None,
    "prescriber_release_on_file": False,
    "prescriber_release_on": None,
    "prescriber_id": None,
    "closed_on": None,
    "closing_summary": None,
}
VISIT_DEFAULTS = {
    "physician_id": None,
    "specialty": None,
    "business_manager": None,
    "cards_left": 0,
    "handouts_left": 0,
    "notes": None,
    "named_practice": None,
    "named_physician": None,
    "named_specialty": None,
}


def _upsert(
    session: Session,
    table: sa.Table,
    key_column: str,
    items: Sequence[tuple[str, dict]],
    defaults: dict,
    left: dict[str, set] | None = None,
) -> list[bool | None]:
    """Insert or update rows by a natural key with one statement per kind of change.

    Returns, for each item: None if added, else whether it changed. Core statements rather
    than ORM objects: an import of a year of referrals is mostly this function. `left`:
    for each column named, the old values of rows where it changed are added to its set.
    """
    stamp = change_stamp(session, table)
    key = table.c[key_column]
    existing = {
        row[key_column]: dict(row)
        for row in session.execute(
            sa.select(table).where(key.in_({k for k, _ in items}))
        ).mappings()
    }
    inserts: dict[str, dict] = {}
    updates: dict[int, dict] = {}
    outcomes: list[bool | None] = []
    for item_key, given in items:
        values = dict(given)
        if item_key in inserts:  # the same key twice in one batch: the later row wins
            merged = {**inserts[item_key], **values}
            outcomes.append(merged != inserts[item_key])
            inserts[item_key] = merged
            continue
        old = existing.get(item_key)
        if old is None:
            inserts[item_key] = {
                **defaults,
                **values,
                key_column: item_key,
                "created_at": stamp,
                "updated_at": stamp,
            }
            outcomes.append(None)
            continue
        changed = {column: value for column, value in values.items() if old[column] != value}
        for column, olds in (left or {}).items():
            if column in changed:
                olds.add(old[column])
        if changed:
            old.update(changed)
            updates.setdefault(old["id"], {}).update(changed, updated_at=stamp)
        outcomes.append(bool(changed))
    if inserts:
        session.execute(sa.insert(table), list(inserts.values()))
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for row_id, changed in updates.items():
        by_columns.setdefault(tuple(sorted(changed)), []).append({"_id": row_id, **changed})
    for columns, rows in by_columns.items():
        session.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("_id"))
            .values({c: sa.bindparam(c) for c in columns}),
            rows,
        )
    return outcomes


def _outcome(changed: bool | None, related_changed: bool) -> str:
    if changed is None:
        return "added"
    return "updated" if changed or related_changed else "unchanged"


def upsert_referrals(
    session: Session,
    records: Iterable[ReferralRecord],
    directory: Directory,
    *,
    by: str = "import",
    today: date | None = None,
    notices: list[tuple[int, str]] | None = None,
    source: str | None = None,
) -> list[str]:
    """Insert or update referrals by `ref`; returns added/updated/unchanged for each.

    `source`: the watched source these rows were read from (a row read again is back in it).

    Release columns go into the release history (see `releases`); what an import could not
    do with them (a revoke it may not undo) is appended to `notices` as (index, text).
    """
    records = list(records)
    items, physician_changes, claims = [], [], []
    for record in records:
        physician_id, physician_changed = directory.physician(session, record.physician)
        values = record.referral_values(physician_id)
        if record.has_prescriber:
            values["prescriber_id"] = (
                directory.physician(session, record.prescriber)[0] if record.prescriber else None
            )
        values.pop("ref")
        if source is not None:
            values.update(source=source, gone=None)
        claims.append(releases.claims_of(values))
        items.append((record.ref, values))
        physician_changes.append(physician_changed)
    left: dict[str, set] = {"physician_id": set()}
    outcomes = _upsert(session, Referral.__table__, "ref", items, REFERRAL_DEFAULTS, left)
    touch_physicians(session, left["physician_id"])  # a referral moved away: plan them again
    changed = _apply_releases(
        session,
        [r.ref for r in records],
        claims,
        by=by,
        today=today or date.today(),
        notices=notices,
    )
    return [
        _outcome(o, p or ref in changed)
        for o, p, ref in zip(outcomes, physician_changes, (r.ref for r in records), strict=True)
    ]


def _apply_releases(
    session: Session,
    refs: list[str],
    claims: list[dict],
    *,
    by: str,
    today: date,
    notices: list[tuple[int, str]] | None,
) -> set[str]:
    """Bring the batch's release columns into the release history, then set each
    referral's in-force flags from it; returns the refs whose flags changed."""
    rows = {
        row.ref: row
        for row in session.execute(
            sa.select(Referral.ref, *releases.REFERRAL_ROW).where(Referral.ref.in_(set(refs)))
        )
    }
    history = releases.History.read(session, [row.id for row in rows.values()])
    for index, (ref, claimed) in enumerate(zip(refs, claims, strict=True)):
        for recipient, claim in claimed.items():
            notice = releases.decide(history, rows[ref], recipient, claim, by=by, today=today)
            if notice and notices is not None:
                notices.append((index, notice))
    history.write(session)
    changed = releases.refresh(
        session, history, {row.id: row for row in rows.values()}, change_stamp(session, Referral)
    )
    by_id = {row.id: ref for ref, row in rows.items()}
    return {by_id[referral_id] for referral_id in changed}


def _adopt_legacy_visits(session: Session, legacy: dict[str, str]) -> None:
    """A visit logged before the practice listed therapists has no therapist in its key;
    the same visit entered again with one is that visit, not a second (and no second
    revisit reminder): give the old row the new key."""
    if not legacy:
        return
    known = set(session.execute(sa.select(Visit.key).where(Visit.key.in_(list(legacy)))).scalars())
    for key, old in legacy.items():
        if key not in known:
            session.execute(
                sa.update(Visit).where(Visit.key == old, Visit.therapist.is_(None)).values(key=key)
            )


def _enter_prospect(session: Session, record: VisitRecord, directory: Directory) -> bool:
    """The practice and physician named on a visit become known ones (a prospect: no address
    yet); True if a physician was added or changed."""
    directory.practice_id(session, record.fields.get("named_practice"))
    prospect = record.prospect_record()
    if prospect is None:
        return False
    try:
        return directory.physician(session, prospect, fill_only=True)[1]
    except AmbiguousPhysician as exc:
        raise RowError(
            "named_physician", f"{exc.listing}; give named_practice to say which"
        ) from None


def upsert_visits(
    session: Session, records: Iterable[VisitRecord], directory: Directory
) -> list[str]:
    """Insert or update visits by (date, practice, physician[, therapist])."""
    items, physician_changes = [], []
    legacy: dict[str, str] = {}  # key with the therapist -> the key the visit had without
    for record in records:
        practice_id = directory.practice_id(session, record.practice)
        physician_id, physician_changed = None, False
        if record.physician_name:
            physician_id, physician_changed = directory.physician(
                session, record.physician_record()
            )
        key = visit_key(
            record.visited_on,
            record.practice,
            record.physician_name,
            record.fields.get("therapist"),
        )
        items.append((key, record.visit_values(practice_id, physician_id)))
        physician_changes.append(physician_changed | _enter_prospect(session, record, directory))
        if record.fields.get("therapist"):
            legacy[key] = visit_key(record.visited_on, record.practice, record.physician_name)
    _adopt_legacy_visits(session, legacy)
    outcomes = _upsert(session, Visit.__table__, "key", items, VISIT_DEFAULTS)
    return [_outcome(o, p) for o, p in zip(outcomes, physician_changes, strict=True)]


def record_release(
    session: Session, ref: str, recipient: Recipient, *, grant: bool, on: date, by: str
) -> bool | None:
    """A person grants or revokes a referral's release for one recipient; the next plan
    sees the change. None: no such referral; False: it names no such recipient."""
    row = session.execute(
        sa.select(Referral.id, Referral.prescriber_id).where(Referral.ref == ref)
    ).first()
    if row is None:
        return None
    if recipient == Recipient.prescriber and row.prescriber_id is None:
        return False
    stamp = change_stamp(session, Referral)
    releases.record(session, row.id, recipient, grant=grant, on=on, by=by, stamp=stamp)
    session.execute(sa.update(Referral).where(Referral.id == row.id).values(updated_at=stamp))
    return True


def referral_exists(session: Session, ref: str) -> bool:
    """Whether a referral with this `ref` is on file (blanks around `ref` ignored)."""
    found = session.execute(sa.select(Referral.id).where(Referral.ref == ref.strip())).first()
    return found is not None


def change_referral(session: Session, ref: str, change: Callable[[Referral], None]) -> bool:
    """Apply `change` to one referral and stamp it changed, so the next plan sees it.

    False if there is no such referral. What `change` raises (a bad value) propagates, and
    the caller's transaction rolls back.
    """
    referral = session.execute(
        sa.select(Referral).where(Referral.ref == ref.strip())
    ).scalar_one_or_none()
    if referral is None:
        return False
    change(referral)
    referral.updated_at = change_stamp(session, Referral)
    return True
