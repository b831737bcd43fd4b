"""The in-process store's scored log answers exactly as a plain sorted list does, also after its
purged front has been dropped in bulk (long runs of a rolling window)."""
from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.quota.scored_log import ScoredLog


class ReferenceLog:
    """The scored log as a sorted list that drops purged entries at once."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.amounts: dict[str, int] = {}

    def add(self, score: int, entry_id: str, amount: int | None) -> None:
        self.remove(entry_id)
        bisect.insort(self.entries, (score, entry_id))
        if amount is not None:
            self.amounts[entry_id] = amount

    def remove(self, entry_id: str) -> bool:
        for index, (_, other) in enumerate(self.entries):
            if other == entry_id:
                del self.entries[index]
                self.amounts.pop(entry_id, None)
                return True
        return False

    def purge_upto(self, score: int) -> None:
        for _, entry_id in [e for e in self.entries if e[0] <= score]:
            self.amounts.pop(entry_id, None)
        self.entries = [e for e in self.entries if e[0] > score]

    def set_amount(self, entry_id: str, amount: int) -> bool:
        if entry_id not in self.amounts:
            return False
        self.amounts[entry_id] = amount
        return True


def _check_same(log: ScoredLog, ref: ReferenceLog) -> None:
    assert len(log) == len(ref.entries)
    assert log.ordered() == ref.entries
    assert log.total == sum(ref.amounts.values())
    assert log.amounts == ref.amounts
    for index in range(-len(ref.entries), len(ref.entries)):
        assert log.score_at(index) == ref.entries[index][0]


ids = st.integers(0, 150).map(lambda n: f"r{n}")
op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 400), ids, st.one_of(st.none(), st.integers(0, 50))),
    st.tuples(st.just("remove"), ids),
    st.tuples(st.just("purge"), st.integers(-5, 400)),
    st.tuples(st.just("set_amount"), ids, st.integers(0, 50)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, min_size=1, max_size=400))
def test_the_log_answers_as_a_sorted_list_whatever_was_purged_before(ops) -> None:
    log, ref = ScoredLog(), ReferenceLog()
    for item in ops:
        name, args = item[0], item[1:]
        if name == "add":
            log.add(*args)
            ref.add(*args)
        elif name == "remove":
            assert log.remove(*args) == ref.remove(*args)
        elif name == "purge":
            log.purge_upto(*args)
            ref.purge_upto(*args)
        else:
            assert log.set_amount(*args) == ref.set_amount(*args)
        _check_same(log, ref)


def test_a_rolling_window_keeps_exactly_its_last_minute_across_compactions() -> None:
    log = ScoredLog()
    window = 1000
    for now in range(10_000):
        log.purge_upto(now - window)
        log.add(now, f"r{now}", 1)
        assert len(log) == min(now + 1, window)
        assert log.total == len(log)
        assert log.score_at(0) == max(0, now - window + 1)
    assert len(log._entries) < 2 * window  # the purged front does not pile up


def test_an_entry_scored_below_the_purged_ones_is_found_and_removed() -> None:
    log = ScoredLog()
    for score in range(200):
        log.add(score, f"r{score}")
    log.purge_upto(70)  # the purged front stays in the list for now
    log.add(5, "late")  # e.g. a clock that stepped back
    log.add(6, "later")
    assert log.ordered()[:2] == [(5, "late"), (6, "later")]
    assert log.remove("later")
    assert log.ordered() == [(5, "late")] + [(score, f"r{score}") for score in range(71, 200)]


def test_entries_added_out_of_order_stay_sorted_as_insort_keeps_them() -> None:
    """The append shortcut for an entry at or after the last one must leave the same order as a
    sorted insert: later scores, equal scores (ordered by id) and earlier ones (a clock stepped back)."""
    log = ScoredLog()
    added = [(5, "b"), (5, "a"), (9, "c"), (3, "d"), (9, "c2"), (9, "a2"), (12, "e")]
    for score, entry_id in added:
        log.add(score, entry_id, amount=1)
    assert log.ordered() == sorted(added)
    log.purge_upto(5)
    log.add(4, "f")  # before the purged head's scores: still kept in order after it
    assert log.ordered() == sorted([(4, "f"), (9, "c"), (9, "c2"), (9, "a2"), (12, "e")])
