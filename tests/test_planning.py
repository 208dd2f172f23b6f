"""Pure planning: (subject, rules, calendar) -> desired follow-ups; ledger reconciliation."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from followupd.config import Rule
from followupd.models import State
from followupd.planning import Calendar, Existing, Subject, desired, reconcile

NY = ZoneInfo("America/New_York")
CAL = Calendar(NY, frozenset({date(2026, 11, 26)}))
ACK = Rule(
    name="ack",
    event="referral.received",
    after="1 business day",
    at="08:00",
    make="draft",
    template="acknowledgement.txt.j2",
    when={"referral": "open"},
)
CLOSE = Rule(
    name="close", event="referral.closed", after="0 days", make="draft", template="closing.txt.j2"
)
REVISIT = Rule(
    name="revisit",
    event="visit.logged",
    after="1 month",
    at="10:00",
    make="reminder",
    template="revisit.txt.j2",
)
PCP_ONLY = Rule(
    name="pcp",
    event="referral.received",
    after="3 days",
    make="draft",
    template="acknowledgement.txt.j2",
    when={"specialty": ["internal medicine", "family medicine"]},
)
GATED = frozenset({"ack", "close", "pcp"})


def referral(release: bool = True, **kw) -> Subject:
    base = {
        "type": "referral",
        "id": 7,
        "label": "referral R-7",
        "specialty": "Internist",
        "releases": {"physician": release, "prescriber": release},
        "recipients": {"physician": None},
        "events": {"referral.received": date(2026, 11, 25)},
    }
    base.update(kw)
    return Subject(**base)


def test_business_day_offset_skips_the_holiday_and_lands_at_eight():
    [ack] = desired(referral(), [ACK], CAL, GATED)
    assert ack.due_at.astimezone(NY) == datetime(2026, 11, 27, 8, 0, tzinfo=NY)
    assert ack.hold is None and ack.kind == "draft"


def test_no_release_holds_with_a_reason_naming_the_referral():
    [ack] = desired(referral(release=False), [ACK], CAL, GATED)
    assert ack.hold == "no release of information on file for referral R-7"


def test_no_email_holds():
    reason = "no email address for the physician of referral R-7"
    [ack] = desired(referral(recipients={"physician": reason}), [ACK], CAL, GATED)
    assert ack.hold == reason


def test_reminder_is_due_at_once_and_dated_a_month_on():
    visit = Subject("visit", 3, "visit 3", events={"visit.logged": date(2026, 1, 13)})
    [reminder] = desired(visit, [REVISIT], CAL)
    assert reminder.remind_at.astimezone(NY) == datetime(2026, 2, 13, 10, 0, tzinfo=NY)
    assert reminder.due_at.astimezone(NY) == datetime(2026, 1, 13, 0, 0, tzinfo=NY)


def test_a_reminder_on_a_weekend_or_holiday_moves_to_the_next_business_day():
    """A month after Wednesday 25 November is Friday 25 December, and after Wednesday
    21 October a Saturday: nobody walks into an office then."""
    from followupd.timing import ClosedDays

    us = Calendar(NY, ClosedDays(country="US"))
    for visited, lands in (
        (date(2026, 11, 25), date(2026, 12, 28)),
        (date(2026, 10, 21), date(2026, 11, 23)),
        (date(2026, 1, 31), date(2026, 3, 2)),
    ):
        visit = Subject("visit", 3, "visit 3", events={"visit.logged": visited})
        [reminder] = desired(visit, [REVISIT], us)
        assert reminder.remind_at.astimezone(NY) == datetime.combine(lands, time(10), NY)
    exact = REVISIT.model_copy(update={"roll": "none"})
    visit = Subject("visit", 3, "visit 3", events={"visit.logged": date(2026, 11, 25)})
    [reminder] = desired(visit, [exact], us)
    assert reminder.remind_at.astimezone(NY) == datetime(2026, 12, 25, 10, 0, tzinfo=NY)


def test_business_days_come_from_the_holidays_package_in_any_year():
    """The sample config's holidays ended in 2027; a country's are known every year."""
    from followupd.timing import ClosedDays

    us = Calendar(NY, ClosedDays(country="US", subdivision="MN"))
    received = Subject(**{**referral().__dict__, "events": {"referral.received": date(2030, 7, 3)}})
    [ack] = desired(received, [ACK], us, GATED)  # Wednesday; Thursday is the 4th of July
    assert ack.due_at.astimezone(NY) == datetime(2030, 7, 5, 8, 0, tzinfo=NY)


def test_conditions_specialty_and_open_referral():
    assert [d.rule for d in desired(referral(), [PCP_ONLY], CAL)] == ["pcp"]
    assert desired(referral(specialty="dermatology"), [PCP_ONLY], CAL) == []
    closed = referral(
        closed=True,
        events={"referral.received": date(2026, 11, 2), "referral.closed": date(2026, 11, 20)},
    )
    assert [d.rule for d in desired(closed, [ACK, CLOSE], CAL, GATED)] == ["close"]


def test_disabled_rule_and_missing_event_plan_nothing():
    disabled = ACK.model_copy(update={"enabled": False})
    assert desired(referral(), [disabled], CAL) == []
    assert desired(referral(), [CLOSE], CAL) == []  # not closed: no closing note


def test_prescriber_rule_needs_a_prescriber():
    rule = ACK.model_copy(update={"name": "rx", "to": "prescriber"})
    assert desired(referral(), [rule], CAL) == []
    [rx] = desired(referral(recipients={"physician": None, "prescriber": None}), [rule], CAL)
    assert rx.rule == "rx"


def existing_from(wanted, state=State.planned, **kw):
    return [
        Existing(
            i + 1,
            d.rule,
            d.subject_type,
            d.subject_id,
            kw.get("state", state),
            d.due_at,
            d.remind_at,
            kw.get("reason", d.hold),
            kw.get("external_id"),
        )
        for i, d in enumerate(wanted)
    ]


def test_planning_the_same_state_twice_changes_nothing():
    wanted = desired(referral(), [ACK, CLOSE], CAL, GATED)
    changes = reconcile(wanted, [], [("referral", 7)])
    assert len(changes.inserts) == 1
    assert not reconcile(wanted, existing_from(wanted), [("referral", 7)])


def test_release_recorded_later_lets_the_held_note_go():
    held = desired(referral(release=False), [ACK], CAL, GATED)
    now = desired(referral(), [ACK], CAL, GATED)
    changes = reconcile(now, existing_from(held, state=State.held), [("referral", 7)])
    assert changes.updates == [(1, {"state": State.planned, "reason": None})]


def test_release_revoked_cancels_a_planned_note_and_a_new_release_revives_it():
    planned = desired(referral(), [ACK], CAL, GATED)
    revoked = desired(referral(release=False), [ACK], CAL, GATED)
    changes = reconcile(revoked, existing_from(planned), [("referral", 7)])
    [(_, update)] = changes.updates
    assert update["state"] == State.cancelled
    assert update["reason"] == "release of information revoked for referral R-7"
    cancelled = existing_from(planned, state=State.cancelled, reason=update["reason"])
    assert not reconcile(revoked, cancelled, [("referral", 7)])  # stays cancelled
    revived = reconcile(planned, cancelled, [("referral", 7)])
    assert revived.updates[0][1]["state"] == State.planned


def test_a_note_that_no_longer_applies_is_cancelled_but_delivered_ones_are_left_alone():
    open_ = referral()
    closed = referral(
        closed=True,
        events={"referral.received": date(2026, 11, 25), "referral.closed": date(2026, 11, 30)},
    )
    before = desired(open_, [ACK], CAL, GATED)
    after = desired(closed, [ACK], CAL, GATED)
    changes = reconcile(after, existing_from(before), [("referral", 7)])
    assert changes.updates[0][1]["state"] == State.cancelled
    done = existing_from(before, state=State.done, external_id="outbox:drafts/1.eml")
    assert not reconcile(after, done, [("referral", 7)])


def test_a_corrected_date_moves_a_pending_note():
    before = desired(referral(), [ACK], CAL, GATED)
    later = desired(referral(events={"referral.received": date(2026, 11, 30)}), [ACK], CAL, GATED)
    changes = reconcile(later, existing_from(before), [("referral", 7)])
    assert changes.updates == [(1, {"due_at": later[0].due_at})]
    assert later[0].due_at > datetime(2026, 11, 30, tzinfo=UTC)


# --- releases name their recipient; a revoke takes back what went out -----------------------

RX = Rule(
    name="rx",
    event="release.recorded",
    after="2 business days",
    at="08:00",
    make="draft",
    to="prescriber",
    template="prescriber.txt.j2",
    when={"release": "required"},
)
BOTH = {"physician": None, "prescriber": None}


def test_the_referring_physicians_release_does_not_cover_the_prescriber():
    """The defect: the prescriber's introduction (patient details) went out on the referring
    physician's release alone."""
    only_physician = referral(
        releases={"physician": True, "prescriber": False},
        recipients=BOTH,
        release_dates={"physician": date(2026, 11, 20)},
    )
    assert desired(only_physician, [RX], CAL, frozenset({"rx"})) == []  # no event: no release
    both = referral(
        releases={"physician": True, "prescriber": True},
        recipients=BOTH,
        release_dates={"physician": date(2026, 11, 20), "prescriber": date(2026, 11, 23)},
    )
    [rx] = desired(both, [RX], CAL, frozenset({"rx"}))
    assert rx.hold is None and rx.recipient == "prescriber"
    # two business days after the prescriber's own release (the physician's: the 24th)
    assert rx.due_at.astimezone(NY) == datetime(2026, 11, 25, 8, 0, tzinfo=NY)
    revoked = referral(
        releases={"physician": True, "prescriber": False},
        recipients=BOTH,
        release_dates={"physician": date(2026, 11, 20), "prescriber": date(2026, 11, 23)},
    )
    [held] = desired(revoked, [RX], CAL, frozenset({"rx"}))
    assert held.hold == "no release of information on file for the prescriber of referral R-7"


def test_an_address_waiting_for_confirmation_holds_the_note():
    reason = "the physician's email address for referral R-7 waits for confirmation"
    [ack] = desired(referral(recipients={"physician": reason}), [ACK], CAL, GATED)
    assert ack.hold == reason


def test_a_revoke_withdraws_an_unsent_note_and_marks_a_sent_one_disclosed():
    released = desired(referral(), [ACK], CAL, GATED)
    revoked = desired(referral(release=False), [ACK], CAL, GATED)
    assert revoked[0].patient  # its template shows patient details
    for state in (State.done, State.waiting):
        row = existing_from(released, state=state, external_id="gmail:d1", reason=None)
        [(_, update)] = reconcile(revoked, row, [("referral", 7)]).updates
        assert update["state"] == State.withdraw and update["attempts"] == 0
        assert update["reason"] == "to withdraw: release of information revoked for referral R-7"
    sent = existing_from(
        released, state=State.sent, external_id="gmail:d1", reason="sent 2026-11-27 09:00 UTC"
    )
    [(_, update)] = reconcile(revoked, sent, [("referral", 7)]).updates
    assert update == {
        "reason": "disclosed: sent before the release of information was revoked "
        "(sent 2026-11-27 09:00 UTC)"
    }
    marked = existing_from(released, state=State.sent, reason=update["reason"])
    assert not reconcile(revoked, marked, [("referral", 7)])  # said once


def test_a_note_without_patient_details_is_not_withdrawn():
    revoked = desired(referral(release=False), [ACK], CAL, GATED, patient_rules=frozenset())
    done = existing_from(revoked, state=State.done, external_id="gmail:d1", reason=None)
    assert not reconcile(revoked, done, [("referral", 7)])


def test_a_release_granted_again_makes_a_withdrawn_note_anew_looking_first():
    released = desired(referral(), [ACK], CAL, GATED)
    withdrawn = existing_from(
        released, state=State.withdrawn, external_id="gmail:d1", reason="withdrawn"
    )
    [(_, update)] = reconcile(released, withdrawn, [("referral", 7)]).updates
    assert update["state"] == State.planned and update["external_id"] is None
    assert update["attempts"] == 1  # the next claim makes it 2: look before creating
    pending = existing_from(released, state=State.withdraw, external_id="gmail:d1")
    [(_, update)] = reconcile(released, pending, [("referral", 7)]).updates
    assert update["state"] == State.done  # not yet taken back: it stays where it is
