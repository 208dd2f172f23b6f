"""Pure planning: (subject, rules, calendar) -> desired follow-ups; ledger reconciliation."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from followupd.config import Rule
from followupd.models import State
from followupd.planning import Calendar, Existing, Subject, desired, reconcile

NY = ZoneInfo("America/New_York")
CAL = Calendar(NY, frozenset({date(2026, 11, 26)}))
ACK = Rule(name="ack", event="referral.received", after="1 business day", at="08:00",
           make="draft", template="acknowledgement.txt.j2", when={"referral": "open"})
CLOSE = Rule(name="close", event="referral.closed", after="0 days", make="draft",
             template="closing.txt.j2")
REVISIT = Rule(name="revisit", event="visit.logged", after="1 month", at="10:00",
               make="reminder", template="revisit.txt.j2")
PCP_ONLY = Rule(name="pcp", event="referral.received", after="3 days", make="draft",
                template="acknowledgement.txt.j2",
                when={"specialty": ["internal medicine", "family medicine"]})
GATED = frozenset({"ack", "close", "pcp"})


def referral(**kw) -> Subject:
    base = {"type": "referral", "id": 7, "label": "referral R-7", "specialty": "Internist",
            "release": True, "recipients": {"physician": True},
            "events": {"referral.received": date(2026, 11, 25)}}
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
    [ack] = desired(referral(recipients={"physician": False}), [ACK], CAL, GATED)
    assert ack.hold == "no email address for the physician of referral R-7"


def test_reminder_is_due_at_once_and_dated_a_month_on():
    visit = Subject("visit", 3, "visit 3", events={"visit.logged": date(2026, 1, 31)})
    [reminder] = desired(visit, [REVISIT], CAL)
    assert reminder.remind_at.astimezone(NY) == datetime(2026, 2, 28, 10, 0, tzinfo=NY)
    assert reminder.due_at.astimezone(NY) == datetime(2026, 1, 31, 0, 0, tzinfo=NY)


def test_conditions_specialty_and_open_referral():
    assert [d.rule for d in desired(referral(), [PCP_ONLY], CAL)] == ["pcp"]
    assert desired(referral(specialty="dermatology"), [PCP_ONLY], CAL) == []
    closed = referral(closed=True, events={"referral.received": date(2026, 11, 2),
                                           "referral.closed": date(2026, 11, 20)})
    assert [d.rule for d in desired(closed, [ACK, CLOSE], CAL, GATED)] == ["close"]


def test_disabled_rule_and_missing_event_plan_nothing():
    disabled = ACK.model_copy(update={"enabled": False})
    assert desired(referral(), [disabled], CAL) == []
    assert desired(referral(), [CLOSE], CAL) == []  # not closed: no closing note


def test_prescriber_rule_needs_a_prescriber():
    rule = ACK.model_copy(update={"name": "rx", "to": "prescriber"})
    assert desired(referral(), [rule], CAL) == []
    [rx] = desired(referral(recipients={"physician": True, "prescriber": True}), [rule], CAL)
    assert rx.rule == "rx"


def existing_from(wanted, state=State.planned, **kw):
    return [Existing(i + 1, d.rule, d.subject_type, d.subject_id, kw.get("state", state),
                     d.due_at, d.remind_at, kw.get("reason", d.hold), kw.get("external_id"))
            for i, d in enumerate(wanted)]


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
    closed = referral(closed=True, events={"referral.received": date(2026, 11, 25),
                                           "referral.closed": date(2026, 11, 30)})
    before = desired(open_, [ACK], CAL, GATED)
    after = desired(closed, [ACK], CAL, GATED)
    changes = reconcile(after, existing_from(before), [("referral", 7)])
    assert changes.updates[0][1]["state"] == State.cancelled
    done = existing_from(before, state=State.done, external_id="outbox:drafts/1.eml")
    assert not reconcile(after, done, [("referral", 7)])


def test_a_corrected_date_moves_a_pending_note():
    before = desired(referral(), [ACK], CAL, GATED)
    later = desired(referral(events={"referral.received": date(2026, 11, 30)}), [ACK], CAL,
                    GATED)
    changes = reconcile(later, existing_from(before), [("referral", 7)])
    assert changes.updates == [(1, {"due_at": later[0].due_at})]
    assert later[0].due_at > datetime(2026, 11, 30, tzinfo=UTC)
