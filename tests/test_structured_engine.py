"""Grammar-constrained decoding in the engine on the default model: a finished grammar stops the
choice, the budget still says "length", grammars are cached, malformed schemas are refused before
queueing, and asynchronous scheduling keeps working beside it. (Sampling many outputs at temperature
1 against schemas is tested end to end, through the openai SDK, in test_openai_structured.py.)"""
from __future__ import annotations

import json

import pytest

from worker import LLM, SamplingParams
from worker.errors import InvalidRequestError
from worker.structured.spec import GrammarSpec

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def llm(default_model_dir):
    # async scheduling forced on: grammar and penalty batches stay asynchronous (sampling deferred)
    return LLM(model=default_model_dir, device="cpu", max_model_len=512, async_scheduling=True)


def schema_params(schema: dict, **kw) -> SamplingParams:
    return SamplingParams(structured=GrammarSpec("json_schema", json.dumps(schema)), **kw)


def test_budget_exhaustion_is_length_not_stop(llm):
    out = llm.chat(ASK, schema_params(PERSON, temperature=0, max_tokens=5))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    with pytest.raises(ValueError):
        json.loads(out.text)


def test_grammar_and_plain_requests_share_a_batch(llm):
    plain = SamplingParams(temperature=0, max_tokens=6)
    alone = llm.generate("The capital of France is", plain)[0].outputs[0].token_ids
    params = [plain, schema_params({"enum": ["yes", "no"]}, temperature=0, max_tokens=10)]
    mixed = llm.generate(["The capital of France is", "Is water wet? Answer:"], params)
    assert mixed[0].outputs[0].token_ids == alone
    assert json.loads(mixed[1].outputs[0].text) in ("yes", "no")
    assert mixed[1].outputs[0].finish_reason == "stop"


def test_grammar_and_penalty_batches_stay_asynchronous_and_agree_with_synchronous(llm, default_model_dir):
    """Step N+1's forward is launched before step N is collected; only its sampling waits for the
    grammar's mask (and the penalty counts) to take step N's token. Tokens are those of a synchronous
    engine: greedy, seeded sampling, penalties and a grammar in one batch."""
    prompts = ["Describe a person as JSON.", "The capital of France is", "Count: one, two,", "Colours:"]
    small = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "age": {"type": "integer", "minimum": 0, "maximum": 120}},
             "required": ["color", "age"], "additionalProperties": False}
    params = [schema_params(small, temperature=0, max_tokens=40),
              SamplingParams(temperature=0, max_tokens=12),
              SamplingParams(temperature=0.8, seed=7, max_tokens=12, frequency_penalty=0.5),
              schema_params({"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 4},
                            temperature=1.0, seed=3, max_tokens=30, presence_penalty=0.3)]
    deferred = []
    runner = llm.engine.runner
    original = runner.launch

    def launch(sched, defer_sampling=False):
        handle = original(sched, defer_sampling)
        deferred.append(handle is not None and handle.logits is not None)
        return handle

    runner.launch = launch
    try:
        asynchronous = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    finally:
        del runner.launch
    synchronous = LLM(model=default_model_dir, device="cpu", max_model_len=512, async_scheduling=False)
    assert [o.outputs[0].token_ids for o in synchronous.generate(prompts, params)] == asynchronous
    assert sum(deferred) >= 10, "sampling was not deferred behind the in-flight step"
    assert json.loads(llm.engine.tokenizer.decode(asynchronous[0]))["color"] in ("red", "green", "blue")


def test_compiled_grammars_are_cached_by_schema(llm):
    grammars = llm.engine.grammars
    schema = {"type": "object", "properties": {"cached": {"type": "boolean"}}, "required": ["cached"]}
    before = grammars.cache_size
    prototypes = {id(llm.engine.prepare_request("x", schema_params(schema)).params._grammar) for _ in range(3)}
    assert len(prototypes) == 1 and grammars.cache_size == before + 1
    llm.engine.prepare_request("x", schema_params({**schema, "required": []}))
    assert grammars.cache_size == before + 2


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"type": "strnig"}, "strnig"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look"),
        ({"$ref": "#/definitions/missing"}, "missing"),
    ],
)
def test_malformed_schemas_are_refused_naming_the_problem(llm, schema, words):
    with pytest.raises(InvalidRequestError, match=words):
        llm.engine.prepare_request("x", schema_params(schema))
    assert not llm.engine.has_unfinished_requests()


def test_inconsistent_combination_is_refused():
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(min_tokens=3, structured=GrammarSpec("json_object"))


@pytest.mark.parametrize("cut", [{"stop": [", "]}, {"stop_token_ids": [28]}])
def test_stop_strings_and_tokens_apply_beside_a_grammar_as_at_openai(cut):
    # OpenAI and vLLM accept them with a JSON format: one inside the JSON ends the output there, as
    # the client asked, with finish_reason "stop"
    params = SamplingParams(structured=GrammarSpec("json_object"), **cut)
    assert params.stop == cut.get("stop", []) and params.stop_token_ids == cut.get("stop_token_ids", [])


def test_batch_lines_keep_their_response_format_and_refuse_tools():
    # the batch runner builds SamplingParams from OpenAI bodies: a JSON format must not be dropped
    from worker.openai_batch import CHAT_URL, COMPLETIONS_URL, params_from_body

    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}
    assert params_from_body(CHAT_URL, {"response_format": fmt}).structured == GrammarSpec("json_schema", json.dumps(PERSON))
    json_object = params_from_body(COMPLETIONS_URL, {"response_format": {"type": "json_object"}})
    assert json_object.structured == GrammarSpec("json_object")
    assert params_from_body(CHAT_URL, {"response_format": {"type": "text"}}).structured is None
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert params_from_body(CHAT_URL, {"tools": tools, "tool_choice": "none"}).structured is None
    for body, words in (({"response_format": {"type": "xml"}}, "response_format"),
                        ({"response_format": "json_object"}, "response_format"),
                        ({"response_format": {"type": "json_schema"}}, "json_schema"),
                        ({"tools": tools}, "tools"),
                        ({"tools": tools, "tool_choice": "required"}, "tools")):
        with pytest.raises(InvalidRequestError, match=words):
            params_from_body(CHAT_URL, body)


def test_logit_bias_steers_and_bans_tokens(llm):
    prompt = "The capital of France is"
    greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1))[0].outputs[0].token_ids[0]
    banned = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1, logit_bias={greedy: -100}))
    assert banned[0].outputs[0].token_ids[0] != greedy
    forced = llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=4, logit_bias={42: 100}))
    assert forced[0].outputs[0].token_ids == [42] * 4
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        llm.engine.prepare_request("x", SamplingParams(logit_bias={10**7: 1.0}))


def test_a_worker_without_the_grammar_library_imports_and_refuses_clearly(llm, monkeypatch):
    import subprocess
    import sys

    code = ("import sys; sys.modules['llguidance'] = None; import worker.server.servicer, worker.llm; "
            "from worker.structured.compiler import library_available; assert not library_available()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    monkeypatch.setattr("worker.structured.compiler.library_available", lambda: False)
    other = {"type": "object", "properties": {"never": {"type": "null"}}}  # not cached yet
    with pytest.raises(InvalidRequestError, match="llguidance") as caught:
        llm.engine.prepare_request("x", schema_params(other))
    assert caught.value.code == "structured_output_unavailable"


def test_prompt_logprobs_are_the_same_chunked_and_cached(llm, default_model_dir):
    prompt = "The capital of France is Paris. The capital of Italy is"
    whole = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2, n=2))[0]
    lps = whole.prompt_logprobs
    assert len(lps) == len(whole.prompt_token_ids) and lps[0].logprob != lps[0].logprob  # NaN: nothing before it
    assert [lp.token_id for lp in lps] == whole.prompt_token_ids
    assert all(len(lp.top) == 2 and lp.top[0].logprob >= lp.logprob - 1e-5 for lp in lps[1:])
    chunked = LLM(model=default_model_dir, device="cpu", max_model_len=512, max_num_batched_tokens=8)
    chunked.generate(prompt, SamplingParams(temperature=0, max_tokens=1))  # its blocks now in the prefix cache
    again = chunked.generate(prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))[0]
    assert again.prompt_logprobs[1:] and all(
        abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(lps[1:], again.prompt_logprobs[1:], strict=True))
