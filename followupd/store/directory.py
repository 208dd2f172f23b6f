"""Practices and physicians as data entry finds them, and the addresses notes go to.

A physician is found as a person means it: by name and practice; by name alone when a row
gives no practice (the one physician of that name, else the row must say which); and a
physician first entered without a practice is the one a row later names with one.

An address is where other patients' notes will go: one an import changes, or a new one that
looks like another physician's, is held until a person confirms it (`confirm_address`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from followupd.models import Physician, Practice, Referral
from followupd.records import PhysicianRecord, RowError, fold, physician_key, practice_key
from followupd.store.stamps import change_stamp


@dataclass
class _KnownPhysician:
    id: int
    specialty: str | None
    email: str | None
    fax: str | None
    name: str = ""
    key: str = ""
    practice: str | None = None  # the practice's name; None: entered without one


class AmbiguousPhysician(RowError):
    """A name given without a practice that several physicians share: the row must say
    which, or a note would go to the wrong one (named by id and practice, never by patient)."""

    def __init__(self, name: str, candidates: list[tuple[int, str | None]]):
        self.name = name
        shown = ", ".join(f"{i} ({practice or 'no practice'})" for i, practice in candidates)
        self.listing = f'"{name}" is {len(candidates)} physicians: {shown}'
        super().__init__("physician", f"{self.listing}; give the practice to say which")


def _physician_columns() -> sa.Select:
    """What the directory keeps of a physician, with its practice's name."""
    return sa.select(
        Physician.id,
        Physician.specialty,
        Physician.email,
        Physician.fax,
        Physician.name,
        Physician.key,
        Practice.name.label("practice"),
    ).outerjoin(Practice, Practice.id == Physician.practice_id)


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
        """Drop what the cache holds (after a rollback: ids and flags from that transaction
        no longer exist)."""
        self.practices: dict[str, int] = {}
        self.physicians: dict[str, _KnownPhysician] = {}  # by key
        self._namesakes: dict[str, list[_KnownPhysician]] = {}  # folded name -> all of them
        self._lookalikes: dict[str, tuple[int, str]] | None = None
        self.flagged.clear()

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

    def physician(
        self, session: Session, record: PhysicianRecord, fill_only: bool = False
    ) -> tuple[int, bool]:
        """The id of the physician for `record`, created or brought up to date; True if
        anything about the physician changed. `fill_only`: what a third party said (a
        prospect named on a visit) fills a known physician's empty fields, never changes
        one. Raises `AmbiguousPhysician` for a name given without a practice that several
        physicians share."""
        key = physician_key(record.name, record.practice)
        known, adopted = self._match(session, record, key)
        if known is None:
            return self._add_physician(session, key, record), True
        if fill_only:
            record = replace(
                record, **{f: None for f in ("specialty", "email", "fax") if getattr(known, f)}
            )
        return known.id, self._update(session, known, record) or adopted

    def _match(
        self, session: Session, record: PhysicianRecord, key: str
    ) -> tuple[_KnownPhysician | None, bool]:
        """The physician a record names, and whether it just took the record's practice."""
        if not record.practice:  # the one physician of that name, whatever their practice
            namesakes = self.namesakes(session, record.name)
            if len(namesakes) > 1:
                raise AmbiguousPhysician(record.name, [(k.id, k.practice) for k in namesakes])
            return (namesakes[0] if namesakes else None), False
        known = self.physicians.get(key) or self._by_key(session, key)
        if known is not None:
            return known, False
        namesakes = self.namesakes(session, record.name)
        if len(namesakes) == 1 and namesakes[0].practice is None:  # entered without one
            self._adopt(session, namesakes[0], key, record.practice)
            return namesakes[0], True
        return None, False

    def _remember(self, row: sa.Row) -> _KnownPhysician:
        """The cached physician for a row read (the cache is newer within a transaction)."""
        known = self.physicians.get(row.key)
        if known is None:
            known = self.physicians[row.key] = _KnownPhysician(*row)
        return known

    def _by_key(self, session: Session, key: str) -> _KnownPhysician | None:
        row = session.execute(_physician_columns().where(Physician.key == key)).first()
        return None if row is None else self._remember(row)

    def namesakes(self, session: Session, name: str) -> list[_KnownPhysician]:
        """Every physician of this name, in any practice (one indexed read per name)."""
        folded = fold(name)
        if folded not in self._namesakes:
            rows = session.execute(
                _physician_columns()
                .where(Physician.key.startswith(f"{folded}|", autoescape=True))
                .order_by(Physician.id)
            )
            self._namesakes[folded] = [
                self._remember(row) for row in rows if fold(row.name) == folded
            ]
        return self._namesakes[folded]

    def _adopt(self, session: Session, known: _KnownPhysician, key: str, practice: str) -> None:
        """A physician entered without a practice is the one a record names with one: give
        it that practice (and key) instead of making a second physician without an address."""
        session.execute(
            sa.update(Physician)
            .where(Physician.id == known.id)
            .values(
                key=key,
                practice_id=self.practice_id(session, practice),
                updated_at=change_stamp(session, Referral),
            )
        )
        self.physicians.pop(known.key, None)
        known.key, known.practice = key, practice
        self.physicians[key] = known

    def _update(self, session: Session, known: _KnownPhysician, record: PhysicianRecord) -> bool:
        """Bring a known physician's specialty, email and fax up to the record's."""
        changes = {
            name: value
            for name in ("specialty", "email", "fax")
            if (value := getattr(record, name)) is not None and getattr(known, name) != value
        }
        if not changes:
            return False
        stamp = change_stamp(session, Referral)
        if "email" in changes:
            changes["email_check"] = self._address_check(
                session, known.id, known.email, changes["email"]
            )
        session.execute(
            sa.update(Physician).where(Physician.id == known.id).values(**changes, updated_at=stamp)
        )
        if "email" in changes:  # held notes waiting for an address are planned again
            _replan_referrals_of(session, known.id, stamp)
        for name in ("specialty", "email", "fax"):
            if name in changes:
                setattr(known, name, changes[name])
        return True

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
        known = self.physicians[key] = _KnownPhysician(
            physician.id,
            record.specialty,
            record.email,
            record.fax,
            record.name,
            key,
            record.practice or None,
        )
        if fold(record.name) in self._namesakes:
            self._namesakes[fold(record.name)].append(known)
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


def touch_physicians(session: Session, ids: set[int]) -> None:
    """Stamp physicians changed: a referral of theirs moved to another physician or was
    deleted, so planning looks again at their thank-you and quiet spell."""
    ids = {i for i in ids if i is not None}
    if ids:
        session.execute(
            sa.update(Physician)
            .where(Physician.id.in_(ids))
            .values(updated_at=change_stamp(session, Physician))
        )
