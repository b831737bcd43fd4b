"""Which side won an alternated A/B of bench/gpu_session.sh (steps `<stem>_r1`, `<stem>_r2` of each side):
by default the `gemv` step's (the table's plans against the sweep's proposal). Prints the candidate's
name (`proposal`) when it decoded faster at batch 1 in every round and did not slow the latency
test's mean by more than NOISE, else the base's (`table`); then the figures. A side's name is its
stem after the last underscore (gemv_table: table; norm1: norm1).

Usage: python3 bench/gemv_verdict.py OUT_DIR [BASE_STEM CANDIDATE_STEM]
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


def main(out: pathlib.Path, base_stem: str = "gemv_table", candidate_stem: str = "gemv_proposal") -> str:
    base, candidate = base_stem.rsplit("_", 1)[-1], candidate_stem.rsplit("_", 1)[-1]
    rounds = []
    for r in (1, 2):
        row = {}
        for side, stem in ((base, base_stem), (candidate, candidate_stem)):
            log = out / f"{stem}_r{r}.txt"
            row[side] = (figure(log, "batch1", "tok_s"), figure(log, "latency", "mean_ms"))
        rounds.append(row)
    complete = [r for r in rounds if None not in r[base] + r[candidate]]
    wins = bool(complete) and all(
        r[candidate][0] > r[base][0] and r[candidate][1] <= r[base][1] * (1 + NOISE) for r in complete)
    verdict = candidate if wins else base
    print(verdict)
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: {base} batch1 {r[base][0]} tok/s latency {r[base][1]} ms; "
              f"{candidate} {r[candidate][0]} tok/s {r[candidate][1]} ms")
    return verdict


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), *sys.argv[2:4])
