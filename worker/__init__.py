"""Ward's inference worker: a paged-KV, continuous-batching engine and its gRPC server.

    from worker import LLM, SamplingParams
    llm = LLM(model="smollm2-135m-instruct")
    print(llm.generate(["Hello"], SamplingParams(max_tokens=16))[0].outputs[0].text)
"""
import os

# Models come from local disk only: never let a library reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from worker.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams", "EngineConfig", "LLMEngine"]


def __getattr__(name: str):
    # torch-heavy names load on first use, so `import worker` stays cheap for tools.
    if name == "LLM":
        from worker.llm import LLM

        return LLM
    if name == "LLMEngine":
        from worker.engine.llm_engine import LLMEngine

        return LLMEngine
    if name == "EngineConfig":
        from worker.config import EngineConfig

        return EngineConfig
    raise AttributeError(name)
