"""When the gateway may dispatch before reserving (the worker counts the prompt): only right after an
admission that left ample room, never after a refusal, never on stale knowledge."""
from __future__ import annotations

from gateway.quota.headers import WindowState
from gateway.quota.headroom import MAX_AGE_S, Headroom

KEY = ("team-a", "key-1", "model-x")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_known_means_count_first() -> None:
    assert not Headroom(Clock()).allows(KEY, 10)


def test_ample_room_allows_and_each_limit_can_withdraw_it() -> None:
    clock = Clock()
    room = Headroom(clock)
    room.record(KEY, admitted=True, requests=WindowState(100, 90, 1.0), tokens=WindowState(10_000, 9_000, 1.0))
    assert room.allows(KEY, 4_000)
    assert not room.allows(KEY, 4_600), "tokens left must cover twice the most this request may reserve"
    assert not room.allows(("team-a", "key-2", "model-x"), 10), "another key of the team knows nothing yet"
    room.record(KEY, admitted=True, requests=WindowState(100, 20, 1.0), tokens=WindowState(10_000, 9_000, 1.0))
    assert not room.allows(KEY, 10), "under a quarter of the requests left"
    room.record(KEY, admitted=True, requests=None, tokens=WindowState(10_000, 2_000, 1.0))
    assert not room.allows(KEY, 10), "under a quarter of the tokens left"
    room.record(KEY, admitted=True)  # no per-minute limits in play (budgets only)
    assert room.allows(KEY, 10)


def test_a_refusal_or_time_withdraws_it() -> None:
    clock = Clock()
    room = Headroom(clock)
    room.record(KEY, admitted=True, tokens=WindowState(10_000, 9_000, 1.0))
    clock.now += MAX_AGE_S + 0.1
    assert not room.allows(KEY, 10)
    room.record(KEY, admitted=True, tokens=WindowState(10_000, 9_000, 1.0))
    assert room.allows(KEY, 10)
    room.record(KEY, admitted=False, tokens=WindowState(10_000, 9_000, 1.0))
    assert not room.allows(KEY, 10)
