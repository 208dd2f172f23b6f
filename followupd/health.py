"""Health: a heartbeat written after every tick, and the judgement read back from it.

The engine records that a tick completed, what it did (counts only) and, per mailbox,
whether Google accepted the credentials. `followupd health` (a container's HEALTHCHECK) judges
from that alone: a daemon is healthy when its last tick is recent and every mailbox it
delivers to can be reached. No patient value is ever written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from followupd.config import Settings
from followupd.store import (
    Store,
    StoreError,
    health_facts,
    read_source_states,
    schema_state,
    sqlite_path,
    write_meta,
)
from followupd.store.health import CREDENTIALS, HEARTBEAT


def credentials_key(therapist: str | None) -> str:
    """The meta key of one mailbox's credentials state."""
    return CREDENTIALS if therapist is None else f"{CREDENTIALS}:{therapist}"


def record_tick(
    store: Store,
    settings: Settings,
    beat: dict,
    stopped_for: dict[str | None, str],
    reachable: set[str | None],
) -> None:
    """Write the heartbeat (`beat`: time, owner, counts) and each mailbox's credentials
    state: why it stopped, "ok" if Google answered for it, else as it was."""
    with store.session() as session:
        write_meta(session, HEARTBEAT, json.dumps(beat))
        if settings.config.delivery.backend != "google":
            return
        for therapist in settings.config.mailboxes():
            key = credentials_key(therapist)
            if therapist in stopped_for:
                write_meta(session, key, stopped_for[therapist][:256])
            elif therapist in reachable:
                write_meta(session, key, "ok")


@dataclass
class Verdict:
    """What `followupd health` prints, and why it is unhealthy (no problems: healthy)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def judge(settings: Settings, now: datetime) -> Verdict:
    """Judge the daemon on this home from its heartbeat, without changing anything."""
    verdict = Verdict()
    facts = _read_facts(settings, now, verdict)
    if facts is None:
        return verdict
    beat, credentials, backlog, failures = facts
    _judge_heartbeat(settings, beat, now, verdict)
    verdict.lines += [f"due backlog: {backlog}", f"failed in the last 24 hours: {failures}"]
    verdict.lines += _source_lines(settings)
    if settings.config.delivery.backend == "google":
        _judge_credentials(settings, credentials, verdict)
    return verdict


def _source_lines(settings: Settings) -> list[str]:
    """A watched source that cannot be read is said here (delivery goes on without it)."""
    if not settings.config.sources:
        return []
    try:
        store = Store(settings.database_url, migrate_schema=False)
        try:
            with store.session() as session:
                states = read_source_states(session)
        finally:
            store.close()
    except (StoreError, sa.exc.SQLAlchemyError) as exc:  # a database from before sources
        return [f"sources: their state cannot be read ({_first_line(exc)})"]
    lines = []
    for source in settings.config.sources:
        state = states.get(source.name, {})
        error = state.get("last_error")
        when = state.get("last_read", "never")
        lines.append(
            f"source {source.name}: cannot be read: {error}"
            if error
            else f"source {source.name}: last import {when}"
        )
    return lines


def _read_facts(settings: Settings, now: datetime, verdict: Verdict):
    """(heartbeat, credentials states, due backlog, recent failures), or None when the
    database has nothing to judge (the verdict then says why)."""
    database = sqlite_path(sa.make_url(settings.database_url))
    if database is not None and not database.exists():
        verdict.problems.append("no tick has completed yet (no database)")
        return None
    try:
        store = Store(settings.database_url, migrate_schema=False)
        try:
            with store.engine.connect() as connection:
                if schema_state(connection)[0] is None:
                    verdict.problems.append("no tick has completed yet (an empty database)")
                    return None
            with store.session() as session:
                facts = health_facts(session, now)
                return facts.heartbeat, facts.credentials, facts.backlog, facts.failures
        finally:
            store.close()
    except (StoreError, sa.exc.SQLAlchemyError) as exc:
        verdict.problems.append(f"the database cannot be read ({_first_line(exc)})")
        return None


def _judge_heartbeat(settings: Settings, beat: str | None, now: datetime, verdict: Verdict):
    poll = settings.config.schedule.poll.as_timedelta()
    stale_after = max(3 * poll, timedelta(seconds=60))
    if beat is None:
        verdict.problems.append("no tick has completed yet")
        verdict.lines.append("last good tick: never")
        return
    at = datetime.fromisoformat(json.loads(beat)["at"])
    age = int((now - at).total_seconds())
    local = at.astimezone(settings.config.practice.zone)
    verdict.lines.append(f"last good tick: {local:%Y-%m-%d %H:%M:%S} ({age} s ago)")
    waiting = json.loads(beat).get("due_at_once")
    if waiting:  # the daemon is well; a person must say yes before these go out
        verdict.lines.append(
            f"waiting for a yes: {waiting} notes due at once (see them with `followupd run "
            "--dry-run`, then `followupd run --once --confirm`)"
        )
    if now - at > stale_after:
        verdict.problems.append(
            f"the last tick was {age} s ago (more than {int(stale_after.total_seconds())} s)"
        )


def _judge_credentials(settings: Settings, credentials: dict[str, str], verdict: Verdict):
    for key in [credentials_key(t) for t in settings.config.mailboxes()]:
        whose = key.partition(":")[2]
        state = credentials.get(key)
        verdict.lines.append(
            f"google credentials{f' ({whose})' if whose else ''}: {state or 'not used yet'}"
        )
        if state and state != "ok":
            verdict.problems.append(f"{whose}: {state}" if whose else state)
        elif state is None:  # not used yet: can it be, at all?
            missing = _missing_credentials(settings, whose or None)
            if missing:
                verdict.problems.append(f"{whose}: {missing}" if whose else missing)


def _missing_credentials(settings: Settings, therapist: str | None) -> str | None:
    """Why this mailbox cannot deliver before Google is even asked (no token or key file),
    and the command that fixes it; None if its file is there."""
    google = settings.for_therapist(therapist).config.google
    if google.service_account_file:
        key = settings.path(google.service_account_file)
        return None if key.is_file() else f"no service account key at {key}"
    token = settings.path(google.token_file)
    if token.is_file():
        return None
    fix = f"followupd auth --therapist {therapist}" if therapist else "followupd auth"
    return f"no Google token at {token}: run `{fix}` to sign in"


def _first_line(exc: Exception) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
