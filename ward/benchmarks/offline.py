"""Offline engine workloads, the same ones (and the same random prompts) as the vLLM peer's
script: latency (batch 8, 32 in / 128 out), batch-1 decode, 1,000 x 256/256, 1,000 x 1,024/128,
and the mixed-length run (256 requests, in and out uniform in 100..1,024). Greedy, EOS ignored."""
from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import torch

from ward.benchmarks.models import prompt_id_limit
from worker import LLM, SamplingParams


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class OfflineBench:
    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.rng = random.Random(0)
        # token ids as the peer's script draws them, within the vocabulary (Mixtral's has 32,000)
        self.top_id = prompt_id_limit(llm.engine.spec.vocab_size)

    def prompts(self, n: int, length: int) -> list[dict]:
        return [{"prompt_token_ids": [self.rng.randrange(1000, self.top_id) for _ in range(length)]} for _ in range(n)]

    @staticmethod
    def params(n_out: int) -> SamplingParams:
        return SamplingParams(max_tokens=n_out, min_tokens=n_out, ignore_eos=True, detokenize=False, temperature=0.0)

    def run(self, prompts, params) -> tuple[float, int]:
        _sync()
        t = time.perf_counter()
        outs = self.llm.generate(prompts, params)
        _sync()
        return time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outs)

    def warmup(self) -> None:
        self.run(self.prompts(8, 32), self.params(16))

    def latency(self) -> dict:
        times = [self.run(self.prompts(8, 32), self.params(128))[0] for _ in range(5)]
        return {"mean_ms": round(1000 * sum(times) / len(times), 1), "runs_ms": [round(1000 * t, 1) for t in times]}

    def batch1_decode(self) -> dict:
        p1 = self.prompts(1, 512)
        a = min(self.run(p1, self.params(1))[0] for _ in range(3))
        b = min(self.run(p1, self.params(257))[0] for _ in range(3))
        return {"tok_s": round(256 / (b - a), 1), "step_ms": round(1000 * (b - a) / 256, 3)}

    def throughput(self, n: int, n_in: int, n_out: int) -> dict:
        self.llm.engine.reset_counters()
        dt, ntok = self.run(self.prompts(n, n_in), self.params(n_out))
        s = self.llm.engine.stats()
        return {"req_s": round(n / dt, 2), "out_tok_s": round(ntok / dt, 1), "seconds": round(dt, 2),
                "kv_waste_time_weighted": round(s.kv_waste_time_weighted, 4), "preemptions": s.num_preemptions,
                "reserve_waits": s.num_reserve_waits}

    def mixed(self) -> dict:
        rng2 = random.Random(1)
        prompts, params = [], []
        for _ in range(256):
            prompts.append({"prompt_token_ids": [rng2.randrange(1000, self.top_id) for _ in range(rng2.randint(100, 1024))]})
            k = rng2.randint(100, 1024)
            params.append(SamplingParams(max_tokens=k, min_tokens=k, ignore_eos=True, detokenize=False, temperature=0.0))
        self.llm.engine.reset_counters()
        dt, ntok = self.run(prompts, params)
        s = self.llm.engine.stats()
        return {"out_tok_s": round(ntok / dt, 1), "seconds": round(dt, 2), "out_tokens": ntok,
                "kv_waste_time_weighted": round(s.kv_waste_time_weighted, 4), "preemptions": s.num_preemptions,
                "reserve_waits": s.num_reserve_waits}

    def structured(self) -> dict:
        """Output tokens/s with a JSON schema on every request vs without, at batch 1 and 64 (the
        model directory's tokenizer builds the grammar; greedy, the same prompts)."""
        import json

        from ward.benchmarks import structured_workload as wl
        from worker.structured.spec import GrammarSpec

        tok = self.llm.get_tokenizer()
        if tok is None:
            raise ValueError("the structured workload needs a tokenizer in the model directory (--tokenizer)")
        spec = GrammarSpec("json_schema", json.dumps(wl.SCHEMA))
        out = {"tokenizer_size": len(tok)}
        for batch in wl.BATCHES:
            prompts = [{"prompt_token_ids": p} for p in wl.prompts(batch, len(tok))]
            base = dict(max_tokens=wl.OUTPUT_TOKENS, ignore_eos=True, detokenize=False, temperature=0.0)
            figures = {}
            for name, params in (("plain", SamplingParams(**base)), ("schema", SamplingParams(**base, structured=spec))):
                self.run(prompts, params)  # warm: compiled grammar cached, graphs captured
                best = min((self.run(prompts, params) for _ in range(2)), key=lambda r: r[0])
                figures[name] = best[1] / best[0]
            out[f"batch{batch}"] = wl.summary(figures["plain"], figures["schema"])
        return out

    @contextlib.contextmanager
    def steady_decode(self, batch: int, prompt: int, steps: int) -> Iterator[list[str]]:
        """``batch`` requests past their prefill and a few decode steps, with room for ``steps`` more;
        yields their ids and aborts them afterwards."""
        engine = self.llm.engine
        ids = [f"busy{batch}-{i}" for i in range(batch)]
        for rid, p in zip(ids, self.prompts(batch, prompt)):
            engine.add_request(rid, p, self.params(steps + 40))
        while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.requests.values()) or \
                engine.scheduler.waiting:
            engine.step()
        for _ in range(5):
            engine.step()
        _sync()
        try:
            yield ids
        finally:
            engine.abort_request(ids)

    def gpu_busy(self, batch: int = 64, prompt: int = 256, steps: int = 60) -> dict:
        """Kernel time / wall time over steady decode steps (torch profiler, CUDA activity)."""
        engine = self.llm.engine
        from torch.profiler import ProfilerActivity, profile

        with self.steady_decode(batch, prompt, steps), \
                profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                engine.step()
            _sync()
            wall = time.perf_counter() - t
        kernel_us = sum(e.device_time for e in prof.events() if e.device_type.name == "CUDA")
        return {"busy_fraction": round(kernel_us / 1e6 / wall, 4), "step_ms": round(1000 * wall / steps, 3),
                "batch": batch}
