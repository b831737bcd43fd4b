"""The test harness forgives one known grpc.aio error only (tests/conftest.py): a completion of an earlier
test's call delivered after that test's loop closed. Anything else raised in a callback still fails the test."""
from __future__ import annotations

import asyncio

from anyio._backends import _asyncio as anyio_asyncio


class PollerCompletionQueue:  # named as grpc's class, whose callback the filter recognises
    def _handle_events(self) -> None:
        raise RuntimeError("Event loop is closed")


def test_only_the_grpc_pollers_closed_loop_error_is_forgiven() -> None:
    with anyio_asyncio.TestRunner() as runner:
        loop = runner.get_loop()
        poller = asyncio.Handle(PollerCompletionQueue()._handle_events, (), loop)
        other = asyncio.Handle(print, (), loop)
        loop.call_exception_handler({"message": "m", "exception": RuntimeError("Event loop is closed"), "handle": poller})
        assert runner._exceptions == []
        loop.call_exception_handler({"message": "m", "exception": RuntimeError("Event loop is closed"), "handle": other})
        loop.call_exception_handler({"message": "m", "exception": ValueError("a real one"), "handle": poller})
        assert [type(e) for e in runner._exceptions] == [RuntimeError, ValueError]
        runner._exceptions.clear()
