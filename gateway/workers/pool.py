"""The worker pool: which workers serve each model, which are ready, and which to send a request to.

Each worker is polled (Health, then LoadStats) every ``poll_interval_s``. A failed or missed poll, or
a request that finds the worker UNAVAILABLE, takes it out of rotation at once; a successful poll
brings it back. A worker that cannot be reached for ``dead_after_s`` is dead: its in-flight streams
are cut so clients get an error instead of a hang. A worker that is reachable but slow to answer
(polls time out) is busy, not dead: it leaves rotation until it answers, and its streams go on, for
up to ``BUSY_GRACE_FACTOR`` times as long.
ModelInfo is asked again after a failed poll; a different ``worker_id`` at the same address is a
restart, counted per worker.

Routing picks the ready worker with the least load: this gateway's in-flight requests on it (known
exactly) plus the running + waiting requests other gateways had there at the last poll, with its KV
usage (0..1) breaking ties; equal loads rotate round-robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from gateway.http.errors import ModelNotFound, ServiceUnavailable
from gateway.settings import RoutingSettings
from gateway.workers.client import GenerateStream, WorkerClient
from gateway.workers.errors import WorkerError
from proto.ward.worker.v1 import worker_pb2 as pb

log = logging.getLogger("ward.gateway.pool")

CONTRACT_VERSION = "ward.worker.v1"
BUSY_GRACE_FACTOR = 5  # a worker whose polls only time out is dead after this many times dead_after_s


@dataclass(eq=False)
class WorkerHandle:
    """The gateway's view of one worker serving one model."""

    model: str
    client: WorkerClient
    ready: bool = False
    detail: str = "not polled yet"
    info: pb.ModelInfoResponse | None = None
    load: pb.LoadStatsResponse | None = None
    in_flight: int = 0  # this gateway's requests on the worker now
    in_flight_at_poll: int = 0  # ... when the last LoadStats was taken (they are counted in it)
    failing_since: float | None = None  # monotonic time of the first failed poll in a row
    streams: set[GenerateStream] = field(default_factory=set)
    polled: bool = False  # a first poll has finished (either way)
    worker_id: str = ""  # the process last seen at this address (ModelInfo.worker_id)
    restarts: int = 0  # times another process came up at this address

    @property
    def address(self) -> str:
        return self.client.address

    def load_score(self) -> float:
        """Requests on the worker now: other gateways' (as of the last poll) plus ours (exact),
        with KV usage (0..1) breaking ties."""
        if self.load is None:
            return float(self.in_flight)
        others = max(self.load.num_running + self.load.num_waiting - self.in_flight_at_poll, 0)
        return others + self.in_flight + self.load.kv_usage

    @contextlib.contextmanager
    def lease(self, stream: GenerateStream | None = None):
        """Counts a request as in flight on this worker (and tracks its stream) for the block's duration."""
        self.in_flight += 1
        if stream is not None:
            self.streams.add(stream)
        try:
            yield self
        finally:
            self.in_flight -= 1
            if stream is not None:
                self.streams.discard(stream)


def system_fingerprint(info: pb.ModelInfoResponse) -> str:
    """A stable fingerprint of a model's serving configuration (equal across its workers)."""
    return _fingerprint(info.served_model_name, info.max_model_len, info.task, info.contract_version)


@functools.lru_cache(maxsize=256)  # every response carries one; the configurations served are few
def _fingerprint(served_model_name: str, max_model_len: int, task: str, contract_version: str) -> str:
    key = f"{served_model_name}|{max_model_len}|{task}|{contract_version}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


class WorkerPool:
    """Workers per served model name, kept up to date by background polls."""

    def __init__(
        self,
        routes: Mapping[str, Sequence[str]],
        connect: Callable[[str], WorkerClient],
        settings: RoutingSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``routes`` maps model names to worker addresses; ``connect`` opens a client per address."""
        self.settings = settings or RoutingSettings()
        self._clock = clock
        self._connect = connect
        self._by_model: dict[str, list[WorkerHandle]] = {}
        clients: dict[str, WorkerClient] = {}
        for model, addresses in routes.items():
            handles = []
            for address in addresses:
                if address not in clients:
                    clients[address] = connect(address)
                handles.append(WorkerHandle(model=model, client=clients[address]))
            self._by_model[model] = handles
        self._clients = list(clients.values())
        self._turn = 0
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._ready_changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts one poll loop per worker (the first polls run at once)."""
        if not self._started:
            self._started = True
            self._tasks = [asyncio.create_task(self._watch(h), name=f"poll {h.address}") for h in self.handles()]

    async def close(self) -> None:
        """Stops polling and closes every channel."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)

    async def wait_until_ready(self, timeout: float, *, every_worker: bool = False) -> bool:
        """Waits until every model has a ready worker (or, with ``every_worker``, until every worker
        is ready); False on timeout."""
        deadline = self._clock() + timeout

        def done() -> bool:
            if every_worker:
                return all(h.ready for h in self.handles())
            return all(self.is_ready(m) for m in self._by_model)

        while not done():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._ready_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 0.1))
        return True

    # -- queries -----------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return list(self._by_model)

    def has_model(self, model: str) -> bool:
        return model in self._by_model

    def handles(self, model: str | None = None) -> list[WorkerHandle]:
        if model is not None:
            return list(self._by_model.get(model, ()))
        return [h for hs in self._by_model.values() for h in hs]

    def is_ready(self, model: str) -> bool:
        return any(h.ready for h in self._by_model.get(model, ()))

    def model_info(self, model: str) -> pb.ModelInfoResponse | None:
        """What a ready (else any polled) worker of ``model`` reported about it."""
        # Asked several times per request: one pass, no sort (a ready worker's answer first, in order).
        fallback = None
        for h in self._by_model.get(model, ()):
            info = h.info
            if info is not None:
                if h.ready:
                    return info
                if fallback is None:
                    fallback = info
        return fallback

    # -- routing -----------------------------------------------------------------------------------

    def pick(self, model: str, exclude: Iterable[WorkerHandle] = ()) -> WorkerHandle:
        """The least-loaded ready worker of ``model``, skipping ``exclude``.

        Raises ModelNotFound for an unconfigured model and ServiceUnavailable when none is ready.
        """
        handles = self._by_model.get(model)
        if handles is None:
            raise ModelNotFound(model)
        best: WorkerHandle | None = None
        best_score = 0.0
        count = len(handles)
        self._turn += 1
        for i in range(count):
            h = handles[(self._turn + i) % count]
            if not h.ready or h in exclude:
                continue
            score = h.load_score()
            if best is None or score < best_score:
                best, best_score = h, score
        if best is None:
            raise ServiceUnavailable(
                f"No ready worker for model `{model}`; please retry shortly.", code="no_ready_worker"
            )
        return best

    def report_failure(self, handle: WorkerHandle, err: WorkerError) -> None:
        """A request failed on ``handle``; an unreachable worker leaves rotation until it polls healthy."""
        if err.worker_unreachable and handle.ready:
            log.warning("worker %s out of rotation: %s", handle.address, err.message)
            self._set_unready(handle, f"unreachable: {err.message}")

    # -- polling -----------------------------------------------------------------------------------

    async def _watch(self, handle: WorkerHandle) -> None:
        while handle in self._by_model.get(handle.model, ()) or handle.in_flight:  # removed: drain, then stop
            try:
                await self.poll(handle)
            except Exception as exc:  # a bug must not stop the watch: count it as a failed poll
                log.exception("polling worker %s failed", handle.address)
                self._mark_failed(handle, WorkerError(grpc.StatusCode.UNKNOWN, str(exc), address=handle.address))
            handle.polled = True
            await asyncio.sleep(self.settings.poll_interval_s)
        self._clients.remove(handle.client)
        await handle.client.close()

    # -- membership: workers found or lost by discovery (gateway.workers.discovery) ---------------

    def add_worker(self, model: str, address: str) -> WorkerHandle:
        """Watches a new worker of ``model``; it joins rotation once a poll finds it ready."""
        handle = WorkerHandle(model=model, client=self._connect(address))
        self._by_model.setdefault(model, []).append(handle)
        self._clients.append(handle.client)
        if self._started:  # watch it now (else start() will)
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(self._watch(handle), name=f"poll {address}"))
        return handle

    def remove_worker(self, handle: WorkerHandle) -> None:
        """Takes ``handle`` out of rotation at once; its requests in flight finish (or are cut if it
        dies), then its watch stops and its channel closes."""
        self._by_model[handle.model].remove(handle)

    async def poll(self, handle: WorkerHandle) -> None:
        """One health check of ``handle``; updates its readiness and load."""
        timeout = self.settings.poll_timeout_s
        client = handle.client
        try:
            health = await client.health(timeout)
            if not health.ready:
                self._mark_alive(handle)
                self._set_unready(handle, health.detail or "worker not ready")
                return
            if handle.info is None:
                info = await client.model_info(timeout)
                problem = self._mismatch(handle, info)
                if problem:
                    self._mark_alive(handle)
                    self._set_unready(handle, problem)
                    return
                handle.info = info
                self._note_worker_id(handle, info.worker_id)
            load = await client.load_stats(timeout)
        except WorkerError as err:
            self._mark_failed(handle, err)
            return
        handle.load = load
        handle.in_flight_at_poll = handle.in_flight
        self._mark_alive(handle)
        if load.draining:
            self._set_unready(handle, "draining")
        elif not handle.ready:
            log.info("worker %s ready for %s", handle.address, handle.model)
            handle.ready, handle.detail = True, "ready"
            self._ready_changed.set()

    def _mismatch(self, handle: WorkerHandle, info: pb.ModelInfoResponse) -> str | None:
        if info.served_model_name != handle.model:
            return f"serves `{info.served_model_name}`, configured as `{handle.model}`"
        if info.contract_version and info.contract_version != CONTRACT_VERSION:
            return f"speaks {info.contract_version}, the gateway speaks {CONTRACT_VERSION}"
        return None

    def _note_worker_id(self, handle: WorkerHandle, worker_id: str) -> None:
        """Counts a restart when a different worker process answers at a known address."""
        if handle.worker_id and worker_id and worker_id != handle.worker_id:
            handle.restarts += 1
            log.warning("worker %s of %s restarted (worker id %s, was %s)", handle.address, handle.model,
                        worker_id, handle.worker_id)
        handle.worker_id = worker_id or handle.worker_id

    def _mark_alive(self, handle: WorkerHandle) -> None:
        handle.failing_since = None

    def _mark_failed(self, handle: WorkerHandle, err: WorkerError) -> None:
        now = self._clock()
        if handle.failing_since is None:
            handle.failing_since = now
        handle.info = None  # a restarted worker may serve something else: ask again
        self._set_unready(handle, f"poll failed: {err.status.name} {err.message}")
        dead_after = self.settings.dead_after_s
        if err.status is grpc.StatusCode.DEADLINE_EXCEEDED:
            # Reachable but slow to answer is busy, not dead: its streams go on (it leaves rotation
            # meanwhile), unless it stays silent so long that it must be hung (stopped, deadlocked).
            dead_after *= BUSY_GRACE_FACTOR
        if now - handle.failing_since >= dead_after and handle.streams:
            log.error("worker %s dead: cutting %d in-flight streams", handle.address, len(handle.streams))
            for stream in list(handle.streams):
                stream.abort_lost()

    def _set_unready(self, handle: WorkerHandle, detail: str) -> None:
        if handle.ready:
            log.warning("worker %s not ready: %s", handle.address, detail)
            self._ready_changed.set()
        handle.ready, handle.detail = False, detail
