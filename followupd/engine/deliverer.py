"""Delivery, as the engine runs it: claim what is due (committed before anything leaves the
process), decide again on fresh rows, render, hand each mailbox's batch to its backend in one
call, and record every outcome against its claim's fence in one commit.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, time, timedelta
from typing import TYPE_CHECKING

from followupd import planning
from followupd.config import ConfigError, Rule, Settings
from followupd.delivery import Delivered, DeliveryError, Draft, Reminder
from followupd.engine.core import (
    CLAIM_BATCH,
    MAX_BACKOFF,
    EngineCore,
    TickReport,
    auth_hint,
    log,
    released_to,
)
from followupd.models import Bundle, FollowUp, State
from followupd.planning import Desired
from followupd.render import RenderError, Rendering, build_draft, build_reminder, context_for
from followupd.store import (
    SUBJECT_ROWS,
    Window,
    claim_due,
    confirm_due,
    digest_facts,
    installation_id,
    load_bundle,
    load_bundles,
    release_claim,
    unconfirmed_due,
)
from followupd.subjects import bundle_subject
from followupd.timing import latest_base, localize

# A thank-you whose physician's first referral changed after it was planned: held until the
# next plan says what it is about now (and under whose release)
REBASED = "the physician's first referral changed: planned again at the next tick"

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class Deliverer(EngineCore):
    """The delivery step of a tick, and `preview`, which decides and renders the same way."""

    def deliver_due(self, report: TickReport | None = None) -> TickReport:
        """Claim what is due, a batch at a time, and deliver each batch in one backend call."""
        report = report or TickReport()
        seen: set[int] = set()
        begun: set[str | None] = set()  # mailboxes whose round has started
        every = len(self.settings.config.mailboxes())
        while len(report.stopped_for) < every and not self.stopping:
            with self.store.session() as session:
                # before the first claim, in its transaction (an idle tick's one look)
                if not seen and self._refuse_burst(report, session):
                    return report
                claimed = claim_due(session, self.clock(), self.owner, self.lease, CLAIM_BATCH)
            claimed = [(i, f) for i, f in claimed if i not in seen]
            if not claimed:
                break
            seen.update(i for i, _ in claimed)
            self._deliver_batch(claimed, report, begun)
        return report

    def burst(self, session: Session | None = None) -> int:
        """How many notes due now wait for a person's yes (0: within history.confirm_over)."""
        limit = self.settings.config.history.confirm_over
        if limit is None:
            return 0
        if session is None:
            with self.store.session() as own:
                return self.burst(own)
        due = unconfirmed_due(session, self.clock(), over=limit)
        return due if due > limit else 0

    def confirm_burst(self) -> int:
        """A person said yes to the notes due now (`run --once --confirm`)."""
        with self.store.session() as session:
            return confirm_due(session, self.clock())

    def _refuse_burst(self, report: TickReport, session: Session) -> bool:
        """Deliver nothing new while more notes are due at once than a person confirmed."""
        due = self.burst(session)
        if not due:
            return False
        limit = self.settings.config.history.confirm_over
        report.due_at_once = due
        report.refused = (
            f"{due} notes are due at once, more than history.confirm_over ({limit}) in "
            f"{self.settings.config_path.name}: none was made. See them with `followupd run "
            "--dry-run`, then run `followupd run --once --confirm` (or raise "
            "history.confirm_over)"
        )
        log.warning(
            "waiting for a yes",
            due=due,
            confirm_over=limit,
            fix="see them with `followupd run --dry-run`, then run `followupd run --once "
            "--confirm` (or raise history.confirm_over)",
        )
        return True

    def _deliver_batch(
        self, claimed: list[tuple[int, int]], report: TickReport, begun: set[str | None]
    ) -> None:
        ready: list[tuple[int, int, dict, Draft | Reminder]] = []
        with self.store.session() as session:  # one read for the batch: rows it shares
            installation = installation_id(session)  # (physicians, practices) load once
            bundles = load_bundles(session, [follow_up_id for follow_up_id, _ in claimed])
        for follow_up_id, fence in claimed:
            if self.stopping:  # shutting down: hand back what was not started
                with self.store.session() as session:
                    release_claim(session, follow_up_id, fence, State.planned)
                continue
            prepared = self._prepare(
                follow_up_id, fence, bundles[follow_up_id], installation, report
            )
            if prepared is not None:
                ready.append(prepared)
        if not ready:
            return
        by_mailbox: dict[str | None, list[tuple[int, int, dict, Draft | Reminder]]] = {}
        for prepared in ready:
            by_mailbox.setdefault(prepared[2]["therapist"], []).append(prepared)
        results = []
        for therapist, items in by_mailbox.items():  # each mailbox in one backend call
            outcomes = self._deliver_to(therapist, [item for *_, item in items], begun)
            results += zip(items, outcomes, strict=True)
        with self.store.session() as session:  # the batch's results in one commit
            for (follow_up_id, fence, fields, _), outcome in results:
                self._record_outcome(follow_up_id, fence, fields, outcome, report, session)
        self._recheck_releases(
            [bundles[i] for (i, _, _, _), outcome in results if isinstance(outcome, Delivered)],
            report,
        )

    def _deliver_to(
        self, therapist: str | None, items: list[Draft | Reminder], begun: set[str | None]
    ) -> list:
        try:
            backend = self.backend_for(therapist)
        except ConfigError as exc:  # this therapist's credentials are missing: the rest go on
            return [DeliveryError(exc.problems[0], systemic=True)] * len(items)
        try:
            if therapist not in begun:
                backend.begin()  # built only now: an idle tick never touches Google
                begun.add(therapist)
            return backend.deliver(items)
        except Exception as exc:  # noqa: BLE001 -- a backend's bug must not lose claims
            log.error("backend error", error=type(exc).__name__)
            return [DeliveryError(f"internal error ({type(exc).__name__})")] * len(items)

    def _prepare(
        self, follow_up_id: int, fence: int, bundle: Bundle, installation: str, report: TickReport
    ) -> tuple[int, int, dict, Draft | Reminder] | None:
        """Gate and render one claimed follow-up; None if it is settled without delivery."""
        follow_up = bundle.follow_up
        rule = self.rules.get(follow_up.rule)
        therapist = self.therapist_of(bundle)
        fields = {
            "follow_up": follow_up_id,
            "rule": follow_up.rule,
            "kind": follow_up.kind,
            "attempt": follow_up.attempts,
            "therapist": therapist,
        }
        wanted, gone = self._gate(bundle, rule)
        not_an_attempt = FollowUp.attempts - 1  # the claim counted one; nothing was tried
        if gone:
            self._record(
                follow_up_id, fence, state=State.cancelled, reason=gone, attempts=not_an_attempt
            )
            report.cancelled += 1
            log.info("cancelled", reason=gone, **fields)
            return None
        if wanted.hold:
            self._record(
                follow_up_id, fence, state=State.held, reason=wanted.hold, attempts=not_an_attempt
            )
            report.held.append((follow_up_id, wanted.hold))
            log.info("held", reason=wanted.hold, **fields)
            return None
        stop = self.unassigned(therapist, follow_up.subject_type) or report.stopped_for.get(
            therapist
        )
        if stop:
            self._wait(follow_up_id, fence, stop, MAX_BACKOFF, report, attempts=not_an_attempt)
            return None
        try:
            item = self.render(bundle, rule, installation, self.view(therapist))
        except RenderError as exc:
            self._fail(follow_up_id, fence, str(exc), report, fields)
            return None
        except Exception as exc:  # noqa: BLE001 -- a bug fails this one, not the rest
            self._fail(
                follow_up_id, fence, f"internal error ({type(exc).__name__})", report, fields
            )
            return None
        return follow_up_id, fence, fields, replace(item, attempt=follow_up.attempts)

    def _record_outcome(
        self,
        follow_up_id: int,
        fence: int,
        fields: dict,
        outcome,
        report: TickReport,
        session: Session,
    ) -> None:
        if isinstance(outcome, Delivered):
            thread = {"thread_id": outcome.thread_id} if outcome.thread_id else {}
            self._record(
                follow_up_id,
                fence,
                state=outcome.state,
                session=session,
                external_id=outcome.external_id,
                reason=None,
                next_attempt_at=None,
                therapist=fields["therapist"],
                made_at=self.clock(),  # a draft still in Drafts later than this is unsent
                **thread,
            )
            report.delivered.append((follow_up_id, fields["kind"], outcome.external_id))
            report.reachable.add(fields["therapist"])
            log.info(
                "delivered" if outcome.state == State.done else outcome.state,
                external_id=outcome.external_id,
                **fields,
            )
            return
        if outcome.permanent:
            self._fail(follow_up_id, fence, outcome.reason, report, fields, session)
            return
        reason = outcome.reason
        if outcome.systemic:  # this mailbox's credentials: its other items wait too
            reason = auth_hint(reason, fields["therapist"])
            report.stopped = report.stopped_for[fields["therapist"]] = reason
        delay = (
            timedelta(seconds=outcome.retry_after)
            if outcome.retry_after
            else min(
                MAX_BACKOFF,
                timedelta(seconds=random.uniform(0, 30 * 2 ** min(fields["attempt"], 10))),
            )
        )
        self._wait(follow_up_id, fence, reason, delay, report, session=session)
        log.warning("waiting", reason=reason, retry_in=int(delay.total_seconds()), **fields)

    def _wait(
        self, follow_up_id: int, fence: int, reason: str, delay, report: TickReport, **values
    ) -> None:
        """Hand a claim back to be tried again after `delay`, saying why."""
        self._record(
            follow_up_id,
            fence,
            state=State.waiting,
            reason=reason,
            next_attempt_at=self.clock() + delay,
            **values,
        )
        report.waiting.append((follow_up_id, reason))

    def _fail(
        self,
        follow_up_id: int,
        fence: int,
        reason: str,
        report: TickReport,
        fields: dict,
        session: Session | None = None,
    ) -> None:
        self._record(follow_up_id, fence, state=State.failed, reason=reason, session=session)
        report.failed.append((follow_up_id, reason))
        log.error("failed", reason=reason, **fields)

    def _gate(self, bundle: Bundle, rule: Rule | None) -> tuple[Desired | None, str | None]:
        """Decide again, on fresh rows, whether this follow-up may go out now."""
        follow_up = bundle.follow_up
        if rule is None or not rule.enabled:
            return None, f"rule {follow_up.rule} is disabled or removed"
        subject = bundle_subject(bundle, self.calendar)
        if subject is None:
            return None, f"{SUBJECT_ROWS[follow_up.subject_type][1]} was removed"
        wanted = planning.desired(
            subject, [rule], self.calendar, self.needs_release, self.patient_rules
        )
        if not wanted:
            return None, f"no longer applies to {subject.label}"
        if follow_up.subject_type == "physician" and wanted[0].basis_id != follow_up.basis_id:
            # their first referral changed since planning: plan it again before it goes
            return replace(wanted[0], hold=REBASED), None
        return wanted[0], None

    def render(
        self, bundle: Bundle, rule: Rule, installation: str, view: Settings
    ) -> Draft | Reminder:
        """Render as the therapist's own note or reminder (`view`: their settings)."""
        follow_up = bundle.follow_up
        if follow_up.subject_type == "digest" and bundle.digest is None:
            bundle.digest = self.digest_facts(follow_up.subject_id)
        context = context_for(view, rule, bundle, release=released_to(bundle, rule))
        job = Rendering(self.templates, rule, context, follow_up.id, view, installation)
        if rule.make == "draft":
            return build_draft(job, now=self.clock())
        return build_reminder(job, remind_at=follow_up.remind_at or follow_up.due_at)

    def digest_facts(self, ordinal: int) -> dict:
        """What the digest of a day lists: the week before it, as the ledger and the tables
        say now (refs and physician names only)."""
        day = date.fromordinal(ordinal)
        calendar = self.calendar
        today = min(day, self.today())
        window = Window(
            start=day - timedelta(days=7),
            end=day,
            quiet_upto=latest_base(today, calendar.quiet_after, calendar.holidays),
            unsent_before=localize(
                latest_base(today, calendar.unsent_after, calendar.holidays) + timedelta(days=1),
                time(0),
                calendar.zone,
            ),
        )
        with self.store.session() as session:
            facts = digest_facts(session, window)
        facts["period"] = {"start": window.start, "end": day - timedelta(days=1)}
        facts["quiet_after"] = str(calendar.quiet_after)
        facts["unsent_after"] = str(calendar.unsent_after)
        return facts

    def preview(self, follow_up_id: int) -> tuple[Draft | Reminder | None, str | None]:
        """Render one follow-up as it would be delivered now, changing nothing.

        Returns (rendered, None), (None, why it would not go out), or (None, None) when
        there is no such follow-up.
        """
        with self.store.session() as session:
            bundle = load_bundle(session, follow_up_id)
            if bundle is None:
                return None, None  # no such follow-up
            installation = installation_id(session)
        rule = self.rules.get(bundle.follow_up.rule)
        wanted, gone = self._gate(bundle, rule)
        if gone:
            return None, gone
        if wanted.hold:
            return None, wanted.hold
        therapist = self.therapist_of(bundle)
        problem = self.unassigned(therapist)
        if problem:
            return None, problem
        return self.render(bundle, rule, installation, self.view(therapist)), None
