"""Shared fixtures. Models load once per session; servers are real processes on free ports."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from worker.model.registry import DEFAULT_GENERATE_MODEL, resolve_model

    return resolve_model(DEFAULT_GENERATE_MODEL)
