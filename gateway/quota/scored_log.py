"""A scored log of reservations with optional token amounts: the in-process twin of a Redis ZSET plus
its amounts HASH (see lua/common.lua), with the same ordering (score, then id)."""
from __future__ import annotations

import bisect

# Purged entries are dropped from the list's front in one go once there are this many and they make
# up half of it: deleting a front slice moves every later entry, and a rolling window purges a few
# entries at a time (at 1,500 requests/s a minute's log holds 90,000 entries, moved on every admit).
_COMPACT_AT = 64


class ScoredLog:
    """Entries ``(score, id)`` kept sorted; ``amounts`` and their ``total`` for the entries that carry one."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, str]] = []
        self._head = 0  # entries before this index were purged
        self._scores: dict[str, int] = {}
        self.amounts: dict[str, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._scores

    def add(self, score: int, entry_id: str, amount: int | None = None) -> None:
        self.remove(entry_id)
        entries, entry = self._entries, (score, entry_id)
        if len(entries) == self._head or entries[-1] <= entry:
            entries.append(entry)  # the usual case, an admission now: where insort would put it, found at once
        else:
            bisect.insort(entries, entry, lo=self._head)
        self._scores[entry_id] = score
        if amount is not None:
            self.amounts[entry_id] = amount
            self.total += amount

    def remove(self, entry_id: str) -> bool:
        """Drop one entry and its amount; False if it was not there."""
        score = self._scores.pop(entry_id, None)
        if score is None:
            return False
        del self._entries[bisect.bisect_left(self._entries, (score, entry_id), lo=self._head)]
        self.total -= self.amounts.pop(entry_id, 0)
        return True

    def purge_upto(self, score: int) -> None:
        """Drop every entry scored <= ``score``."""
        entries, head = self._entries, self._head
        cut = bisect.bisect_right(entries, (score, "\U0010ffff"), lo=head)
        for index in range(head, cut):
            entry_id = entries[index][1]
            del self._scores[entry_id]
            self.total -= self.amounts.pop(entry_id, 0)
        self._head = cut
        if cut >= _COMPACT_AT and 2 * cut >= len(entries):
            del entries[:cut]
            self._head = 0

    def set_amount(self, entry_id: str, amount: int) -> bool:
        """Change the amount of a present entry; False if it is not there (e.g. it left the window)."""
        if entry_id not in self.amounts:
            return False
        self.total += amount - self.amounts[entry_id]
        self.amounts[entry_id] = amount
        return True

    def score_at(self, index: int) -> int:
        return self._entries[self._head + index if index >= 0 else index][0]

    def entry_at(self, index: int) -> tuple[int, str]:
        """``(score, id)`` of the entry at ``index`` (>= 0) in order."""
        return self._entries[self._head + index]

    def ordered(self) -> list[tuple[int, str]]:
        return self._entries[self._head:]
