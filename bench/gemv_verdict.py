"""Which side won an alternated A/B of bench/gpu_session.sh (steps `<stem>_r1`, `<stem>_r2` of each side):
by default the `gemv` step's (the table's plans against the sweep's proposal). Prints the candidate's
name (`proposal`) when it decoded faster at batch 1 in every round and did not slow the latency
test's mean by more than NOISE, else the base's (`table`); then the figures. A side's name is its
stem after the last underscore (gemv_table: table; norm1: norm1).

With ``--throughput WORKLOAD:KEY,...`` (e.g. ``offline_1024_128:req_s,mixed:out_tok_s``) it judges
throughput instead: the candidate wins when, summed over the complete rounds, it was ahead on every
workload named and no round had it behind by more than NOISE on any of them.

Usage: python3 bench/gemv_verdict.py OUT_DIR [BASE_STEM CANDIDATE_STEM] [--throughput WORKLOAD:KEY,...]
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


Rounds = list[dict[str, tuple[float | None, ...]]]


def alternated_rounds(out: pathlib.Path, base_stem: str, candidate_stem: str,
                      figures: list[tuple[str, str]]) -> tuple[str, str, Rounds, Rounds]:
    """The two sides' names, each round's figures per side (None where a log lacks one) and the rounds
    where every figure is there."""
    base, candidate = base_stem.rsplit("_", 1)[-1], candidate_stem.rsplit("_", 1)[-1]
    rounds = [{side: tuple(figure(out / f"{stem}_r{r}.txt", workload, key) for workload, key in figures)
               for side, stem in ((base, base_stem), (candidate, candidate_stem))} for r in (1, 2)]
    complete = [r for r in rounds if None not in r[base] + r[candidate]]
    return base, candidate, rounds, complete


def main(out: pathlib.Path, base_stem: str = "gemv_table", candidate_stem: str = "gemv_proposal") -> str:
    base, candidate, rounds, complete = alternated_rounds(
        out, base_stem, candidate_stem, [("batch1", "tok_s"), ("latency", "mean_ms")])
    wins = bool(complete) and all(
        r[candidate][0] > r[base][0] and r[candidate][1] <= r[base][1] * (1 + NOISE) for r in complete)
    verdict = candidate if wins else base
    print(verdict)
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: {base} batch1 {r[base][0]} tok/s latency {r[base][1]} ms; "
              f"{candidate} {r[candidate][0]} tok/s {r[candidate][1]} ms")
    return verdict


def throughput_verdict(out: pathlib.Path, base_stem: str, candidate_stem: str, figures: list[tuple[str, str]]) -> str:
    """The candidate's name when it won on throughput (see the module's doc), else the base's; then the figures."""
    base, candidate, rounds, complete = alternated_rounds(out, base_stem, candidate_stem, figures)
    each = range(len(figures))
    ahead = bool(complete) and all(sum(r[candidate][i] for r in complete) > sum(r[base][i] for r in complete)
                                   for i in each)
    never_behind = all(r[candidate][i] >= r[base][i] * (1 - NOISE) for r in complete for i in each)
    verdict = candidate if ahead and never_behind else base
    print(verdict)
    names = [f"{workload} {key}" for workload, key in figures]
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: " + "; ".join(f"{side} " + ", ".join(f"{n} {v}" for n, v in zip(names, r[side]))
                                         for side in (base, candidate)))
    return verdict


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--throughput" in args:
        at = args.index("--throughput")
        wanted = [tuple(item.split(":", 1)) for item in args[at + 1].split(",")]
        del args[at:at + 2]
        throughput_verdict(pathlib.Path(args[0]), args[1], args[2], wanted)
    else:
        main(pathlib.Path(args[0]), *args[1:3])
