"""Runs an LLMEngine in its own thread and exposes it to asyncio.

gRPC handlers never block a step and a step never waits on gRPC: requests are tokenized and
validated on the caller's side, queued to the engine thread as commands, and each step's outputs
come back to the event loop in one batch.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from worker.engine.llm_engine import EngineStats, LLMEngine, PreparedRequest
from worker.errors import EngineDeadError
from worker.outputs import RequestOutput

log = logging.getLogger("ward.worker.async_engine")


@dataclass
class _Add:
    request_id: str
    prepared: PreparedRequest
    options: dict  # priority, cache_salt, team, team_priority, team_weight: LLMEngine.add_request's keywords
    stream: asyncio.Queue
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: str


async def outputs_until_finished(stream: asyncio.Queue) -> AsyncIterator[RequestOutput]:
    """A request's outputs from its queue, up to the finished one; an exception put there is raised."""
    while True:
        item = await stream.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finished:
            return


class AsyncEngine:
    def __init__(self, engine: LLMEngine, on_finished=None) -> None:
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.dead = asyncio.Event()
        self._stats = engine.stats()
        self._on_finished = on_finished  # callback(RequestOutput) on the event loop, for metrics

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="ward-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.engine.close()

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self._stats  # refreshed by the engine thread after every step

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # ---- requests --------------------------------------------------------------------------
    async def generate(
        self, request_id: str, prepared: PreparedRequest, *, priority: int = 0, cache_salt: str | None = None,
        team: str | None = None, team_priority: int = 0, team_weight: float = 1.0,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the request's outputs until it finishes; leaving early aborts it."""
        if self.error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.error}")
        stream: asyncio.Queue = asyncio.Queue()
        accepted = self._loop.create_future()
        options = dict(priority=priority, cache_salt=cache_salt, team=team, team_priority=team_priority,
                       team_weight=team_weight)
        self._commands.put(_Add(request_id, prepared, options, stream, accepted))
        await accepted  # raises if the engine refused the request
        finished = False
        try:
            async for item in outputs_until_finished(stream):
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    # ---- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.engine.check_health()  # a dead tensor-parallel rank is noticed even while idle
                busy = self.engine.has_unfinished_requests()
                self._drain_commands(block=not busy)
                if self._stop.is_set():
                    break
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._stats = self.engine.stats()
                    if outputs:
                        self._loop.call_soon_threadsafe(self._deliver, outputs)
        except BaseException as exc:  # the engine is broken: fail everything, loudly
            log.exception("engine loop failed")
            self.error = exc
            self._loop.call_soon_threadsafe(self._fail_all, exc)

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            if isinstance(cmd, _Add):
                try:
                    self.engine.add_request(cmd.request_id, cmd.prepared, **cmd.options)
                    self._loop.call_soon_threadsafe(self._accept, cmd, None)
                except Exception as exc:
                    self._loop.call_soon_threadsafe(self._accept, cmd, exc)
            elif isinstance(cmd, _Abort):
                outs = self.engine.abort_request(cmd.request_id)
                if outs:
                    self._stats = self.engine.stats()
                    self._loop.call_soon_threadsafe(self._deliver, outs)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    # ---- on the event loop -----------------------------------------------------------------
    def _accept(self, cmd: _Add, exc: Exception | None) -> None:
        if cmd.accepted.done():
            return
        if exc is None:
            self._streams[cmd.request_id] = cmd.stream
            cmd.accepted.set_result(None)
        else:
            cmd.accepted.set_exception(exc)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)
                if out.finished:
                    del self._streams[out.request_id]
            if out.finished and self._on_finished is not None:
                self._on_finished(out)

    def _fail_all(self, exc: BaseException) -> None:
        err = EngineDeadError(f"the engine failed: {exc}")
        for stream in self._streams.values():
            stream.put_nowait(err)
        self._streams.clear()
        self.dead.set()

