"""UTC calendar periods for day and month budgets (the Redis store does the same arithmetic in Lua)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_UTC = dt.timezone.utc


@dataclass(frozen=True)
class Periods:
    day: str  # "YYYYMMDD"
    month: str  # "YYYYMM"
    day_end_us: int  # microseconds until the next UTC midnight
    month_end_us: int  # microseconds until the first instant of the next UTC month


@dataclass(frozen=True)
class _Day:
    """One UTC day's names and boundaries (absolute microseconds since the epoch)."""

    start_us: int
    end_us: int
    month_end_us: int
    day: str
    month: str


_last_day: _Day | None = None  # the day of the latest call: calendar arithmetic once a day, not per request


def periods_at(now_us: int) -> Periods:
    """The UTC day and month containing ``now_us`` (microseconds since the epoch) and the time left in each."""
    global _last_day
    day = _last_day
    if day is None or not day.start_us <= now_us < day.end_us:
        day = _last_day = _day_of(now_us)
    return Periods(day=day.day, month=day.month, day_end_us=day.end_us - now_us, month_end_us=day.month_end_us - now_us)


def _day_of(now_us: int) -> _Day:
    date = dt.datetime.fromtimestamp(now_us // 1_000_000, _UTC).date()
    next_month = dt.date(date.year + date.month // 12, date.month % 12 + 1, 1)
    return _Day(
        start_us=_epoch_us(date),
        end_us=_epoch_us(date + dt.timedelta(days=1)),
        month_end_us=_epoch_us(next_month),
        day=date.strftime("%Y%m%d"),
        month=date.strftime("%Y%m"),
    )


def parse_day(day: str) -> dt.date:
    return dt.datetime.strptime(day, "%Y%m%d").date()


def day_id(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _epoch_us(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=_UTC).timestamp()) * 1_000_000
