"""Typed errors of the GPU kernels' host-side checks."""
from __future__ import annotations

from worker.errors import WardError


class KernelInputError(WardError, ValueError):
    """A kernel was called with tensors whose shapes, dtypes, devices or layouts it does not accept.

    Raised on the host before any launch, from shapes and dtypes only (never by reading device memory),
    so the checks are free under CUDA-graph capture.
    """

    code = "kernel_input_error"
