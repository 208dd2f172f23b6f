"""The engine's shared parts: settings, store, per-therapist views and backends, the fence.

Everything a step of the tick needs in common lives on `EngineCore`; each step is a class of
its own module (planner, deliverer, withdrawer, syncer), and `Engine` in `__init__` puts
them together and runs them in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from followupd.config import ConfigError, Rule, Settings
from followupd.delivery import Backend
from followupd.logs import Log
from followupd.models import Bundle
from followupd.planning import Calendar
from followupd.render import Templates
from followupd.store import SharedTokenBucket, Store, record_result
from followupd.timing import ClosedDays, utcnow

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
DELETE_SENT = "to withdraw: a delete was sent, its answer lost: "  # a withdrawal in doubt


def auth_hint(problem: str, therapist: str | None) -> str:
    """A credentials problem as one therapist must fix it: `followupd auth --therapist`."""
    if therapist is None:
        return problem
    return problem.replace("`followupd auth", f"`followupd auth --therapist {therapist}")


@dataclass
class TickReport:
    inserted: int = 0
    skipped: int = 0  # of those inserted: history, older than the cut-off
    planned_held: list[str] = field(default_factory=list)  # why new follow-ups are held
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
    refused: str | None = None  # why nothing new was delivered: a burst waits for a yes
    due_at_once: int = 0  # how many notes that burst holds

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
            "holidays": config.holidays.model_dump(mode="json"),
            "history": str(config.history.cutoff),
            "events": config.events.model_dump(mode="json"),
            "timezone": config.practice.timezone,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def closed_days(settings: Settings) -> ClosedDays:
    """The practice's closed days; a country the `holidays` package does not know stops
    start-up, naming the key."""
    days = settings.config.holidays
    closed = ClosedDays(days.closed, days.country, days.subdivision)
    problem = closed.problem()
    if problem:
        raise ConfigError([f"{settings.config_path}: holidays: {problem}"])
    return closed


def released_to(bundle: Bundle, rule: Rule) -> bool:
    """Is a release naming this note's recipient in force (so it may show patient details)?"""
    referral = bundle.referral
    if referral is None or rule.make != "draft" or rule.digest:
        return False
    if rule.to == "prescriber":
        return bool(referral.prescriber_id and referral.prescriber_release_on_file)
    return bool(referral.release_on_file)


class EngineCore:
    """Runs ticks for one home: its settings, its store and its delivery backends."""

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
        self.calendar = Calendar(
            config.practice.zone,
            closed_days(settings),
            config.events.quiet_after,
            config.events.unsent_after,
        )
        self.fingerprint = rules_fingerprint(settings)
        self.lease = config.schedule.lease.as_timedelta()
        self.settle = settle_time(settings)
        self._injected = backend
        self._backends: dict[str | None, Backend] = {}
        self._views: dict[str | None, Settings] = {None: settings}
        self.stopping = False
        self._orphans_checked: datetime | None = None
        self._rules_since: datetime | None = None  # see Planner.rules_since
        self._quiet_day: date | None = None  # the last day quiet spells were looked for
        self._digest_days: list[date] | None = None  # the digests last planned
        self._drafts_until: datetime | None = None  # drafts made before it were read
        # cursors kept in memory too (the physicians'): an idle tick reads none of them
        self._positions: dict[str, datetime | None] = {}

    def today(self) -> date:
        """Today in the practice's zone."""
        return self.clock().astimezone(self.calendar.zone).date()

    # --- therapists: whose mailbox, signature and calendar -----------------------------

    def view(self, therapist: str | None) -> Settings:
        """The settings as `therapist`'s; KeyError if the configuration does not list them."""
        if therapist not in self._views:
            self._views[therapist] = self.settings.for_therapist(therapist)
        return self._views[therapist]

    def therapist_of(self, bundle: Bundle) -> str | None:
        """Whose mailbox or calendar: the referral's or visit's therapist; for an unsent
        reminder, the therapist whose Drafts hold the note; a digest is the practice's."""
        if bundle.note is not None and bundle.note.therapist:
            return bundle.note.therapist
        subject = bundle.referral or bundle.visit
        own = subject.therapist if subject is not None else None
        return own or self.settings.config.default_therapist()

    def unassigned(self, therapist: str | None, subject_type: str | None = None) -> str | None:
        """Why a follow-up of `therapist` cannot go out under this configuration, or None.
        A digest (about the whole practice) may go to the practice's own mailbox."""
        if therapist is None and subject_type == "digest":
            return None
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
