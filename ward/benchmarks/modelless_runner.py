"""A stand-in for the model runner that drives the scheduler with no model: every scheduled request whose
prompt is done gets token 1. For measuring and testing scheduling policy alone."""
from __future__ import annotations

from worker.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput


class ModellessRunner:
    """Samples token 1 for every request that reached the end of its tokens."""

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}
        self.computed: dict[str, int] = {}

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for new in out.new_reqs:
            self.tokens[new.req_id] = len(new.token_ids)
            self.computed[new.req_id] = new.num_computed_tokens
        for c in out.cached_reqs:
            self.computed[c.req_id] = c.num_computed_tokens
        sampled = {}
        for rid, n in out.num_scheduled_tokens.items():
            self.computed[rid] += n
            if self.computed[rid] >= self.tokens[rid]:
                self.tokens[rid] += 1
                sampled[rid] = [1]
        return ModelRunnerOutput(sampled)
