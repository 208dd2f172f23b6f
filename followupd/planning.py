"""Pure planning: which follow-ups should exist, and how the ledger must change to match.

`desired()` turns one referral or visit (as a `Subject`: ids, dates and flags, never patient
values) and the rules into the follow-ups that should exist. `reconcile()` compares those with
the ledger rows already there and returns the inserts and updates. Neither touches a clock or
a database, so both are tested directly and planning the same state twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from followupd.config import Rule, normalize_specialty
from followupd.config.schema import WEEKDAYS
from followupd.models import State
from followupd.timing import Duration, days_before, due_at, localize, next_business_moment

# Which kind of subject each event belongs to: a referral, a visit, a physician (their first
# referral), a quiet spell (named by the referral before it), a draft (a delivered note) and,
# for a digest rule (`to: me`), the digest of a day.
EVENT_SUBJECT = {
    "referral.received": "referral",
    "referral.closed": "referral",
    "release.recorded": "referral",
    "visit.logged": "visit",
    "physician.first_referral": "physician",
    "physician.quiet": "quiet",
    "prospect.named": "visit",
    "note.unsent": "draft",
    "digest": "digest",
}
DIGEST = "digest"  # the event (and subject type) of a digest rule: its day came
DIGEST_AT = time(8)  # a digest without `at:` is made at 08:00 on its day
NO_OFFSET = Duration(0, "days")
QUIET_AFTER = Duration(90, "days")  # the defaults of `events:`
UNSENT_AFTER = Duration(2, "business_days")
PENDING = (State.planned, State.held)
NEVER_MADE = (State.cancelled, State.skipped, State.failed)  # without an external id
# Once per subject whatever the rule is called: a physician's thank-you, a quiet spell's call
ONCE = frozenset({"physician", "quiet"})
# An event older than the cut-off when first planned is history: recorded, never delivered.
HISTORY = (
    "history: {event} {day}, more than {cutoff} before followupd learned of it "
    "(history.cutoff); no note is made"
)
EVENT_WORDS = {
    "referral.received": "received",
    "referral.closed": "closed",
    "release.recorded": "release recorded",
    "visit.logged": "visited",
    "physician.first_referral": "first referral received",
    "physician.quiet": "quiet since",
    "prospect.named": "prospect named",
    "note.unsent": "unsent since",
}


def event_of(rule: Rule) -> str:
    """The event a rule follows (a digest: its day)."""
    return DIGEST if rule.digest else rule.event


def subject_type_of(rule: Rule) -> str:
    """The kind of subject a rule's follow-ups are about."""
    return EVENT_SUBJECT[event_of(rule)]


NO_RELEASE = "no release of information on file for {label}"
REVOKED = "release of information revoked for {label}"
# A note with patient details that may already be in the therapist's Drafts: taken back when
# the release for its recipient is revoked.
UNSENT = (State.done, State.waiting)
# A note that already left Drafts: reported as disclosed before the revoke.
LEFT = {
    State.sent: "disclosed: sent before the release of information was revoked",
    State.gone: "may have been disclosed: it left Drafts (sent or deleted) before the "
    "release of information was revoked",
}


@dataclass(frozen=True)
class Subject:
    """What planning may know of a referral or a visit."""

    type: str  # referral | visit
    id: int
    label: str  # "referral R-12", "visit 7": safe to show anywhere
    specialty: str | None = None
    # Recipient ("physician", "prescriber") -> a release naming them is in force. A visit
    # carries no patient details: it needs none.
    releases: Mapping[str, bool] | None = None
    # Who a draft can be addressed to, and None if their address is usable, else why not
    # (no address; an address waiting for confirmation). A role not listed has no one.
    recipients: Mapping[str, str | None] = field(default_factory=dict)
    events: Mapping[str, date] = field(default_factory=dict)
    release_dates: Mapping[str, date] = field(default_factory=dict)  # by recipient
    closed: bool = False
    entered: datetime | None = None  # when it entered followupd (None: now)
    changed: datetime | None = None  # when it last changed (a close, a release recorded)
    gone: str | None = None  # it left its watched source: its notes wait (the reason)
    # Whose release a note needs, as a hold reason names it, when not the label (a
    # physician's thank-you: the client's release of their first referral)
    release_label: str | None = None
    # A physician's thank-you: the referral it is about (recorded on the ledger row); an
    # unsent reminder: when its draft was made (minutes since the epoch)
    basis_id: int | None = None
    # The rules this view of the subject is for: `only` these (None: all), none of `besides`
    # (a physician's thank-you already made is planned from the referral it was made about)
    only: frozenset[str] | None = None
    besides: frozenset[str] = frozenset()

    def released_to(self, recipient: str) -> bool:
        return True if self.releases is None else bool(self.releases.get(recipient))


@dataclass(frozen=True)
class Calendar:
    """How the practice counts time: its zone, its closed days besides weekends, and when a
    physician turns quiet and a draft counts as unsent (`events:`)."""

    zone: ZoneInfo
    holidays: Container[date] = frozenset()  # closed days besides weekends
    quiet_after: Duration = QUIET_AFTER
    unsent_after: Duration = UNSENT_AFTER


# Events dated by the entry of their row (a referral's, a visit's, the first or the last
# referral's, a draft's making); the others (a close, a release) by its last change.
ENTRY_EVENTS = frozenset(
    {
        "referral.received",
        "visit.logged",
        "physician.first_referral",
        "physician.quiet",
        "prospect.named",
        "note.unsent",
    }
)


@dataclass(frozen=True)
class Cutoff:
    """Where history ends: an event already older than `span` when it entered followupd
    (an import of last year's log, a sheet's first read, a close typed in months late)
    makes no note. Measured from the event's entry, not from today, so notes for events
    entered while the daemon was down still go; and never from before `since`, when the
    rules in force began (a rule added or renamed does not write to last year's referrals).
    """

    span: Duration
    zone: ZoneInfo
    today: date  # the entry day of a subject that does not say
    since: datetime | None = None

    def skips(self, event: str, day: date, subject: Subject) -> str | None:
        """Why a follow-up of this event is skipped as history, or None."""
        seen = subject.entered if event in ENTRY_EVENTS else subject.changed
        moments = [m for m in (seen, self.since) if m is not None]
        start = max(moments).astimezone(self.zone).date() if moments else self.today
        if day >= days_before(start, self.span):
            return None
        return HISTORY.format(event=EVENT_WORDS[event], day=day.isoformat(), cutoff=self.span)


@dataclass(frozen=True)
class Desired:
    rule: str
    subject_type: str
    subject_id: int
    kind: str
    due_at: datetime
    remind_at: datetime | None
    hold: str | None  # why it may not go out yet, or None
    patient: bool = False  # its template shows patient details (a release gates it)
    recipient: str = "physician"  # whom a release must name
    skip: str | None = None  # history: recorded as skipped when first planned, never made
    basis_id: int | None = None  # a thank-you's referral (Subject.basis_id)

    @property
    def state(self) -> str:
        """The state a new ledger row for it starts in."""
        if self.skip:
            return State.skipped
        return State.held if self.hold else State.planned

    @property
    def reason(self) -> str | None:
        return self.skip or self.hold

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.rule, self.subject_type, self.subject_id)


@dataclass(frozen=True)
class Existing:
    """A ledger row, as much of it as planning needs."""

    id: int
    rule: str
    subject_type: str
    subject_id: int
    state: str
    due_at: datetime
    remind_at: datetime | None
    reason: str | None
    external_id: str | None
    basis_id: int | None = None
    kind: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.rule, self.subject_type, self.subject_id)

    @property
    def made(self) -> bool:
        """Has it been delivered, and not taken back (a draft or an event exists, or went
        out)? A withdrawn note is as if never made: released again, it is made anew."""
        if self.state == State.withdrawn:
            return False
        return self.external_id is not None or self.state not in (*PENDING, *NEVER_MADE)


@dataclass
class Changes:
    inserts: list[Desired] = field(default_factory=list)
    updates: list[tuple[int, dict]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates)


def matches(rule: Rule, subject: Subject) -> bool:
    """Does the rule's `when:` hold for this subject (release aside: that holds, not skips)?"""
    when = rule.when
    if when.referral != "any" and (
        subject.type != "referral" or subject.closed != (when.referral == "closed")
    ):
        return False
    specialty = normalize_specialty(subject.specialty) if subject.specialty else None
    if when.specialty is not None and specialty not in {
        normalize_specialty(s) for s in when.specialty
    }:
        return False
    return not (
        when.specialty_not is not None
        and specialty in {normalize_specialty(s) for s in when.specialty_not}
    )


def desired(
    subject: Subject,
    rules: Iterable[Rule],
    calendar: Calendar,
    needs_release: frozenset[str] = frozenset(),
    patient_rules: frozenset[str] | None = None,
    cutoff: Cutoff | None = None,
) -> list[Desired]:
    """The follow-ups this subject should have under the enabled rules.

    A reminder is due as soon as its event happened (it goes on the calendar right away) and
    is dated at the offset; a draft is due at the offset. A rule in `needs_release` (its
    template shows patient details, or it says `release: required`) is held until a
    release naming its recipient is on file. `patient_rules` are those whose template shows
    patient details (default: `needs_release`). An event before the `cutoff` is history: its
    follow-ups are marked to be skipped (`reconcile` decides whether that still applies).
    """
    patient_rules = needs_release if patient_rules is None else patient_rules
    out = []
    for rule in rules:
        if not rule.enabled or subject_type_of(rule) != subject.type:
            continue
        if rule.name in subject.besides or (
            subject.only is not None and rule.name not in subject.only
        ):
            continue
        event = event_of(rule)
        recipient = rule.to if rule.make == "draft" else "physician"
        day = (
            subject.release_dates.get(recipient)
            if event == "release.recorded"
            else subject.events.get(event)
        )
        if day is None or not matches(rule, subject):
            continue
        if rule.digest and day.weekday() != WEEKDAYS.index(rule.day):
            continue
        if rule.make == "draft" and rule.to not in subject.recipients:
            continue
        start = localize(day, time(0), calendar.zone)
        at = DIGEST_AT if rule.digest and rule.at is None else rule.at
        moment = due_at(start, rule.after or NO_OFFSET, calendar.zone, at, calendar.holidays)
        if rule.rolls:
            moment = next_business_moment(moment, calendar.zone, calendar.holidays)
        reminder = rule.make == "reminder"
        out.append(
            Desired(
                rule.name,
                subject.type,
                subject.id,
                rule.make,
                start if reminder else moment,
                moment if reminder else None,
                _hold(rule, subject, recipient, needs_release),
                not reminder and rule.name in patient_rules,
                recipient,
                cutoff.skips(event, day, subject) if cutoff and not rule.digest else None,
                subject.basis_id,
            )
        )
    return out


def digest_days(rule: Rule, calendar: Calendar, now: datetime, since: datetime) -> list[date]:
    """The days whose digest of this rule should exist at `now`: the latest one due by now,
    unless it was due before the rules in force began (`since`: a digest rule added on a
    Tuesday does not make Monday's), and the next one (planned, so `status` shows it)."""
    today = now.astimezone(calendar.zone).date()
    day = today - timedelta(days=(today.weekday() - WEEKDAYS.index(rule.day)) % 7)

    def moment(on: date) -> datetime:  # as `desired` dates it
        start = localize(on, rule.at if rule.at is not None else DIGEST_AT, calendar.zone)
        return (
            next_business_moment(start, calendar.zone, calendar.holidays) if rule.rolls else start
        )

    latest = day if moment(day) <= now else day - timedelta(days=7)
    days = [latest + timedelta(days=7)]
    if moment(latest) >= since:
        days.insert(0, latest)
    return days


def _hold(rule: Rule, subject: Subject, recipient: str, needs_release: frozenset[str]):
    """Why this rule's follow-up of the subject may not go out yet, or None."""
    if subject.gone:
        return subject.gone
    if (rule.name in needs_release or rule.when.release == "required") and not subject.released_to(
        recipient
    ):
        label = subject.release_label or subject.label
        whom = (
            label
            if recipient == "physician" or subject.type != "referral"
            else f"the {recipient} of {label}"
        )
        return NO_RELEASE.format(label=whom)
    if rule.make == "draft":
        return subject.recipients[rule.to]
    return None


def reconcile(
    wanted: Sequence[Desired], existing: Sequence[Existing], subjects: Iterable[tuple[str, int]]
) -> Changes:
    """Inserts and updates that make the ledger agree with `wanted` for these subjects.

    Only rows that have not gone out are touched: planned and held rows follow the data; a
    cancelled row comes back if it applies again and may go out; anything claimed, waiting
    or finished belongs to delivery and is left alone.
    """
    changes = Changes()
    by_key = {e.key: e for e in existing}
    wanted_keys = set()
    for want in wanted:
        wanted_keys.add(want.key)
        row = by_key.get(want.key)
        if row is None:
            changes.inserts.append(want)
            continue
        if _remade(row, want):  # the draft was made anew: a reminder of its own
            changes.updates.append((row.id, {"subject_id": -row.id}))
            changes.inserts.append(want)
            continue
        update = _follow(row, want)
        if not row.made and row.basis_id != want.basis_id:  # about what it will be made of
            update["basis_id"] = want.basis_id
        if update:
            changes.updates.append((row.id, update))
    covered = set(subjects)
    for row in existing:
        if row.key in wanted_keys or (row.subject_type, row.subject_id) not in covered:
            continue
        if row.state in PENDING:
            changes.updates.append(
                (
                    row.id,
                    {
                        "state": State.cancelled,
                        "reason": f"no longer applies to {row.subject_type} {row.subject_id} "
                        f"(its event or the rule's conditions changed)",
                    },
                )
            )
    return changes


def once_only(
    wanted: Sequence[Desired], existing: Sequence[Existing], in_force: Iterable[str]
) -> list[Desired]:
    """Leave out what a rule no longer in force (renamed, replaced) already made for the same
    subject and kind, for the events that happen once (`ONCE`): a physician is thanked once,
    whatever the thank-you rule is called now."""
    in_force = set(in_force)
    keys = {e.key for e in existing}
    made = {
        (e.subject_type, e.subject_id, e.kind)
        for e in existing
        if e.subject_type in ONCE and e.rule not in in_force and e.made
    }
    return [
        w for w in wanted if w.key in keys or (w.subject_type, w.subject_id, w.kind) not in made
    ]


def _remade(row: Existing, want: Desired) -> bool:
    """An unsent reminder made (or failed) for a draft that was since taken back and made
    anew (its basis is when the draft was made): the new draft gets a reminder of its own."""
    return (
        row.subject_type == "draft"
        and (row.made or row.state == State.failed)
        and row.state not in PENDING
        and row.basis_id is not None
        and want.basis_id is not None
        and want.basis_id > row.basis_id
    )


def _follow(row: Existing, want: Desired) -> dict:
    """How a row changes to match what is wanted now.

    Rows not yet delivered follow the data. Once a note with patient details may be in the
    therapist's Drafts, a revoked release takes it back (`withdraw`); one already sent is
    marked as disclosed before the revoke.
    """
    if row.state == State.skipped:
        return _from_history(want)
    update: dict = {}
    if row.state in PENDING and row.external_id is None:
        if row.due_at != want.due_at:
            update["due_at"] = want.due_at
        if row.remind_at != want.remind_at:
            update["remind_at"] = want.remind_at
    revoked = bool(want.hold and want.hold.startswith("no release"))
    if row.state == State.planned and revoked:
        update.update(
            state=State.cancelled,
            reason=REVOKED.format(
                label=want.hold.removeprefix("no release of information on file for ")
            ),
        )
    elif row.state in PENDING:
        state = State.held if want.hold else State.planned
        if (row.state, row.reason) != (state, want.hold):
            update.update(state=state, reason=want.hold)
    elif row.state == State.cancelled and row.external_id is None and want.hold is None:
        update.update(
            state=State.planned, reason=None, due_at=want.due_at, remind_at=want.remind_at
        )
    elif revoked and want.patient:
        update.update(_take_back(row, want))
    elif row.state == State.withdraw and want.hold is None:  # released again in time
        update.update(
            state=State.done if row.external_id else State.planned, reason=None, attempts=1
        )  # delivery looks before it creates
    elif row.state == State.withdrawn and want.hold is None:  # released again: made anew
        update.update(
            state=State.planned,
            reason=None,
            due_at=want.due_at,
            remind_at=want.remind_at,
            external_id=None,
            thread_id=None,
            attempts=1,
            next_attempt_at=None,
        )
    return update


def _from_history(want: Desired) -> dict:
    """A follow-up skipped as history stays skipped; if its event moved after the cut-off
    (a date corrected), it is planned as a new one would be."""
    if want.skip:
        return {}
    return {
        "state": State.held if want.hold else State.planned,
        "reason": want.hold,
        "due_at": want.due_at,
        "remind_at": want.remind_at,
        "basis_id": want.basis_id,
    }


def _take_back(row: Existing, want: Desired) -> dict:
    """A revoked release reaches a note that has gone out or may have."""
    label = want.hold.removeprefix("no release of information on file for ")
    if row.state in UNSENT:
        values = {
            "state": State.withdraw,
            "attempts": 0,
            "reason": f"to withdraw: {REVOKED.format(label=label)}",
        }
        if row.state == State.done:  # a waiting row keeps its settle time before the look
            values["next_attempt_at"] = None
        return values
    if row.state in LEFT and not (row.reason or "").startswith(LEFT[row.state][:12]):
        stamp = f" ({row.reason})" if row.reason else ""
        return {"reason": f"{LEFT[row.state]}{stamp}"}
    return {}
