"""The engine core in a process of its own (``ward worker --engine-process``).

In one process, the engine's step loop shares the interpreter lock with the gRPC server, request
preparation and streaming: at high concurrency each waits for the other. Here the core process runs
``LLMEngine`` (scheduler, KV cache, model runner, sampling, detokenization) and nothing else; the
serving process keeps gRPC, admission, tokenization and chat templates (``RequestPreparation``,
with the core's KV capacity) and talks to the core over a pipe:

  serving -> core   ("add", id, prepared request, options)   ("abort", id)   ("stop",)
  core -> serving   ("ready", description)   ("accepted", id, error)   ("outputs", [slim output], stats)
                    ("failed", message)

Outputs cross as deltas only (new tokens, text and logprobs per choice): the serving process
rebuilds each ``RequestOutput`` from the prompt and the tokens it has seen, so a long request costs
the pipe no more per step than a short one. Compiled grammars stay where they are compiled: the
core compiles a request's grammar again (cached by the schema's hash).

``EngineProcess`` offers ``AsyncEngine``'s interface. The core dies with the serving process (it
reads end-of-file on the pipe, or, while loading, ``exit_with_parent`` sees the parent gone), and a core that dies fails every stream and sets ``dead``, so the
worker exits non-zero for its supervisor.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from worker import errors
from worker.config import EngineConfig
from worker.engine.request_preparation import PreparedRequest, RequestPreparation
from worker.errors import EngineDeadError, ModelLoadError
from worker.gc_heap import freeze_startup_heap
from worker.outputs import CompletionOutput, RequestOutput
from worker.parent_watch import exit_with_parent
from worker.server.async_engine import outputs_until_finished

log = logging.getLogger("ward.worker.engine_process")

STARTUP_TIMEOUT_S = 3600  # loading a large model from a slow disk


@dataclass
class EngineDescription:
    """What the serving process needs from the core to prepare requests and describe the model."""

    kv_capacity_tokens: int
    weight_format: str
    startup_seconds: float
    stats: object  # EngineStats before the first request


@dataclass
class SlimChoice:
    index: int
    token_ids_delta: list[int]
    text_delta: str
    logprobs_delta: list | None
    finish_reason: str | None
    stop_reason: str | int | None


@dataclass
class SlimOutput:
    request_id: str
    choices: list[SlimChoice]
    finished: bool
    num_cached_tokens: int
    prompt_logprobs_delta: list | None
    metrics: object | None  # RequestMetrics, with the last output only


def slim(out: RequestOutput) -> SlimOutput:
    choices = [SlimChoice(c.index, c.token_ids_delta, c.text_delta, c.logprobs_delta, c.finish_reason, c.stop_reason)
               for c in out.outputs if c.token_ids_delta or c.text_delta or c.finished]
    return SlimOutput(out.request_id, choices, out.finished, out.num_cached_tokens, out.prompt_logprobs_delta,
                      out.metrics if out.finished else None)


def _error_message(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _rebuild_error(name: str, message: str) -> Exception:
    """The core's exception as the serving side raises it (Ward's typed errors keep their type)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    if name == "ValueError":
        return ValueError(message)
    return errors.WardError(f"{name}: {message}")


# ---- the core process ------------------------------------------------------------------------

def core_main(config: EngineConfig, conn, torch_threads: int | None = None, log_level: str = "INFO") -> None:
    """Entry point of the core process: build the engine, then serve commands and step."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [core]: %(message)s")
    exit_with_parent()  # also while the model loads, when the pipe is not read
    if torch_threads:  # a CPU engine: the serving process's threads are not this process's
        import torch

        torch.set_num_threads(torch_threads)
    try:
        from worker.engine.llm_engine import LLMEngine

        engine = LLMEngine(config)
    except BaseException as exc:  # noqa: BLE001 - every start-up failure is reported, then the process ends
        conn.send(("failed",) + _error_message(exc))
        conn.close()
        return
    freeze_startup_heap()  # this process steps the engine: its model and libraries out of the collector's scans
    conn.send(("ready", EngineDescription(engine.kv_capacity_tokens, engine.weight_format, engine.startup_seconds,
                                          engine.stats())))
    try:
        _serve(engine, conn)
    except (EOFError, OSError):  # the serving process is gone: nothing left to serve
        pass
    except BaseException as exc:  # noqa: BLE001
        log.exception("engine core failed")
        try:
            conn.send(("failed",) + _error_message(exc))
        except OSError:
            pass
        raise SystemExit(1) from exc
    finally:
        engine.close()


def _serve(engine, conn) -> None:
    while True:
        engine.check_health()  # a dead tensor-parallel rank is noticed even while idle
        busy = engine.has_unfinished_requests()
        if conn.poll(0 if busy else 0.5):
            while True:
                cmd = conn.recv()
                if cmd[0] == "stop":
                    return
                _command(engine, conn, cmd)
                if not conn.poll(0):
                    break
        if engine.has_unfinished_requests():
            outputs = engine.step()
            if outputs:
                conn.send(("outputs", [slim(o) for o in outputs], engine.stats()))


def _command(engine, conn, cmd) -> None:
    if cmd[0] == "add":
        _, request_id, prepared, options = cmd
        try:
            engine.add_request(request_id, prepared, **options)
            conn.send(("accepted", request_id, None))
        except Exception as exc:  # noqa: BLE001 - a refused request is the caller's error, not the core's
            conn.send(("accepted", request_id, _error_message(exc)))
    elif cmd[0] == "abort":
        outs = engine.abort_request(cmd[1])
        if outs:
            conn.send(("outputs", [slim(o) for o in outs], engine.stats()))


# ---- the serving side ------------------------------------------------------------------------

class EngineFrontend(RequestPreparation):
    """The serving process's half: the model's limits, tokenizer and request checks."""

    def __init__(self, config: EngineConfig, description: EngineDescription) -> None:
        self._load_model_description(config)
        self._description = description

    @property
    def kv_capacity_tokens(self) -> int:
        return self._description.kv_capacity_tokens

    @property
    def weight_format(self) -> str:
        return self._description.weight_format


@dataclass
class _Stream:
    queue: asyncio.Queue
    accepted: asyncio.Future
    prompt: str | None
    prompt_token_ids: list[int]
    choices: list[CompletionOutput]


class EngineProcess:
    """``AsyncEngine``'s interface over an engine core in its own process."""

    def __init__(self, config: EngineConfig, on_finished=None, *, torch_threads: int | None = None,
                 log_level: str = "INFO") -> None:
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self._conn, child = ctx.Pipe()
        # not a daemon: the core starts tensor-parallel rank processes of its own
        self.process = ctx.Process(target=core_main, args=(config, child, torch_threads, log_level),
                                   name="ward-engine-core")
        self.process.start()
        child.close()
        if not self._conn.poll(STARTUP_TIMEOUT_S):
            self.process.kill()
            raise ModelLoadError("the engine core did not start in time")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise ModelLoadError(f"the engine core exited while starting (exit code {self.process.exitcode})") from None
        if msg[0] == "failed":
            self.process.join(10)
            raise _rebuild_error(msg[1], msg[2]) if msg[1] == "ModelLoadError" else ModelLoadError(f"{msg[1]}: {msg[2]}")
        description: EngineDescription = msg[1]
        self.engine = EngineFrontend(config, description)
        self.startup_seconds = description.startup_seconds
        self._on_finished = on_finished
        self._streams: dict[str, _Stream] = {}
        self._outbox: queue.Queue = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = description.stats
        self._unwanted: set[str] = set()  # left before the core accepted them: aborted once it does
        self.error: BaseException | None = None
        self.dead = asyncio.Event()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in ((self._read, "ward-core-reader"), (self._write, "ward-core-writer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self) -> None:
        self._stopping = True
        self._outbox.put(("stop",))
        self._outbox.put(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self.error is None and self.process.is_alive()

    def stats(self):
        return self._stats

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
        if request_id in self._streams:
            raise errors.InvalidRequestError(f"request id {request_id!r} is already in use")
        n = prepared.params.n
        stream = _Stream(asyncio.Queue(), self._loop.create_future(), prepared.text, prepared.token_ids,
                         [CompletionOutput(index=i) for i in range(n)])
        self._streams[request_id] = stream
        params = dataclasses.replace(prepared.params, _grammar=None)  # compiled grammars stay in this process
        options = dict(priority=priority, cache_salt=cache_salt, team=team, team_priority=team_priority,
                       team_weight=team_weight)
        self._outbox.put(("add", request_id, dataclasses.replace(prepared, params=params), options))
        finished = False
        try:
            await stream.accepted  # raises if the engine refused the request
            async for item in outputs_until_finished(stream.queue):
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._streams.pop(request_id, None)
                if not stream.accepted.done():
                    self._unwanted.add(request_id)
                elif stream.accepted.exception() is None:
                    self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._outbox.put(("abort", request_id))

    # ---- threads ---------------------------------------------------------------------------
    def _write(self) -> None:
        while (cmd := self._outbox.get()) is not None:
            try:
                self._conn.send(cmd)
            except (OSError, ValueError):  # the core is gone: the reader reports it
                return

    def _read(self) -> None:
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "outputs":
                    self._stats = msg[2]
                    self._loop.call_soon_threadsafe(self._deliver, msg[1])
                elif msg[0] == "accepted":
                    self._loop.call_soon_threadsafe(self._accept, msg[1], msg[2])
                elif msg[0] == "failed":
                    raise EngineDeadError(f"the engine core failed: {msg[1]}: {msg[2]}")
        except (EOFError, OSError) as exc:
            if self._stopping:
                return
            self.process.join(2)
            failure = EngineDeadError(f"the engine core exited (exit code {self.process.exitcode}): {exc!r}")
        except EngineDeadError as exc:
            failure = exc
        except RuntimeError:  # the event loop has closed: the worker is on its way out
            return
        log.error("%s", failure)
        self.error = failure
        try:
            self._loop.call_soon_threadsafe(self._fail_all, failure)
        except RuntimeError:
            pass

    # ---- on the event loop -----------------------------------------------------------------
    def _accept(self, request_id: str, error) -> None:
        if request_id in self._unwanted:
            self._unwanted.discard(request_id)
            if error is None:
                self.abort(request_id)
            return
        stream = self._streams.get(request_id)
        if stream is None or stream.accepted.done():
            return
        if error is None:
            stream.accepted.set_result(None)
        else:
            del self._streams[request_id]
            stream.accepted.set_exception(_rebuild_error(*error))

    def _deliver(self, outputs: list[SlimOutput]) -> None:
        for s in outputs:
            stream = self._streams.get(s.request_id)
            if stream is None:
                continue
            out = self._rebuild(stream, s)
            stream.queue.put_nowait(out)
            if s.finished:
                del self._streams[s.request_id]
                if self._on_finished is not None:
                    self._on_finished(out)

    @staticmethod
    def _rebuild(stream: _Stream, s: SlimOutput) -> RequestOutput:
        changed = {c.index: c for c in s.choices}
        outputs = []
        for i, whole in enumerate(stream.choices):
            c = changed.get(i)
            if c is not None:
                whole.token_ids.extend(c.token_ids_delta)
                whole.text += c.text_delta
                whole.finish_reason, whole.stop_reason = c.finish_reason, c.stop_reason
            outputs.append(CompletionOutput(
                index=i, text=whole.text, token_ids=whole.token_ids, finish_reason=whole.finish_reason,
                stop_reason=whole.stop_reason, text_delta=c.text_delta if c else "",
                token_ids_delta=c.token_ids_delta if c else [], logprobs_delta=c.logprobs_delta if c else None))
        return RequestOutput(s.request_id, stream.prompt, stream.prompt_token_ids, outputs, finished=s.finished,
                             num_cached_tokens=s.num_cached_tokens, metrics=s.metrics,
                             prompt_logprobs_delta=s.prompt_logprobs_delta)

    def _fail_all(self, exc: BaseException) -> None:
        err = EngineDeadError(f"the engine failed: {exc}")
        for stream in self._streams.values():
            if not stream.accepted.done():
                stream.accepted.set_exception(err)
            else:
                stream.queue.put_nowait(err)
        self._streams.clear()
        self.dead.set()
