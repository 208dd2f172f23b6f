"""Practices and physicians as data entry finds them, and the addresses notes go to.

An address is where other patients' notes will go: one an import changes, or a new one that
looks like another physician's, is held until a person confirms it (`confirm_address`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Physician, Practice, Referral
from followupd.records import PhysicianRecord, physician_key, practice_key
from followupd.store.stamps import change_stamp


@dataclass
class _KnownPhysician:
    id: int
    specialty: str | None
    email: str | None
    fax: str | None
    name: str = ""


class Directory:
    """Practice and physician ids by key, cached for the length of an import.

    Holds plain values, not ORM objects, so it stays valid from one transaction to the next;
    call `forget()` after a rollback.

    `trusted`: a person typed this (the command line). An import is not trusted with
    addresses: an address that replaces a physician's known one, or a new one that looks like
    another physician's (`c1inic` for `clinic`), would send other patients' notes elsewhere,
    so notes to it wait for `followupd physician confirm`. `flagged` lists those physicians.
    """

    def __init__(self, trusted: bool = False) -> None:
        self.trusted = trusted
        self.flagged: dict[int, str] = {}  # physician id -> why its address waits
        self.forget()

    def forget(self) -> None:
        self.practices: dict[str, int] = {}
        self.physicians: dict[str, _KnownPhysician] = {}
        self._lookalikes: dict[str, tuple[int, str]] | None = None

    def practice_id(self, session: Session, name: str | None) -> int | None:
        if not name:
            return None
        key = practice_key(name)
        if key not in self.practices:
            found = session.execute(sa.select(Practice.id).where(Practice.key == key)).scalar()
            if found is None:
                practice = Practice(key=key, name=name)
                session.add(practice)
                session.flush()
                found = practice.id
            self.practices[key] = found
        return self.practices[key]

    def physician(self, session: Session, record: PhysicianRecord) -> tuple[int, bool]:
        """The id of the physician for `record`, created or brought up to date; True if
        anything about the physician changed."""
        key = physician_key(record.name, record.practice)
        known = self.physicians.get(key)
        if known is None:
            row = session.execute(
                sa.select(
                    Physician.id,
                    Physician.specialty,
                    Physician.email,
                    Physician.fax,
                    Physician.name,
                ).where(Physician.key == key)
            ).first()
            if row is None:
                return self._add_physician(session, key, record), True
            known = self.physicians[key] = _KnownPhysician(*row)
        changes = {
            name: value
            for name in ("specialty", "email", "fax")
            if (value := getattr(record, name)) is not None and getattr(known, name) != value
        }
        if changes:
            stamp = change_stamp(session, Referral)
            if "email" in changes:
                changes["email_check"] = self._address_check(
                    session, known.id, known.email, changes["email"]
                )
            session.execute(
                sa.update(Physician)
                .where(Physician.id == known.id)
                .values(**changes, updated_at=stamp)
            )
            if "email" in changes:  # held notes waiting for an address are planned again
                _replan_referrals_of(session, known.id, stamp)
            for name in ("specialty", "email", "fax"):
                if name in changes:
                    setattr(known, name, changes[name])
        return known.id, bool(changes)

    def _add_physician(self, session: Session, key: str, record: PhysicianRecord) -> int:
        check = self._address_check(session, None, None, record.email)
        physician = Physician(
            key=key,
            name=record.name,
            specialty=record.specialty,
            email=record.email,
            fax=record.fax,
            practice_id=self.practice_id(session, record.practice),
            email_check=check,
        )
        session.add(physician)
        session.flush()
        if check:
            self.flagged[physician.id] = check
        self.physicians[key] = _KnownPhysician(
            physician.id, record.specialty, record.email, record.fax, record.name
        )
        return physician.id

    def _address_check(
        self, session: Session, physician_id: int | None, old: str | None, new: str | None
    ) -> str | None:
        """Why notes to `new` must wait for a confirmation, or None."""
        if self.trusted or not new:
            return None
        index = self._lookalike_index(session)
        check = None
        if old and old != new:
            check = f"changed in an import from {old}"
        else:
            near = index.get(address_skeleton(new))
            if near is not None and near[0] != physician_id and near[1] != new:
                check = f"new in an import and looks like {near[1]} (physician {near[0]})"
        if physician_id is not None and check:
            self.flagged[physician_id] = check
        return check

    def _lookalike_index(self, session: Session) -> dict[str, tuple[int, str]]:
        """{skeleton of an address: (physician id, address)} of every known address."""
        if self._lookalikes is None:
            self._lookalikes = {}
            for physician_id, email in session.execute(
                sa.select(Physician.id, Physician.email).where(Physician.email.is_not(None))
            ):
                self._lookalikes.setdefault(address_skeleton(email), (physician_id, email))
        return self._lookalikes


_CONFUSABLE = str.maketrans(
    {
        "0": "o",
        "1": "l",
        "i": "l",
        "|": "l",
        "!": "l",
        "5": "s",
        "$": "s",
        "3": "e",
        ".": None,
        "-": None,
        "_": None,
    }
)


def address_skeleton(address: str) -> str:
    """An address with look-alike characters folded together: two different addresses with
    one skeleton ("dr.lee@c1inic.example", "drlee@clinic.example") are easy to mistake."""
    folded = unicodedata.normalize("NFKC", address).casefold()
    for pair, single in (("rn", "m"), ("vv", "w"), ("cl", "d")):
        folded = folded.replace(pair, single)
    return folded.translate(_CONFUSABLE)


def confirm_address(session: Session, physician_id: int) -> tuple[str, str | None] | None:
    """A person confirms a physician's address: notes held for it may go out. Returns the
    physician's (name, address), or None if there is no such physician."""
    found = session.execute(
        sa.select(Physician.name, Physician.email).where(Physician.id == physician_id)
    ).first()
    if found is None:
        return None
    stamp = change_stamp(session, Referral)
    session.execute(
        sa.update(Physician)
        .where(Physician.id == physician_id)
        .values(email_check=None, updated_at=stamp)
    )
    _replan_referrals_of(session, physician_id, stamp)  # their held notes are planned again
    return found.name, found.email


def _replan_referrals_of(session: Session, physician_id: int, stamp: datetime) -> None:
    """Stamp the physician's referrals (as physician or prescriber) changed: their held
    notes are planned again."""
    session.execute(
        sa.update(Referral)
        .where(
            sa.or_(Referral.physician_id == physician_id, Referral.prescriber_id == physician_id)
        )
        .values(updated_at=stamp)
    )
