"""Offsets in the practice's calendar: months clamp, business days skip, DST keeps wall time."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followupd.timing import Duration, add_business_days, add_months, due_at

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 days", Duration(3, "days")),
        ("1 month", Duration(1, "months")),
        ("2 business days", Duration(2, "business_days")),
        ("1 Business Day", Duration(1, "business_days")),
        ("2 hours", Duration(2, "hours")),
        ("90 minutes", Duration(90, "minutes")),
        ("1 week", Duration(1, "weeks")),
    ],
)
def test_durations_parse_and_print_back(text, expected):
    assert Duration.parse(text) == expected
    assert Duration.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["1 mnth", "", "month", "-1 day", "1.5 days", "3 fortnights"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        Duration.parse(text)


def test_month_end_clamps():
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert add_months(date(2028, 1, 31), 1) == date(2028, 2, 29)
    assert add_months(date(2026, 12, 15), 1) == date(2027, 1, 15)
    assert add_months(date(2026, 3, 31), 1) == date(2026, 4, 30)


def test_business_days_skip_weekends_and_holidays():
    friday = date(2026, 11, 20)
    assert add_business_days(friday, 1) == date(2026, 11, 23)  # Monday
    thanksgiving = date(2026, 11, 26)
    assert add_business_days(date(2026, 11, 25), 1, [thanksgiving]) == date(2026, 11, 27)
    assert add_business_days(date(2026, 11, 25), 2, [thanksgiving]) == date(2026, 11, 30)
    assert add_business_days(date(2026, 11, 21), 1) == date(2026, 11, 23)  # from a Saturday
    assert add_business_days(date(2026, 11, 21), 0) == date(2026, 11, 23)  # rolls forward


def test_a_month_after_31_january_at_ten():
    start = datetime(2026, 1, 31, 15, 0, tzinfo=NY)
    due = due_at(start, Duration(1, "months"), NY, at=time(10, 0))
    assert due.astimezone(NY) == datetime(2026, 2, 28, 10, 0, tzinfo=NY)


def test_days_across_dst_keep_the_wall_time():
    before = datetime(2026, 3, 7, 9, 0, tzinfo=NY)  # EST, the day before clocks spring forward
    due = due_at(before, Duration(1, "days"), NY)
    assert due.astimezone(NY).time() == time(9, 0)
    assert due - before.astimezone(UTC) == __import__("datetime").timedelta(hours=23)
    autumn = datetime(2026, 10, 31, 9, 0, tzinfo=NY)
    assert due_at(autumn, Duration(1, "days"), NY).astimezone(NY).hour == 9


def test_hours_are_elapsed_time_across_dst():
    start = datetime(2026, 3, 8, 1, 30, tzinfo=NY)
    due = due_at(start, Duration(1, "hours"), NY)
    assert due.astimezone(NY).time() == time(3, 30)  # 02:30 does not exist that night


def test_a_time_inside_the_dst_gap_moves_forward():
    due = due_at(datetime(2026, 3, 7, 12, tzinfo=NY), Duration(1, "days"), NY, at=time(2, 30))
    assert due.astimezone(NY) == datetime(2026, 3, 8, 3, 30, tzinfo=NY)


def test_at_with_elapsed_offset_is_the_next_such_time():
    start = datetime(2026, 11, 23, 17, 0, tzinfo=NY)
    assert due_at(start, Duration(2, "hours"), NY, at=time(9)).astimezone(NY) == datetime(
        2026, 11, 24, 9, 0, tzinfo=NY
    )
    start = datetime(2026, 11, 23, 5, 0, tzinfo=NY)
    assert due_at(start, Duration(2, "hours"), NY, at=time(9)).astimezone(NY) == datetime(
        2026, 11, 23, 9, 0, tzinfo=NY
    )


def test_business_day_offset_with_at_and_holidays():
    wednesday = datetime(2026, 11, 25, 16, 0, tzinfo=NY)
    due = due_at(
        wednesday, Duration(1, "business_days"), NY, at=time(8), holidays=[date(2026, 11, 26)]
    )
    assert due.astimezone(NY) == datetime(2026, 11, 27, 8, 0, tzinfo=NY)


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31)),
    st.integers(min_value=0, max_value=40),
)
def test_business_days_never_land_on_a_weekend(start, count):
    result = add_business_days(start, count)
    assert result.weekday() < 5 and result >= start


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31)),
    st.integers(min_value=0, max_value=36),
)
def test_months_land_in_the_right_month(start, months):
    result = add_months(start, months)
    assert (result.year * 12 + result.month) - (start.year * 12 + start.month) == months
    assert result.day <= start.day


# The same question, two ways, each in a fresh interpreter: followupd's (only the country's
# module imported) and the package's own `country_holidays` (every country imported).
HOLIDAYS_PROBE = """
import json, sys
from datetime import date
country, subdivision, ours = sys.argv[1], sys.argv[2] or None, sys.argv[3] == "ours"
if ours:
    from followupd.timing import public_holidays as make
else:
    from holidays import country_holidays as make
try:
    days = make(country, subdivision)
    date(2027, 1, 1) in days
    found = {"days": sorted(d.isoformat() for d in days if d.year == 2027), "error": None}
except NotImplementedError as exc:
    found = {"days": [], "error": str(exc)}
found["every_country"] = "holidays.countries" in sys.modules
print(json.dumps(found))
"""


def _holidays(country: str, subdivision: str | None, way: str) -> dict:
    ran = subprocess.run(
        [sys.executable, "-c", HOLIDAYS_PROBE, country, subdivision or "", way],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(ran.stdout)


@pytest.mark.parametrize(
    ("country", "subdivision"),
    [
        ("US", "MN"),
        ("CA", "ON"),
        ("GB", None),
        ("DE", "BY"),
        ("PR", None),
        ("US", "ZZ"),
        ("XX", None),
    ],
)
def test_public_holidays_load_one_country_and_match_the_package(country, subdivision):
    """A country's holidays come from its own module, not from every country's (8 MiB kept
    by a daemon); the days, and the error for an unknown country or subdivision, are the
    package's own. A territory (PR builds on US) is loaded the package's way."""
    ours, theirs = (_holidays(country, subdivision, way) for way in ("ours", "theirs"))
    assert (ours["days"], ours["error"]) == (theirs["days"], theirs["error"])
    if ours["days"] and country != "PR":
        assert not ours["every_country"]
