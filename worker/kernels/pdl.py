"""Programmatic dependent launch (PDL) for the kernels of a decode step, on Hopper and newer cards.

A decode step at a few rows is a chain of some 250 short kernels; between two of them the card
normally drains the first grid, flushes its writes and only then launches the next, a few
microseconds in which little is read. With PDL a kernel is launched while its predecessor still
runs: its programs start, do the work that depends on nothing the predecessor writes (the decode
GEMV loads its first weight tile), then wait at ``gdc_wait`` until the predecessor's grid has
completed and its writes are visible. Each kernel waits before touching anything a predecessor may
write and, once past the wait, lets its own successor launch (``gdc_launch_dependents``). The wait
is for the whole predecessor grid, which itself waited for its own predecessor, so the stream's
order holds as before; a kernel launched without the attribute (cuBLAS, torch) is ordered as usual.
The attribute is captured into CUDA graphs as a programmatic edge.

``WARD_PDL``: ``0`` off (A/B timing), ``1`` on where the card has it (compute capability 9.0+);
unset, on where the card has it. Never under Triton's interpreter.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

PDL_MIN_CAPABILITY = 9


def pdl_setting(value: str | None = None) -> bool:
    """Whether ``WARD_PDL`` (or ``value``) lets the kernels use PDL where the card has it."""
    text = (os.environ.get("WARD_PDL", "") if value is None else value).strip()
    if text in ("", "1"):
        return True
    if text == "0":
        return False
    raise ValueError(f"WARD_PDL must be 0 or 1, got {text!r}")


_ENABLED = pdl_setting()
# Triton fixes interpreter or compiler when a kernel is defined, so the process's setting holds.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _card_has_pdl(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= PDL_MIN_CAPABILITY


def use_pdl(device: torch.device) -> bool:
    """Whether kernels launched on ``device`` take the PDL path (a host-side decision, graph-safe)."""
    if not _ENABLED or _INTERPRETED or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _card_has_pdl(index)


def launch_options(enabled: bool) -> dict[str, Any]:
    """Keyword arguments of a Triton launch: the PDL attribute only when asked for, so that a
    Triton or a card without it never sees the option."""
    return {"launch_pdl": True} if enabled else {}
