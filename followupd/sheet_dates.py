"""Dates as a Google Sheet shows them, read into the ISO dates the one intake path takes.

A sheet shows a date cell in its spreadsheet's locale (`11/3/2026` is November 3 in en_US,
`03/11/2026` the same day in en_GB), a date cell formatted as a number as its serial number
(days since 1899-12-30, how Sheets stores dates), and keeps text a person typed as typed.
Each is read the way the sheet itself reads it; a date that could be either day or month
first, when the locale does not say which, is refused as ambiguous rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from functools import lru_cache

from followupd.records import DATE_COLUMNS, RowError

SERIAL_EPOCH = date(1899, 12, 30)  # Sheets' (and Lotus 1-2-3's) day zero
# A number in a date column is a date cell shown as a number only between 1910-01-01 and
# 2199-12-31: a year (2026), an age or a day of the month typed there is refused, not read
# as a day in 1905.
SERIAL_RANGE = (3_654, 109_938)
_ISO = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_SERIAL = re.compile(r"^[0-9]{1,7}(\.[0-9]+)?$")
_TIME = re.compile(r"[T\s]+[0-9]{1,2}:[0-9]{2}.*$")  # a date-time cell: the time is dropped
_TOKEN = re.compile(r"[0-9]+|[^\W\d_]+")  # ASCII digits only: `²` is no part of a date
NOT_A_DATE = "is not a date (write it as YYYY-MM-DD, e.g. 2026-11-23)"

ENGLISH_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)

Order = str  # "MDY", "DMY" or "YMD": the order of a locale's numeric dates


@lru_cache(maxsize=64)
def date_order(locale: str | None) -> Order | None:
    """The order a locale writes a short numeric date in (CLDR's, through Babel), or None
    when the locale is unknown."""
    if not locale:
        return None
    from babel import Locale, UnknownLocaleError
    from babel.dates import get_date_format

    try:
        pattern = get_date_format("short", locale=Locale.parse(locale.replace("-", "_"))).pattern
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    pattern = re.sub(r"'[^']*'", "", pattern)  # quoted literals are not fields
    seen = "".join(dict.fromkeys(ch for ch in pattern if ch in "yMd"))
    return {"Mdy": "MDY", "dMy": "DMY", "yMd": "YMD"}.get(seen)


@lru_cache(maxsize=64)
def month_names(locale: str | None) -> dict[str, int]:
    """Month names and abbreviations (casefolded, without dots): the locale's and English."""
    names = {name: number for number, name in enumerate(ENGLISH_MONTHS, 1)}
    names.update({name[:3]: number for name, number in list(names.items())})
    names["sept"] = 9
    if locale:
        from babel import Locale, UnknownLocaleError

        try:
            known = Locale.parse(locale.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            known = None
        if known is not None:
            for width in ("wide", "abbreviated"):
                for context in ("format", "stand-alone"):
                    for number, name in known.months[context][width].items():
                        names[name.casefold().rstrip(".")] = number
    return names


def _full_year(year: str) -> int:
    """A year as typed; two digits as Sheets reads them (00-29: 2000s, 30-99: 1900s)."""
    value = int(year)
    if len(year) <= 2:
        return value + (2000 if value < 30 else 1900)
    return value


def _day(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


class SheetDates:
    """Turns a sheet row's date cells into ISO dates, learning the spreadsheet's locale
    only when a cell needs it (one more request, and only then)."""

    def __init__(self, locale: Callable[[], str | None]):
        self._locale = locale
        self._known = False
        self._value: str | None = None
        self.read_with: Order | None = None  # set once a locale-ordered date was read

    @property
    def locale(self) -> str | None:
        if not self._known:
            self._value = self._locale()
            self._known = True
        return self._value

    def row(self, row: Mapping[str, str]) -> dict[str, str]:
        """The row with each date column's cell read into YYYY-MM-DD (other cells as they
        are; a cell that is no date is left for the intake's own check to name)."""
        fixed = dict(row)
        for column in DATE_COLUMNS.intersection(row):
            fixed[column] = self.cell(column, row[column])
        return fixed

    def cell(self, column: str, text: str) -> str:
        """One date cell as YYYY-MM-DD, or as it was when it is no date at all (the
        intake's own check then names it); RowError when it cannot be the date it seems."""
        try:
            return self._cell(column, text)
        except RowError:
            raise
        except (ValueError, OverflowError):  # a number no calendar holds
            raise RowError(column, NOT_A_DATE) from None

    def _cell(self, column: str, text: str) -> str:
        text = (text or "").strip()
        if not text or _ISO.match(text):
            return text
        if _SERIAL.match(text):
            return self._serial(column, text)
        tokens = _TOKEN.findall(_TIME.sub("", text))
        numbers = [t for t in tokens if t.isascii() and t.isdigit()]
        words = [t for t in tokens if t not in numbers]
        if any(len(number) > 4 for number in numbers):
            return text  # no part of a date is that long
        if len(numbers) == 3 and not words:
            return self._numeric(column, numbers).isoformat()
        if len(numbers) == 2 and len(words) == 1:
            found = self._named(numbers, words[0])
            if found:
                return found.isoformat()
        return text

    def _serial(self, column: str, text: str) -> str:
        days = int(float(text))
        if not SERIAL_RANGE[0] <= days <= SERIAL_RANGE[1]:
            raise RowError(
                column, "is a number, not a date (type a date, or format the column as a date)"
            )
        return (SERIAL_EPOCH + timedelta(days=days)).isoformat()

    def _numeric(self, column: str, numbers: list[str]) -> date:
        """Three numbers: year first when it has four digits, else in the locale's order."""
        if len(numbers[0]) == 4:
            found = _day(int(numbers[0]), int(numbers[1]), int(numbers[2]))
            if found is None:
                raise RowError(column, "is not a calendar date (check the month and day)")
            return found
        order = date_order(self.locale)
        if order is None:
            return self._guessed(column, numbers)
        parts = dict(zip(order, numbers, strict=True))
        found = _day(_full_year(parts["Y"]), int(parts["M"]), int(parts["D"]))
        if found is None:
            raise RowError(
                column,
                f"is not a calendar date as the spreadsheet's locale ({self.locale}) writes "
                f"dates ({_spelled(order)}); write it as YYYY-MM-DD",
            )
        if parts["M"] != parts["D"]:
            self.read_with = order
        return found

    def _guessed(self, column: str, numbers: list[str]) -> date:
        """No known locale: day and month first are both tried; both valid is ambiguous."""
        year = _full_year(numbers[2])
        month_first = _day(year, int(numbers[0]), int(numbers[1]))
        day_first = _day(year, int(numbers[1]), int(numbers[0]))
        if month_first and day_first and month_first != day_first:
            raise RowError(
                column,
                "is ambiguous: it could be day or month first, and the spreadsheet's locale "
                f"({self.locale or 'not given'}) does not say which; write it as YYYY-MM-DD",
            )
        found = month_first or day_first
        if found is None:
            raise RowError(column, "is not a calendar date (check the month and day)")
        return found

    def _named(self, numbers: list[str], word: str) -> date | None:
        """`Nov 3, 2026`, `3 November 2026`: the month named, the year the long number."""
        month = month_names(self.locale).get(word.casefold().rstrip("."))
        if month is None:
            return None
        first, second = numbers
        if len(first) > 2 or (len(second) <= 2 and len(first) <= 2 and int(first) > 31):
            year, day = first, second
        else:
            day, year = first, second
        return _day(_full_year(year), month, int(day))


def _spelled(order: Order) -> str:
    return {"MDY": "month first", "DMY": "day first", "YMD": "year first"}[order]


def read_as(order: Order, locale: str | None) -> str:
    """What a read says it did, so a person can check it against their sheet."""
    example = {"MDY": "11/3/2026", "DMY": "3/11/2026", "YMD": "2026/11/3"}[order]
    return (
        f"dates such as {example} were read {_spelled(order)} (November 3, 2026), as the "
        f"spreadsheet's locale ({locale}) writes them"
    )
