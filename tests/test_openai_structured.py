"""Structured output and tool calls end to end: the official ``openai`` client -> a real gateway
process -> a real worker process (the default model, on CPU). Sampled JSON always parses and matches
its schema, required and named tool choices always produce valid calls, streamed and non-streamed
outputs agree, and malformed or inconsistent requests are 400s before anything is queued."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from e2e_support import GENERATE_MODEL, ProcessStack, make_keys

MODEL = GENERATE_MODEL
ASK = [{"role": "user", "content": "Describe a patient record as JSON."}]
RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ward": {"enum": ["cardiology", "oncology", "radiology"]},
        "allergies": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
        "vitals": {
            "type": "object",
            "properties": {"pulse": {"type": "integer", "minimum": 30, "maximum": 200}, "code": {"type": "string", "pattern": "^[0-9]{3}$"}},
            "required": ["pulse", "code"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "ward", "allergies", "vitals"],
    "additionalProperties": False,
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
LOOKUP = {"type": "object", "properties": {"patient_id": {"type": "integer", "minimum": 1, "maximum": 9999}},
          "required": ["patient_id"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "lookup_patient", "description": "A patient by id", "parameters": LOOKUP}},
]
PARAMS = {"get_weather": WEATHER, "lookup_patient": LOOKUP}


def record_format(schema: dict = RECORD) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    procs = ProcessStack(tmp_path_factory.mktemp("structured"))
    try:
        (worker,) = procs.workers_ready(("generate", "generate"))
        gateway = procs.start_gateway({MODEL: [worker.address]})
        keys = make_keys(gateway.database_url, {"user": ("radiology", "user")})
        yield {"url": gateway.url, "key": keys["user"]}
    finally:
        procs.close()


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=stack["url"] + "/v1", api_key=stack["key"], max_retries=0, timeout=120) as c:
        yield c


def test_json_schema_samples_always_parse_and_validate(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, response_format=record_format(), n=6,
                                       temperature=1.0, max_tokens=90, seed=11)
    assert len(r.choices) == 6
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), RECORD)
    assert r.usage.completion_tokens > 0


def test_streamed_and_non_streamed_agree_at_temperature_zero(client):
    kw = dict(model=MODEL, messages=ASK, response_format=record_format(), temperature=0, max_tokens=100)
    whole = client.chat.completions.create(**kw).choices[0]
    text, reasons = "", []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert text == whole.message.content and reasons == [whole.finish_reason] == ["stop"]
    jsonschema.validate(json.loads(text), RECORD)


def test_json_object_always_parses_or_says_length(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A JSON object, please."}],
                                       response_format={"type": "json_object"}, n=4, temperature=1.0, max_tokens=60,
                                       seed=5)
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length"
    assert any(c.finish_reason == "stop" for c in r.choices)


def test_completions_take_a_json_schema_too(client):
    r = client.completions.create(model=MODEL, prompt="Patient record:", max_tokens=90, temperature=0.8, n=2,
                                  seed=2, extra_body={"response_format": record_format()})
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.text), RECORD)


def test_required_tool_choice_always_calls_with_valid_arguments(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
                                       tools=TOOLS, tool_choice="required", parallel_tool_calls=False, n=4,
                                       temperature=1.0, max_tokens=60, seed=4)
    for call in _one_valid_call_per_choice(r, PARAMS.__getitem__):
        assert call.type == "function" and call.id.startswith("call_")


def _one_valid_call_per_choice(response, schema_of) -> list:
    """Each choice's one tool call, after checking it ended in a call whose arguments validate
    against ``schema_of(function name)``."""
    calls = []
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls", choice.message.content
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))
        calls.append(call)
    return calls


def test_named_tool_choice_calls_that_function_streamed_as_openai_streams_it(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Find patient 42."}], tools=TOOLS,
              tool_choice={"type": "function", "function": {"name": "lookup_patient"}}, temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    calls = whole.message.tool_calls
    assert {c.function.name for c in calls} == {"lookup_patient"}
    for c in calls:
        jsonschema.validate(json.loads(c.function.arguments), LOOKUP)
    streamed: dict[int, dict] = {}
    reasons = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or ():
                entry = streamed.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["arguments"] += (d.function.arguments or "") if d.function else ""
            if ch.finish_reason:
                reasons.append(ch.finish_reason)
    assert reasons == ["tool_calls"]
    assert [(e["name"], e["arguments"]) for _, e in sorted(streamed.items())] == [
        (c.function.name, c.function.arguments) for c in calls]
    assert all(e["id"] for e in streamed.values())


def test_forced_calls_take_parameters_with_references_as_pydantic_writes_them(client):
    # openai.pydantic_function_tool and model_json_schema() put nested models under $defs
    move = {"type": "object", "$defs": {"Bed": {"type": "object", "properties": {
                "ward": {"enum": ["cardiology", "oncology"]}, "number": {"type": "integer", "minimum": 1, "maximum": 40}},
                "required": ["ward", "number"], "additionalProperties": False}},
            "properties": {"patient_id": {"type": "integer", "minimum": 1, "maximum": 9999},
                           "to": {"$ref": "#/$defs/Bed"}},
            "required": ["patient_id", "to"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "move_patient", "parameters": move}}]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Move patient 7 to bed 3."}],
                                       tools=tools, tool_choice="required", parallel_tool_calls=False, n=3,
                                       temperature=1.0, max_tokens=60, seed=8)
    assert len(_one_valid_call_per_choice(r, lambda _name: move)) == 3


def test_tool_history_is_accepted_and_auto_may_answer_in_text(client):
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 3}'},
    ]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="auto",
                                       temperature=0, max_tokens=16)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        for c in choice.message.tool_calls:
            assert c.function.name in PARAMS
    else:
        assert choice.message.content


def test_logit_bias_bans_and_forces_tokens(client):
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=1.0, logprobs=0)
    forced = client.completions.create(**kw, logit_bias={"42": 100}).choices[0].logprobs.tokens
    assert len(forced) == 3 and len(set(forced)) == 1  # token 42, three times
    other = client.completions.create(**kw, logit_bias={"42": -100, "43": 100}).choices[0].logprobs.tokens
    assert len(set(other)) == 1 and other[0] != forced[0]


def test_best_of_returns_the_candidate_with_the_highest_total_logprob(client):
    kw = dict(model=MODEL, prompt="A short poem about rain:", max_tokens=6, temperature=1.0, seed=21, logprobs=0)
    every = client.completions.create(n=3, **kw)  # the same seeds: the same three candidates
    totals = [sum(c.logprobs.token_logprobs) for c in every.choices]
    best = client.completions.create(n=1, best_of=3, **kw)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.choices[0].text == every.choices[totals.index(max(totals))].text
    assert best.usage.completion_tokens == every.usage.completion_tokens  # every candidate is billed


@pytest.mark.parametrize("fields, param", [
    ({"response_format": record_format({"type": "strnig"})}, "response_format"),  # not a JSON Schema
    ({"response_format": record_format({"type": "string", "pattern": "(?<=a)b"})}, "response_format"),  # unsupported
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}}, "response_format"),
    ({"response_format": {"type": "json"}}, "response_format"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"messages": [{"role": "tool", "content": "3"}]}, "messages"),
])
def test_malformed_and_inconsistent_requests_are_400s(client, fields, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    error = caught.value.body
    assert error["param"] == param, error
    assert error["message"]


def test_echo_returns_the_prompt_with_its_logprobs_streamed_or_not(client):
    kw = dict(model=MODEL, prompt="Rain falls on the hospital roof", max_tokens=3, temperature=0, echo=True, logprobs=1)
    whole = client.completions.create(**kw).choices[0]
    assert whole.text.startswith("Rain falls on the hospital roof") and len(whole.text) > len(kw["prompt"])
    lp = whole.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == whole.text and lp.text_offset[0] == 0
    text, tokens = "", []
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.text
            tokens += c.logprobs.tokens if c.logprobs else []
    assert text == whole.text and tokens == lp.tokens
    ids = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=1, temperature=0, echo=True)
    assert len(ids.choices[0].text) > 1  # a tokenized prompt is echoed as its tokens' text
