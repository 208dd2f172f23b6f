"""The draft sync: notice drafts the therapist sent or deleted (or saved anew under another
id after an edit), a bounded number per tick, each mailbox on its own so one that cannot be
checked never holds up the others.
"""

from __future__ import annotations

from datetime import datetime

from followupd.config import ConfigError
from followupd.delivery import DraftRef
from followupd.engine.core import SYNC_BATCH, EngineCore, TickReport, log
from followupd.models import FollowUp
from followupd.render import draft_tag, message_id
from followupd.store import drafts_to_sync, installation_id, record_sync


class Syncer(EngineCore):
    """The sync step of a tick."""

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
