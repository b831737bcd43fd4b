"""Which decode GEMV plans won bench/gpu_session.sh's `gemv` A/B (the table's against the sweep's
proposal, alternated): prints `proposal` when the proposal decoded faster at batch 1 in every round
and did not slow the latency test's mean by more than NOISE, else `table`; then the figures.

Usage: python3 bench/gemv_verdict.py OUT_DIR
"""
from __future__ import annotations

import json
import pathlib
import sys

NOISE = 0.005  # the latency test's round-to-round spread on one card


def figure(path: pathlib.Path, workload: str, key: str) -> float | None:
    """The figure that `ward bench offline` printed as `<workload> {json}` in a step's log."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(workload + " {"):
            return float(json.loads(line[len(workload) + 1:])[key])
    return None


def main(out: pathlib.Path) -> str:
    rounds = []
    for r in (1, 2):
        row = {}
        for side in ("table", "proposal"):
            log = out / f"gemv_{side}_r{r}.txt"
            row[side] = (figure(log, "batch1", "tok_s"), figure(log, "latency", "mean_ms"))
        rounds.append(row)
    complete = [r for r in rounds if None not in r["table"] + r["proposal"]]
    wins = bool(complete) and all(
        r["proposal"][0] > r["table"][0] and r["proposal"][1] <= r["table"][1] * (1 + NOISE) for r in complete)
    verdict = "proposal" if wins else "table"
    print(verdict)
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: table batch1 {r['table'][0]} tok/s latency {r['table'][1]} ms; "
              f"proposal {r['proposal'][0]} tok/s {r['proposal'][1]} ms")
    return verdict


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
