"""`ward gateway` with a timestamp at each stage of a streamed chat request's first token.

Measurement only: started by bench/stream_first_token_trace.py in place of ``python -m ward``, it
wraps a few of the gateway's functions and uvicorn's send so each request records
``time.perf_counter()`` at every stage it passes, then writes the median of each stage, in ms after
the request's arrival, to the JSON file named by ``TRACE_OUT`` when the gateway stops (the first
``TRACE_SKIP`` requests, a warm-up, are left out). The wrappers add a few microseconds a stage.
Usage: TRACE_OUT=FILE python bench/stream_first_token_tracer.py -m MODULE ARGS... (the module the
gateway runs as: ``ward`` with ``gateway --config FILE``, or ``ward.benchmarks.gateway.serve_plain``)
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn.protocols.http.httptools_impl as httptools_impl  # noqa: E402

import gateway.hooks as hooks  # noqa: E402
import gateway.routers.openai as openai_routes  # noqa: E402
import gateway.serving.dispatch as dispatch  # noqa: E402
import gateway.serving.generation as generation  # noqa: E402
from gateway.http.plumbing import RECEIVED_KEY  # noqa: E402

_by_task: dict[int, dict[str, float]] = {}
_requests: list[dict[str, float]] = []


def _mark(label: str) -> None:
    task = asyncio.current_task()
    stamps = _by_task.get(id(task)) if task is not None else None
    if stamps is not None:
        stamps.setdefault(label, time.perf_counter())


def _around(owner: object, name: str, before: str | None, after: str | None) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    async def traced(*args, **kwargs):
        if before:
            _mark(before)
        result = await inner(*args, **kwargs)
        if after:
            _mark(after)
        return result

    setattr(owner, name, traced)


def _trace_chat_route() -> None:
    inner = openai_routes.chat_completions

    @functools.wraps(inner)
    async def chat_completions(request):
        task = asyncio.current_task()
        stamps = {"arrived": request.scope.get(RECEIVED_KEY) or time.perf_counter(), "route": time.perf_counter()}
        _by_task[id(task)] = stamps
        _requests.append(stamps)
        response = await inner(request)
        stamps["response built"] = time.perf_counter()
        return response

    openai_routes.chat_completions = chat_completions
    for route in openai_routes.router.routes:  # the app calls the route's endpoint (FastLane)
        if getattr(route, "path", "") == "/v1/chat/completions":
            route.endpoint = chat_completions


def _trace_http_sends() -> None:
    inner = httptools_impl.RequestResponseCycle.send

    async def send(self, message):
        kind = message.get("type")
        body = message.get("body", b"")
        if kind == "http.response.start":
            _mark("headers: send")
            transport, write = self.transport, self.transport.write

            def timed_write(data: bytes) -> None:
                _mark("headers: socket write")
                write(data)
                _mark("headers: written")

            transport.write = timed_write
            try:
                return await inner(self, message)
            finally:
                del transport.write
        result = await inner(self, message)
        if kind == "http.response.body" and b'"content":' in body:
            _mark("first content chunk written")
        return result

    httptools_impl.RequestResponseCycle.send = send


def _dump() -> None:
    skip = int(os.environ.get("TRACE_SKIP", "20"))
    stages: dict[str, list[float]] = {}
    for stamps in _requests[skip:]:
        for label, moment in stamps.items():
            stages.setdefault(label, []).append((moment - stamps["arrived"]) * 1000)
    medians = {label: round(statistics.median(values), 3) for label, values in stages.items()}
    result = {"requests": max(0, len(_requests) - skip),
              "stages_ms": dict(sorted(medians.items(), key=lambda item: item[1]))}
    Path(os.environ["TRACE_OUT"]).write_text(json.dumps(result, indent=1))


def main() -> None:
    _trace_chat_route()
    _around(dispatch.Dispatcher, "admit", "admission", "admitted")
    _around(dispatch.Dispatcher, "open_generation", "dispatch", None)
    _around(dispatch.OpenGeneration, "receive_count", None, "worker's count received")
    _around(dispatch.Dispatcher, "_counted", None, "admitted with the count")
    _around(dispatch.OpenGeneration, "receive_first", None, "worker's first token received")
    _around(hooks.HookChain, "before_response", None, "audit entry committed")
    _around(generation.GenerationRun, "_first_tokens_arrived", "first token handled", None)
    _trace_http_sends()
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        raise SystemExit("usage: stream_first_token_tracer.py -m MODULE ARGS...")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        _dump()


if __name__ == "__main__":
    main()
