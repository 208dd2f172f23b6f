"""Durations and calendar arithmetic in the practice's time zone.

Pure functions: no clock, no database. "1 month" and "3 days" are wall-calendar steps in the
practice's zone (so a DST change does not shift a 09:00 reminder to 10:00); "2 hours" is
elapsed time. Business days skip weekends and the configured holidays.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DURATION_HINT = 'try "3 days", "1 month", "2 business days"'

_UNITS = {
    "second": "seconds",
    "sec": "seconds",
    "minute": "minutes",
    "min": "minutes",
    "hour": "hours",
    "hr": "hours",
    "day": "days",
    "business day": "business_days",
    "working day": "business_days",
    "week": "weeks",
    "month": "months",
}
_DURATION_RE = re.compile(
    r"^\s*(\d{1,4})\s*(second|sec|minute|min|hour|hr|business day|working day|day|week|month)s?"
    r"\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Duration:
    """An offset such as "2 business days", kept as written so it reads back the same."""

    amount: int
    unit: str  # seconds | minutes | hours | days | business_days | weeks | months

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = _DURATION_RE.match(text or "")
        if not match:
            raise ValueError(f'"{text}" is not a duration ({DURATION_HINT})')
        unit = re.sub(r"\s+", " ", match.group(2).lower())
        return cls(int(match.group(1)), _UNITS[unit])

    def __str__(self) -> str:
        word = self.unit.replace("business_days", "business days").rstrip("s")
        return f"{self.amount} {word}{'' if self.amount == 1 else 's'}"

    @property
    def is_elapsed(self) -> bool:
        """Elapsed-time units ignore the calendar; the rest step local dates."""
        return self.unit in ("seconds", "minutes", "hours")

    def as_timedelta(self) -> timedelta:
        """Only for elapsed units and for rough comparisons (a month counts 31 days)."""
        per = {
            "seconds": 1,
            "minutes": 60,
            "hours": 3600,
            "days": 86400,
            "business_days": 86400,
            "weeks": 7 * 86400,
            "months": 31 * 86400,
        }
        return timedelta(seconds=self.amount * per[self.unit])


def add_months(day: date, months: int) -> date:
    """31 January plus one month is the last day of February, not 3 March."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def days_before(day: date, span: Duration) -> date:
    """The date `span` before `day` ("14 days", "1 month"): where history ends and new
    events begin. A business day counts as a day here: the cut-off is a rough line."""
    if span.unit == "months":
        return add_months(day, -span.amount)
    return day - timedelta(days=span.as_timedelta().days)


class ClosedDays:
    """The days a practice is closed besides weekends: its own list, and, given a country
    (and subdivision), that country's public holidays from the `holidays` package, for any
    year asked about, so "1 business day" stays right in 2030 without editing a list."""

    def __init__(
        self,
        closed: Iterable[date] = (),
        country: str | None = None,
        subdivision: str | None = None,
    ):
        self.closed = frozenset(closed)
        self.country, self.subdivision = country, subdivision
        self._public = None

    def problem(self) -> str | None:
        """Why these holidays cannot be known (an unknown country or subdivision), or None."""
        if self.country is None:
            return None
        try:
            self._holidays()
        except NotImplementedError:
            where = f"{self.country}/{self.subdivision}" if self.subdivision else self.country
            return (
                f"no public holidays known for {where} (an ISO 3166 code such as US, CA "
                "or GB; a subdivision such as MN)"
            )
        return None

    def __contains__(self, day: object) -> bool:
        return day in self.closed or (self.country is not None and day in self._holidays())

    def _holidays(self):
        if self._public is None:  # imported and built on first use: start-up stays quick
            self._public = public_holidays(self.country, self.subdivision)
        return self._public


def public_holidays(country: str, subdivision: str | None = None):
    """`holidays.country_holidays(country, subdiv=subdivision)`, with only that country's
    module imported: importing it the usual way runs `holidays.countries`, which imports
    every country the package knows (7 MiB a daemon would keep for months)."""
    import holidays

    _import_country_alone(holidays, country)
    return holidays.country_holidays(country, subdiv=subdivision)


def _import_country_alone(holidays, country: str) -> None:
    """Put `country`'s module in sys.modules without its package's `__init__`, so that the
    package's lazy loader (`getattr(holidays, country)`) finds it there. Anything else (not
    a country code, a module already loaded, a territory whose module imports its country's)
    is left to the package, which then imports it the usual way: same entity, same errors."""
    import importlib.util
    import sys
    from pathlib import Path

    from holidays.registry import IMPORT_LOCK, EntityLoader

    loader = getattr(holidays, country, None)
    if not isinstance(loader, EntityLoader) or loader.entity is not None:
        return
    package, _, leaf = loader.module_name.rpartition(".")
    if package != "holidays.countries" or loader.module_name in sys.modules:
        return
    path = Path(holidays.__file__).parent / "countries" / f"{leaf}.py"
    with IMPORT_LOCK:
        if loader.module_name in sys.modules or not path.is_file():
            return
        if b"holidays.countries" in path.read_bytes():  # a territory: its country first
            return
        spec = importlib.util.spec_from_file_location(loader.module_name, path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules[loader.module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[loader.module_name]
            raise


def is_business_day(day: date, holidays: Container[date] = ()) -> bool:
    return day.weekday() < 5 and day not in holidays


def next_business_moment(moment: datetime, zone: ZoneInfo, holidays: Container[date]) -> datetime:
    """`moment`, or the same local time on the next business day if it falls on a weekend
    or a holiday (a reminder to walk into an office belongs on a day the office is open)."""
    local = moment.astimezone(zone)
    day = local.date()
    if is_business_day(day, holidays):
        return moment
    return localize(add_business_days(day, 0, holidays), local.time(), zone)


def shift(day: date, span: Duration, holidays: Container[date] = ()) -> date:
    """The date `span` after `day`, counted in calendar steps ("90 days", "3 months",
    "2 business days"); when a physician turns quiet, when a draft counts as unsent."""
    if span.unit == "months":
        return add_months(day, span.amount)
    if span.unit == "business_days":
        return add_business_days(day, span.amount, holidays)
    if span.unit in ("days", "weeks"):
        return day + timedelta(days=span.as_timedelta().days)
    raise ValueError(f"{span} is elapsed time, not a span of days")


def latest_base(day: date, span: Duration, holidays: Container[date] = ()) -> date:
    """The latest date whose `shift` by `span` is on or before `day` (its inverse: a draft
    made on or before it counts as unsent by `day`)."""
    base = day - timedelta(days=span.as_timedelta().days)  # an estimate; then step
    while shift(base, span, holidays) > day:
        base -= timedelta(days=1)
    while shift(base + timedelta(days=1), span, holidays) <= day:
        base += timedelta(days=1)
    return base


def add_business_days(day: date, count: int, holidays: Container[date] = ()) -> date:
    """Step forward over weekends and holidays; 0 rolls a non-business day forward."""
    closed = holidays
    while not is_business_day(day, closed):
        if count > 0:
            break
        day += timedelta(days=1)
    while count > 0:
        day += timedelta(days=1)
        if is_business_day(day, closed):
            count -= 1
    return day


def localize(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """A wall-clock time on a local date, as UTC; a time inside a DST gap moves forward."""
    local = datetime.combine(day, wall).replace(tzinfo=zone)
    return local.astimezone(UTC)


def due_at(
    start: datetime,
    offset: Duration,
    zone: ZoneInfo,
    at: time | None = None,
    holidays: Container[date] = (),
) -> datetime:
    """When a follow-up comes due: `offset` after `start`, at local time `at` if given.

    `start` must be timezone-aware. With `at`, the result is the first `at` on or after the
    offset's date (for elapsed offsets, the first `at` not before start + offset).
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if offset.is_elapsed:
        moment = start.astimezone(UTC) + offset.as_timedelta()
        if at is None:
            return moment
        local = moment.astimezone(zone)
        candidate = localize(local.date(), at, zone)
        if candidate < moment:
            candidate = localize(local.date() + timedelta(days=1), at, zone)
        return candidate
    local = start.astimezone(zone)
    day = local.date()
    if offset.unit == "days":
        day += timedelta(days=offset.amount)
    elif offset.unit == "weeks":
        day += timedelta(weeks=offset.amount)
    elif offset.unit == "months":
        day = add_months(day, offset.amount)
    else:
        day = add_business_days(day, offset.amount, holidays)
    wall = at if at is not None else local.time().replace(tzinfo=None)
    return localize(day, wall, zone)


def utcnow() -> datetime:
    return datetime.now(UTC)
