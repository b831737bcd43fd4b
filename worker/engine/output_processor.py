"""Turns the scheduler's per-step token outputs into request outputs: detokenized text deltas,
stop strings, logprobs with their token strings, and n > 1 choices gathered per request."""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.engine.detokenizer import IncrementalDetokenizer, token_bytes
from worker.engine.request import Request
from worker.engine.scheduler_output import EngineCoreOutput, SampledLogprobs
from worker.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob, TopLogprob


@dataclass
class ChoiceState:
    parent: "ParentState"
    index: int
    output: CompletionOutput
    detok: IncrementalDetokenizer | None
    request: Request


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    choices: list[ChoiceState] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_logprobs_new: bool = False  # not yet in a snapshot

    @property
    def finished(self) -> bool:
        return all(c.output.finished for c in self.choices)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer  # tokenizers.Tokenizer, or None when the model has none
        self.parents: dict[str, ParentState] = {}
        self.choices: dict[str, ChoiceState] = {}  # child request id -> choice
        self._token_text: dict[int, tuple[str, bytes]] = {}  # token id -> its text alone, its bytes

    def add(self, parent: ParentState, index: int, request: Request) -> None:
        p = request.sampling_params
        detok = None
        if self._tok is not None and p.detokenize:
            detok = IncrementalDetokenizer(
                self._tok, parent.prompt_token_ids, p.stop, p.include_stop_str_in_output, p.skip_special_tokens
            )
        out = CompletionOutput(index=index, logprobs=[] if p.logprobs is not None else None)
        if p.logprobs is not None:
            out.cumulative_logprob = 0.0
        choice = ChoiceState(parent, index, out, detok, request)
        parent.choices.append(choice)
        self.parents[parent.request_id] = parent
        self.choices[request.request_id] = choice

    def token_text(self, token_id: int) -> tuple[str, bytes]:
        """The token's text decoded alone, and the bytes it stands for."""
        known = self._token_text.get(token_id)
        if known is None:
            if self._tok is None:
                known = ("", b"")
            else:
                text = self._tok.decode([token_id], skip_special_tokens=False)
                known = (text, token_bytes(self._tok, token_id, text))
            self._token_text[token_id] = known
        return known

    def _logprob(self, token_id: int, logprob: float, top: list[TopLogprob]) -> TokenLogprob:
        text, raw = self.token_text(token_id)
        return TokenLogprob(token_id, text, logprob, top, token_bytes=raw)

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text, raw = self.token_text(token_id)
        return TopLogprob(token_id, text, logprob, token_bytes=raw)

    def _logprobs(self, token_ids: list[int], lps: list[SampledLogprobs]) -> list[TokenLogprob]:
        return [
            self._logprob(t, lp.token_logprob, [self._top(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs)])
            for t, lp in zip(token_ids, lps)
        ]

    def process(self, core_outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns the changed request outputs, and child ids that hit a stop string (to finish)."""
        changed: dict[str, ParentState] = {}
        stopped: list[str] = []
        for co in core_outputs:
            choice = self.choices.get(co.req_id)
            if choice is None or choice.output.finished:
                continue
            out = choice.output
            if co.prompt_logprobs is not None:
                ids = choice.parent.prompt_token_ids
                first = self._logprob(ids[0], float("nan"), [])  # nothing before it
                choice.parent.prompt_logprobs = [first] + self._logprobs(ids[1:], co.prompt_logprobs)
                choice.parent.prompt_logprobs_new = True
            out.token_ids.extend(co.new_token_ids)
            out.token_ids_delta.extend(co.new_token_ids)
            if co.new_logprobs is not None and out.logprobs is not None:
                new = self._logprobs(co.new_token_ids, co.new_logprobs)
                out.logprobs.extend(new)
                out.logprobs_delta = (out.logprobs_delta or []) + new
                out.cumulative_logprob += sum(x.logprob for x in new)
            finish, stop_reason = co.finish_reason, co.stop_reason
            if choice.detok is not None:
                hit = choice.detok.add_tokens(co.new_token_ids)
                if hit is not None and finish is None:
                    finish, stop_reason = "stop", hit
                    stopped.append(co.req_id)
            if finish is not None:
                out.finish_reason, out.stop_reason = finish, stop_reason
            if choice.detok is not None:
                out.text_delta += choice.detok.take_delta(out.finished)
                out.text = choice.detok.sent_text
            changed[choice.parent.request_id] = choice.parent
        return [self.snapshot(p) for p in changed.values()], stopped

    def finish_aborted(self, child_ids: list[str]) -> list[RequestOutput]:
        changed = {}
        for cid in child_ids:
            choice = self.choices.get(cid)
            if choice is not None and not choice.output.finished:
                choice.output.finish_reason = "abort"
                changed[choice.parent.request_id] = choice.parent
        return [self.snapshot(p) for p in changed.values()]

    def snapshot(self, parent: ParentState) -> RequestOutput:
        """The request's output now, and resets the per-step deltas. While a request runs only the
        deltas are filled (copying whole histories every step would cost O(length) per token);
        the final output carries everything. Finished requests are dropped."""
        finished = parent.finished
        outs = []
        for c in parent.choices:
            o = c.output
            if finished:
                outs.append(CompletionOutput(
                    index=o.index, text=o.text, token_ids=o.token_ids, finish_reason=o.finish_reason,
                    stop_reason=o.stop_reason, logprobs=o.logprobs, cumulative_logprob=o.cumulative_logprob,
                    text_delta=o.text_delta, token_ids_delta=o.token_ids_delta, logprobs_delta=o.logprobs_delta,
                ))
            else:
                outs.append(CompletionOutput(
                    index=o.index, finish_reason=o.finish_reason, stop_reason=o.stop_reason,
                    text_delta=o.text_delta, token_ids_delta=o.token_ids_delta, logprobs_delta=o.logprobs_delta,
                ))
            o.text_delta, o.token_ids_delta, o.logprobs_delta = "", [], None
        first = parent.choices[0].request
        metrics = None
        if finished:
            t = first.timings
            metrics = RequestMetrics(
                arrival_time=t.arrival, first_scheduled_time=t.first_scheduled, first_token_time=t.first_token,
                last_token_time=t.last_token, time_to_first_token=t.ttft, inter_token_latencies=t.inter_token,
                num_preemptions=sum(c.request.num_preemptions for c in parent.choices),
            )
        result = RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids, outs, finished,
                               max(first.num_cached_tokens, 0), metrics, parent.prompt_logprobs,
                               parent.prompt_logprobs if parent.prompt_logprobs_new else None)
        parent.prompt_logprobs_new = False
        if finished:
            self.parents.pop(parent.request_id, None)
            for c in parent.choices:
                self.choices.pop(c.request.request_id, None)
        return result
