"""The axis-by-axis walk over a kernel's tile plans (``ward tune gemv``, bench/gemv_sweep.py): from a
starting plan, each axis's values in turn, a change kept only when it is at least 1% faster (about
the timer's spread), for up to two passes: tens of timings where the whole grid has hundreds."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

KEEP_IF_FASTER = 0.99

Plan = TypeVar("Plan")


def walk(time_plan: Callable[[Plan], float | None], start: Plan, axes: Mapping[str, Sequence[int]],
         fit: Callable[[Plan], Plan]) -> tuple[Plan, float | None, list[dict[str, Any]]]:
    """(best plan, its microseconds, every plan tried with its time). ``time_plan`` answers None for
    a plan that cannot run; ``fit`` makes a changed plan launchable (e.g. bounds its split)."""
    tried: dict[Plan, float | None] = {start: time_plan(start)}
    best_plan, best = start, tried[start]
    for _ in range(2):
        improved = False
        for axis, values in axes.items():
            for value in values:
                candidate = fit(dataclasses.replace(best_plan, **{axis: value}))
                if candidate in tried:
                    continue
                tried[candidate] = us = time_plan(candidate)
                if us is not None and (best is None or us < best * KEEP_IF_FASTER):
                    best_plan, best, improved = candidate, us, True
        if not improved:
            break
    trials = [{"plan": list(dataclasses.astuple(p)), "us": None if us is None else round(us, 2)}
              for p, us in tried.items()]
    return best_plan, best, trials
