"""The outreach events over time: a physician's first referral, quiet spells, prospects named
on a visit, drafts left in Drafts, and the weekly digest.

Each scenario runs the real engine on the shipped configuration with one injected clock,
which also stamps the rows the store writes, and moves it forward day by day as a practice
would live through the weeks: the ledger is the record of what was made, and the outbox holds
what was.
"""

from __future__ import annotations

import email
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from conftest import SAMPLE_PATIENT_VALUES
from followupd import config as configuration
from followupd import store as store_module
from followupd.config import Rule
from followupd.engine import Engine
from followupd.models import FollowUp, Physician, Recipient, Referral, State
from followupd.planning import Calendar, desired, digest_days
from followupd.records import parse_referral, parse_visit
from followupd.store import (
    Directory,
    Store,
    delete_referral,
    merge_physicians,
    record_release,
    record_sync,
    upsert_referrals,
    upsert_visits,
)
from followupd.subjects import DraftFacts, PhysicianFacts, draft_subject, quiet_subject
from followupd.timing import ClosedDays, Duration

CHICAGO = ZoneInfo("America/Chicago")  # the shipped configuration's zone


def local(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), CHICAGO).astimezone(UTC)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    @property
    def today(self) -> date:
        return self.now.astimezone(CHICAGO).date()

    def to(self, day: date, hour: int = 12, minute: int = 0) -> None:
        moment = local(day, hour, minute)
        assert moment >= self.now, "the clock only moves forward here"
        self.now = moment


class Practice:
    """A home on the shipped configuration, its store and engine, all on one clock."""

    def __init__(self, home: Path, db_url: str, clock: Clock) -> None:
        self.home, self.clock = home, clock
        self.settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
        self.store = Store(self.settings.database_url)
        self.engine = Engine(self.settings, self.store, clock=clock)

    def tick(self):
        return self.engine.tick()

    def refer(self, ref: str, physician: str, *, on: date | None = None, **columns) -> None:
        row = {
            "ref": ref,
            "received_on": (on or self.clock.today).isoformat(),
            "physician": physician,
            "physician_email": f"{physician.split()[-1].lower()}@clinic.example",
            "practice": f"{physician.split()[-1]} Clinic",
            "client_name": "Test Client",
            **columns,
        }
        with self.store.session() as session:
            upsert_referrals(session, [parse_referral(row)], Directory(), today=self.clock.today)

    def visit(self, **columns) -> None:
        row = {"visited_on": self.clock.today.isoformat(), **columns}
        with self.store.session() as session:
            upsert_visits(session, [parse_visit(row)], Directory())

    def rows(self, rule: str | None = None) -> list[FollowUp]:
        with self.store.session() as session:
            query = sa.select(FollowUp).order_by(FollowUp.id)
            if rule:
                query = query.where(FollowUp.rule == rule)
            return list(session.execute(query).scalars())

    def physician_id(self, name: str) -> int:
        with self.store.session() as session:
            return session.execute(sa.select(Physician.id).where(Physician.name == name)).scalar()

    def referral_id(self, ref: str) -> int:
        with self.store.session() as session:
            return session.execute(sa.select(Referral.id).where(Referral.ref == ref)).scalar()

    def file(self, row: FollowUp) -> str:
        assert row.external_id and row.external_id.startswith("outbox:"), row.external_id
        return (self.settings.outbox_dir / row.external_id.removeprefix("outbox:")).read_text()

    def close(self) -> None:
        self.engine.close()
        self.store.close()


@pytest.fixture
def home(home: Path) -> Path:
    """The shipped configuration, with the first-referral thank-you (shipped off) on."""
    edit_config(
        home,
        "    template: first_referral.txt.j2\n    enabled: false\n",
        "    template: first_referral.txt.j2\n",
    )
    return home


@pytest.fixture
def practice_at(home, db_url, monkeypatch):
    made = []

    def start(day: date, hour: int = 12) -> Practice:
        clock = Clock(local(day, hour))
        monkeypatch.setattr(store_module.stamps, "now_utc", clock)  # rows stamped by it
        made.append(Practice(home, db_url, clock))
        return made[-1]

    yield start
    for practice in made:
        practice.close()


def edit_config(home: Path, old: str, new: str) -> None:
    path = home / "followupd.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def description(ics: str) -> str:
    """An .ics file's description, unfolded and unescaped."""
    unfolded = ics.replace("\r\n", "\n").replace("\n ", "")
    line = next(x for x in unfolded.splitlines() if x.startswith("DESCRIPTION:"))
    return line.removeprefix("DESCRIPTION:").replace("\\n", "\n").replace("\\,", ",")


def title(ics: str) -> str:
    unfolded = ics.replace("\r\n", "\n").replace("\n ", "")
    return next(x for x in unfolded.splitlines() if x.startswith("SUMMARY:")).replace("\\,", ",")


def body_of(eml: str) -> email.message.Message:
    return email.message_from_string(eml.removeprefix("X-Unsent: 1\r\n"))


# --- physician.first_referral ----------------------------------------------------------------


def test_a_physicians_first_referral_is_thanked_once_and_never_again(practice_at):
    """Only the first referral ever; a second one does not fire, nor does a merge."""
    monday = date(2026, 11, 2)
    p = practice_at(monday, 9)
    p.refer("R-1", "Dr. Ann Lee")
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert (thanks.subject_type, thanks.subject_id) == ("physician", p.physician_id("Dr. Ann Lee"))
    assert thanks.state == State.planned  # 2 business days after, at 08:00
    assert thanks.due_at == local(date(2026, 11, 4), 8)

    p.clock.to(date(2026, 11, 3))
    p.refer("R-2", "Dr. Ann Lee")  # her second referral
    p.tick()
    assert len(p.rows("first-referral-thanks")) == 1

    p.clock.to(date(2026, 11, 4), 8, 1)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done
    draft = body_of(p.file(thanks))
    assert draft["To"] == '"Dr. Ann Lee" <lee@clinic.example>'
    assert "R-1" in draft["Subject"]
    assert "the first you have sent me" in draft.get_payload()
    assert "Test Client" not in p.file(thanks)  # no release, and no client field anyway

    # The same physician entered twice ("Dr. A. Lee" at the same clinic), thanked as a new
    # one, then merged into the first: nobody is thanked again.
    p.refer("R-3", "Dr. A. Lee", physician_email="alee@clinic.example")
    p.clock.to(date(2026, 11, 9), 9)
    p.tick()
    assert [r.state for r in p.rows("first-referral-thanks")] == [State.done, State.done]
    with p.store.session() as session:
        merge_physicians(session, p.physician_id("Dr. Ann Lee"), p.physician_id("Dr. A. Lee"))
    p.clock.to(date(2026, 11, 16), 9)
    p.tick()
    rows = p.rows("first-referral-thanks")
    assert [(r.state, r.subject_id > 0) for r in rows] == [(State.done, True), (State.done, False)]

    # A prospect (named on a visit, never referred) is merged with a physician who referred
    # and was thanked: the prospect keeps that thank-you and makes no second one.
    p.visit(practice="Oak Clinic", physician="Dr. Ruth Oak", named_physician="Dr. Bo Pine")
    p.refer("R-4", "Dr. Bo Pine (dup)", physician_email="pine@clinic.example")
    p.clock.to(date(2026, 11, 19), 9)
    p.tick()
    assert len(p.rows("first-referral-thanks")) == 3
    with p.store.session() as session:
        merge_physicians(
            session, p.physician_id("Dr. Bo Pine"), p.physician_id("Dr. Bo Pine (dup)")
        )
    p.clock.to(date(2026, 11, 23), 9)
    p.tick()
    rows = p.rows("first-referral-thanks")
    assert len(rows) == 3 and rows[-1].subject_id == p.physician_id("Dr. Bo Pine")
    assert rows[-1].state == State.done


def test_a_thank_you_that_names_the_client_waits_for_the_release_to_that_physician(
    practice_at, home
):
    """The shipped thank-you names no client and goes at once; one that shows client fields
    is held until the client's release naming the physician is on file, and a revoke takes it
    back, as every note with patient details."""
    templates = home / "templates"
    templates.mkdir()
    (templates / "first_referral.txt.j2").write_text(
        "Subject: Thank you (our ref {{ referral.ref }})\n\n"
        "Dear {{ recipient.salutation }},\n\nThank you for referring {{ client.name }}.\n"
    )
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0])
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.held
    assert thanks.reason == "no release of information on file for referral R-1"

    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=True, on=p.clock.today, by="cli")
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done
    assert SAMPLE_PATIENT_VALUES[0] in p.file(thanks)  # a draft to that physician, released

    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.withdrawn
    assert not (p.settings.outbox_dir / "drafts" / f"{thanks.id}.eml").exists()


def _client_thank_you(home: Path) -> None:
    """A thank-you template that names the client: a release to the physician gates it."""
    templates = home / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "first_referral.txt.j2").write_text(
        "Subject: Thank you (our ref {{ referral.ref }})\n\n"
        "Dear {{ recipient.salutation }},\n\nThank you for referring {{ client.name }}.\n"
    )


def test_a_thank_you_made_stays_about_its_referral_when_an_earlier_one_is_entered(
    practice_at, home
):
    """The thank-you named R-2's client under R-2's release. A referral entered later but
    dated earlier (R-1, no release) is now her first: the draft is still R-2's, neither
    withdrawn for R-1's missing release nor left in Drafts when R-2's release is revoked."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-2", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done and thanks.basis_id == p.referral_id("R-2")
    assert SAMPLE_PATIENT_VALUES[0] in p.file(thanks)

    p.refer("R-1", "Dr. Ann Lee", on=date(2026, 10, 20), client_name=SAMPLE_PATIENT_VALUES[1])
    p.clock.to(date(2026, 11, 5), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert (thanks.state, thanks.reason) == (State.done, None)
    assert thanks.basis_id == p.referral_id("R-2")

    with p.store.session() as session:
        record_release(session, "R-2", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.withdrawn


def test_a_thank_you_made_is_taken_back_when_its_referral_moves_and_is_revoked(practice_at, home):
    """R-1 was Dr. Lee's and her thank-you names its client; corrected to Dr. Pine's, a
    revoke of R-1's release still takes Dr. Lee's draft back."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done
    p.refer(
        "R-1",
        "Dr. Bo Pine",
        on=date(2026, 11, 2),
        client_name=SAMPLE_PATIENT_VALUES[0],
        release_on_file="yes",
    )
    p.clock.to(date(2026, 11, 5), 9)
    p.tick()
    lee = p.physician_id("Dr. Ann Lee")
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.state == State.done
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.state == State.withdrawn


def test_a_pending_thank_you_whose_referral_moves_away_thanks_nobody(practice_at, home):
    """R-1 was entered as Dr. Lee's, then corrected to Dr. Pine's before her thank-you was
    due: she has no referral left and is not thanked for Dr. Pine's client."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.tick()
    lee = p.physician_id("Dr. Ann Lee")
    p.clock.to(date(2026, 11, 3), 9)
    p.refer("R-1", "Dr. Bo Pine", on=date(2026, 11, 2), release_on_file="yes")
    p.tick()
    p.clock.to(date(2026, 11, 6), 9)
    p.tick()
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.state == State.cancelled and mine.external_id is None
    [pines] = [r for r in p.rows("first-referral-thanks") if r.subject_id != lee]
    assert pines.state == State.done and "Dr. Bo Pine" in body_of(p.file(pines))["To"]


def test_a_withdrawn_thank_you_is_not_made_anew_under_another_physicians_release(practice_at, home):
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    lee = p.physician_id("Dr. Ann Lee")
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    p.clock.to(date(2026, 11, 5), 9)  # R-1 was Dr. Pine's; the client's release names him
    p.refer(
        "R-1", "Dr. Bo Pine", on=date(2026, 11, 2), release_on_file="yes", release_on="2026-11-05"
    )
    p.tick()
    p.clock.to(date(2026, 11, 10), 9)
    p.tick()
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.state == State.withdrawn


def test_a_thank_you_delivered_before_planning_sees_its_referral_move_waits(practice_at, home):
    """R-1 moved to Dr. Pine after Dr. Lee's thank-you was planned; delivery comes before
    the next plan (another replica, say): it is held, never made about R-1."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.tick()
    lee = p.physician_id("Dr. Ann Lee")
    p.clock.to(date(2026, 11, 6), 9)
    p.refer("R-1", "Dr. Bo Pine", on=date(2026, 11, 2), release_on_file="yes")
    p.engine.deliver_due()
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.external_id is None and mine.state in (State.held, State.cancelled)
    p.tick()
    [mine] = [r for r in p.rows("first-referral-thanks") if r.subject_id == lee]
    assert mine.state == State.cancelled and mine.external_id is None


def test_a_thank_you_withdrawn_then_renamed_is_made_when_released_again(practice_at, home):
    """Taken back before she had it, the thank-you does not count as made: under the
    renamed rule, released again, she is thanked."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    assert [r.state for r in p.rows("first-referral-thanks")] == [State.withdrawn]
    p.close()
    edit_config(home, "  - name: first-referral-thanks\n", "  - name: thanks-for-a-first\n")
    p = practice_at(date(2026, 11, 5), 9)
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=True, on=p.clock.today, by="cli")
    p.tick()
    p.clock.to(date(2026, 11, 9), 9)
    p.tick()
    assert [r.state for r in p.rows("thanks-for-a-first")] == [State.done]


def test_a_withdrawn_thank_you_merged_away_is_not_made_anew(practice_at, home):
    """Dr. Lee entered twice, thanked twice; one withdrawn (a revoke), then the two merged:
    released again, the withdrawn one, kept as history, makes no second thank-you."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.refer(
        "R-2",
        "Dr. Ann Lee",
        practice="Elm Street Clinic",
        client_name=SAMPLE_PATIENT_VALUES[3],
        release_on_file="yes",
    )
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    with p.store.session() as session:
        record_release(session, "R-2", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    with p.store.session() as session:
        ids = sorted(session.execute(sa.select(Physician.id)).scalars())
        merge_physicians(session, ids[0], ids[1])
    p.clock.to(date(2026, 11, 5), 9)
    p.tick()
    with p.store.session() as session:
        record_release(session, "R-2", Recipient.physician, grant=True, on=p.clock.today, by="cli")
    for day in (6, 9, 10):
        p.clock.to(date(2026, 11, day), 9)
        p.tick()
    states = sorted((r.state, r.subject_id > 0) for r in p.rows("first-referral-thanks"))
    assert states == [(State.done, True), (State.withdrawn, False)]


def _call_rule(home: Path) -> None:
    """A second thank-you rule: a reminder to call, beside the draft."""
    (home / "templates").mkdir(exist_ok=True)
    (home / "templates" / "thanks_call.txt.j2").write_text(
        "Title: Call {{ physician.name }} to thank them\nA first referral.\n"
    )
    edit_config(
        home,
        "  - name: quiet-physician\n",
        "  - name: first-referral-call\n    event: physician.first_referral\n"
        '    after: 0 days\n    at: "09:00"\n    make: reminder\n'
        "    template: thanks_call.txt.j2\n  - name: quiet-physician\n",
    )


def test_deleting_a_mistaken_first_referral_plans_the_waiting_thank_you_about_the_next(
    practice_at, home
):
    """The call (made) was about R-1; the draft waits for R-1's release. R-1 was a mistake:
    deleted, the draft is about R-2 (released) and goes; the call is not made again."""
    _client_thank_you(home)
    _call_rule(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0])
    p.clock.to(date(2026, 11, 2), 10)
    p.tick()
    [call] = p.rows("first-referral-call")
    [thanks] = p.rows("first-referral-thanks")
    assert (call.state, thanks.state) == (State.done, State.held)
    p.refer("R-2", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[1], release_on_file="yes")
    with p.store.session() as session:
        assert delete_referral(session, "R-1").deleted
    p.clock.to(date(2026, 11, 2), 11)
    p.tick()
    p.clock.to(date(2026, 11, 6), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done and thanks.basis_id == p.referral_id("R-2")
    assert SAMPLE_PATIENT_VALUES[1] in p.file(thanks)
    assert [r.state for r in p.rows("first-referral-call")] == [State.done]


def test_a_revoke_after_a_merge_takes_back_the_merged_physicians_thank_you(practice_at, home):
    """Dr. Lee entered twice (two practices), each thanked naming a client; merged, then
    R-2's release revoked: the thank-you about R-2, kept as history, is taken back."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0], release_on_file="yes")
    p.refer(
        "R-2",
        "Dr. Ann Lee",
        practice="Elm Street Clinic",
        client_name=SAMPLE_PATIENT_VALUES[3],
        release_on_file="yes",
    )
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    [second] = [r for r in p.rows("first-referral-thanks") if r.basis_id == p.referral_id("R-2")]
    assert second.state == State.done
    with p.store.session() as session:
        ids = sorted(session.execute(sa.select(Physician.id)).scalars())
        merge_physicians(session, ids[0], ids[1])
    p.clock.to(date(2026, 11, 4), 10)
    p.tick()
    with p.store.session() as session:
        record_release(session, "R-2", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    rows = {r.id: r for r in p.rows("first-referral-thanks")}
    assert rows[second.id].state == State.withdrawn
    assert [r.state for r in rows.values() if r.id != second.id] == [State.done]


def test_a_merge_keeps_the_thank_you_made_and_cancels_the_waiting_one(practice_at, home):
    """Dr. Lee at the Elm Street Clinic was thanked; the same Dr. Lee entered again without
    a release waits. Merged into the waiting one, nobody is thanked twice."""
    _client_thank_you(home)
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", client_name=SAMPLE_PATIENT_VALUES[0])  # held: no release
    p.refer(
        "R-2",
        "Dr. Ann Lee",
        practice="Elm Street Clinic",
        client_name=SAMPLE_PATIENT_VALUES[3],
        release_on_file="yes",
    )
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    states = {r.basis_id: r.state for r in p.rows("first-referral-thanks")}
    assert states == {p.referral_id("R-1"): State.held, p.referral_id("R-2"): State.done}
    with p.store.session() as session:
        ids = sorted(session.execute(sa.select(Physician.id)).scalars())
        merge_physicians(session, ids[0], ids[1])
        record_release(session, "R-1", Recipient.physician, grant=True, on=p.clock.today, by="cli")
    p.clock.to(date(2026, 11, 9), 9)
    p.tick()
    rows = p.rows("first-referral-thanks")
    assert sorted((r.state, r.subject_id > 0) for r in rows) == [
        (State.cancelled, False),
        (State.done, True),
    ]


def test_a_change_of_time_zone_makes_no_second_unsent_reminder(practice_at, home):
    p = practice_at(date(2026, 11, 2), 8)  # Monday
    p.refer("R-1", "Dr. Ann Lee", release_on_file="yes", on=date(2026, 10, 30))
    p.clock.to(date(2026, 11, 2), 23, 30)  # made late: Tuesday already in New York
    p.tick()
    [ack] = p.rows("referral-acknowledgement")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    assert [r.state for r in p.rows("unsent-note") if r.subject_id == ack.id] == [State.done]
    p.close()
    edit_config(home, 'timezone: "America/Chicago"', 'timezone: "America/New_York"')
    p = practice_at(date(2026, 11, 6), 9)
    p.tick()
    rows = p.rows("unsent-note")
    assert [r.state for r in rows if r.subject_id == ack.id] == [State.done]
    assert all(r.subject_id > 0 for r in rows)  # none retired for a draft made anew


def test_a_renamed_thank_you_rule_thanks_nobody_twice(practice_at, home):
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee")
    p.clock.to(date(2026, 11, 4), 9)
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.done
    p.close()
    edit_config(home, "  - name: first-referral-thanks\n", "  - name: thanks-for-a-first\n")
    p = practice_at(date(2026, 11, 5), 9)
    p.tick()
    p.clock.to(date(2026, 11, 9), 9)
    p.tick()
    assert p.rows("thanks-for-a-first") == []
    assert len(list((p.settings.outbox_dir / "drafts").glob("*.eml"))) == 1  # the thank-you


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_physicians_last_referral_deleted_or_moved_starts_the_quiet_spell_of_the_one_before(
    practice_at, how
):
    """R-2 was entered by mistake (deleted) or belongs to another physician (corrected):
    Dr. Lee's last referral is R-1 again, whose 90 days are long over: a call now."""
    start = date(2026, 1, 6)
    p = practice_at(start, 9)
    p.refer("R-1", "Dr. Ann Lee")
    p.clock.to(start + timedelta(days=60), 9)
    p.refer("R-2", "Dr. Ann Lee")
    p.tick()
    p.clock.to(start + timedelta(days=100), 9)
    p.tick()
    assert p.rows("quiet-physician") == []  # R-2 was 40 days ago
    with p.store.session() as session:
        if how == "deleted":
            assert delete_referral(session, "R-2").deleted
        else:
            upsert_referrals(
                session,
                [
                    parse_referral(
                        {
                            "ref": "R-2",
                            "received_on": (start + timedelta(days=60)).isoformat(),
                            "physician": "Dr. Bo Pine",
                            "physician_email": "pine@clinic.example",
                            "client_name": "Test Client",
                        }
                    )
                ],
                Directory(),
                today=p.clock.today,
            )
    p.clock.to(start + timedelta(days=100), 10)
    p.tick()
    [call] = p.rows("quiet-physician")
    assert call.subject_id == p.referral_id("R-1") and call.state == State.done
    assert "Call or visit Dr. Ann Lee" in title(p.file(call))


def test_a_draft_made_anew_after_a_withdrawal_gets_its_own_unsent_reminder(practice_at):
    p = practice_at(date(2026, 11, 2), 9)  # Monday
    p.refer("R-1", "Dr. Ann Lee", release_on_file="yes")
    p.clock.to(date(2026, 11, 3), 8, 1)
    p.tick()
    [ack] = p.rows("referral-acknowledgement")
    p.clock.to(date(2026, 11, 5), 9)  # two business days on: the first reminder
    p.tick()
    [first] = p.rows("unsent-note")
    assert first.state == State.done
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=False, on=p.clock.today, by="cli")
    p.engine.withdraw_now()
    assert p.rows("referral-acknowledgement")[0].state == State.withdrawn
    p.clock.to(date(2026, 11, 9), 9)  # released again on Monday: the draft is made anew
    with p.store.session() as session:
        record_release(session, "R-1", Recipient.physician, grant=True, on=p.clock.today, by="cli")
    p.tick()
    p.tick()
    [ack] = p.rows("referral-acknowledgement")
    assert ack.state == State.done and ack.made_at == p.clock.now
    p.clock.to(date(2026, 11, 12), 9)  # two business days after that (11: Veterans Day)
    p.tick()
    rows = p.rows("unsent-note")
    rows = [r for r in rows if r.subject_id != p.rows("first-referral-thanks")[0].id]
    assert len(rows) == 2
    old, new = rows
    assert old.subject_id < 0 and old.state == State.done  # kept as history
    assert (new.subject_id, new.state) == (ack.id, State.done)
    assert new.remind_at == local(date(2026, 11, 12), 9)


def test_first_referrals_older_than_the_history_cutoff_are_skipped(practice_at):
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", on=date(2026, 6, 1))  # last year's log, imported today
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.state == State.skipped and thanks.reason.startswith("history: first referral")


# --- physician.quiet -------------------------------------------------------------------------


def test_a_quiet_spell_begins_after_quiet_after_fires_once_and_a_referral_ends_it(practice_at):
    start = date(2026, 1, 6)
    p = practice_at(start, 9)
    p.refer("R-1", "Dr. Ann Lee")
    p.visit(practice="Lee Clinic", physician="Dr. Ann Lee")
    p.tick()
    assert p.rows("quiet-physician") == []  # no call planned months ahead

    p.clock.to(start + timedelta(days=89), 8)
    p.tick()
    assert p.rows("quiet-physician") == []

    began = start + timedelta(days=90)  # Monday 6 April 2026
    p.clock.to(began, 0, 5)
    p.tick()
    [call] = p.rows("quiet-physician")
    assert (call.subject_type, call.subject_id) == ("quiet", p.referral_id("R-1"))
    assert call.state == State.done and call.remind_at == local(began, 9)
    ics = p.file(call)
    assert "Call or visit Dr. Ann Lee" in title(ics)
    text = description(ics)
    assert "1 referral since January 6, 2026" in text and "(our ref R-1)" in text
    assert "Last visit: January 6, 2026" in text
    assert "Test Client" not in ics

    for later in (1, 2, 30):  # once per spell
        p.clock.to(began + timedelta(days=later), 10)
        p.tick()
    assert len(p.rows("quiet-physician")) == 1

    back = began + timedelta(days=34)  # Sunday 10 May
    p.clock.to(back, 10)
    p.refer("R-2", "Dr. Ann Lee")  # she refers again: the spell is over
    p.tick()
    for later in (1, 45, 89):
        p.clock.to(back + timedelta(days=later), 10)
        p.tick()
    assert len(p.rows("quiet-physician")) == 1

    again = back + timedelta(days=90)  # a Saturday: the call goes on Monday at 09:00
    p.clock.to(again, 10)
    p.tick()
    _, second = p.rows("quiet-physician")
    assert second.subject_id == p.referral_id("R-2") and second.state == State.done
    assert second.remind_at == local(again + timedelta(days=2), 9)
    assert "2 referrals since January 6, 2026" in description(p.file(second))


def test_a_referral_entered_late_but_dated_later_is_the_last_one_and_starts_the_next_spell(
    practice_at, home
):
    edit_config(
        home,
        "    event: physician.quiet\n    after: 0 days",
        "    event: physician.quiet\n    after: 1 week",
    )
    start = date(2026, 1, 6)
    p = practice_at(start, 9)
    p.refer("R-1", "Dr. Ann Lee")
    p.clock.to(start + timedelta(days=90), 9)
    p.tick()
    [call] = p.rows("quiet-physician")
    assert call.state == State.done  # a reminder goes on the calendar at once, dated a week on
    assert call.remind_at == local(start + timedelta(days=97), 9)

    # A referral typed in late, dated before the spell began, is still the last one: the spell
    # it ends is over and the next begins 90 days after it, on the day the sweep looks.
    p.refer("R-0", "Dr. Ann Lee", on=start + timedelta(days=80))
    p.clock.to(start + timedelta(days=91), 9)
    p.tick()
    assert len(p.rows("quiet-physician")) == 1
    p.clock.to(start + timedelta(days=170), 9)
    p.tick()
    rows = p.rows("quiet-physician")
    assert [r.subject_id for r in rows] == [p.referral_id("R-1"), p.referral_id("R-0")]


def test_quiet_spells_by_planning_alone():
    cal = Calendar(CHICAGO, quiet_after=Duration(3, "months"))
    facts = PhysicianFacts(
        id=7,
        specialty="internal medicine",
        email="x@clinic.example",
        email_check=None,
        first_id=1,
        first_ref="R-1",
        first_received_on=date(2025, 5, 1),
        first_created_at=None,
        first_updated_at=None,
        first_release_on_file=False,
        first_release_on=None,
        first_gone=None,
        last_id=9,
        last_received_on=date(2026, 1, 31),
        last_created_at=None,
    )
    spell = quiet_subject(facts, cal)
    assert (spell.type, spell.id) == ("quiet", 9)
    assert spell.events == {"physician.quiet": date(2026, 4, 30)}  # 31 January + 3 months
    over = quiet_subject(facts, cal, last_id=4)  # a spell after an earlier referral: over
    assert over.events == {}
    rule = Rule(
        name="quiet",
        event="physician.quiet",
        after="0 days",
        at="09:00",
        make="reminder",
        template="quiet.txt.j2",
    )
    [call] = desired(spell, [rule], cal)
    assert call.remind_at == local(date(2026, 4, 30), 9)
    assert desired(over, [rule], cal) == []


# --- prospect.named --------------------------------------------------------------------------


def test_a_practice_named_by_an_internist_is_a_prospect_and_the_next_ask_is_an_obgyn(
    practice_at,
):
    p = practice_at(date(2026, 11, 2), 15)
    p.visit(
        practice="Lakeside Internal Medicine",
        physician="Dr. Miriam Okafor",
        specialty="internist",
        named_practice="Harbor Family Medicine",
        named_physician="Dr. Priya Raman",
        named_specialty="family medicine",
    )
    p.visit(practice="Cedar Women's Health", physician="Dr. Elena Ruiz")  # nothing named
    p.tick()
    [intro] = p.rows("prospect-introduction")
    assert intro.subject_type == "visit" and intro.state == State.done
    assert intro.remind_at == local(date(2026, 11, 9), 10)  # a week on, at 10:00
    ics = p.file(intro)
    assert title(ics) == "SUMMARY:Introduce yourself to Dr. Priya Raman (Harbor Family Medicine)"
    text = description(ics)
    assert "Dr. Miriam Okafor (Lakeside Internal Medicine) named Dr. Priya Raman" in text
    assert "say Dr. Miriam Okafor suggested you" in text
    assert 'Next ask Dr. Miriam Okafor: "Who is your favorite OB/GYN to refer to?"' in text
    raman = p.physician_id("Dr. Priya Raman")
    assert raman is not None  # a prospect physician, known from now on (no address yet)
    p.clock.to(date(2026, 11, 3), 9)
    p.tick()
    assert len(p.rows("prospect-introduction")) == 1
    # the prospect later refers: a thank-you for her first referral, as for anyone
    p.refer("R-9", "Dr. Priya Raman", practice="Harbor Family Medicine")
    p.tick()
    [thanks] = p.rows("first-referral-thanks")
    assert thanks.subject_id == raman


# --- note.unsent -----------------------------------------------------------------------------


def test_a_draft_left_in_drafts_two_business_days_gets_a_reminder_across_a_holiday(
    practice_at, home
):
    edit_config(home, "  closed: []", "  closed: [2026-11-27]")  # the Friday after Thanksgiving
    p = practice_at(date(2026, 11, 24), 9)  # Tuesday
    p.refer("R-1", "Dr. Ann Lee", release_on_file="yes")
    p.clock.to(date(2026, 11, 25), 8, 1)  # the acknowledgement is made on Wednesday 08:00
    p.tick()
    [ack] = p.rows("referral-acknowledgement")
    assert ack.state == State.done and ack.made_at == p.clock.now
    # Thursday is Thanksgiving, Friday closed, then the weekend: the 2 business days end on
    # Tuesday 1 December
    for day in (26, 27, 28, 29, 30):
        p.clock.to(date(2026, 11, day), 23)
        p.tick()
        assert p.rows("unsent-note") == [], day
    p.clock.to(date(2026, 12, 1), 0, 5)
    p.tick()
    [nudge] = p.rows("unsent-note")
    assert (nudge.subject_type, nudge.subject_id) == ("draft", ack.id)
    assert nudge.state == State.done and nudge.remind_at == local(date(2026, 12, 1), 9)
    ics = p.file(nudge)
    assert title(ics) == "SUMMARY:Still in Drafts: referral-acknowledgement (our ref R-1)"
    assert "to Dr. Ann Lee" in description(ics) and "since November 25, 2026" in description(ics)
    assert "Test Client" not in ics
    p.clock.to(date(2026, 12, 2), 9)
    p.tick()
    assert [r.subject_id for r in p.rows("unsent-note")].count(ack.id) == 1  # once


def test_a_draft_sent_or_gone_from_drafts_gets_no_reminder(practice_at):
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", release_on_file="yes")
    p.refer("R-2", "Dr. Bo Pine", release_on_file="yes")
    p.clock.to(date(2026, 11, 3), 8, 1)
    p.tick()
    acks = p.rows("referral-acknowledgement")
    assert [a.state for a in acks] == [State.done, State.done]
    with p.store.session() as session:  # as the Gmail sync records it
        record_sync(session, acks[0].id, state=State.sent, reason="sent")
        record_sync(session, acks[1].id, state=State.gone, reason="no longer in Gmail drafts")
    p.clock.to(date(2026, 11, 9), 9)
    p.tick()
    assert p.rows("unsent-note") == []


def test_an_unsent_reminder_not_yet_delivered_when_the_draft_is_sent_is_cancelled(practice_at):
    """Delivery decides again on fresh rows: the draft sent meanwhile, no reminder."""
    p = practice_at(date(2026, 11, 2), 9)
    p.refer("R-1", "Dr. Ann Lee", release_on_file="yes")
    p.clock.to(date(2026, 11, 3), 8, 1)
    p.tick()
    [ack] = p.rows("referral-acknowledgement")
    p.clock.to(date(2026, 11, 5), 0, 5)
    p.engine.plan()
    [nudge] = p.rows("unsent-note")
    assert nudge.state == State.planned
    with p.store.session() as session:
        record_sync(session, ack.id, state=State.sent, reason="sent")
    p.engine.deliver_due()
    [nudge] = p.rows("unsent-note")
    assert nudge.state == State.cancelled and nudge.reason == f"no longer applies to note {ack.id}"


def test_unsent_by_business_days_in_planning_alone():
    us = Calendar(CHICAGO, ClosedDays(country="US"), unsent_after=Duration(2, "business_days"))
    friday = datetime(2026, 12, 18, 22, 0, tzinfo=UTC)  # 16:00 in Chicago
    note = draft_subject(DraftFacts(5, State.done, friday), us)
    assert note.events == {"note.unsent": date(2026, 12, 22)}  # Monday 21, Tuesday 22
    christmas_eve = datetime(2026, 12, 24, 15, 0, tzinfo=UTC)
    note = draft_subject(DraftFacts(6, State.done, christmas_eve), us)
    assert note.events == {"note.unsent": date(2026, 12, 29)}  # 25 is Christmas: 28, 29
    for state in (State.sent, State.gone, State.deleted, State.withdrawn):
        assert draft_subject(DraftFacts(7, state, friday), us).events == {}


# --- the weekly digest -----------------------------------------------------------------------


def test_the_weekly_digest_comes_on_its_day_with_refs_and_names_only(practice_at, home):
    edit_config(
        home, "    template: digest.txt.j2\n    enabled: false", "    template: digest.txt.j2"
    )
    p = practice_at(date(2026, 6, 1), 9)
    p.refer("R-100", "Dr. Quinn Hale")  # her last referral: quiet by November

    monday = date(2026, 11, 2)
    p.clock.to(monday - timedelta(days=6), 9)  # the Tuesday before
    sample = iter(SAMPLE_PATIENT_VALUES)
    for ref, doctor, release in (
        ("R-1", "Dr. Ann Lee", "yes"),
        ("R-2", "Dr. Ann Lee", "yes"),
        ("R-3", "Dr. Bo Pine", "no"),
    ):
        name, dob, problem = next(sample), next(sample), next(sample)
        p.refer(
            ref,
            doctor,
            client_name=name,
            client_dob=dob,
            presenting_problem=problem,
            release_on_file=release,
        )
    p.visit(
        practice="Lee Clinic",
        physician="Dr. Ann Lee",
        named_practice="Harbor Family Medicine",
        named_physician="Dr. Priya Raman",
    )
    p.clock.to(monday - timedelta(days=5), 9)
    p.tick()  # Dr. Lee's two acknowledgements are made (released); R-3's is held
    digests = p.rows("weekly-digest")
    assert [(d.subject_type, d.state) for d in digests] == [("digest", State.planned)]
    assert digests[0].due_at == local(monday, 7, 30)
    assert date.fromordinal(digests[0].subject_id) == monday

    p.clock.to(monday, 7, 31)
    p.tick()
    digest, following = p.rows("weekly-digest")
    assert digest.state == State.done
    assert following.state == State.planned and following.due_at == local(
        monday + timedelta(7), 7, 30
    )
    eml = p.file(digest)
    message = body_of(eml)
    assert message["To"] == "Dana Reyes <dana@reyes-therapy.example>"  # your own mailbox
    text = message.get_payload()
    assert "- Dr. Ann Lee (Lee Clinic): 2 (R-1, R-2)" in text
    assert "- Dr. Bo Pine (Pine Clinic): 1 (R-3)" in text
    assert "referral-acknowledgement, ref R-1, to Dr. Ann Lee: since October 28, 2026" in text
    assert "ref R-3: no release of information on file for referral R-3" in text
    assert "To release it: followupd referral release R-3" in text
    assert "- Dr. Quinn Hale (Hale Clinic): 1 referral, the last on June 1, 2026" in text
    assert "- Dr. Priya Raman (Harbor Family Medicine): named by Dr. Ann Lee on October 27" in text
    assert "- Dr. Quinn Hale" not in text.split("Quiet physicians")[0]
    for value in SAMPLE_PATIENT_VALUES:
        assert value not in eml, value
    # the patient values are in the database and in the released drafts, not the digest
    released = [p.file(r) for r in p.rows("referral-acknowledgement") if r.state == State.done]
    assert any(SAMPLE_PATIENT_VALUES[0] in d for d in released)

    p.clock.to(monday, 12)
    p.tick()
    assert len(p.rows("weekly-digest")) == 2
    p.clock.to(monday + timedelta(days=3), 12)  # the digest itself never gets an unsent nudge
    p.tick()
    assert all(r.subject_id != digest.id for r in p.rows("unsent-note"))


def test_digest_days_start_with_the_rules_and_come_weekly():
    rule = Rule(name="d", make="draft", to="me", day="friday", template="digest.txt.j2")
    cal = Calendar(CHICAGO)
    thursday = local(date(2026, 11, 5), 12)
    assert digest_days(rule, cal, thursday, since=thursday) == [date(2026, 11, 6)]
    friday_late = local(date(2026, 11, 6), 9)  # after 08:00, the default time
    assert digest_days(rule, cal, friday_late, since=thursday) == [
        date(2026, 11, 6),
        date(2026, 11, 13),
    ]
    assert digest_days(rule, cal, friday_late, since=friday_late) == [date(2026, 11, 13)]


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        (
            "    day: monday\n",
            "    day: mondy\n",
            'rules[8].day: "mondy" is not a day of the week (try "monday" or "friday")',
        ),
        ("    day: monday\n", "", "rules[8].day: a digest (to: me) needs its day of the week"),
        (
            "    to: me\n",
            "    to: me\n    event: visit.logged\n",
            "rules[8].event: a digest (to: me) follows no event",
        ),
        (
            "  quiet_after: 90 days",
            "  quiet_after: 4 hours",
            "events.quiet_after: is counted in days, business days, weeks or months, at least 1 "
            '(try "90 days")',
        ),
        (
            "  unsent_after: 2 business days",
            "  unsent_after: 2 bizness days",
            'events.unsent_after: "2 bizness days" is not a duration',
        ),
        (
            '    event: physician.quiet\n    after: 0 days\n    at: "09:00"\n    make: reminder',
            '    event: physician.quiet\n    after: 0 days\n    at: "09:00"\n    make: draft',
            "rules[5].event: physician.quiet makes a reminder on your calendar (make: reminder)",
        ),
        (
            "    event: physician.first_referral\n",
            "    event: physician.first_referral\n    to: prescriber\n",
            "rules[4].event: physician.first_referral notes go to the physician",
        ),
    ],
)
def test_a_bad_outreach_setting_names_file_line_key_and_fix(home, old, new, says):
    edit_config(home, old, new)
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(home, environ={})
    [problem] = caught.value.problems
    assert says in problem, problem
    assert problem.startswith(f"{home / 'followupd.yaml'}:")
    line = int(problem.split(":")[1])
    assert line > 1


def test_a_digest_template_that_shows_client_fields_is_refused(home):
    templates = home / "templates"
    templates.mkdir()
    (templates / "digest.txt.j2").write_text("Subject: x\n\n{{ client.name }}\n")
    settings = configuration.load(home, environ={})
    from followupd.render import Templates

    [problem] = Templates(templates).problems(settings.config.rules)
    assert "digest template digest.txt.j2 uses client fields" in problem


# --- entering what was named -----------------------------------------------------------------


def test_visit_add_takes_the_named_practice_physician_and_specialty(cli):
    ran = cli(
        "visit",
        "add",
        "--practice",
        "Lakeside Internal Medicine",
        "--physician",
        "Dr. Miriam Okafor",
        "--specialty",
        "internal medicine",
        "--named-practice",
        "Harbor Family Medicine",
        "--named-physician",
        "Dr. Priya Raman",
        "--named-specialty",
        "family medicine",
    )
    assert ran.code == 0, ran.stderr
    import json

    [visit] = [json.loads(x) for x in cli("visit", "list", "--json").stdout.splitlines()]
    assert visit["named"] == "Dr. Priya Raman, Harbor Family Medicine"
    physicians = cli("physician", "list", "--json").stdout
    assert "Dr. Priya Raman" in physicians  # a prospect physician
    ran = cli("visit", "add", "--practice", "Oak Clinic", "--named-specialty", "OB/GYN")
    assert ran.code == 2
    assert (
        "--named-specialty: is set but named_practice and named_physician are empty" in ran.stderr
    )
    ran = cli("visit", "add", "--practice", "Oak Clinic", "--named-physician", "Dr. =?x?= Oak")
    assert ran.code == 2 and "--named-physician" in ran.stderr


def test_import_visits_reads_the_named_columns(cli, tmp_path):
    path = tmp_path / "visits.csv"
    path.write_text(
        "visited_on,practice,physician,specialty,named_practice,named_physician,named_specialty\n"
        "2026-11-02,Lakeside Internal Medicine,Dr. Miriam Okafor,internist,"
        "Harbor Family Medicine,Dr. Priya Raman,family medicine\n"
        "2026-11-03,Oak Clinic,,,,,OB/GYN\n"
        "2026-11-04,Pine Clinic,,,Cedar Women's Health,,OB/GYN\n"
    )
    ran = cli("import", "visits", str(path))
    assert ran.code == 1  # one row rejected
    assert "line 3, column named_specialty: is set but named_practice" in ran.stderr
    assert "added 2" in ran.stdout
    import json

    named = {
        v["practice"]: v["named"]
        for v in (json.loads(x) for x in cli("visit", "list", "--json").stdout.splitlines())
    }
    assert named == {
        "Lakeside Internal Medicine": "Dr. Priya Raman, Harbor Family Medicine",
        "Pine Clinic": "Cedar Women's Health",
    }
    # importing the same file again changes nothing
    again = cli("import", "visits", str(path))
    assert "added 0, updated 0, unchanged 2" in again.stdout


def test_a_prospect_named_on_a_visit_never_changes_a_known_physicians_details(cli):
    """Another physician's answer fills what is not known yet, never what is."""
    import json

    added = cli(
        "physician", "add", "--name", "Dr. Ann Lee", "--practice", "Lee Clinic",
        "--specialty", "internal medicine",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    ran = cli(
        "visit", "add", "--practice", "Chan Clinic", "--named-practice", "Lee Clinic",
        "--named-physician", "Dr. Ann Lee", "--named-specialty", "psychiatry",
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    [lee] = [
        row
        for row in map(json.loads, cli("physician", "list", "--json").stdout.splitlines())
        if row["name"] == "Dr. Ann Lee"
    ]
    assert lee["specialty"] == "internal medicine"
