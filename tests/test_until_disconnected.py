"""until_disconnected: the request's work runs in its own task and ends the right way on every path."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from gateway.http.errors import ClientDisconnected, ServerShuttingDown
from gateway.http.plumbing import until_disconnected
from gateway.serving.shutdown import ServerShutdown


class FakeRequest:
    """What until_disconnected reads of a Starlette request: receive() and app.state.ward.shutdown."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.app = SimpleNamespace(state=SimpleNamespace(ward=SimpleNamespace(shutdown=ServerShutdown())))

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def run(coro):
    return asyncio.run(coro)


async def waits_for_the_worker(cleaned: list, mark: object = True) -> None:
    """A request's work that waits long on its worker; its cleanup appends ``mark`` to ``cleaned``."""
    try:
        await asyncio.sleep(30)
    finally:
        cleaned.append(mark)


def test_the_work_runs_in_the_callers_task_and_its_result_comes_back():
    async def main():
        request = FakeRequest()

        async def work():
            await asyncio.sleep(0)
            return asyncio.current_task()

        caller = asyncio.current_task()
        assert await until_disconnected(request, work()) is caller
        await asyncio.sleep(0)
        assert [t for t in asyncio.all_tasks() if t is not caller] == []  # the watcher is gone too
        assert caller.cancelling() == 0

    run(main())


def test_a_disconnect_cancels_the_work_runs_its_cleanup_and_raises_client_disconnected():
    async def main():
        request = FakeRequest()
        cleaned = []
        asyncio.get_running_loop().call_later(0.05, request.gone.set)
        with pytest.raises(ClientDisconnected):
            await until_disconnected(request, waits_for_the_worker(cleaned, "worker call cancelled"))
        assert cleaned == ["worker call cancelled"]
        assert asyncio.current_task().cancelling() == 0  # later awaits of the request are not cancelled
        await asyncio.sleep(0)

    run(main())


def test_a_cleanup_that_raises_after_a_disconnect_still_ends_as_the_disconnect():
    async def main():
        request = FakeRequest()

        async def work():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise RuntimeError("the worker call failed while being cancelled") from None

        asyncio.get_running_loop().call_later(0.05, request.gone.set)
        with pytest.raises(ClientDisconnected):
            await until_disconnected(request, work())
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_the_shutdowns_cut_ends_the_work_with_server_shutting_down():
    async def main():
        request = FakeRequest()
        cleaned = []
        asyncio.get_running_loop().call_later(0.05, request.app.state.ward.shutdown.cut)
        with pytest.raises(ServerShuttingDown):
            await until_disconnected(request, waits_for_the_worker(cleaned))
        assert cleaned == [True]

    run(main())


def test_cancelling_the_request_from_outside_is_not_taken_for_a_disconnect():
    async def main():
        request = FakeRequest()
        cleaned = []
        task = asyncio.ensure_future(until_disconnected(request, waits_for_the_worker(cleaned)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == [True]

    run(main())
