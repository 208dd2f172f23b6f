"""Planning, as the engine runs it: read what changed since the cursor, reconcile it with the
ledger a page (one transaction) at a time, and move the cursor.

Planning itself is pure (`followupd.planning`); this is the I/O around it. An idle tick reads
nothing: the cursor has reached the newest row.
"""

from __future__ import annotations

from datetime import datetime

from followupd import planning
from followupd.engine.core import CURSOR_OVERLAP, ORPHAN_CHECK, PAGE, EngineCore, TickReport, log
from followupd.models import Bundle
from followupd.planning import Desired, Existing, Subject
from followupd.store import (
    cancel_orphans,
    changed_referrals,
    changed_visits,
    insert_follow_ups,
    ledger_rows,
    read_cursor,
    read_meta,
    referrals_by_id,
    update_follow_ups,
    write_cursor,
    write_meta,
)
from followupd.subjects import referral_subject, visit_subject


class Planner(EngineCore):
    """The planning step of a tick."""

    def plan(self, report: TickReport | None = None) -> TickReport:
        """Bring the ledger up to date with every referral and visit changed since last time."""
        report = report or TickReport()
        if self._orphans_checked is None or self.clock() - self._orphans_checked >= ORPHAN_CHECK:
            with self.store.session() as session:
                report.cancelled += cancel_orphans(session, [r.name for r in self.enabled])
            self._orphans_checked = self.clock()
        for subject_type, read, to_subject in (
            ("referral", changed_referrals, referral_subject),
            ("visit", changed_visits, visit_subject),
        ):
            self._plan_table(subject_type, read, to_subject, report)
        return report

    def _plan_table(self, subject_type: str, read, to_subject, report: TickReport) -> None:
        """Plan every row changed after the cursor, a page (one transaction) at a time.

        The cursor stops short of the last minute: a row whose transaction started before
        this tick but committed after it was read carries an earlier timestamp, and must
        still be read next time. Once the table is quiet, the cursor reaches its newest row
        and an idle tick reads nothing.
        """
        prefix = f"plan:{subject_type}:"
        cursor_name = prefix + self.fingerprint
        horizon = self.clock() - CURSOR_OVERLAP
        with self.store.session() as session:
            position = read_cursor(session, cursor_name)
        after, newest = None, None
        while True:
            with self.store.session() as session:
                rows = read(session, position, after, PAGE)
                if rows:
                    self._reconcile(session, subject_type, [to_subject(r) for r in rows], report)
            if not rows:
                break
            after = newest = (rows[-1].updated_at, rows[-1].id)
            if len(rows) < PAGE:
                break
        if newest is not None:
            target = min(newest[0], horizon)
            if position is None or target > position:
                with self.store.session() as session:
                    write_cursor(session, cursor_name, target, prefix=prefix)

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
            )
            for r in ledger_rows(session, subject_type, [s.id for s in subjects])
        ]
        changes = planning.reconcile(wanted, existing, [(s.type, s.id) for s in subjects])
        if not changes:
            return
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
                }
                for d in changes.inserts
            ],
        )
        update_follow_ups(session, changes.updates)
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
            rows = referrals_by_id(session, ids)
            self._reconcile(session, "referral", [referral_subject(r) for r in rows], report)
