"""The clock jumping back an hour and forward a day: no duplicate, nothing skipped.

One injected clock drives both the engine and the stamps the store writes, as the system
clock would after an NTP step or a virtual machine resumed from a snapshot.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from followupd import config as configuration
from followupd import store as store_module
from followupd.engine import Engine
from followupd.models import FollowUp, Referral
from followupd.records import parse_referral, parse_visit
from followupd.store import Directory, Store, upsert_referrals, upsert_visits


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def add(store: Store, refs: list[str], visits: list[str] = ()) -> None:
    received = (date.today() - timedelta(days=10)).isoformat()
    with store.session() as session:
        upsert_referrals(
            session,
            [
                parse_referral(
                    {
                        "ref": ref,
                        "received_on": received,
                        "physician": "Dr. Clock",
                        "physician_email": "clock@clinic.example",
                        "client_name": "Test Client",
                        "presenting_problem": "Synthetic",
                        "release_on_file": "yes",
                    }
                )
                for ref in refs
            ],
            Directory(),
        )
        upsert_visits(
            session,
            [
                parse_visit(
                    {
                        "visited_on": date.today().isoformat(),
                        "practice": practice,
                        "physician": f"Dr. {practice}",
                    }
                )
                for practice in visits
            ],
            Directory(),
        )


def test_clock_back_an_hour_and_forward_a_day_skips_nothing_duplicates_nothing(
    home, db_url, monkeypatch
):
    clock = Clock()
    monkeypatch.setattr(store_module.stamps, "now_utc", clock)  # the stamps on changed rows
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(settings.database_url)
    engine = Engine(settings, store, clock=clock)

    add(store, ["C-1", "C-2"], ["Office A"])
    engine.tick()
    clock.now -= timedelta(hours=1)  # the clock steps back
    add(store, ["C-3", "C-4"], ["Office B"])
    engine.tick()
    clock.now += timedelta(minutes=10)
    add(store, ["C-5"])
    engine.tick()
    clock.now += timedelta(days=1)  # and jumps a day ahead
    add(store, ["C-6"], ["Office C"])
    engine.tick()
    engine.tick()

    with store.session() as session:
        rows = list(session.execute(sa.select(FollowUp)).scalars())
        referrals = session.execute(sa.select(Referral.id)).scalars().all()
    acknowledged = sorted(r.subject_id for r in rows if r.rule == "referral-acknowledgement")
    assert acknowledged == sorted(referrals), "a referral was never planned"
    revisits = [r for r in rows if r.rule == "office-revisit"]
    assert len(revisits) == 3
    due = [r for r in rows if r.due_at <= clock.now]
    assert {r.state for r in due} == {"done"}, "something due was not delivered"
    files = sorted(
        int(p.stem) for p in (home / "outbox").rglob("*") if p.suffix in (".eml", ".ics")
    )
    assert files == sorted(r.id for r in rows if r.state == "done")  # one file each
    engine.close()
    store.close()
