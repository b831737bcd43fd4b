"""Shared fixtures. Models load once per session; servers are real processes on free ports."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests draw the same examples on every machine (CI detection would otherwise switch CI alone
# to derandomized draws): an example that fails in CI fails here too. WARD_HYPOTHESIS=explore draws anew.
settings.register_profile("ward", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("WARD_HYPOTHESIS") == "explore" else "ward")


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of every ``pytest.mark.anyio`` test: asyncio, as the gateway and worker run."""
    return "asyncio"


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from worker.model.registry import DEFAULT_GENERATE_MODEL, resolve_model

    return resolve_model(DEFAULT_GENERATE_MODEL)
