"""Where a request's tokenization runs: small prompts at once on the event loop (tokenizing a few KB
takes well under a millisecond), long ones on a small pool of threads, taken from per-team queues in
turn, so one team's burst of long prompts never makes another team's request wait behind it."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.tokenizer import PromptInput, prompt_text_bytes

INLINE_PROMPT_BYTES = 8192  # prompts up to this are tokenized where they arrive


def is_small(prompt: PromptInput) -> bool:
    return prompt_text_bytes(prompt) <= INLINE_PROMPT_BYTES


class FairPrepareExecutor:
    """Runs heavy preparation work on ``threads`` threads, serving teams' queues round-robin."""

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ward-prepare")
        self._free = threads
        self._queues: dict[str, deque] = {}
        self._turns: deque[str] = deque()  # teams with queued work, in serving order

    async def run(self, team: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a pool thread once ``team``'s turn comes; its result or exception."""
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(team)
        if queue is None:
            queue = self._queues[team] = deque()
            self._turns.append(team)
        queue.append((fn, args, future))
        self._start_next()
        return await future

    def _start_next(self) -> None:
        while self._free and self._turns:
            team = self._turns.popleft()
            queue = self._queues[team]
            fn, args, future = queue.popleft()
            if queue:
                self._turns.append(team)  # its next job waits for the other teams' turns
            else:
                del self._queues[team]
            if future.cancelled():  # the caller went away while it waited
                continue
            self._free -= 1
            done = asyncio.wrap_future(self._pool.submit(fn, *args))
            done.add_done_callback(lambda d, f=future: self._finished(d, f))

    def _finished(self, done: asyncio.Future, future: asyncio.Future) -> None:
        self._free += 1
        if not future.cancelled():
            if done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._start_next()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
