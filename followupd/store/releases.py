"""Releases of information: one per recipient, with a history that imports must respect.

A release names its recipient. The referring physician's release does not cover the
prescriber, and a release granted for one physician does not follow the referral to another.
Every grant is a row of `release`; revoking it fills in `revoked_on`. The referral's
`release_on_file` / `prescriber_release_on_file` columns are kept equal to "a release naming
today's recipient is in force", so planning reads them without a join.

Who may grant again after a revoke: a person at the command line, always; an import (a
spreadsheet that still says "yes" from before) only with a signing date after the revoke.

Written for batches (an import writes a thousand referrals per transaction): a batch costs
two reads of the history, whatever it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Recipient, Referral, Release, now_utc

# The referral columns that say what a source claims about each recipient's release.
COLUMNS = {
    Recipient.physician: ("release_on_file", "release_on"),
    Recipient.prescriber: ("prescriber_release_on_file", "prescriber_release_on"),
}
# The referral column holding the physician a recipient's release must name.
NAMED = {Recipient.physician: "physician_id", Recipient.prescriber: "prescriber_id"}
REFERRAL_ROW = (
    Referral.id,
    Referral.physician_id,
    Referral.prescriber_id,
    Referral.release_on_file,
    Referral.release_on,
    Referral.prescriber_release_on_file,
    Referral.prescriber_release_on,
)


@dataclass(frozen=True)
class Claim:
    """What a source says about one recipient's release: on file or not (None: it does not
    say), and when it was signed (None: not given)."""

    on_file: bool | None
    signed_on: date | None = None


def claims_of(fields: dict) -> dict[Recipient, Claim]:
    """Take the release columns out of a referral's validated fields."""
    out = {}
    for recipient, (flag, signed) in COLUMNS.items():
        if flag in fields or signed in fields:
            on_file = fields.pop(flag, None)
            signed_on = fields.pop(signed, None)
            out[recipient] = Claim(True if signed_on and on_file is None else on_file, signed_on)
    return out


@dataclass
class _Grant:
    id: int | None
    physician_id: int | None
    granted_on: date
    revoked_on: date | None = None


@dataclass
class History:
    """What the `release` table holds for a batch of referrals, and the changes to write."""

    active: dict[tuple[int, str], list[_Grant]] = field(default_factory=dict)
    ended: dict[tuple[int, str], list[_Grant]] = field(default_factory=dict)  # revoked ones
    revoked: dict[tuple[int, str], tuple[date, str]] = field(default_factory=dict)
    inserts: list[dict] = field(default_factory=list)
    redated: dict[int, date] = field(default_factory=dict)
    revokes: dict[tuple[int, str], tuple[date, str]] = field(default_factory=dict)

    @classmethod
    def read(cls, session: Session, referral_ids: Sequence[int]) -> History:
        history = cls()
        if not referral_ids:
            return history
        rows = session.execute(
            sa.select(
                Release.id,
                Release.referral_id,
                Release.recipient,
                Release.physician_id,
                Release.granted_on,
                Release.revoked_on,
                Release.revoked_by,
            )
            .where(Release.referral_id.in_(referral_ids))
            .order_by(Release.id)
        )
        for row in rows:
            key = (row.referral_id, row.recipient)
            grant = _Grant(row.id, row.physician_id, row.granted_on, row.revoked_on)
            if row.revoked_on is None:
                history.active.setdefault(key, []).append(grant)
                continue
            history.ended.setdefault(key, []).append(grant)
            if key not in history.revoked or row.revoked_on >= history.revoked[key][0]:
                history.revoked[key] = (row.revoked_on, row.revoked_by or "")
        return history

    def in_force(self, referral_id: int, recipient: str, named: int | None) -> _Grant | None:
        if named is None:
            return None
        grants = [
            g for g in self.active.get((referral_id, recipient), []) if g.physician_id == named
        ]
        return grants[-1] if grants else None

    def last_signed(self, referral_id: int, recipient: str, named: int | None) -> date | None:
        """When the newest release naming this recipient was signed, in force or not: a
        revoked release was still recorded (its notes are then taken back, not forgotten)."""
        key = (referral_id, recipient)
        dates = [
            g.granted_on
            for g in (*self.ended.get(key, []), *self.active.get(key, []))
            if named is not None and g.physician_id == named
        ]
        return max(dates) if dates else None

    def grant(
        self, referral_id: int, recipient: str, named: int | None, signed_on: date, by: str
    ) -> bool:
        current = self.in_force(referral_id, recipient, named)
        if current is not None:
            if current.granted_on == signed_on:
                return False
            current.granted_on = signed_on
            if current.id is not None:
                self.redated[current.id] = signed_on
            return True
        self.active.setdefault((referral_id, recipient), []).append(_Grant(None, named, signed_on))
        self.inserts.append(
            {
                "referral_id": referral_id,
                "recipient": recipient,
                "physician_id": named,
                "granted_on": signed_on,
                "granted_by": by,
            }
        )
        return True

    def revoke(self, referral_id: int, recipient: str, on: date, by: str) -> bool:
        grants = self.active.pop((referral_id, recipient), [])
        if not grants:
            return False
        for grant in grants:
            grant.revoked_on = on
        self.ended.setdefault((referral_id, recipient), []).extend(
            g for g in grants if g.id is not None
        )
        self.revoked[(referral_id, recipient)] = self.revokes[(referral_id, recipient)] = (on, by)
        self.inserts = [
            row
            for row in self.inserts  # granted earlier in this batch: never was
            if (row["referral_id"], row["recipient"]) != (referral_id, recipient)
        ]
        return True

    def write(self, session: Session) -> None:
        stamp = now_utc()
        for (referral_id, recipient), (on, by) in self.revokes.items():
            session.execute(
                sa.update(Release)
                .where(
                    Release.referral_id == referral_id,
                    Release.recipient == recipient,
                    Release.revoked_on.is_(None),
                )
                .values(revoked_on=on, revoked_by=by, updated_at=stamp)
            )
        for release_id, signed_on in self.redated.items():
            session.execute(
                sa.update(Release)
                .where(Release.id == release_id)
                .values(granted_on=signed_on, updated_at=stamp)
            )
        if self.inserts:
            session.execute(
                sa.insert(Release),
                [{**row, "created_at": stamp, "updated_at": stamp} for row in self.inserts],
            )
        self.inserts, self.redated, self.revokes = [], {}, {}


def decide(
    history: History, row, recipient: Recipient, claim: Claim, *, by: str, today: date
) -> str | None:
    """Bring what an import says into the history; returns a notice for its summary.

    "Yes" grants unless the recipient's last release was revoked and the row gives no signing
    date after that revoke (a sheet still saying "yes" must not undo a revoke). "No" revokes
    what is in force.
    """
    what = f"the release for the {recipient.value}"
    named = getattr(row, NAMED[recipient])
    if claim.on_file is False:
        return f"{what} revoked" if history.revoke(row.id, recipient, today, by) else None
    if claim.on_file is None:
        return None
    if named is None:
        return f"{what} is marked on file, but the referral names no {recipient.value}"
    if history.in_force(row.id, recipient, named) is not None:
        if claim.signed_on is not None:
            history.grant(row.id, recipient, named, claim.signed_on, by)
        return None
    revoked = history.revoked.get((row.id, recipient))
    if revoked is None:
        history.grant(row.id, recipient, named, claim.signed_on or today, by)
        return None
    revoked_on, revoked_by = revoked
    if claim.signed_on is None or claim.signed_on <= revoked_on:
        column = COLUMNS[recipient][1]
        return (
            f"{what} stays revoked (revoked {revoked_on.isoformat()} through "
            f"{revoked_by}); an import grants it again only with a {column} after that "
            f"date"
        )
    history.grant(row.id, recipient, named, claim.signed_on, by)
    return (
        f"{what} granted again (signed {claim.signed_on.isoformat()}, after the revoke "
        f"of {revoked_on.isoformat()})"
    )


def referral_rows(session: Session, ids: Sequence[int]) -> dict[int, sa.Row]:
    return {
        row.id: row for row in session.execute(sa.select(*REFERRAL_ROW).where(Referral.id.in_(ids)))
    }


def refresh(
    session: Session, history: History, rows: Mapping[int, sa.Row], stamp: datetime
) -> list[int]:
    """Set each referral's release columns from the history; returns the ids that changed.

    A release counts only while it names the referral's current physician (or prescriber).
    The date stays after a revoke (the release was recorded; `release.recorded` rules then
    see it revoked and take their notes back).
    """
    changed = []
    for row in rows.values():
        values = {}
        for recipient, (flag, signed) in COLUMNS.items():
            named = getattr(row, NAMED[recipient])
            values[flag] = history.in_force(row.id, recipient, named) is not None
            values[signed] = history.last_signed(row.id, recipient, named)
        if any(getattr(row, name) != value for name, value in values.items()):
            changed.append({"_id": row.id, **values, "updated_at": stamp})
    if changed:  # one statement for the batch
        table = Referral.__table__
        columns = [c for c in changed[0] if c != "_id"]
        session.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("_id"))
            .values({c: sa.bindparam(c) for c in columns}),
            changed,
        )
    return [values["_id"] for values in changed]


def record(
    session: Session,
    referral_id: int,
    recipient: Recipient,
    *,
    grant: bool,
    on: date,
    by: str,
    stamp: datetime,
) -> bool:
    """A person grants or revokes one release (the command line: always obeyed)."""
    rows = referral_rows(session, [referral_id])
    history = History.read(session, [referral_id])
    row = rows[referral_id]
    if grant:
        changed = history.grant(row.id, recipient, getattr(row, NAMED[recipient]), on, by)
    else:
        changed = history.revoke(row.id, recipient, on, by)
    history.write(session)
    refresh(session, history, rows, stamp)
    return changed


def listing(session: Session, referral_id: int) -> list[Release]:
    """A referral's releases, oldest first (for status and the command line)."""
    return list(
        session.execute(
            sa.select(Release).where(Release.referral_id == referral_id).order_by(Release.id)
        ).scalars()
    )
