"""Google delivery: how fast followupd turns due follow-ups into Gmail drafts and Calendar
events, and how many HTTP requests and round trips that costs, against a local fake Google
(tests/google_server.py) that adds Google-like latency to every round trip.

Why a floor: the latency dominates, so drafts/s alone says little. The floor is the bare
google-api-python-client making the same drafts.create (or events.insert) calls one by one
against the same server in the same run: what any client pays per call (its own floor is
the latency alone, 1 / delay). Unbatched followupd
should come close to it (goal >= 0.8x); batched followupd should beat it (goal >= 3x), and
its requests per item show why. CPU per draft is the delivering thread's own (the server
runs in other threads of this process), against the bare client's per call: followupd also
claims, renders and records each draft, which the floor's prebuilt messages skip.

The quota-paced backlog drains a backlog under a per-minute Gmail budget enforced by the
server, and reports how much of the budget the pacer uses (goal >= 0.9; a short run may
pass 1.0 by the bucket's initial burst of one batch) and the 429s it draws (must be 0).
Caveat: the server's window is Google's 60 s and a run here lasts seconds, so the backlog is
below one minute's budget; zero 429s then shows only that the pacer never bursts past a
whole minute's budget, not that it respects the window.

Everything runs in this process; each measurement gets a fresh home (SQLite) and fresh
server state.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row

DELAY = 0.1  # seconds the server adds per HTTP round trip, about what Google takes
# Gmail units per minute for the backlog: 50 drafts/s, well under what batched followupd
# makes unpaced here (80-120/s on 2 CPUs), so the pacer and not the CPU sets the pace; twice
# Google's own per-user limit of 15,000.
BUDGET = 30_000
UNLIMITED = 10_000_000  # a quota so large that pacing never waits
BATCHED, UNBATCHED = 50, 1
CONFIG = ROOT / "config" / "followupd.yaml"
TOKEN = {
    "token": "test-token",
    "refresh_token": "r",
    "client_id": "c",
    "client_secret": "s",
    "expiry": "2099-01-01T00:00:00Z",
}
BODY = (
    "Thank you for referring your patient to my practice. I saw them this week for an "
    "initial consultation and we have agreed on a plan of treatment; I will write again "
    "when we close. Please call me with any questions.\n\n"
) * 3


@dataclass(frozen=True)
class Sizes:
    """How many items each measurement delivers. One call per item costs the same for the
    first item as for the hundredth, so --quick times only a few of those; a batched run
    needs 100 for its per-100 request counts to be exact (two full batches)."""

    single: int  # drafts sent one call each (the bare client, unbatched followupd)
    batched: int  # drafts sent in batches
    events_single: int
    events_batched: int
    backlog: int  # drafts, 10 Gmail units each


FULL = Sizes(single=500, batched=500, events_single=100, events_batched=100, backlog=1000)
QUICK = Sizes(single=10, batched=100, events_single=10, events_batched=100, backlog=120)


# --- the fake server ------------------------------------------------------------------------


def _google_server() -> Any:
    """tests/google_server.py as a module (tests/ is not a package), minus Nagle's delay.

    Its handler writes a response's headers and body in two sends; with Nagle's algorithm on,
    the body waits for the client's delayed ACK of the headers, about 40 ms on Linux, on
    every round trip. Google adds no such pause, and here it would inflate the floor by 40%.
    """
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import google_server

    google_server._Handler.disable_nagle_algorithm = True  # TCP_NODELAY on each connection
    return google_server


@dataclass(frozen=True)
class Measured:
    """One delivery run: how many items, how long, and what the server saw meanwhile."""

    items: int
    seconds: float
    cpu_seconds: float  # of the delivering thread only: the server runs in other threads
    calls: int
    round_trips: int
    gmail_units: int
    rate_limited: int

    @property
    def per_second(self) -> float:
        return self.items / self.seconds

    render_cpu_seconds: float = 0.0  # of it, rendering notes (followupd only)

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_seconds / self.items

    @property
    def cpu_ms_per_item_unrendered(self) -> float:
        """CPU a draft costs beyond rendering it: what the bare client's figure compares to."""
        return 1000 * (self.cpu_seconds - self.render_cpu_seconds) / self.items

    def calls_per_100(self) -> float:
        return 100 * self.calls / self.items

    def round_trips_per_100(self) -> float:
        return 100 * self.round_trips / self.items


class Clock:
    """Wall time and this thread's CPU time of one timed section."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu


def _measured(server: Any, items: int, clock: Clock) -> Measured:
    stats = server.stats
    units = _google_server().GMAIL_UNITS
    gmail_units = sum(n * units[kind] for (_, kind), n in stats.calls.items() if kind in units)
    return Measured(
        items,
        clock.wall,
        clock.cpu,
        stats.total_calls,
        stats.round_trips,
        gmail_units,
        stats.rate_limited,
    )


def _fresh(server: Any, budget: int | None = None) -> None:
    """Forget everything the server saw; reset() also zeroes the delay, so set it again."""
    server.reset()
    server.delay = DELAY
    if budget is not None:
        server.rate_limit("gmail", budget)


# --- the floor: the bare client -------------------------------------------------------------


def _bare_service(server: Any, api: str) -> Any:
    """The plain google-api-python-client on its default transport (httplib2)."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    credentials = Credentials.from_authorized_user_info(TOKEN)
    version = {"gmail": "v1", "calendar": "v3"}[api]
    return build(
        api,
        version,
        credentials=credentials,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": server.endpoint(api)},
    )


def _raw_messages(count: int) -> list[str]:
    """Small drafts shaped like followupd's: addresses, Message-ID, a few paragraphs."""
    raws = []
    for i in range(count):
        message = EmailMessage()
        message["From"] = "Dana Reyes <dana@reyes-therapy.example>"
        message["To"] = f'"Dr. Test {i % 7}" <dr{i % 7}@clinic.example>'
        message["Subject"] = f"Your referral R-{i}"
        message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
        message["Message-ID"] = f"<bench.{i}@reyes-therapy.example>"
        message["X-Followupd-Id"] = f"bench.{i}"
        message.set_content(BODY)
        raws.append(base64.urlsafe_b64encode(message.as_bytes()).decode("ascii"))
    return raws


def _event_bodies(count: int) -> list[dict[str, Any]]:
    """Events shaped like followupd's reminders, each with its own client-chosen id."""
    start = datetime.now().replace(microsecond=0) + timedelta(days=30)
    zone = "America/Chicago"
    return [
        {
            "id": f"bench{i:08d}",
            "summary": f"Revisit Practice {i}",
            "description": "Drop by with cards and handouts.",
            "start": {"dateTime": start.isoformat(), "timeZone": zone},
            "end": {"dateTime": (start + timedelta(minutes=30)).isoformat(), "timeZone": zone},
            "transparency": "transparent",
        }
        for i in range(count)
    ]


def floor_drafts(server: Any, count: int) -> Measured:
    """drafts.create one at a time with the bare client: the cost of a call."""
    service = _bare_service(server, "gmail")
    raws = _raw_messages(count)
    _fresh(server)
    with Clock() as clock:
        for raw in raws:
            service.users().drafts().create(userId="me", body={"message": {"raw": raw}}).execute()
    _expect(len(server.drafts("me")), count, "drafts made by the bare client")
    return _measured(server, count, clock)


def floor_events(server: Any, count: int) -> Measured:
    """events.insert one at a time with the bare client."""
    service = _bare_service(server, "calendar")
    bodies = _event_bodies(count)
    _fresh(server)
    with Clock() as clock:
        for body in bodies:
            service.events().insert(calendarId="primary", body=body, sendUpdates="none").execute()
    _expect(len(server.events("primary")), count, "events made by the bare client")
    return _measured(server, count, clock)


# --- followupd ------------------------------------------------------------------------------


def _edit(text: str, old: str, new: str) -> str:
    """Replace a line of the shipped configuration, loudly if it has changed shape."""
    if old not in text:
        raise RuntimeError(f"config/followupd.yaml no longer contains {old!r}")
    return text.replace(old, new)


@contextmanager
def followupd_engine(
    server: Any,
    *,
    batch_size: int,
    gmail_per_minute: int,
    add: Callable[[Any, int], None],
    count: int,
) -> Iterator[Any]:
    """An Engine on a fresh home delivering to `server`, with `count` items added and
    planned (none delivered yet) and its Google backend built."""
    from followupd import config as configuration
    from followupd.engine import Engine
    from followupd.store import Store

    with tempfile.TemporaryDirectory(prefix="followupd-bench-") as scratch:
        home = Path(scratch)
        text = CONFIG.read_text(encoding="utf-8")
        text = _edit(text, "batch_size: 50", f"batch_size: {batch_size}")
        text = _edit(
            text, "gmail_units_per_minute: 6000", f"gmail_units_per_minute: {gmail_per_minute}"
        )
        text = _edit(
            text, "calendar_requests_per_minute: 600", f"calendar_requests_per_minute: {UNLIMITED}"
        )
        text = _edit(text, "confirm_over: 50", "confirm_over: null")  # a burst is the point
        text = _edit(text, "cutoff: 14 days", "cutoff: null")  # visits a year back make events
        (home / "followupd.yaml").write_text(text, encoding="utf-8")
        (home / "google-token.json").write_text(json.dumps(TOKEN), encoding="utf-8")
        settings = configuration.load(
            home,
            environ={
                "FOLLOWUPD_DELIVERY": "google",
                "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.base_url,
                "FOLLOWUPD_DATABASE_URL": f"sqlite:///{home}/followupd.sqlite3",
            },
        )
        store = Store(settings.database_url)
        engine = Engine(settings, store)
        try:
            add(store, count)
            engine.plan()
            _ = engine.backend  # built before the clock starts, as the floor's service is
            yield engine
        finally:
            engine.close()
            store.close()


def add_referrals(store: Any, count: int) -> None:
    """Referrals received ten days ago with a release: each owes an acknowledgement now."""
    from followupd.records import parse_referral
    from followupd.store import Directory, upsert_referrals

    received = (date.today() - timedelta(days=10)).isoformat()
    rows = [
        {
            "ref": f"R-{i}",
            "received_on": received,
            "physician": f"Dr. Test {i % 7}",
            "physician_email": f"dr{i % 7}@clinic.example",
            "specialty": "internal medicine",
            "practice": "Clinic",
            "client_name": "Test Client",
            "client_dob": "1970-05-04",
            "presenting_problem": "Synthetic problem: poor sleep",
            "treatment_focus": "Synthetic focus: CBT-I",
            "release_on_file": "yes",
        }
        for i in range(count)
    ]
    with store.session() as session:
        upsert_referrals(session, [parse_referral(row) for row in rows], Directory())


def add_visits(store: Any, count: int) -> None:
    """Office visits: each puts one reminder on the calendar at once."""
    from followupd.records import parse_visit
    from followupd.store import Directory, upsert_visits

    rows = [
        {
            "visited_on": (date.today() - timedelta(days=i % 300 + 1)).isoformat(),
            "practice": f"Practice {i}",
            "physician": f"Dr. Visit {i}",
            "specialty": "internal medicine",
            "business_manager": "Pat",
        }
        for i in range(count)
    ]
    with store.session() as session:
        upsert_visits(session, [parse_visit(row) for row in rows], Directory())


def deliver(
    server: Any, *, batch_size: int, count: int, events: bool = False, budget: int | None = None
) -> Measured:
    """Time one `deliver_due()` of `count` due drafts (or events) on a fresh home."""
    with followupd_engine(
        server,
        batch_size=batch_size,
        add=add_visits if events else add_referrals,
        count=count,
        gmail_per_minute=budget or UNLIMITED,
    ) as engine:
        _fresh(server, budget)
        rendering = _time_rendering(engine)
        with Clock() as clock:
            report = engine.deliver_due()
    what = "events" if events else "drafts"
    if report.failed or report.waiting or report.held or report.stopped:
        raise RuntimeError(
            f"followupd did not deliver every {what[:-1]}: "
            f"failed {report.failed[:3]}, waiting {report.waiting[:3]}, "
            f"held {report.held[:3]}, stopped {report.stopped}"
        )
    made = len(server.events("primary")) if events else len(server.drafts("me"))
    _expect(len(report.delivered), count, f"{what} followupd reports delivered")
    _expect(made, count, f"{what} on the server")
    return replace(_measured(server, count, clock), render_cpu_seconds=rendering[0])


def _time_rendering(engine: Any) -> list[float]:
    """Count the delivering thread's CPU spent rendering notes (templates, MIME, the header
    check), so the work around a Google call can be set against the bare client's."""
    spent = [0.0]
    render = engine.render

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return render(*args, **kwargs)
        finally:
            spent[0] += time.thread_time() - start

    engine.render = timed
    return spent


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got}, expected {want}")


# --- the rows -------------------------------------------------------------------------------


def _count_rows(label: str, unbatched: Measured, batched: Measured, floor: Measured) -> list[Row]:
    """Requests and round trips per 100 items, against the bare client's round trips."""
    per = floor.round_trips_per_100()
    return [
        Row(f"{label}: {name}/100, {mode}", value, unit, per, "trips")
        for mode, measured in (("unbatched", unbatched), ("batched", batched))
        for name, value, unit in (
            ("calls", measured.calls_per_100(), "calls"),
            ("trips", measured.round_trips_per_100(), "trips"),
        )
    ]


def run(quick: bool) -> list[Row]:
    """Floor, unbatched, batched, request counts, then a quota-paced backlog."""
    sizes = QUICK if quick else FULL
    server = _google_server().GoogleServer(delay=DELAY).start()
    try:
        floor = floor_drafts(server, sizes.single)
        unbatched = deliver(server, batch_size=UNBATCHED, count=sizes.single)
        batched = deliver(server, batch_size=BATCHED, count=sizes.batched)
        floor_ev = floor_events(server, sizes.events_single)
        unbatched_ev = deliver(server, batch_size=UNBATCHED, count=sizes.events_single, events=True)
        batched_ev = deliver(server, batch_size=BATCHED, count=sizes.events_batched, events=True)
        paced = deliver(server, batch_size=BATCHED, count=sizes.backlog, budget=BUDGET)
    finally:
        server.stop()

    per_minute = paced.gmail_units / paced.seconds * 60
    at = f"backlog {sizes.backlog} @ {BUDGET:,}/min"
    single, many = f"drafts {sizes.single}", f"drafts {sizes.batched}"
    return [
        Row(f"{single}: bare client", floor.per_second, "drafts/s", 1 / DELAY, "drafts/s"),
        Row(
            f"{single}: followupd unbatched",
            unbatched.per_second,
            "drafts/s",
            floor.per_second,
            "drafts/s",
        ),
        Row(
            f"{many}: followupd batched",
            batched.per_second,
            "drafts/s",
            floor.per_second,
            "drafts/s",
        ),
        Row(
            f"{single}: CPU/draft, unbatched",
            unbatched.cpu_ms_per_item,
            "ms",
            floor.cpu_ms_per_item,
            "ms",
        ),
        Row(
            f"{many}: CPU/draft, batched",
            batched.cpu_ms_per_item,
            "ms",
            floor.cpu_ms_per_item,
            "ms",
        ),
        Row(
            f"{single}: CPU/draft less rendering, unbatched",
            unbatched.cpu_ms_per_item_unrendered,
            "ms",
            floor.cpu_ms_per_item,
            "ms",
        ),
        Row(
            f"{many}: CPU/draft less rendering, batched",
            batched.cpu_ms_per_item_unrendered,
            "ms",
            floor.cpu_ms_per_item,
            "ms",
        ),
        Row(
            f"{single}: rendering CPU/draft",
            unbatched.render_cpu_seconds * 1000 / unbatched.items,
            "ms",
        ),
        *_count_rows("drafts", unbatched, batched, floor),
        *_count_rows("events", unbatched_ev, batched_ev, floor_ev),
        Row(f"{at}: rate", per_minute, "units/min", BUDGET, "units/min"),
        Row(f"{at}: 429s", paced.rate_limited, "429s", 0, "429s"),
        Row(f"{at}: time", paced.seconds, "s"),
    ]
