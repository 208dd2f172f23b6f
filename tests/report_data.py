"""The report's hand-computed fixture: 41 referrals from 10 physicians at 4 practices (and one
without a practice), 12 outreach visits, and the ledger a daemon would have left, written
straight into the tables so every date and time is the one the test's arithmetic uses.

TODAY is Monday 2026-06-15 in America/Chicago (the default configuration's zone): CDT,
UTC-5, until 2025-11-02 and again from 2026-03-08; CST, UTC-6, between. The default period
is then 2025-07-01 to 2026-06-15, and the 90-day windows count the visits of 2025-07-01 to
2026-03-17.

The names are made up; the referrals' patient fields hold the suite's sample patient values
(conftest.SAMPLE_PATIENT_VALUES), which the report must never show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from conftest import SAMPLE_PATIENT_VALUES
from followupd.models import FollowUp, Physician, Practice, Referral, Release, Visit
from followupd.records import physician_key, practice_key, visit_key
from followupd.store.report import records_making, records_prospects

TODAY = date(2026, 6, 15)
ZONE = ZoneInfo("America/Chicago")
ACK, CLOSING = "referral-acknowledgement", "closing-note"

PRACTICES = {
    1: "Harbor Family Medicine",
    2: "Lakeside Internal Medicine",
    3: "Northfield Pediatrics",
    4: "Riverbend OB/GYN",
    5: "Summit Psychiatry",
}
# id: (name, practice id or None)
PHYSICIANS = {
    1: ("Dr. Ann Lee", 1),
    2: ("Dr. Ben Ortiz", 1),
    3: ("Dr. Cara Diaz", 2),
    4: ("Dr. Dev Shah", 2),
    5: ("Dr. Eve Park", 3),
    6: ("Dr. Finn Moss", 3),
    7: ("Dr. Gia Roy", 4),
    8: ("Dr. Hal Kim", 4),
    9: ("Dr. Ida Fox", 1),
    10: ("Dr. Jon Wu", None),
}


def local(day: str, clock: str) -> datetime:
    """A local time in the practice's zone, as an aware datetime."""
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(clock), tzinfo=ZONE)


def utc(day: str, clock: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(clock), tzinfo=UTC)


@dataclass
class R:
    """One referral and its notes. `ack`/`closing`: (state, due, reason) or None for no
    row; `entered`: when followupd learned of it (default: 09:00 on the day received);
    `released`: when the physician's release was recorded (None: no release row)."""

    ref: str
    physician: int
    received: str
    ack: tuple | None = None
    closed: str | None = None
    closing: tuple | None = None
    entered: datetime | None = None
    released: datetime | None = None


def due_next(day: str) -> datetime:
    """08:00 the next business day (the default rules' due time), for the days used here."""
    start = date.fromisoformat(day)
    step = 3 if start.weekday() == 4 else 1
    return datetime.combine(start.fromordinal(start.toordinal() + step), time(8), tzinfo=ZONE)


NO_RELEASE = "no release of information on file for referral {ref}"
CONFIRM = (
    "the physician's email address for referral {ref} waits for confirmation (changed in an "
    "import): check it, then run `followupd physician confirm 2`"
)
GONE = "gone from source clinic-sheet since 2025-12-20: its row is no longer there"


def sent_at(moment: datetime) -> str:
    return f"sent {moment:%Y-%m-%d %H:%M} UTC"


REFERRALS: list[R] = [
    # Dr. Ann Lee (Harbor): visit V2 on 2025-09-09; her windows are [06-11, 09-08] and
    # [09-10, 12-08].
    R(
        "R-09",
        1,
        "2025-06-10",
        closed="2025-08-01",
        closing=("sent", due_next("2025-08-01"), sent_at(utc("2025-08-04", "18:00"))),
    ),
    R(
        "R-40",
        1,
        "2025-06-11",
        ack=("sent", due_next("2025-06-11"), sent_at(utc("2025-06-12", "14:00"))),
    ),
    R(
        "R-01",
        1,
        "2025-07-01",
        ack=("skipped", due_next("2025-07-01"), None),
        closed="2025-09-30",
        closing=("sent", due_next("2025-09-30"), sent_at(utc("2025-10-02", "15:00"))),
        released=local("2025-10-02", "09:00"),
    ),
    R(
        "R-02",
        1,
        "2025-08-12",
        ack=("sent", due_next("2025-08-12"), sent_at(utc("2025-08-13", "15:00"))),
        closed="2025-11-14",
        closing=("gone", due_next("2025-11-14"), "no longer in Gmail drafts"),
    ),
    R("R-03", 1, "2025-09-09", ack=("held", due_next("2025-09-09"), NO_RELEASE.format(ref="R-03"))),
    R(
        "R-04",
        1,
        "2025-10-14",
        ack=("sent", due_next("2025-10-14"), sent_at(utc("2025-10-16", "13:00"))),
        released=local("2025-10-15", "07:00"),
        closed="2026-05-12",
        closing=("cancelled", due_next("2026-05-12"), None),
    ),
    R(
        "R-05",
        1,
        "2025-12-08",
        ack=("sent", due_next("2025-12-08"), sent_at(utc("2025-12-09", "20:30"))),
    ),
    R("R-06", 1, "2025-12-09", ack=("skipped", due_next("2025-12-09"), None)),
    R("R-07", 1, "2026-04-07"),
    R("R-08", 1, "2026-06-02", ack=("claimed", due_next("2026-06-02"), None)),
    # Dr. Ben Ortiz (Harbor): visit V10 on 2026-02-02.
    R("R-10", 2, "2025-07-15", ack=("skipped", due_next("2025-07-15"), None)),
    R(
        "R-11",
        2,
        "2025-10-21",
        ack=("sent", due_next("2025-10-21"), sent_at(utc("2025-10-24", "16:00"))),
        released=local("2025-10-24", "10:30"),
    ),
    R("R-12", 2, "2026-02-10", ack=("held", due_next("2026-02-10"), CONFIRM.format(ref="R-12"))),
    R("R-13", 2, "2026-05-05", ack=("waiting", due_next("2026-05-05"), None)),
    R("R-14", 2, "2026-06-15", ack=("planned", local("2026-06-16", "08:00"), None)),
    R("R-15", 2, "2026-06-20", ack=("planned", due_next("2026-06-22"), None)),  # after today
    # Dr. Cara Diaz (Lakeside): visit V3 on 2025-11-12.
    R(
        "R-16",
        3,
        "2025-08-05",
        ack=("done", due_next("2025-08-05"), None),
        entered=local("2025-08-07", "15:00"),
        closed="2026-01-09",
        closing=("held", due_next("2026-01-09"), NO_RELEASE.format(ref="R-16")),
    ),
    R("R-17", 3, "2025-09-16", ack=("skipped", due_next("2025-09-16"), None), closed="2026-02-20"),
    R("R-18", 3, "2025-11-18", ack=("skipped", due_next("2025-11-18"), None)),
    R(
        "R-19",
        3,
        "2026-01-20",
        ack=("sent", due_next("2026-01-20"), sent_at(utc("2026-01-22", "15:00"))),
        released=local("2026-01-21", "17:00"),
    ),
    R(
        "R-20",
        3,
        "2026-03-06",
        ack=("sent", due_next("2026-03-06"), sent_at(utc("2026-03-09", "13:00"))),
    ),
    R(
        "R-21",
        3,
        "2026-05-19",
        ack=("deleted", due_next("2026-05-19"), "deleted from Gmail drafts"),
        entered=local("2026-05-22", "12:00"),
    ),
    # Dr. Dev Shah (Lakeside): visit V8 on 2025-07-10.
    R(
        "R-22",
        4,
        "2025-07-22",
        ack=("skipped", due_next("2025-07-22"), None),
        closed="2026-03-03",
        closing=("done", due_next("2026-03-03"), None),
    ),
    R(
        "R-23",
        4,
        "2025-12-02",
        ack=("skipped", due_next("2025-12-02"), None),
        closed="2026-04-10",
        closing=("failed", due_next("2026-04-10"), "template closing.txt.j2 failed"),
    ),
    R("R-24", 4, "2026-02-24", ack=("held", due_next("2026-02-24"), NO_RELEASE.format(ref="R-24"))),
    R("R-25", 4, "2026-04-28"),
    # Dr. Eve Park (Northfield): visit V5 on 2026-03-17.
    R(
        "R-26",
        5,
        "2025-06-30",
        ack=("sent", due_next("2025-06-30"), sent_at(utc("2025-07-01", "13:00"))),
        closed="2025-06-30",
        closing=("sent", due_next("2025-06-30"), sent_at(utc("2025-07-01", "14:00"))),
    ),
    R(
        "R-27",
        5,
        "2025-09-23",
        ack=("sent", due_next("2025-09-23"), "sent"),
        entered=local("2025-09-26", "08:30"),
    ),
    R(
        "R-28",
        5,
        "2026-01-06",
        ack=("done", due_next("2026-01-06"), None, local("2026-01-07", "08:04")),
    ),
    R("R-29", 5, "2026-05-26", ack=("gone", due_next("2026-05-26"), "no longer in Gmail drafts")),
    # Dr. Finn Moss (Northfield): never met.
    R(
        "R-30",
        6,
        "2025-10-07",
        ack=("skipped", due_next("2025-10-07"), None),
        closed="2026-06-15",
        closing=("planned", local("2026-06-16", "08:00"), None),
    ),
    R("R-31", 6, "2026-03-31", ack=("cancelled", due_next("2026-03-31"), None)),
    # Dr. Gia Roy (Riverbend): visit V4 on 2026-01-15 (V11 on 2026-06-10 is too young).
    R("R-32", 7, "2025-10-17", ack=("gone", due_next("2025-10-17"), "no longer in Gmail drafts")),
    R("R-33", 7, "2026-01-15", ack=("skipped", due_next("2026-01-15"), None)),
    R("R-34", 7, "2026-04-15"),
    R("R-35", 7, "2026-04-16", ack=("failed", due_next("2026-04-16"), "Gmail refused it")),
    # Dr. Hal Kim (Riverbend): visit V6 on 2026-03-18, one day too young for the windows.
    R("R-36", 8, "2025-08-19", ack=("skipped", due_next("2025-08-19"), None)),
    R("R-37", 8, "2026-03-18", ack=("withdrawn", due_next("2026-03-18"), "taken back")),
    # Dr. Ida Fox (Harbor): never met; quiet for exactly 90 days.
    R("R-38", 9, "2025-12-16", ack=("held", due_next("2025-12-16"), GONE)),
    R("R-39", 9, "2026-03-17"),
    # Dr. Jon Wu (no practice): one referral, long ago.
    R("R-41", 10, "2025-03-02"),
]

# (id, day, practice, physician met or None, cards left, named: (practice, physician,
# specialty) or None)
VISITS = [
    (1, "2025-06-20", 1, 1, 10, None),  # before the period
    (2, "2025-09-09", 1, 1, 10, ("Northfield Pediatrics", None, "pediatrics")),
    (3, "2025-11-12", 2, 3, 10, ("Summit Psychiatry", None, "psychiatry")),
    (4, "2026-01-15", 4, 7, 10, ("Cedar Pediatrics", "Dr. Kim Lo", "pediatrics")),
    (5, "2026-03-17", 3, 5, 5, ("CEDAR  pediatrics", "dr. kim lo", None)),
    (6, "2026-03-18", 4, 8, 10, None),
    (7, "2026-05-01", 1, None, 10, None),
    (8, "2025-07-10", 2, 4, 0, None),
    (9, "2025-10-01", 3, None, 10, None),
    (10, "2026-02-02", 1, 2, 10, (None, "Dr. Eve Park", None)),
    (11, "2026-06-10", 4, 7, 10, None),
    (12, "2025-12-01", 5, None, 10, None),
]


def _patient(n: int) -> dict:
    """Patient fields from the suite's sample values, which must never show."""
    name, dob, problem = SAMPLE_PATIENT_VALUES[(n % 3) * 3 : (n % 3) * 3 + 3]
    return {
        "client_name": name,
        "client_dob": date.fromisoformat(dob),
        "presenting_problem": problem,
        "treatment_focus": f"{problem} (focus)",
    }


def fill(engine: sa.Engine) -> None:
    """Write the fixture into a migrated, empty database."""
    stamp = local("2026-06-15", "06:00")
    with engine.begin() as db:
        db.execute(
            sa.insert(Practice),
            [
                {"id": i, "key": practice_key(name), "name": name, "created_at": stamp}
                for i, name in PRACTICES.items()
            ],
        )
        db.execute(
            sa.insert(Physician),
            [
                {
                    "id": i,
                    "key": physician_key(name, PRACTICES.get(practice)),
                    "name": name,
                    "email": f"doctor{i}@clinic.example",
                    "practice_id": practice,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for i, (name, practice) in PHYSICIANS.items()
            ],
        )
        _referrals(db)
        _visits(db)


def _referrals(db: sa.Connection) -> None:
    for n, r in enumerate(REFERRALS, start=1):
        entered = r.entered or local(r.received, "09:00")
        db.execute(
            sa.insert(Referral).values(
                id=n,
                ref=r.ref,
                received_on=date.fromisoformat(r.received),
                physician_id=r.physician,
                closed_on=date.fromisoformat(r.closed) if r.closed else None,
                closing_summary=SAMPLE_PATIENT_VALUES[(n % 3) * 3 + 2] if r.closed else None,
                release_on_file=r.released is not None,
                created_at=entered,
                updated_at=entered,
                **_patient(n),
            )
        )
        if r.released is not None:
            db.execute(
                sa.insert(Release).values(
                    referral_id=n,
                    recipient="physician",
                    physician_id=r.physician,
                    granted_on=r.released.date(),
                    granted_by="cli",
                    created_at=r.released,
                    updated_at=r.released,
                )
            )
        for rule, note in ((ACK, r.ack), (CLOSING, r.closing)):
            if note is not None:
                _note(db, rule, "referral", n, note)


def _note(db: sa.Connection, rule: str, subject_type: str, subject_id: int, note: tuple) -> None:
    """One ledger row; `note` is (state, due, reason) and, where the ledger recorded when
    the draft was made, that time: else, made, a migrated row's made_at (its due time)."""
    state, due, reason, *when = note
    made = state in ("done", "sent", "gone", "deleted", "withdrawn")
    extra = {}
    if records_making() and made:
        extra["made_at"] = when[0] if when else due
    db.execute(
        sa.insert(FollowUp).values(
            **extra,
            rule=rule,
            subject_type=subject_type,
            subject_id=subject_id,
            kind="reminder" if rule == "office-revisit" else "draft",
            state=state,
            due_at=due,
            external_id=f"gmail:d{subject_type}{subject_id}{rule}" if made else None,
            attempts=1 if made else 0,
            reason=reason,
            created_at=due,
            updated_at=due,
        )
    )


def _visits(db: sa.Connection) -> None:
    prospects = records_prospects()
    for i, day, practice, physician, cards, named in VISITS:
        values = {
            "id": i,
            "key": visit_key(
                date.fromisoformat(day),
                PRACTICES[practice],
                PHYSICIANS[physician][0] if physician else None,
            ),
            "visited_on": date.fromisoformat(day),
            "practice_id": practice,
            "physician_id": physician,
            "cards_left": cards,
            "handouts_left": 1,
            "business_manager": "Pat Manager",
            "notes": f"asked about {SAMPLE_PATIENT_VALUES[0]}",  # never shown by the report
            "created_at": local(day, "12:00"),
            "updated_at": local(day, "12:00"),
        }
        if prospects and named is not None:
            values |= dict(
                zip(("named_practice", "named_physician", "named_specialty"), named, strict=True)
            )
        db.execute(sa.insert(Visit).values(**values))
        # Each visit's revisit reminder, made: a reminder is never "unsent in Drafts".
        _note(db, "office-revisit", "visit", i, ("done", local(day, "10:00"), None))
