"""One tick: plan -> withdraw -> claim -> render -> deliver -> record -> sync.

The only place that knows every step. Planning reads only rows changed since its cursor (so
an idle tick costs the same on a thousand referrals or a million) and writes intent to the
ledger; a revoked release's notes are taken back; delivery claims due rows (the claim is
committed before anything leaves the process), renders them, hands them to a backend and
records the outcome against the claim's fence; the sync notices what the therapist sent.
Each step is a module of this package; `Engine` runs them in order.
"""

from __future__ import annotations

from followupd import health
from followupd.engine.core import (
    CLAIM_BATCH,
    EngineCore,
    TickReport,
    _pid_alive,
    auth_hint,
    log,
    make_backend,
    released_to,
    rules_fingerprint,
    settle_time,
)
from followupd.engine.deliverer import Deliverer
from followupd.engine.planner import Planner
from followupd.engine.rehearsal import Rehearsal, Rehearser
from followupd.engine.syncer import Syncer
from followupd.engine.withdrawer import Withdrawer
from followupd.health import CREDENTIALS, HEARTBEAT, credentials_key
from followupd.store import expire_dead_claims

__all__ = [
    "CLAIM_BATCH",
    "CREDENTIALS",
    "HEARTBEAT",
    "Engine",
    "Rehearsal",
    "TickReport",
    "auth_hint",
    "credentials_key",
    "make_backend",
    "released_to",
    "rules_fingerprint",
    "settle_time",
]


class Engine(Syncer, Withdrawer, Rehearser, Deliverer, Planner, EngineCore):
    """Runs ticks for one home: its settings, its store and its delivery backends."""

    def tick(self, report: TickReport | None = None) -> TickReport:
        report = report or TickReport()
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
            "due_at_once": report.due_at_once,  # waiting for `run --once --confirm`
        }
        health.record_tick(self.store, self.settings, beat, report.stopped_for, report.reachable)
