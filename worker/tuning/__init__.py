"""Tuning kernels on the card at hand: the decode GEMV's plans (``ward tune gemv``) and the timing
and search they share with the benchmark scripts."""
