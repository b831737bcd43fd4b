"""Shared fixtures. Models load once per session; servers are real processes on free ports."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the machine's cores (./ward.sh test runs one per core): one intra-op
    # thread each, inherited by the servers they start, instead of every process's pool spinning on
    # every core. Set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests draw the same examples on every machine (CI detection would otherwise switch CI alone
# to derandomized draws): an example that fails in CI fails here too. WARD_HYPOTHESIS=explore draws anew.
settings.register_profile("ward", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("WARD_HYPOTHESIS") == "explore" else "ward")


def _ignore_grpc_events_for_closed_loops() -> None:
    """grpc.aio's poller delivers each completion to the loop its call was made on. A call of an earlier
    test that completes after that test's loop closed makes the callback, running on the current loop,
    raise "Event loop is closed" (grpc/grpc#25364 and its kin), which anyio's test runner would charge
    to whichever test is running. Only that one error, from that one callback, is let through."""
    try:
        from anyio._backends._asyncio import TestRunner
    except ImportError:
        return
    charged = TestRunner._exception_handler

    def handler(self, loop, context) -> None:
        exc = context.get("exception")
        if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
                and "PollerCompletionQueue._handle_events" in repr(context.get("handle"))):
            return
        charged(self, loop, context)

    TestRunner._exception_handler = handler


_ignore_grpc_events_for_closed_loops()


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of every ``pytest.mark.anyio`` test: asyncio, as the gateway and worker run."""
    return "asyncio"


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from worker.model.registry import DEFAULT_GENERATE_MODEL, resolve_model

    return resolve_model(DEFAULT_GENERATE_MODEL)
