"""Which device and dtype a model runs in."""
from __future__ import annotations

import torch

from worker.errors import ModelLoadError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for, but no CUDA GPU is available")
    return device


def pick_dtype(name: str, device: torch.device, config_dtype: torch.dtype | None) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32  # half precision matmuls are slow on most CPUs
    if config_dtype in (torch.bfloat16, torch.float16):
        return config_dtype
    return torch.bfloat16
