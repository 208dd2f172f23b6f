"""Withdrawal, as the engine runs it: a revoked release turns unsent notes with patient
details into `withdraw` rows (planning does that); here they are claimed like deliveries and
taken back from where they are: the outbox file, or the Gmail draft found by its identity.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import TYPE_CHECKING

from followupd.config import ConfigError
from followupd.delivery import Backend, DeliveryError, Withdrawn
from followupd.engine.core import CLAIM_BATCH, DELETE_SENT, MAX_BACKOFF, EngineCore, TickReport, log
from followupd.models import FollowUp, State
from followupd.store import claim_withdrawals, follow_ups_by_id, installation_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class Withdrawer(EngineCore):
    """The withdrawal step of a tick."""

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
        except Exception as exc:  # noqa: BLE001 -- a bug must not lose the withdrawal
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
