"""RequestContext: everything known about one HTTP request as it moves through the gateway.

Created when the request arrives (or when it is rejected), filled in by serving code, and handed to
every request hook. Hooks may keep their own state in ``extra``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.principal import Principal
from gateway.http.errors import OpenAIError
from gateway.random_ids import new_hex_id


@dataclass(eq=False)
class RequestContext:
    """One request's identity, parameters, progress and outcome.

    Timestamps ``*_at`` are ``time.time()`` (wall clock, for records); ``*_mono`` are
    ``time.perf_counter()`` (for durations).
    """

    request_id: str
    endpoint: str  # the route template, e.g. "/v1/chat/completions"
    client_address: str | None = None
    received_at: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    model: str | None = None
    worker: str | None = None  # address of the worker that served (or last tried) the request
    params: Any = None  # the validated request body (a pydantic model)
    prompt: Any = None  # chat messages (list of dicts), a prompt string, token ids, or embedding inputs
    stream: bool = False
    max_tokens: int | None = None  # the completion budget asked for (None: up to the context length)
    max_model_len: int | None = None  # the model's context length, when a worker has reported it
    num_choices: int = 0
    choice_text: list[list[str]] = field(default_factory=list)  # text pieces per choice, in order
    finish_reasons: list[str | None] = field(default_factory=list)
    prompt_tokens: int | None = None  # as counted by the worker
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    first_token_mono: float | None = None
    finished_at: float | None = None
    status_code: int | None = None
    error: OpenAIError | None = None
    cancelled: bool = False  # the client went away before the response was complete
    response_headers: dict[str, str] = field(default_factory=dict)  # from hooks, sent on success and error
    extra: dict[str, Any] = field(default_factory=dict)
    alone: bool = False  # set on finishing: no other request was being served (the audit may write inline)
    # Counting on dispatch: the serving code sets ``dispatch_can_count`` when the worker can report
    # the prompt's token count in its first message (one Generate call); a hook that would otherwise
    # ask for the count before dispatch may then set ``count_on_dispatch`` and act on ``after_count``.
    dispatch_can_count: bool = False
    count_on_dispatch: bool = False
    _token_counter: Callable[[], Awaitable[int]] | None = field(default=None, repr=False)
    _token_count: int | None = field(default=None, repr=False)
    _terminal: bool = field(default=False, repr=False)

    @staticmethod
    def new_id() -> str:
        return new_hex_id()

    def start_choices(self, count: int) -> None:
        """Prepares per-choice accumulators for ``count`` choices."""
        self.num_choices = count
        self.choice_text = [[] for _ in range(count)]
        self.finish_reasons = [None] * count

    def response_text(self, index: int) -> str:
        """The text generated so far for choice ``index``."""
        return "".join(self.choice_text[index])

    async def prompt_token_count(self) -> int:
        """The exact prompt token count (chat template applied), from the worker's Tokenize RPC.

        Asked of the worker on first use and cached; for requests with several prompts or inputs it
        is their sum. Raises OpenAIError (e.g. 503) when no worker can answer, ValueError when the
        endpoint has no prompt to count.
        """
        if self._token_count is None:
            if self._token_counter is None:
                raise ValueError(f"{self.endpoint} has no prompt to count")
            self._token_count = await self._token_counter()
        return self._token_count

    def set_token_counter(self, counter: Callable[[], Awaitable[int]]) -> None:
        self._token_counter = counter
        self._token_count = None

    def set_prompt_token_count(self, count: int) -> None:
        """The exact count, as a worker reported it on dispatch: later asks need no Tokenize call."""
        self._token_count = count

    @property
    def prompt_token_count_known(self) -> bool:
        return self._token_count is not None
