"""The restart policy of ``ward up``: backoff, its reset, and the crash-loop limit (times given, no waiting)."""
from __future__ import annotations

import pytest

from ward.restart_policy import CrashHistory, RestartPolicy


def test_the_delay_doubles_from_one_second_up_to_thirty():
    history = CrashHistory(RestartPolicy(max_crashes=100))
    delays = [history.record(now=float(i), up_for_s=0.0).delay_s for i in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_that_stayed_up_long_enough_starts_again_from_the_initial_delay():
    history = CrashHistory(RestartPolicy(max_crashes=100, reset_after_s=60.0))
    assert [history.record(float(i), 0.0).delay_s for i in range(3)] == [1.0, 2.0, 4.0]
    assert history.record(100.0, up_for_s=59.0).delay_s == 8.0  # not quite long enough
    assert history.record(200.0, up_for_s=60.0).delay_s == 1.0
    assert history.record(201.0, up_for_s=0.5).delay_s == 2.0


def test_the_fifth_crash_within_five_minutes_gives_up():
    history = CrashHistory(RestartPolicy())
    decisions = [history.record(now=t, up_for_s=10.0) for t in (0.0, 60.0, 120.0, 180.0)]
    assert not any(d.give_up for d in decisions)
    assert [d.crashes_in_window for d in decisions] == [1, 2, 3, 4]
    last = history.record(now=299.0, up_for_s=10.0)
    assert last.give_up and last.delay_s is None and last.crashes_in_window == 5


def test_crashes_older_than_the_window_do_not_count():
    history = CrashHistory(RestartPolicy(max_crashes=3, window_s=100.0))
    for now in (0.0, 50.0, 150.0, 200.0, 260.0):  # never three within 100 s
        decision = history.record(now, up_for_s=30.0)
        assert not decision.give_up
    assert decision.crashes_in_window == 2
    assert history.record(270.0, up_for_s=5.0).give_up  # 200, 260, 270


def test_a_limit_of_one_never_restarts():
    assert CrashHistory(RestartPolicy(max_crashes=1)).record(0.0, 1000.0).give_up


@pytest.mark.parametrize("fields", [
    {"max_crashes": 0}, {"window_s": 0.0}, {"initial_delay_s": 0.0}, {"initial_delay_s": 5.0, "max_delay_s": 2.0},
    {"reset_after_s": -1.0},
])
def test_a_policy_that_cannot_work_is_refused(fields):
    with pytest.raises(ValueError):
        RestartPolicy(**fields)
