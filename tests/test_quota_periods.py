"""UTC day and month periods of the budgets: the per-day memo gives exactly the calendar's answer."""
from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.quota.periods import Periods, periods_at

UTC = dt.timezone.utc


def calendar(now_us: int) -> Periods:
    day = dt.datetime.fromtimestamp(now_us // 1_000_000, UTC).date()
    next_day = day + dt.timedelta(days=1)
    next_month = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)

    def epoch_us(d: dt.date) -> int:
        return int(dt.datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000

    return Periods(day.strftime("%Y%m%d"), day.strftime("%Y%m"), epoch_us(next_day) - now_us, epoch_us(next_month) - now_us)


# Around midnights, month ends and leap days, in any order (the memo must follow the clock both ways).
EDGES = [dt.datetime(2024, 2, 29, tzinfo=UTC), dt.datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
         dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2100, 3, 1, tzinfo=UTC)]
instants = st.one_of(
    st.integers(min_value=0, max_value=4_102_444_800 * 1_000_000),
    st.builds(lambda edge, offset: int(edge.timestamp()) * 1_000_000 + offset,
              st.sampled_from(EDGES), st.integers(min_value=-2_000_000, max_value=2_000_000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(instants, min_size=1, max_size=20))
def test_periods_match_the_calendar_for_any_sequence_of_instants(sequence):
    for now_us in sequence:
        assert periods_at(now_us) == calendar(now_us)


def test_the_last_microsecond_of_a_day_and_the_first_of_the_next():
    midnight = int(dt.datetime(2025, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000
    before, after = periods_at(midnight - 1), periods_at(midnight)
    assert (before.day, before.month, before.day_end_us, before.month_end_us) == ("20250228", "202502", 1, 1)
    assert (after.day, after.month, after.day_end_us) == ("20250301", "202503", 86_400_000_000)
