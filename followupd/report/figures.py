"""The report's figures, from the store's SQL aggregates (followupd.store.report) with a little
arithmetic here: months laid out, practices summed from their physicians, medians and
percentiles from histograms of minutes. What each figure means (docs/operations.md says the
same for the reader):

- **The period**: `since` to today, both included. By default the first day of the month
  eleven months back, so the months are twelve, this one so far.
- **Per physician and per practice**: the referrals received in the period, by month and in
  all; the first and the last referral ever (up to today) and the days since the last; the
  outreach visits in the period and the business cards left (a physician's: visits where
  they were met; a practice's: every visit to the office).
- **90 days before and after a visit**: over the visits of the period made at least 90 days
  before today (a younger visit's 90 days after are not over), the referrals received in
  the 90 days after a visit (its day + 1 to + 90) against those in the 90 days before it
  (- 90 to - 1). The visit's own day is in neither window. A referral near several visits
  counts once on each side.
- **Times**: received -> drafted runs from the start of the day the referral was received
  (in the practice's zone) to when its acknowledgement was drafted: the time the ledger
  recorded (`made_at`), or, for a draft made before it kept that record, the earliest a tick
  could have made it: the latest of its due time, the moment followupd learned of the
  referral and, for a note that waits for a release, the moment the release was recorded.
  drafted -> sent runs on to the sending time Gmail reported (`google.read_scope: true`).
  Closing notes: closed -> drafted and drafted -> sent, alike.
- **Median and 90th percentile**: over the times in whole minutes, sorted x1 <= ... <= xn,
  the p-th percentile is at rank h = (n - 1) * p + 1, between the closest ranks:
  x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). The median is the 50th:
  the middle value, or the mean of the two middle ones. It is a spreadsheet's
  PERCENTILE.INC (and MEDIAN), and numpy's default.
- **Quiet**: a physician who referred before and nothing since for `events.quiet_after`
  (90 days unless configured; the physician.quiet event's): their last referral was on or
  before today less that span.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from followupd.records import fold
from followupd.store.report import (
    Notes,
    Span,
    held_notes,
    note_states,
    note_times,
    physician_spans,
    prospects,
    records_prospects,
    referral_months,
    referrals_within,
    unsent_drafts,
    visit_months,
    visit_totals,
    window_visits,
)
from followupd.timing import Duration, latest_base

WINDOW_DAYS = 90  # referrals in the 90 days after a visit against the 90 days before
QUIET_AFTER = Duration(90, "days")  # unless events.quiet_after says otherwise
PERIOD_MONTHS = 12

# --- the period --------------------------------------------------------------------------------


def default_since(today: date) -> date:
    """The first day of the month eleven months before `today`'s: twelve months."""
    index = today.year * 12 + today.month - 1 - (PERIOD_MONTHS - 1)
    return date(index // 12, index % 12 + 1, 1)


def month_names(since: date, until: date) -> list[str]:
    """ "YYYY-MM" of every month from `since`'s to `until`'s."""
    names, year, month = [], since.year, since.month
    while (year, month) <= (until.year, until.month):
        names.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return names


# --- percentiles -------------------------------------------------------------------------------


def percentile(histogram: Mapping[int, int], p: float) -> float | None:
    """The p-th percentile (0 <= p <= 1) of the values a histogram {value: how many} holds,
    by linear interpolation between the closest ranks (PERCENTILE.INC); None if empty."""
    n = sum(histogram.values())
    if n == 0:
        return None
    rank = (n - 1) * p  # 0-based
    low = math.floor(rank)
    below = _value_at(histogram, low)
    if rank == low:
        return float(below)
    above = _value_at(histogram, low + 1)
    return below + (rank - low) * (above - below)


def _value_at(histogram: Mapping[int, int], index: int) -> int:
    """The value at 0-based position `index` of the sorted values."""
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if index < seen:
            return value
    raise IndexError(index)


@dataclass(frozen=True)
class Spread:
    """How many times, their median and 90th percentile (minutes; None without any)."""

    count: int
    median: float | None
    p90: float | None

    @classmethod
    def of(cls, histogram: Mapping[int, int]) -> Spread:
        return cls(sum(histogram.values()), percentile(histogram, 0.5), percentile(histogram, 0.9))


def format_minutes(minutes: float | None) -> str:
    """ "45 min", "14.0 h", "3.2 days"; "-" for none."""
    if minutes is None:
        return "-"
    if minutes < 60:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} days"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(counts: Iterable[int]) -> str:
    """One character a month: "·" for none, else a bar as high as its share of the top."""
    values = list(counts)
    top = max(values, default=0)
    return "".join(
        "·" if not value else SPARKS[min(len(SPARKS) - 1, (value * len(SPARKS) - 1) // top)]
        for value in values
    )


# --- what the report is made of ---------------------------------------------------------------


@dataclass
class Source:
    """One physician or practice that referred (ever) or was visited in the period."""

    kind: str  # physician | practice
    id: int
    name: str
    practice: str | None  # a physician's practice
    months: list[int]  # referrals by month of the period
    referrals: int = 0  # in the period
    ever: int = 0  # referrals ever, up to today
    first: date | None = None  # the first referral ever
    last: date | None = None  # the last one
    days_since: int | None = None  # since the last
    visits: int = 0  # in the period
    cards: int = 0  # business cards left on those visits
    windows: int = 0  # visits whose 90 days after are over
    before: int = 0  # referrals in the 90 days before those visits
    after: int = 0  # and in the 90 days after


# How a note stands, by its best state (followupd.store.report.BEST_FIRST), in the order the
# report lists them; `None`: there is no such note at all.
NOTE_STANDINGS: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("sent", ("sent",)),
    ("left Drafts: sent or deleted (Gmail's read scope tells which)", ("gone",)),
    ("in Drafts, not sent yet", ("done",)),
    ("being drafted", ("claimed", "waiting")),
    ("held", ("held",)),
    ("not due yet", ("planned",)),
    ("failed", ("failed",)),
    ("deleted without sending", ("deleted",)),
    ("taken back: the release was revoked", ("withdraw", "withdrawing", "withdrawn")),
    ("cancelled", ("cancelled",)),
    ("history: none made (older than history.cutoff when entered)", ("skipped",)),
    ("no note planned (no rule matched)", (None,)),
)
SENT = ("sent", "gone")
MISSING = (None, "failed", "deleted", "withdraw", "withdrawing", "withdrawn", "cancelled")


@dataclass
class NoteFigures:
    """Acknowledgements (of referrals received in the period) or closing notes (of referrals
    closed in it): how each referral's note stands, and how long they took."""

    kind: str  # acknowledgement | closing note
    rules: tuple[str, ...]
    states: dict[str | None, int]  # referrals by their note's best state
    to_draft: Spread  # received (closed) -> drafted
    to_send: Spread  # drafted -> sent
    to_draft_minutes: dict[int, int] = field(default_factory=dict)  # the histograms
    to_send_minutes: dict[int, int] = field(default_factory=dict)

    def count(self, *states: str | None) -> int:
        return sum(self.states.get(state, 0) for state in states)

    @property
    def referrals(self) -> int:
        return sum(self.states.values())

    @property
    def sent(self) -> int:
        """Referrals whose note was sent (or, without the read scope, left Drafts)."""
        return self.count(*SENT)

    @property
    def not_sent(self) -> int:
        return self.referrals - self.sent

    @property
    def held(self) -> int:
        return self.count("held")

    @property
    def missing(self) -> int:
        """No note, or one that went nowhere: failed, deleted, taken back, cancelled."""
        return self.count(*MISSING)

    def standings(self) -> list[tuple[str, int]]:
        """(how it stands, referrals) for each standing that has any."""
        rows = [(label, self.count(*states)) for label, states in NOTE_STANDINGS]
        return [(label, n) for label, n in rows if n]


@dataclass(frozen=True)
class NoteLine:
    """A note that needs a look: unsent in Drafts, or held (and what releases it)."""

    id: int
    rule: str
    ref: str | None  # its referral's ref (a visit's note: None)
    to: str | None  # its recipient's name, or a visit's practice
    due: date  # local date it was due
    days: int  # since it was due
    reason: str | None = None
    releases: str | None = None  # what releases a held note


@dataclass(frozen=True)
class Prospect:
    """A practice or physician a visit named ("who do you refer to?"), not visited since."""

    practice: str | None
    physician: str | None
    specialty: str | None
    named_on: date
    named_at: str  # the practice visited when it was named
    days: int  # since it was named


@dataclass
class Attention:
    quiet: list[Source]
    quiet_total: int
    unsent: list[NoteLine]
    unsent_total: int
    held: list[NoteLine]
    held_total: int
    prospects: list[Prospect] | None  # None: this version's visits do not record them
    prospects_total: int = 0


@dataclass
class Report:
    since: date
    today: date
    generated: datetime  # local
    months: list[str]
    physicians: list[Source]
    practices: list[Source]
    referrals_by_month: list[int]
    visits_by_month: list[int]
    cards_by_month: list[int]
    acknowledgements: NoteFigures
    closing: NoteFigures
    attention: Attention
    quiet_after: Duration
    windows_until: date  # the youngest visit whose 90-day windows count
    sent_times: str | None  # why drafted -> sent is not known, if it is not
    window_days: int = WINDOW_DAYS

    @property
    def referrals(self) -> int:
        return sum(self.referrals_by_month)

    @property
    def visits(self) -> int:
        return sum(self.visits_by_month)

    def top_physicians(self, n: int) -> list[Source]:
        """The `n` physicians who referred most in the period."""
        return [s for s in self.physicians if s.referrals][:n]


# --- what to read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What `build` needs to know besides the database."""

    since: date
    today: date
    zone: ZoneInfo
    acknowledgement: Notes
    closing: Notes
    targets: Mapping[str, str]  # rule -> physician | prescriber | ...
    drafts: tuple[str, ...] = ()  # the rules that make drafts
    quiet_after: Duration = QUIET_AFTER
    limit: int | None = None  # how many lines each "needs attention" list shows
    sent_times: str | None = None  # why sending times are unknown, if they are


def options_for(settings, since: date, today: date, limit: int | None = None) -> Options:
    """The options from the configuration: which rules make acknowledgements (event
    `referral.received`, a draft to the physician) and closing notes (`referral.closed`,
    likewise), which of them wait for a release (their template shows patient details, or
    `release: required`, as the engine decides), `events.quiet_after`, and whether Gmail can
    tell when a draft was sent."""
    config = settings.config
    waits = _needs_release(settings)

    def notes(event: str, start: str) -> Notes:
        names = tuple(
            r.name
            for r in config.rules
            if r.event == event and r.make == "draft" and getattr(r, "to", None) == "physician"
        )
        return Notes(names, tuple(n for n in names if n in waits), start)

    return Options(
        since=since,
        today=today,
        zone=config.practice.zone,
        acknowledgement=notes("referral.received", "received"),
        closing=notes("referral.closed", "closed"),
        targets={r.name: str(getattr(r, "to", "physician")) for r in config.rules},
        drafts=tuple(r.name for r in config.rules if r.make == "draft"),
        quiet_after=quiet_after(config),
        limit=limit,
        sent_times=_sent_times(config),
    )


def _needs_release(settings) -> frozenset[str]:
    from followupd.render import Templates

    templates = Templates(settings.templates_dir)
    waits = set()
    for rule in settings.config.rules:
        if rule.when.release == "required":
            waits.add(rule.name)
            continue
        try:
            if rule.make == "draft" and templates.uses_patient_fields(rule.template):
                waits.add(rule.name)
        except Exception:  # noqa: BLE001 -- a broken template: `check` says why; count it waiting
            waits.add(rule.name)
    return frozenset(waits)


def quiet_after(config) -> Duration:
    """How long without a referral makes a physician quiet: `events.quiet_after` (the
    physician.quiet event's), else 90 days."""
    span = getattr(getattr(config, "events", None), "quiet_after", None)
    return span if isinstance(span, Duration) else QUIET_AFTER


def _sent_times(config) -> str | None:
    if config.delivery.backend != "google":
        return "the outbox cannot tell when a draft is sent (delivery.backend: google can)"
    if not config.google.read_scope:
        return "Gmail tells when a draft was sent only with google.read_scope: true"
    return None


# --- building it -------------------------------------------------------------------------------


def build(session: Session, options: Options, generated: datetime | None = None) -> Report:
    """Every figure of the report, read in one transaction (`session`)."""
    span = Span(options.since, options.today)
    months = month_names(options.since, options.today)
    physicians, practices = _sources(session, span, months, options)
    by_month = [0] * len(months)
    for source in physicians:
        by_month = [a + b for a, b in zip(by_month, source.months, strict=True)]
    visits, cards = _visit_months(session, span, months)
    return Report(
        since=options.since,
        today=options.today,
        generated=generated or datetime.now(options.zone),
        months=months,
        physicians=physicians,
        practices=practices,
        referrals_by_month=by_month,
        visits_by_month=visits,
        cards_by_month=cards,
        acknowledgements=_notes(session, "acknowledgement", options.acknowledgement, span, options),
        closing=_notes(session, "closing note", options.closing, span, options),
        attention=_attention(session, physicians, options),
        quiet_after=options.quiet_after,
        windows_until=options.today - timedelta(days=WINDOW_DAYS),
        sent_times=options.sent_times,
    )


def _visit_months(session: Session, span: Span, months: list[str]) -> tuple[list[int], list[int]]:
    index = {month: n for n, month in enumerate(months)}
    visits, cards = [0] * len(months), [0] * len(months)
    for month, count, left in visit_months(session, span):
        visits[index[month]] += count
        cards[index[month]] += int(left or 0)
    return visits, cards


def _sources(
    session: Session, span: Span, months: list[str], options: Options
) -> tuple[list[Source], list[Source]]:
    """Physicians and practices, the busiest referrers first."""
    today = options.today
    physicians: dict[int, Source] = {}
    practice_of: dict[int, tuple[int, str]] = {}
    for row in physician_spans(session, span):
        physicians[row.id] = Source(
            "physician",
            row.id,
            row.name,
            row.practice,
            [0] * len(months),
            referrals=int(row.referrals or 0),
            ever=int(row.ever or 0),
            first=row.first,
            last=row.last,
            days_since=(today - row.last).days,
        )
        if row.practice_id is not None:
            practice_of[row.id] = (row.practice_id, row.practice)
    index = {month: n for n, month in enumerate(months)}
    for physician_id, month, count in referral_months(session, span):
        physicians[physician_id].months[index[month]] += count
    for row in visit_totals(session, span, "physician"):
        source = physicians.get(row.id)
        if source is None:
            source = physicians[row.id] = Source(
                "physician", row.id, row.name, row.practice, [0] * len(months)
            )
        source.visits, source.cards = int(row.visits), int(row.cards or 0)
    practices = _practices(physicians.values(), practice_of, months)
    for row in visit_totals(session, span, "practice"):
        source = practices.get(row.id)
        if source is None:
            source = practices[row.id] = Source(
                "practice", row.id, row.name, None, [0] * len(months)
            )
        source.visits, source.cards = int(row.visits), int(row.cards or 0)
    last_visit = today - timedelta(days=WINDOW_DAYS)
    if last_visit >= span.since:
        for by, sources in (("physician", physicians), ("practice", practices)):
            _add_windows(session, span.since, last_visit, by, sources)
    return _ranked(physicians.values()), _ranked(practices.values())


def _practices(
    physicians: Iterable[Source], practice_of: Mapping[int, tuple[int, str]], months: list[str]
) -> dict[int, Source]:
    """Each practice's referrals: its physicians', summed."""
    practices: dict[int, Source] = {}
    for source in physicians:
        if source.id not in practice_of or source.first is None:
            continue
        practice_id, name = practice_of[source.id]
        into = practices.get(practice_id)
        if into is None:
            into = practices[practice_id] = Source(
                "practice", practice_id, name, None, [0] * len(months)
            )
        into.months = [a + b for a, b in zip(into.months, source.months, strict=True)]
        into.referrals += source.referrals
        into.ever += source.ever
        into.first = min(filter(None, (into.first, source.first)))
        into.last = max(filter(None, (into.last, source.last)))
        into.days_since = min(d for d in (into.days_since, source.days_since) if d is not None)
    return practices


def _add_windows(
    session: Session, since: date, last_visit: date, by: str, sources: dict[int, Source]
) -> None:
    """Each source's visits from `since` to `last_visit`, and the referrals received in the
    90 days before and after them. A source's windows on a side are merged where they meet
    or overlap first, so that a referral near several visits counts once on each side; the
    database counts the referrals in them."""
    visited: dict[int, list[date]] = {}
    for source_id, day in window_visits(session, since, last_visit, by):
        if source_id in sources:
            visited.setdefault(source_id, []).append(day)
    windows: list[tuple[int, str, date, date]] = []
    for source_id, days in visited.items():
        sources[source_id].windows = len(days)
        span, one = timedelta(days=WINDOW_DAYS), timedelta(days=1)
        before = _merged([(day - span, day - one) for day in days])
        after = _merged([(day + one, day + span) for day in days])
        windows += [(source_id, "before", first, last) for first, last in before]
        windows += [(source_id, "after", first, last) for first, last in after]
    for source_id, side, count in referrals_within(session, windows, by) if windows else ():
        setattr(sources[source_id], side, int(count))


def _merged(windows: list[tuple[date, date]]) -> list[tuple[date, date]]:
    """Day ranges (first, last), joined where they overlap or meet."""
    joined: list[tuple[date, date]] = []
    for first, last in sorted(windows):
        if joined and first <= joined[-1][1] + timedelta(days=1):
            joined[-1] = (joined[-1][0], max(joined[-1][1], last))
        else:
            joined.append((first, last))
    return joined


def _ranked(sources: Iterable[Source]) -> list[Source]:
    """Most referrals in the period first; then the latest referral; then by name."""
    return sorted(
        sources,
        key=lambda s: (-s.referrals, -(s.last.toordinal() if s.last else 0), s.name.casefold()),
    )


def _notes(session: Session, kind: str, notes: Notes, span: Span, options: Options) -> NoteFigures:
    states = note_states(session, notes, span)
    drafted, sent = note_times(session, notes, span)
    to_draft: Counter[int] = Counter()
    offsets: dict[date, int] = {}
    for day, minutes, count in drafted:
        if day not in offsets:  # the SQL counts from midnight UTC; the day began at local midnight
            local = datetime.combine(day, time(), tzinfo=options.zone).utcoffset()
            offsets[day] = int(local.total_seconds() // 60) if local else 0
        to_draft[max(0, int(minutes) + offsets[day])] += int(count)
    to_send: Counter[int] = Counter()
    for minutes, count in sent:
        to_send[max(0, int(minutes))] += int(count)  # sent in the drafting minute: 0
    return NoteFigures(
        kind=kind,
        rules=notes.rules,
        states=states,
        to_draft=Spread.of(to_draft),
        to_send=Spread.of(to_send),
        to_draft_minutes=dict(to_draft),
        to_send_minutes=dict(to_send),
    )


# --- needs attention ----------------------------------------------------------------------------


def quiet_cutoff(today: date, quiet_after: Duration) -> date:
    """A physician whose last referral is on or before this day is quiet: counted as the
    planner's reminders and the digest count it (business days, month ends; holidays aside)."""
    return latest_base(today, quiet_after)


def _attention(session: Session, physicians: list[Source], options: Options) -> Attention:
    quiet_since = quiet_cutoff(options.today, options.quiet_after)
    quiet = sorted(
        (s for s in physicians if s.last is not None and s.last <= quiet_since),
        key=lambda s: (-s.ever, s.days_since, s.name.casefold()),
    )
    unsent, unsent_total = unsent_drafts(session, options.drafts, options.limit)
    held, held_total = held_notes(session, options.limit)
    found = _prospects(session, options) if records_prospects() else None
    return Attention(
        quiet=quiet[: options.limit] if options.limit is not None else quiet,
        quiet_total=len(quiet),
        unsent=[_note_line(row, options) for row in unsent],
        unsent_total=unsent_total,
        held=[_note_line(row, options, held=True) for row in held],
        held_total=held_total,
        prospects=found[: options.limit] if found is not None and options.limit else found,
        prospects_total=len(found or ()),
    )


def _note_line(row, options: Options, held: bool = False) -> NoteLine:
    due = row.due_at.astimezone(options.zone).date()
    to = {
        "referral": row.prescriber if options.targets.get(row.rule) == "prescriber" else None,
        "visit": row.practice,
        "physician": row.addressed,
        "digest": "you (a digest)",
    }.get(row.subject_type)
    if row.subject_type == "referral" and to is None:
        to = row.physician
    return NoteLine(
        id=row.id,
        rule=row.rule,
        ref=row.ref,
        to=to,
        due=due,
        days=max(0, (options.today - due).days),
        reason=row.reason if held else None,
        releases=releases(row.reason, row.ref) if held else None,
    )


def releases(reason: str | None, ref: str | None) -> str:
    """What releases a held note, from its hold reason (planning's words)."""
    text = reason or ""
    if text.startswith("no release of information on file for"):
        prescriber = " --prescriber" if "the prescriber of" in text else ""
        where = ref or "REF"
        return f"the client's release on file: followupd referral release {where}{prescriber}"
    if "waits for confirmation" in text:
        return "the address confirmed: followupd physician confirm (as the reason says)"
    if text.startswith("no email address for"):
        return "an email address: followupd physician edit ID --email ADDRESS"
    if text.startswith("gone from source"):
        return "the row back in its source (or the referral deleted)"
    return "see the reason"


def _prospects(session: Session, options: Options) -> list[Prospect]:
    """Named practices (or physicians) with no visit on or after the day first named."""
    named, by_practice, by_physician = prospects(session, options.today)
    visited_practice = {fold(key): last for key, last in by_practice}
    visited_physician: dict[str, date] = {}
    for name, last in by_physician:
        key = fold(name)
        visited_physician[key] = max(last, visited_physician.get(key, last))
    merged: dict[tuple[str, str], Prospect] = {}
    for row in named:
        key = (fold(row.practice), fold(row.physician))
        known = merged.get(key)
        if known is not None and known.named_on <= row.named_on:
            continue
        merged[key] = Prospect(
            practice=row.practice,
            physician=row.physician,
            specialty=row.specialty or (known.specialty if known else None),
            named_on=row.named_on,
            named_at=row.named_at,
            days=(options.today - row.named_on).days,
        )
    waiting = []
    for (practice, physician), prospect in merged.items():
        last = visited_practice.get(practice) if practice else visited_physician.get(physician)
        if last is None or last < prospect.named_on:
            waiting.append(prospect)
    return sorted(waiting, key=lambda p: (p.named_on, fold(p.practice), fold(p.physician)))
