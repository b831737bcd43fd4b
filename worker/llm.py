"""Offline API mirroring vLLM's: ``LLM(model=...).generate(prompts, params)`` and ``.chat(...)``."""
from __future__ import annotations

import itertools
from typing import Sequence

from worker.config import EngineConfig
from worker.engine.llm_engine import LLMEngine
from worker.outputs import RequestOutput
from worker.sampling_params import SamplingParams
from worker.tokenizer import PromptInput


class LLM:
    def __init__(self, model: str = "smollm2-135m-instruct", **engine_args) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer.hf if self.engine.tokenizer else None

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion, batched together; outputs come back in input order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        return self._run(list(prompts), sampling_params, use_tqdm, priority)

    def chat(
        self,
        messages: list[dict] | Sequence[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """One conversation (a list of messages) or several; the model's chat template is applied."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [{"messages": c, "add_generation_prompt": add_generation_prompt} for c in conversations]
        return self._run(prompts, sampling_params, use_tqdm, None)

    def _run(self, prompts, sampling_params, use_tqdm, priority) -> list[RequestOutput]:
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        ids = [f"offline-{next(self._ids)}" for _ in prompts]
        for i, (rid, prompt, p) in enumerate(zip(ids, prompts, params)):
            try:
                self.engine.add_request(rid, prompt, p, priority=priority[i] if priority else 0)
            except Exception:
                self.engine.abort_request(ids[:i])
                raise
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="generating", unit="req")
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    results[out.request_id] = out
                    if bar is not None:
                        bar.update()
        if bar is not None:
            bar.close()
        return [results[rid] for rid in ids]
