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


def periods_at(now_us: int) -> Periods:
    """The UTC day and month containing ``now_us`` (microseconds since the epoch) and the time left in each."""
    now_s = now_us // 1_000_000
    day = dt.datetime.fromtimestamp(now_s, _UTC).date()
    next_day = day + dt.timedelta(days=1)
    next_month = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return Periods(
        day=day.strftime("%Y%m%d"),
        month=day.strftime("%Y%m"),
        day_end_us=_epoch_us(next_day) - now_us,
        month_end_us=_epoch_us(next_month) - now_us,
    )


def parse_day(day: str) -> dt.date:
    return dt.datetime.strptime(day, "%Y%m%d").date()


def day_id(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _epoch_us(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=_UTC).timestamp()) * 1_000_000
