"""Planning, as the engine runs it: read what changed since the cursor, reconcile it with the
ledger a page (one transaction) at a time, and move the cursor.

Planning itself is pure (`followupd.planning`); this is the I/O around it. An idle tick reads
nothing: the cursor has reached the newest row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, time, timedelta
from functools import partial

from followupd import planning
from followupd.engine.core import CURSOR_OVERLAP, ORPHAN_CHECK, PAGE, EngineCore, TickReport, log
from followupd.models import Bundle
from followupd.planning import Desired, Existing, Subject
from followupd.store import (
    cancel_orphans,
    changed_physicians,
    changed_referrals,
    changed_visits,
    drafts_made,
    insert_follow_ups,
    ledger_rows,
    made_thank_yous,
    physician_facts,
    quiet_candidates,
    read_cursor,
    read_meta,
    referrals_by_id,
    thank_you_facts,
    thanked_about,
    update_follow_ups,
    write_cursor,
    write_meta,
)
from followupd.subjects import (
    digest_subject,
    draft_subject,
    physician_subject,
    quiet_subject,
    referral_subject,
    visit_subject,
)
from followupd.timing import latest_base, localize

QUIET_DAYS = "quiet:"  # the cursor of the days whose quiet spells were planned


def _nobody(physician_id: int) -> Subject:
    """A physician as planning sees one with no referral (left): no event, nothing due."""
    return Subject("physician", physician_id, f"physician {physician_id}")


class Planner(EngineCore):
    """The planning step of a tick."""

    def plan(self, report: TickReport | None = None) -> TickReport:
        """Bring the ledger up to date with every referral and visit changed since last time."""
        report = report or TickReport()
        if self._orphans_checked is None or self.clock() - self._orphans_checked >= ORPHAN_CHECK:
            with self.store.session() as session:
                report.cancelled += cancel_orphans(session, [r.name for r in self.enabled])
            self._orphans_checked = self.clock()
        self._plan_table("referral", changed_referrals, self._plan_referrals, report)
        self._plan_table("visit", changed_visits, self._plan_visits, report)
        if self._physician_rules():
            self._plan_table(
                "physician", changed_physicians, self._plan_physician_rows, report, remember=True
            )
        self._plan_quiet_days(report)
        self._plan_drafts(report)
        self._plan_digests(report)
        return report

    def _plan_referrals(self, session, rows, report: TickReport) -> None:
        """Referrals changed: their notes, and their physicians' thank-you and quiet spell
        (also the physician a thank-you was made about one of them for)."""
        self._reconcile(session, "referral", [referral_subject(r) for r in rows], report)
        self._plan_physicians(session, self._physicians_of(session, rows), report)

    def _plan_visits(self, session, rows, report: TickReport) -> None:
        self._reconcile(session, "visit", [visit_subject(r) for r in rows], report)

    def _plan_physician_rows(self, session, rows, report: TickReport) -> None:
        """Physicians changed (a referral of theirs moved away or was deleted)."""
        self._plan_physicians(session, {r.id for r in rows}, report)

    def _physicians_of(self, session, referrals) -> set[int]:
        """The physicians whose outreach follow-ups these referrals bear on."""
        ids = {r.physician_id for r in referrals}
        if self._follows("physician"):
            ids |= thanked_about(session, [r.id for r in referrals])
        return ids

    def _plan_table(
        self,
        subject_type: str,
        read,
        plan_rows,
        report: TickReport,
        *,
        stamp: str = "updated_at",
        horizon: datetime | None = None,
        remember: bool = False,
    ) -> None:
        """Plan every row changed after the cursor, a page (one transaction) at a time.

        The cursor stops short of the last minute: a row whose transaction started before
        this tick but committed after it was read carries an earlier timestamp, and must
        still be read next time. Once the table is quiet, the cursor reaches its newest row
        and an idle tick reads nothing. (`stamp` names the column the cursor follows;
        `horizon`, if given, how far it may go instead; `plan_rows(session, rows, report)`
        plans a page; `remember`: the position is kept in memory after its first read, as a
        cursor another replica moved on only means rows read again, which plan the same.)
        """
        prefix = f"plan:{subject_type}:"
        cursor_name = prefix + self.fingerprint
        horizon = horizon or self.clock() - CURSOR_OVERLAP
        if remember and cursor_name in self._positions:
            position = self._positions[cursor_name]
        else:
            with self.store.session() as session:
                position = read_cursor(session, cursor_name)
        after, newest = None, None
        while True:
            with self.store.session() as session:
                rows = read(session, position, after, PAGE)
                if rows:
                    plan_rows(session, rows, report)
            if not rows:
                break
            after = newest = (getattr(rows[-1], stamp), rows[-1].id)
            if len(rows) < PAGE:
                break
        if newest is not None:
            target = min(newest[0], horizon)
            if position is None or target > position:
                with self.store.session() as session:
                    write_cursor(session, cursor_name, target, prefix=prefix)
                position = target
        if remember:
            self._positions[cursor_name] = position

    # --- the outreach events: a physician's first referral and quiet spells, unsent drafts,
    # --- the digest

    def _follows(self, subject_type: str) -> bool:
        """Does an enabled rule make follow-ups of this kind of subject?"""
        return any(planning.subject_type_of(r) == subject_type for r in self.enabled)

    def _physician_rules(self) -> bool:
        return self._follows("physician") or self._follows("quiet")

    def _plan_physicians(self, session, ids: Iterable[int], report: TickReport) -> None:
        """Plan the physicians whose referrals changed: the thank-you for their first
        referral, and the quiet spell after their last one once it has begun (a spell that
        begins later is planned on its day, by `_plan_quiet_days`: a calendar does not fill
        with calls that a referral may yet make needless)."""
        if not self._physician_rules():
            return
        ids = sorted(i for i in ids if i is not None)
        rows = physician_facts(session, ids)
        if self._follows("physician"):
            self._plan_thank_yous(session, ids, rows, report)
        if rows and self._follows("quiet"):
            today = self.today()
            spells = [quiet_subject(r, self.calendar) for r in rows]
            begun = [s for s in spells if s.events["physician.quiet"] <= today]
            if begun:
                self._reconcile(session, "quiet", begun, report)

    def _plan_thank_yous(self, session, ids: list[int], rows, report: TickReport) -> None:
        """A thank-you is about the physician's first referral until it is made, then about
        the referral it was made of: that referral's release naming them still gates it (a
        revoke takes it back), whatever is entered later or wherever the referral moves. A
        physician with no referral left has nothing pending to be thanked for."""
        made = made_thank_yous(session, ids)
        facts = thank_you_facts(session, {(p, b) for p in made for b in made[p].values()})
        current = {r.id: r for r in rows}
        subjects = []
        for physician_id in ids:
            rules = made.get(physician_id, {})
            found = current.get(physician_id)
            view = physician_subject(found) if found else _nobody(physician_id)
            subjects.append(replace(view, besides=frozenset(rules)))
            for rule, basis_id in rules.items():
                found = facts.get((physician_id, basis_id))
                view = physician_subject(found) if found else _nobody(physician_id)
                subjects.append(replace(view, only=frozenset({rule})))
        self._reconcile(session, "physician", subjects, report)

    def _plan_quiet_days(self, report: TickReport) -> None:
        """Once a day: the physicians whose quiet spell began since the last look (their last
        referral was `quiet_after` ago). The day looked at is kept per rules fingerprint, so a
        change of rules or of `quiet_after` looks again from the start (nothing is made twice)."""
        if not self._follows("quiet"):
            return
        today = self.today()
        if self._quiet_day is not None and self._quiet_day >= today:
            return
        zone = self.calendar.zone
        with self.store.session() as session:
            seen = read_cursor(session, QUIET_DAYS + self.fingerprint)
            since = seen.astimezone(zone).date() if seen is not None else None
            if since is None or since < today:
                spans = self.calendar.quiet_after, self.calendar.holidays
                after = latest_base(since, *spans) if since is not None else None
                ids = quiet_candidates(session, after, latest_base(today, *spans))
                for start in range(0, len(ids), PAGE):
                    self._plan_physicians(session, ids[start : start + PAGE], report)
                write_cursor(
                    session,
                    QUIET_DAYS + self.fingerprint,
                    localize(today, time(0), zone),
                    prefix=QUIET_DAYS,
                )
        self._quiet_day = today

    def _plan_drafts(self, report: TickReport) -> None:
        """Drafts still in Drafts `unsent_after` after they were made (note.unsent): read
        once each, when that day comes, in the order they were made."""
        if not self._follows("draft"):
            return
        zone = self.calendar.zone
        last_made = latest_base(
            self.today(), self.calendar.unsent_after, self.calendar.holidays
        )  # a draft made on or before this day is unsent by today
        until = localize(last_made + timedelta(days=1), time(0), zone)
        if until == self._drafts_until:  # read already: no draft is made in the past
            return
        self._plan_table(
            "draft",
            partial(drafts_made, until=until),
            self._plan_draft_rows,
            report,
            stamp="made_at",
            horizon=until,
        )
        self._drafts_until = until

    def _plan_draft_rows(self, session, rows, report: TickReport) -> None:
        subjects = [draft_subject(r, self.calendar) for r in rows]
        self._reconcile(session, "draft", subjects, report)

    def _plan_digests(self, report: TickReport) -> None:
        """Each digest rule's latest digest due by now and its next one (the ledger's unique
        key makes each once); looked at again only when those days change."""
        rules = [r for r in self.enabled if r.digest]
        if not rules:
            return
        now = self.clock()
        days = sorted(
            {
                d
                for r in rules
                for d in planning.digest_days(r, self.calendar, now, self.rules_since())
            }
        )
        if days == self._digest_days:
            return
        with self.store.session() as session:
            self._reconcile(session, "digest", [digest_subject(d) for d in days], report)
        self._digest_days = days

    def cutoff(self) -> planning.Cutoff | None:
        """Where history ends (None: `history.cutoff: null`, every event makes its notes)."""
        span = self.settings.config.history.cutoff
        if span is None:
            return None
        zone = self.calendar.zone
        today = self.clock().astimezone(zone).date()
        return planning.Cutoff(span, zone, today, self.rules_since())

    def rules_since(self) -> datetime:
        """When the rules in force (this fingerprint) were first planned with: a rule added
        or renamed does not reach back past it."""
        if self._rules_since is None:
            key = f"rules_since:{self.fingerprint}"
            with self.store.session() as session:
                known = read_meta(session, key)
                if known is None:
                    known = self.clock().isoformat()
                    write_meta(session, key, known)
            self._rules_since = datetime.fromisoformat(known)
        return self._rules_since

    def _reconcile(
        self, session, subject_type: str, subjects: list[Subject], report: TickReport
    ) -> None:
        wanted: list[Desired] = []
        cutoff = self.cutoff()
        for subject in subjects:
            wanted += planning.desired(
                subject,
                self.enabled,
                self.calendar,
                self.needs_release,
                self.patient_rules,
                cutoff,
            )
        existing = [
            Existing(
                r.id,
                r.rule,
                r.subject_type,
                r.subject_id,
                r.state,
                r.due_at,
                r.remind_at,
                r.reason,
                r.external_id,
                r.basis_id,
                r.kind,
            )
            for r in ledger_rows(session, subject_type, [s.id for s in subjects])
        ]
        wanted = planning.once_only(wanted, existing, (r.name for r in self.enabled))
        changes = planning.reconcile(wanted, existing, [(s.type, s.id) for s in subjects])
        if not changes:
            return
        update_follow_ups(session, changes.updates)  # first: a retired row frees its key
        insert_follow_ups(
            session,
            [
                {
                    "rule": d.rule,
                    "subject_type": d.subject_type,
                    "subject_id": d.subject_id,
                    "kind": d.kind,
                    "due_at": d.due_at,
                    "remind_at": d.remind_at,
                    "state": d.state,
                    "reason": d.reason,
                    "basis_id": d.basis_id,
                }
                for d in changes.inserts
            ],
        )
        report.inserted += len(changes.inserts)
        report.skipped += sum(1 for d in changes.inserts if d.skip)
        report.planned_held += [d.hold for d in changes.inserts if d.hold and not d.skip]
        report.changed += len(changes.updates)
        for desired in changes.inserts:
            log.info(
                "planned",
                rule=desired.rule,
                subject=f"{desired.subject_type}:{desired.subject_id}",
                kind=desired.kind,
                due_at=desired.due_at.isoformat(),
                held=bool(desired.hold),
                skipped=bool(desired.skip),
            )
        for follow_up_id, values in changes.updates:
            if "state" in values:
                log.info(
                    "replanned",
                    follow_up=follow_up_id,
                    state=values["state"],
                    reason=values.get("reason"),
                )

    def _recheck_releases(self, delivered: list[Bundle], report: TickReport) -> None:
        """Plan again, now, the referrals whose notes with patient details just went out: a
        release revoked while the batch was at Google takes them back at once (planning read
        those referrals while their rows were claimed, and left them alone)."""
        ids = sorted(
            {
                b.referral.id
                for b in delivered
                if b.referral is not None and b.follow_up.rule in self.patient_rules
            }
        )
        if not ids:
            return
        with self.store.session() as session:
            self._plan_referrals(session, referrals_by_id(session, ids), report)
