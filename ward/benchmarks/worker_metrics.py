"""Reading a worker's latency histograms from its /metrics between two moments of a benchmark."""
from __future__ import annotations

import urllib.request
from collections.abc import Mapping


def histogram_totals(url: str, names: Mapping[str, str], by: str | Mapping[str, str] | None = None
                     ) -> dict[tuple[str, str], tuple[float, float]]:
    """(sum, count) of each histogram of ``names`` (key -> metric name) at ``url``, per value of the
    label ``by`` (a mapping: each key's own label; all series added up under "" where there is none):
    {(key, label value): (sum, count)}. One scrape of ``url`` for all of them."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    wanted = {f"{name}{suffix}": (key, suffix) for key, name in names.items() for suffix in ("_sum", "_count")}
    totals: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            hit = wanted.get(sample.name)
            if hit is None:
                continue
            key, suffix = hit
            label = by.get(key) if isinstance(by, Mapping) else by
            pair = totals.setdefault((key, sample.labels.get(label, "") if label else ""), [0.0, 0.0])
            pair[0 if suffix == "_sum" else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


def mean_ms(before: Mapping[tuple[str, str], tuple[float, float]], after: Mapping[tuple[str, str], tuple[float, float]],
            key: str, label: str = "") -> float | None:
    """Mean milliseconds of one histogram over what was observed between two readings (None: nothing)."""
    return pair_mean_ms(before.get((key, label), (0.0, 0.0)), after.get((key, label), (0.0, 0.0)))


def pair_mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Mean milliseconds between two (sum, count) readings of one series (None: nothing observed)."""
    (s0, c0), (s1, c1) = before, after
    return round(1000 * (s1 - s0) / (c1 - c0), 2) if c1 > c0 else None
