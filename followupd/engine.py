"""One tick: plan -> claim -> render -> deliver -> record.

The only module that knows every step. Planning reads only rows changed since its cursor (so
an idle tick costs the same on a thousand referrals or a million) and writes intent to the
ledger; delivery claims due rows (the claim is committed before anything leaves the process),
renders them, hands them to a backend and records the outcome against the claim's fence.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from followupd import planning
from followupd.config import ConfigError, Rule, Settings
from followupd.delivery import (
    Backend,
    Delivered,
    DeliveryError,
    Draft,
    DraftRef,
    Reminder,
    Withdrawn,
)
from followupd.logs import Log
from followupd.models import Bundle, FollowUp, State
from followupd.planning import Calendar, Desired, Existing, Subject
from followupd.render import (
    RenderError,
    Templates,
    build_draft,
    build_reminder,
    context_for,
    draft_tag,
    message_id,
)
from followupd.store import (
    SharedTokenBucket,
    Store,
    cancel_orphans,
    changed_referrals,
    changed_visits,
    claim_due,
    claim_withdrawals,
    drafts_to_sync,
    expire_dead_claims,
    follow_ups_by_id,
    insert_follow_ups,
    installation_id,
    ledger_rows,
    load_bundle,
    read_cursor,
    record_result,
    record_sync,
    referrals_by_id,
    release_claim,
    update_follow_ups,
    write_cursor,
    write_meta,
)
from followupd.subjects import bundle_subject, referral_subject, visit_subject
from followupd.timing import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = Log()

PAGE = 2000  # subjects planned per transaction
CLAIM_BATCH = 50  # follow-ups claimed at once (and sent to Google in one batch)
SYNC_BATCH = 50  # delivered drafts checked per tick
# The planning cursor never passes "now minus this": a transaction that committed late with an
# earlier timestamp (or a replica whose clock runs behind) is still seen. Re-planning a row is
# idempotent, so reading a few rows twice costs little.
CURSOR_OVERLAP = timedelta(seconds=60)
MAX_BACKOFF = timedelta(hours=1)
# Pending follow-ups of a disabled rule or a deleted subject are cancelled on the first tick
# and then this often: the sweep reads every pending row, so not on every tick. (Delivery
# checks again anyway: nothing of a removed subject or rule goes out in between.)
ORPHAN_CHECK = timedelta(hours=1)
HEARTBEAT = "heartbeat"  # meta key: the last completed tick
DELETE_SENT = "to withdraw: a delete was sent, its answer lost: "  # a withdrawal in doubt
CREDENTIALS = "google_credentials"  # meta key: "ok", or why Google refused them


def auth_hint(problem: str, therapist: str | None) -> str:
    """A credentials problem as one therapist must fix it: `followupd auth --therapist`."""
    if therapist is None:
        return problem
    return problem.replace("`followupd auth", f"`followupd auth --therapist {therapist}")


def credentials_key(therapist: str | None) -> str:
    """The meta key of one mailbox's credentials state."""
    return CREDENTIALS if therapist is None else f"{CREDENTIALS}:{therapist}"


@dataclass
class TickReport:
    inserted: int = 0
    changed: int = 0
    cancelled: int = 0
    delivered: list[tuple[int, str, str]] = field(default_factory=list)  # id, kind, external
    held: list[tuple[int, str]] = field(default_factory=list)
    waiting: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    stopped: str | None = None  # why delivery stopped early (e.g. credentials revoked)
    stopped_for: dict[str | None, str] = field(default_factory=dict)  # by therapist
    reachable: set[str | None] = field(default_factory=set)  # mailboxes Google answered for
    synced: list[tuple[int, str]] = field(default_factory=list)  # drafts found sent/deleted
    withdrawn: list[tuple[int, str]] = field(default_factory=list)  # taken back, or disclosed

    @property
    def ok(self) -> bool:
        return not self.failed


def make_backend(settings: Settings, bucket=None) -> Backend:
    """The configured backend; missing Google credentials stop start-up with what to do."""
    if settings.config.delivery.backend == "outbox":
        from followupd.delivery.outbox import OutboxBackend

        return OutboxBackend(settings.outbox_dir)
    from followupd.delivery.google import GoogleBackend
    from followupd.delivery.googleapi import CredentialsProblem

    try:
        return GoogleBackend(settings, bucket=bucket)
    except CredentialsProblem as exc:
        raise ConfigError([f"google: {exc}"]) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def settle_time(settings: Settings) -> timedelta:
    """How long a call with no answer may still be running at Google: a claim whose holder
    died is not looked at again before this (nothing is in flight for the outbox)."""
    if settings.config.delivery.backend != "google":
        return timedelta(0)
    return timedelta(seconds=max(60.0, 2 * settings.config.google.timeout))


def rules_fingerprint(settings: Settings) -> str:
    """Changes whenever anything that decides what is planned changes: then re-plan all."""
    config = settings.config
    material = json.dumps(
        {
            "rules": [rule.model_dump(mode="json") for rule in config.rules],
            "holidays": [str(day) for day in config.holidays],
            "timezone": config.practice.timezone,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def released_to(bundle: Bundle, rule: Rule) -> bool:
    """Is a release naming this note's recipient in force (so it may show patient details)?"""
    referral = bundle.referral
    if referral is None or rule.make != "draft":
        return False
    if rule.to == "prescriber":
        return bool(referral.prescriber_id and referral.prescriber_release_on_file)
    return bool(referral.release_on_file)


class Engine:
    """Runs ticks for one home: its settings, its store and its delivery backend."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend | None = None,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
    ):
        self.settings = settings
        self.store = store
        self.clock = clock
        # Claims name their holder "name@host:pid" (FOLLOWUPD_REPLICA names a replica) or
        # "host:pid"; the host keeps two hosts' replicas of one name apart.
        replica = settings.environ.get("FOLLOWUPD_REPLICA")
        host = socket.gethostname()
        self.host = f"{replica}@{host}" if replica else host  # never two hosts' one name
        self.owner = owner or f"{self.host}:{os.getpid()}"
        self.templates = Templates(settings.templates_dir)
        problems = self.templates.problems(settings.config.rules)
        if problems:
            raise ConfigError(problems)
        self.rules = {rule.name: rule for rule in settings.config.rules}
        self.enabled = [rule for rule in settings.config.rules if rule.enabled]
        # Rules whose notes show patient details: gated by a release, taken back on a revoke.
        self.patient_rules = frozenset(
            rule.name
            for rule in self.enabled
            if rule.make == "draft" and self.templates.uses_patient_fields(rule.template)
        )
        self.needs_release = self.patient_rules | frozenset(
            rule.name for rule in self.enabled if rule.when.release == "required"
        )
        config = settings.config
        self.calendar = Calendar(config.practice.zone, frozenset(config.holidays))
        self.fingerprint = rules_fingerprint(settings)
        self.lease = config.schedule.lease.as_timedelta()
        self.settle = settle_time(settings)
        self._injected = backend
        self._backends: dict[str | None, Backend] = {}
        self._views: dict[str | None, Settings] = {None: settings}
        self.stopping = False
        self._orphans_checked: datetime | None = None

    # --- therapists: whose mailbox, signature and calendar -----------------------------

    def view(self, therapist: str | None) -> Settings:
        """The settings as `therapist`'s; KeyError if the configuration does not list them."""
        if therapist not in self._views:
            self._views[therapist] = self.settings.for_therapist(therapist)
        return self._views[therapist]

    def therapist_of(self, bundle: Bundle) -> str | None:
        subject = bundle.referral or bundle.visit
        own = subject.therapist if subject is not None else None
        return own or self.settings.config.default_therapist()

    def unassigned(self, therapist: str | None) -> str | None:
        """Why a follow-up of `therapist` cannot go out under this configuration, or None."""
        if therapist is None and len(self.settings.config.therapists) > 1:
            return (
                "no therapist: several are configured (import it again with a "
                "`therapist` column to say whose it is)"
            )
        try:
            self.view(therapist)
        except KeyError:
            return (
                f"therapist {therapist!r} is not in followupd.yaml (add them under "
                "`therapists:`, or change the referral's or visit's therapist)"
            )
        return None

    def backend_for(self, therapist: str | None) -> Backend:
        """One backend per mailbox (the outbox is one folder for all); built on first use."""
        if self._injected is not None:
            return self._injected
        if self.settings.config.delivery.backend == "outbox":
            therapist = None
        if therapist not in self._backends:
            self._backends[therapist] = make_backend(self.view(therapist), self._bucket())
        return self._backends[therapist]

    @property
    def backend(self) -> Backend:
        return self.backend_for(self.settings.config.default_therapist())

    def check_backends(self) -> None:
        """Build every mailbox's backend now: missing credentials stop start-up."""
        for therapist in self.settings.config.mailboxes():
            self.backend_for(therapist)

    def _bucket(self):
        """Quota buckets in the database when replicas may share a mailbox (PostgreSQL)."""
        if self.store.engine.dialect.name != "postgresql":
            return None
        return lambda name, per_minute, burst: SharedTokenBucket(
            self.store, name, per_minute, burst
        )

    def close(self) -> None:
        for backend in {id(b): b for b in self._backends.values()}.values():
            backend.close()
        if self._injected is not None:
            self._injected.close()

    # --- one tick ---------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        with self.store.session() as session:
            expired = expire_dead_claims(session, self.host, _pid_alive, self.clock(), self.settle)
        if expired:
            log.warning("recovered claims of a process that died", follow_ups=expired)
        self.plan(report)
        self.withdraw_due(report)
        self.deliver_due(report)
        if not self.stopping:
            self.sync(report)
        self.heartbeat(report)
        return report

    def withdraw_now(self) -> TickReport:
        """Plan, then take back what revoked releases withdraw (the command line, at once)."""
        report = self.plan()
        return self.withdraw_due(report)

    def stop(self) -> None:
        """Ask a running tick to finish the batch in hand and return (SIGTERM)."""
        self.stopping = True

    def heartbeat(self, report: TickReport) -> None:
        """Record that a tick completed, for `followupd health` (ids and counts only)."""
        beat = {
            "at": self.clock().isoformat(timespec="seconds"),
            "owner": self.owner[:60],
            "delivered": len(report.delivered),
            "failed": len(report.failed),
            "waiting": len(report.waiting),
        }
        with self.store.session() as session:
            write_meta(session, HEARTBEAT, json.dumps(beat))
            if self.settings.config.delivery.backend == "google":
                for therapist in self.settings.config.mailboxes():
                    key = credentials_key(therapist)
                    if therapist in report.stopped_for:
                        write_meta(session, key, report.stopped_for[therapist][:256])
                    elif therapist in report.reachable:
                        write_meta(session, key, "ok")

    # --- sync -------------------------------------------------------------------------

    def sync(self, report: TickReport | None = None) -> TickReport:
        """Notice drafts the therapist sent or deleted: a bounded check per tick."""
        report = report or TickReport()
        if self.settings.config.delivery.backend != "google" and self._injected is None:
            return report
        now = self.clock()
        with self.store.session() as session:
            rows = drafts_to_sync(session, now, SYNC_BATCH)
            installation = installation_id(session) if rows else ""
        by_mailbox: dict[str | None, list[FollowUp]] = {}
        for row in rows:
            by_mailbox.setdefault(row.therapist, []).append(row)
        later = now + self.settings.config.schedule.sync.as_timedelta()
        for therapist, mine in by_mailbox.items():
            if therapist in report.stopped_for or not self._sync_mailbox(
                therapist, mine, installation, now, report
            ):
                self._sync_later(mine, later)  # else they would block the other mailboxes
        return report

    def _sync_later(self, rows: list[FollowUp], later: datetime) -> None:
        with self.store.session() as session:
            for row in rows:
                record_sync(session, row.id, next_attempt_at=later)

    def _sync_mailbox(
        self,
        therapist: str | None,
        rows: list[FollowUp],
        installation: str,
        now: datetime,
        report: TickReport,
    ) -> bool:
        """Check one mailbox's drafts; False if it cannot be checked now."""
        try:
            backend = self.backend_for(therapist)
            refs = [self.draft_ref(row, installation) for row in rows]
        except (KeyError, ConfigError):  # a therapist since removed, or without credentials
            return False
        states = backend.draft_states(refs)
        later = now + self.settings.config.schedule.sync.as_timedelta()
        with self.store.session() as session:
            for row in rows:
                found = states.get(row.id)
                if found is None or found.state == "present":
                    moved = (
                        {"external_id": f"gmail:{found.draft_id}"}
                        if found and found.draft_id
                        else {}
                    )
                    if found and found.thread_id:
                        moved["thread_id"] = found.thread_id
                    record_sync(session, row.id, next_attempt_at=later, **moved)
                    continue
                reason = {
                    "sent": f"sent {found.sent_at:%Y-%m-%d %H:%M} UTC" if found.sent_at else "sent",
                    "deleted": "deleted from Gmail drafts without sending",
                    "gone": "no longer in Gmail drafts (sent or deleted)",
                }[found.state]
                record_sync(session, row.id, state=found.state, reason=reason, next_attempt_at=None)
                report.synced.append((row.id, found.state))
                log.info("synced", follow_up=row.id, state=found.state)
        report.reachable.add(therapist)
        return True

    def draft_ref(self, row: FollowUp, installation: str) -> DraftRef:
        """How a backend finds this follow-up's draft again (KeyError: unknown therapist)."""
        domain = self.view(row.therapist).config.practice.message_domain
        external = row.external_id or ""
        return DraftRef(
            follow_up_id=row.id,
            draft_id=external.removeprefix("gmail:") if external.startswith("gmail:") else None,
            message_id=message_id(installation, row.id, domain),
            tag=draft_tag(installation, row.id),
            thread_id=row.thread_id,
            attempt=row.attempts,
        )

    # --- withdraw ---------------------------------------------------------------------

    def withdraw_due(self, report: TickReport | None = None) -> TickReport:
        """Take back notes whose release was revoked: claimed, then deleted where they are."""
        report = report or TickReport()
        seen: set[int] = set()
        while not self.stopping:
            with self.store.session() as session:
                claimed = claim_withdrawals(
                    session, self.clock(), self.owner, self.lease, CLAIM_BATCH
                )
                claimed = [(i, f) for i, f in claimed if i not in seen]
                if not claimed:
                    break
                fences = dict(claimed)
                rows = follow_ups_by_id(session, list(fences))
                installation = installation_id(session)
            seen.update(fences)
            self._withdraw_batch(rows, fences, installation, report)
        return report

    def _withdraw_batch(
        self, rows: list[FollowUp], fences: dict[int, int], installation: str, report: TickReport
    ) -> None:
        by_backend: dict[tuple[str, str | None], list[FollowUp]] = {}
        for row in rows:
            where = (
                "outbox"
                if (row.external_id or "").startswith("outbox:")
                or (row.external_id is None and self.settings.config.delivery.backend == "outbox")
                else "google"
            )
            by_backend.setdefault((where, row.therapist), []).append(row)
        results = []
        for (where, therapist), mine in by_backend.items():
            results += zip(
                mine, self._withdraw_from(where, therapist, mine, installation), strict=True
            )
        with self.store.session() as session:
            for row, outcome in results:
                self._record_withdrawal(session, row, fences[row.id], outcome, report)

    def _withdraw_from(
        self, where: str, therapist: str | None, rows: list[FollowUp], installation: str
    ) -> list:
        try:
            backend = self._outbox() if where == "outbox" else self.backend_for(therapist)
            refs = [self.draft_ref(row, installation) for row in rows]
            return backend.withdraw(refs)
        except (KeyError, ConfigError) as exc:
            problem = (
                exc.problems[0]
                if isinstance(exc, ConfigError)
                else f"therapist {therapist!r} is not in followupd.yaml"
            )
            return [DeliveryError(problem, systemic=True)] * len(rows)
        except Exception as exc:  # a bug must not lose the withdrawal
            log.error("backend error", error=type(exc).__name__)
            return [DeliveryError(f"internal error ({type(exc).__name__})")] * len(rows)

    def _outbox(self) -> Backend:
        """The outbox a note was written to, whichever backend is configured now."""
        if self._injected is not None and self._injected.name == "outbox":
            return self._injected
        from followupd.delivery.outbox import OutboxBackend

        return OutboxBackend(self.settings.outbox_dir)

    def _record_withdrawal(
        self, session: Session, row: FollowUp, fence: int, outcome, report: TickReport
    ) -> None:
        fields = {"follow_up": row.id, "rule": row.rule, "therapist": row.therapist}
        if isinstance(outcome, Withdrawn):
            where = (
                "the outbox" if (row.external_id or "").startswith("outbox:") else "Gmail drafts"
            )
            if outcome.state == "gone" and row.external_id is None:
                # never recorded as made, and not among the drafts: nothing to take back
                outcome = Withdrawn("withdrawn")
                where = "Gmail drafts (none was found; it was never recorded as made)"
            elif outcome.state == "gone" and (row.reason or "").startswith(DELETE_SENT):
                outcome = Withdrawn("withdrawn")  # our delete went through; its answer did not
                where = "Gmail drafts (the answer to the delete was lost; the draft is gone)"
            state, reason = {
                "withdrawn": (
                    State.withdrawn,
                    f"withdrawn from {where}: the release of information was revoked",
                ),
                "sent": (
                    State.sent,
                    "disclosed: sent before the release of information was "
                    "revoked"
                    + (f" (sent {outcome.sent_at:%Y-%m-%d %H:%M} UTC)" if outcome.sent_at else ""),
                ),
                "gone": (
                    State.gone,
                    "may have been disclosed: it left Drafts (sent or "
                    "deleted) before the release of information was revoked",
                ),
            }[outcome.state]
            self._record(
                row.id, fence, session=session, state=state, reason=reason, next_attempt_at=None
            )
            report.withdrawn.append((row.id, state))
            log.info(
                "withdrawn" if state == State.withdrawn else "disclosed", state=state, **fields
            )
            return
        delay = (
            timedelta(seconds=outcome.retry_after)
            if outcome.retry_after
            else min(
                MAX_BACKOFF, timedelta(seconds=random.uniform(0, 30 * 2 ** min(row.attempts, 10)))
            )
        )
        reason = f"{DELETE_SENT if outcome.maybe_done else 'to withdraw: '}{outcome.reason}"
        self._record(
            row.id,
            fence,
            session=session,
            state=State.withdraw,
            reason=reason,
            next_attempt_at=self.clock() + delay,
        )
        report.waiting.append((row.id, reason))
        log.warning(
            "withdrawal waiting",
            reason=outcome.reason,
            retry_in=int(delay.total_seconds()),
            **fields,
        )

    # --- plan -------------------------------------------------------------------------

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

    def _reconcile(
        self, session, subject_type: str, subjects: list[Subject], report: TickReport
    ) -> None:
        wanted: list[Desired] = []
        for subject in subjects:
            wanted += planning.desired(
                subject, self.enabled, self.calendar, self.needs_release, self.patient_rules
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
                    "state": State.held if d.hold else State.planned,
                    "reason": d.hold,
                }
                for d in changes.inserts
            ],
        )
        update_follow_ups(session, changes.updates)
        report.inserted += len(changes.inserts)
        report.changed += len(changes.updates)
        for desired in changes.inserts:
            log.info(
                "planned",
                rule=desired.rule,
                subject=f"{desired.subject_type}:{desired.subject_id}",
                kind=desired.kind,
                due_at=desired.due_at.isoformat(),
                held=bool(desired.hold),
            )
        for follow_up_id, values in changes.updates:
            if "state" in values:
                log.info(
                    "replanned",
                    follow_up=follow_up_id,
                    state=values["state"],
                    reason=values.get("reason"),
                )

    # --- deliver ----------------------------------------------------------------------

    def deliver_due(self, report: TickReport | None = None) -> TickReport:
        """Claim what is due, a batch at a time, and deliver each batch in one backend call."""
        report = report or TickReport()
        seen: set[int] = set()
        begun: set[str | None] = set()  # mailboxes whose round has started
        every = len(self.settings.config.mailboxes())
        while len(report.stopped_for) < every and not self.stopping:
            with self.store.session() as session:
                claimed = claim_due(session, self.clock(), self.owner, self.lease, CLAIM_BATCH)
            claimed = [(i, f) for i, f in claimed if i not in seen]
            if not claimed:
                break
            seen.update(i for i, _ in claimed)
            self._deliver_batch(claimed, report, begun)
        return report

    def _deliver_batch(
        self, claimed: list[tuple[int, int]], report: TickReport, begun: set[str | None]
    ) -> None:
        ready: list[tuple[int, int, dict, Draft | Reminder]] = []
        with self.store.session() as session:  # one read for the batch: rows it shares
            installation = installation_id(session)  # (physicians, practices) load once
            bundles = {
                follow_up_id: load_bundle(session, follow_up_id) for follow_up_id, _ in claimed
            }
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
        except Exception as exc:  # a bug in a backend must not lose the claims
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
        stop = self.unassigned(therapist) or report.stopped_for.get(therapist)
        if stop:
            self._record(
                follow_up_id,
                fence,
                state=State.waiting,
                reason=stop,
                next_attempt_at=self.clock() + MAX_BACKOFF,
                attempts=not_an_attempt,
            )
            report.waiting.append((follow_up_id, stop))
            return None
        try:
            item = self.render(bundle, rule, installation, self.view(therapist))
        except RenderError as exc:
            self._fail(follow_up_id, fence, str(exc), report, fields)
            return None
        except Exception as exc:  # a bug must not stop the other follow-ups
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
        self._record(
            follow_up_id,
            fence,
            state=State.waiting,
            reason=reason,
            next_attempt_at=self.clock() + delay,
            session=session,
        )
        report.waiting.append((follow_up_id, reason))
        log.warning("waiting", reason=reason, retry_in=int(delay.total_seconds()), **fields)

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

    def _record(
        self, follow_up_id: int, fence: int, session: Session | None = None, **values
    ) -> None:
        """Record against the claim's fence (in `session`, else in a transaction of its own);
        a fence that moved means another process took the follow-up over."""
        if session is None:
            with self.store.session() as own:
                return self._record(follow_up_id, fence, own, **values)
        if not record_result(session, follow_up_id, fence, **values):
            log.warning("lease lost", follow_up=follow_up_id, fence=fence)

    def _gate(self, bundle: Bundle, rule: Rule | None) -> tuple[Desired | None, str | None]:
        """Decide again, on fresh rows, whether this follow-up may go out now."""
        follow_up = bundle.follow_up
        if rule is None or not rule.enabled:
            return None, f"rule {follow_up.rule} is disabled or removed"
        subject = bundle_subject(bundle)
        if subject is None:
            return None, f"the {follow_up.subject_type} was removed"
        wanted = planning.desired(
            subject, [rule], self.calendar, self.needs_release, self.patient_rules
        )
        if not wanted:
            return None, f"no longer applies to {subject.label}"
        return wanted[0], None

    def render(
        self, bundle: Bundle, rule: Rule, installation: str, view: Settings
    ) -> Draft | Reminder:
        """Render as the therapist's own note or reminder (`view`: their settings)."""
        follow_up = bundle.follow_up
        context = context_for(view, rule, bundle, release=released_to(bundle, rule))
        if rule.make == "draft":
            return build_draft(
                self.templates,
                rule,
                context,
                follow_up_id=follow_up.id,
                settings=view,
                installation=installation,
                now=self.clock(),
            )
        return build_reminder(
            self.templates,
            rule,
            context,
            follow_up_id=follow_up.id,
            settings=view,
            installation=installation,
            remind_at=follow_up.remind_at or follow_up.due_at,
        )

    # --- preview ----------------------------------------------------------------------

    def preview(self, follow_up_id: int) -> tuple[Draft | Reminder | None, str | None]:
        """Render one follow-up as it would be delivered now, changing nothing.

        Returns (rendered, None), or (None, why it would not go out).
        """
        with self.store.session() as session:
            bundle = load_bundle(session, follow_up_id)
            if bundle is None:
                return None, f"no follow-up {follow_up_id}"
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
