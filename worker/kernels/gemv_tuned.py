"""The decode GEMV's plans tuned on one card (``ward tune gemv``), kept in a JSON file per card.

The plan tables in ``decode_gemv_config`` were measured on an H100; another card (an H200, an L40S)
or another model's shapes fall back to them or to a rule. ``ward tune gemv`` times plans on the card
at hand for every shape a model launches and writes the winners here; workers on a card of that name
read them at start-up. One file per kernel and card name, ``decode_gemv-NVIDIA_H200.json`` (letters,
digits, ``.``, ``_`` and ``-`` only, so that it can be a Kubernetes ConfigMap's key), in the folder
``WARD_TUNED_CONFIG_FOLDER`` names (default ``$XDG_CACHE_HOME/ward/tuned-configs``, or
``~/.cache/ward/tuned-configs``): a shared or mounted folder serves every worker of a cluster, and
tuning a second model adds its shapes to the card's file.

No torch or Triton here: the files are read and checked on the host, and a malformed one is a
``TunedConfigError`` naming the file (a worker refuses to start rather than run plans it cannot
trust).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.kernels.decode_gemv_config import WIDE_ROWS, GemvPlan, TunedTable, plan_problem

KERNEL = "decode_gemv"
FOLDER_ENV = "WARD_TUNED_CONFIG_FOLDER"
FORMAT = 1


class TunedConfigError(ValueError):
    """A tuned-config file that cannot be read or does not hold valid plans."""


@dataclass(frozen=True)
class TunedShape:
    """One launch shape of the GEMV: ``n`` output columns (with SiLU: the intermediate size), ``k``
    inputs, weights of ``weight_bytes`` a value (2: 16-bit, 1: e4m3; 4 only in Triton's interpreter),
    launches of fewer than ``WIDE_ROWS`` rows or (``wide``) of at least that many; ``e4m3_x``: x is
    e4m3 codes too and the dot e4m3 by e4m3 (the W8A8 decode, ``choose_w8a8_plan``)."""

    n: int
    k: int
    silu: bool
    weight_bytes: int
    wide: bool
    e4m3_x: bool = False

    @property
    def key(self) -> tuple[int, int, bool, int, bool, bool]:
        return (self.n, self.k, self.silu, self.weight_bytes, self.wide, self.e4m3_x)

    @property
    def rows(self) -> int:
        """The rows a launch of this class is timed at."""
        return WIDE_ROWS if self.wide else 1


@dataclass(frozen=True)
class TunedPlan:
    """A shape's plan as tuning left it, with the figures that chose it (microseconds a launch)."""

    shape: TunedShape
    plan: GemvPlan
    us: float | None = None
    start_us: float | None = None  # the plan the worker took before tuning, timed beside it


def default_folder() -> Path:
    folder = os.environ.get(FOLDER_ENV)
    if folder:
        return Path(folder)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ward" / "tuned-configs"


def device_file_name(device_name: str) -> str:
    """``decode_gemv-NVIDIA_H200.json`` for ``NVIDIA H200``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device_name.strip()) or "unknown"
    return f"{KERNEL}-{slug}.json"


def device_config_path(device_name: str, folder: str | os.PathLike | None = None) -> Path:
    """The file that holds ``device_name``'s plans in ``folder`` (default: ``default_folder()``)."""
    return (Path(folder) if folder is not None else default_folder()) / device_file_name(device_name)


def read_plans(path: str | os.PathLike, device_name: str | None = None) -> list[TunedPlan]:
    """The plans in ``path``; with ``device_name``, the file must be that card's. TunedConfigError
    for anything malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TunedConfigError(f"{path}: cannot read tuned plans: {error}") from None
    if not isinstance(data, dict) or data.get("kernel") != KERNEL or data.get("format") != FORMAT:
        raise TunedConfigError(f"{path}: not a {KERNEL} tuned-config file of format {FORMAT}")
    if device_name is not None and data.get("device_name") != device_name:
        raise TunedConfigError(f"{path}: holds plans of {data.get('device_name')!r}, not of {device_name!r}")
    entries = data.get("plans")
    if not isinstance(entries, list):
        raise TunedConfigError(f"{path}: 'plans' must be a list")
    return [_entry(path, i, entry) for i, entry in enumerate(entries)]


def _entry(path: Path, index: int, entry: Any) -> TunedPlan:
    where = f"{path}: plan {index}"
    if not isinstance(entry, dict):
        raise TunedConfigError(f"{where} is not an object")
    try:
        n, k, weight_bytes = (entry[name] for name in ("n", "k", "weight_bytes"))
        silu, wide, values = entry["silu"], entry["wide"], entry["plan"]
    except KeyError as missing:
        raise TunedConfigError(f"{where} lacks {missing}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, k)):
        raise TunedConfigError(f"{where}: n and k must be integers of at least 1")
    if weight_bytes not in (1, 2, 4) or isinstance(weight_bytes, bool):
        raise TunedConfigError(f"{where}: weight_bytes must be 1 (e4m3), 2 (16-bit) or 4 (float32, as in "
                               "Triton's interpreter)")
    e4m3_x = entry.get("e4m3_x", False)
    if not all(isinstance(flag, bool) for flag in (silu, wide, e4m3_x)):
        raise TunedConfigError(f"{where}: silu, wide and e4m3_x must be true or false")
    if e4m3_x and weight_bytes != 1:
        raise TunedConfigError(f"{where}: an e4m3 x (e4m3_x) meets e4m3 weights only (weight_bytes 1)")
    fields = [f.name for f in dataclasses.fields(GemvPlan)]
    if not isinstance(values, list) or len(values) != len(fields):
        raise TunedConfigError(f"{where}: plan must be [{', '.join(fields)}]")
    plan = GemvPlan(*values)
    problem = plan_problem(plan)
    if problem:
        raise TunedConfigError(f"{where}: {problem}")
    us, start_us = entry.get("us"), entry.get("start_us")
    return TunedPlan(TunedShape(n, k, silu, weight_bytes, wide, e4m3_x), plan, _figure(where, us),
                     _figure(where, start_us))


def _figure(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TunedConfigError(f"{where}: timings must be non-negative numbers")
    return float(value)


def write_plans(path: str | os.PathLike, device_name: str, plans: list[TunedPlan], **about: Any) -> Path:
    """Merges ``plans`` into ``device_name``'s file at ``path`` (a shape tuned again takes its new
    plan; other shapes stay) and writes it atomically. ``about``: what made them (model, versions)."""
    path = Path(path)
    merged: dict[tuple, TunedPlan] = {}
    if path.exists():
        merged = {p.shape.key: p for p in read_plans(path, device_name)}
    merged.update({p.shape.key: p for p in plans})
    data = {
        "kernel": KERNEL,
        "format": FORMAT,
        "device_name": device_name,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **about,
        "plans": [_as_json(p) for p in sorted(merged.values(), key=lambda p: p.shape.key)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tuning-", suffix=".json", delete=False) as out:
        json.dump(data, out, indent=1)
        temporary = out.name
    os.chmod(temporary, 0o644)  # workers may run as another user than the one who tuned
    os.replace(temporary, path)
    return path


def _as_json(p: TunedPlan) -> dict[str, Any]:
    s = p.shape
    return {"n": s.n, "k": s.k, "silu": s.silu, "weight_bytes": s.weight_bytes, "wide": s.wide, "e4m3_x": s.e4m3_x,
            "plan": list(dataclasses.astuple(p.plan)), "us": p.us, "start_us": p.start_us}


_LOADED: dict[str, TunedTable] = {}


def tuned_table(device_name: str | None) -> TunedTable:
    """``device_name``'s plans from its file in ``default_folder()`` as ``choose_plan`` takes them
    (empty without a file or a name), read once per process. TunedConfigError for a malformed file."""
    if not device_name:
        return {}
    table = _LOADED.get(device_name)
    if table is None:
        path = device_config_path(device_name)
        plans = read_plans(path, device_name) if path.exists() else []
        table = _LOADED[device_name] = {p.shape.key: p.plan for p in plans}
    return table


def forget_loaded() -> None:
    """Reads the files again on next use (after tuning in this process, and in tests)."""
    _LOADED.clear()
