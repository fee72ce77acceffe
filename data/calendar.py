"""Which days a data set covers: every day, or weekdays only (with holidays left out).

Some public releases hold only weekdays: PeMSD7(M)'s ``V_228.csv`` is 44 weekdays of May and June
2012, 288 five-minute rows each, one day after another, without timestamps. Dated with
``--start`` and ``--freq`` alone, the rows after each Friday would land on Saturday; under the
``weekdays`` calendar they land on the next Monday (or the next day that is not a holiday).

A calendar is written as a short spec, the same on the command line and in a checkpoint:
``all`` (the default, every day), ``weekdays``, or ``weekdays:2012-05-28,2012-07-04`` (weekdays
except the holidays listed). The readers place the rows of a weekdays-only file on the regular
time grid, so the days it leaves out become rows of missing readings, and
:func:`off_calendar` marks them: no window is built across them
(:func:`~trafficcast.data.windows.split_windows`), since a window must be contiguous in time.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from trafficcast.data.errors import DataInputError

__all__ = ["CALENDARS", "Calendar", "calendar_index", "off_calendar", "parse_calendar"]

CALENDARS = ("all", "weekdays")
_SATURDAY = 5  # pandas' day_of_week: Monday 0 .. Sunday 6


@dataclass(frozen=True)
class Calendar:
    """The days a data set covers.

    Attributes:
        weekdays_only: Saturdays and Sundays left out.
        holidays: further days left out (weekdays calendar only).
    """

    weekdays_only: bool = False
    holidays: tuple[dt.date, ...] = ()

    @property
    def spec(self) -> str:
        """The calendar as its spec (``all``, ``weekdays`` or ``weekdays:DATE,...``)."""
        if not self.weekdays_only:
            return "all"
        if not self.holidays:
            return "weekdays"
        return "weekdays:" + ",".join(day.isoformat() for day in self.holidays)

    def covers(self, index: pd.DatetimeIndex) -> npt.NDArray[np.bool_]:
        """Which timestamps fall on a day of the calendar.

        Shapes:
            index (T,) -> (T,) bool.
        """
        if not self.weekdays_only:
            return np.ones(len(index), dtype=bool)
        days = np.asarray(index.day_of_week) < _SATURDAY
        if self.holidays:
            off = np.array([np.datetime64(day, "D") for day in self.holidays])
            days &= ~np.isin(index.values.astype("datetime64[D]"), off)
        covered: npt.NDArray[np.bool_] = days
        return covered


def parse_calendar(spec: str | Calendar | None) -> Calendar:
    """``--calendar``: ``all``, ``weekdays`` or ``weekdays:2012-05-28,2012-07-04``; None is
    ``all``.

    Raises:
        DataInputError: another name, a holiday that is not a date, or holidays with ``all``.
    """
    if isinstance(spec, Calendar):
        return spec
    if spec is None:
        return Calendar()
    name, _, listed = str(spec).strip().partition(":")
    name = name.strip().lower()
    if name not in CALENDARS:
        raise DataInputError(
            f"--calendar {spec!r}: use {' or '.join(CALENDARS)} (weekdays:DATE,... to leave "
            "out holidays)"
        )
    if name == "all":
        if listed.strip():
            raise DataInputError(f"--calendar {spec!r}: holidays go with weekdays, not all")
        return Calendar()
    holidays = []
    for text in (t.strip() for t in listed.split(",")):
        if not text:
            continue
        try:
            holidays.append(dt.date.fromisoformat(text))
        except ValueError as exc:
            raise DataInputError(
                f"--calendar {spec!r}: holiday {text!r} is not a date (YYYY-MM-DD)"
            ) from exc
    return Calendar(weekdays_only=True, holidays=tuple(sorted(set(holidays))))


def calendar_index(
    first: pd.Timestamp, rows: int, step: pd.Timedelta, calendar: Calendar, src: str
) -> pd.DatetimeIndex:
    """``rows`` timestamps from ``first``, ``step`` apart, on the calendar's days only: the rows
    of a day the calendar leaves out move on to the next day it covers.

    Raises:
        DataInputError: ``first`` on a day the calendar leaves out.

    Shapes:
        returns (rows,).
    """
    if not calendar.weekdays_only:
        return pd.date_range(first, periods=rows, freq=step, unit="ns")
    if not calendar.covers(pd.DatetimeIndex([first]))[0]:
        raise DataInputError(
            f"{src}: --start {first} is a {first.day_name()} or holiday, not a day of the "
            f"{calendar.spec} calendar"
        )
    # Enough regular steps to hold ``rows`` of covered ones: at most 5 in 7 days are covered,
    # plus the holidays and a week to spare; grown if holidays take more.
    per_day = pd.Timedelta(days=1) / step
    span = math.ceil(rows * 7 / 5) + math.ceil((len(calendar.holidays) + 7) * per_day)
    while True:
        candidates = pd.date_range(first, periods=span, freq=step, unit="ns")
        kept = candidates[calendar.covers(candidates)]
        if len(kept) >= rows:
            index: pd.DatetimeIndex = kept[:rows]
            return index
        span *= 2


def off_calendar(index: pd.DatetimeIndex, calendar: str | Calendar | None) -> np.ndarray | None:
    """The rows of a regular time grid on days the calendar leaves out (None when it covers
    every day): rows a reader filled as missing, which no window may span.

    Shapes:
        index (T,) -> (T,) bool, or None.
    """
    cal = parse_calendar(calendar)
    if not cal.weekdays_only:
        return None
    return ~cal.covers(index)
