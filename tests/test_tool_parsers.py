"""Tool-call formats as pure functions: parsing Hermes/Qwen, Llama 3.x JSON and Mistral output into
calls, streaming that never sends half a call, the forcing grammars, and what the audit keeps."""
from __future__ import annotations

import json

import pytest

from gateway.audit.capture import structure_params
from gateway.tools.grammar import HERMES, LLAMA3_JSON, MISTRAL, tool_call_grammar
from gateway.tools.parsers import parse_hermes, parse_llama3_json, parse_mistral, parse_tool_calls
from gateway.tools.stream import ToolCallStream
from worker.chat_tools import inline_tools, tool_call_format


def calls_of(parsed):
    return [(c.name, json.loads(c.arguments)) for c in parsed[1]]


def test_hermes_calls_and_the_text_around_them():
    text = 'Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    content, calls = parse_hermes(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("text", [
    "plain answer",
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
    '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',  # arguments not an object
    '<tool_call>{"name": "a", "arguments": {}}',  # never closed
])
def test_hermes_never_invents_a_call(text):
    assert parse_hermes(text) == (text, [])


def test_hermes_arguments_may_hold_the_tags_themselves():
    # the grammar lets a string argument hold any text: a call ends where its JSON ends
    args = {"html": "a</tool_call>b", "note": "<tool_call>\n"}
    one = f'<tool_call>\n{json.dumps({"name": "f", "arguments": args})}\n</tool_call>'
    assert parse_hermes(one)[0] is None and calls_of(parse_hermes(one)) == [("f", args)]
    two = f'Sure. {one}\n<tool_call>{{"name": "g", "arguments": {{}}}}</tool_call> done'
    assert parse_hermes(two)[0] == "Sure. \n done" and calls_of(parse_hermes(two)) == [("f", args), ("g", {})]
    stream = ToolCallStream(HERMES, forced=True)
    assert feed_all(stream, [one[:20], one[20:]]) == ""
    assert [(c.name, json.loads(c.arguments)) for c in stream.finish()[1]] == [("f", args)]


def test_hermes_keeps_a_call_cut_off_in_free_text_as_content():
    text = 'A <tool_call>{"name": "f", "arguments": {}}</tool_call> then <tool_call>{"name": "g"'
    content, calls = parse_hermes(text)
    assert content == 'A  then <tool_call>{"name": "g"' and [c.name for c in calls] == ["f"]


def test_llama3_json_one_or_several_calls():
    assert calls_of(parse_llama3_json('{"name": "f", "parameters": {"q": "x"}}')) == [("f", {"q": "x"})]
    two = parse_llama3_json('<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"n": 2}}')
    assert two[0] is None and calls_of(two) == [("f", {}), ("g", {"n": 2})]
    assert parse_llama3_json("The answer is {x}") == ("The answer is {x}", [])
    assert parse_llama3_json('{"name": "f", "parameters": {}} trailing words')[1] == []


def test_mistral_calls_after_content():
    content, calls = parse_mistral('Sure. [TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": "{\\"b\\": 2}"}]')
    assert content == "Sure."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {"b": 2})]
    assert parse_mistral("[TOOL_CALLS][{]")[1] == []
    assert parse_tool_calls("unknown-format", '<tool_call>{"name": "f", "arguments": {}}</tool_call>')[1]


def feed_all(stream: ToolCallStream, pieces: list[str]) -> str:
    return "".join(stream.feed(p) for p in pieces)


def test_stream_sends_content_but_holds_a_call_until_it_is_whole():
    s = ToolCallStream(HERMES, forced=False)
    sent = feed_all(s, ["Hello", " there <tool", "_call>\n{\"name\": ", "\"f\", \"arguments\": {}}\n</tool_call>"])
    assert sent == "Hello there "
    rest, calls = s.finish()
    assert rest == "" and [c.name for c in calls] == ["f"]


def test_stream_releases_a_false_alarm_marker_as_content():
    s = ToolCallStream(HERMES, forced=False)
    assert feed_all(s, ["a <tool", "box> b"]) == "a <toolbox> b"
    assert s.finish() == ("", [])
    s = ToolCallStream(HERMES, forced=False)
    assert feed_all(s, ["ends with <to"]) == "ends with "
    assert s.finish() == ("<to", [])


def test_a_choice_cut_by_its_budget_gives_its_calls_back_as_text():
    s = ToolCallStream(HERMES, forced=True)
    text = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na'
    assert s.feed(text) == ""
    assert s.finish(complete=False) == (text, [])


def test_forced_stream_holds_everything_and_gives_back_a_broken_call_as_text():
    s = ToolCallStream(HERMES, forced=True)
    assert feed_all(s, ['<tool_call>\n{"name": "f", "argu']) == ""
    assert s.finish() == ('<tool_call>\n{"name": "f", "argu', [])
    s = ToolCallStream(LLAMA3_JSON, forced=False)
    assert feed_all(s, [" ", '{"name": "f", ', '"parameters": {}}']) == ""
    assert [c.name for c in s.finish()[1]] == ["f"]


@pytest.mark.parametrize("fmt, sentence", [
    (HERMES, '<tool_call>\n{"name": "f", "arguments": {"n": 3}}\n</tool_call>'),
    (LLAMA3_JSON, '{"name": "f", "parameters": {"n": 3}}'),
    (MISTRAL, '[TOOL_CALLS][{"name": "f", "arguments": {"n": 3}}]'),
])
def test_each_grammar_accepts_its_own_format_and_parses_back(fmt, sentence):
    llguidance = pytest.importorskip("llguidance")
    params = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    grammar = tool_call_grammar(fmt, {"f": params, "g": {"type": "object"}}, parallel=True)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    assert not is_error, messages
    assert calls_of(parse_tool_calls(fmt, sentence)) == [("f", {"n": 3})]


@pytest.fixture(scope="module")
def accepts(default_model_dir):
    """Whether a grammar takes ``text`` whole, through the default model's tokenizer (as the worker would)."""
    llguidance = pytest.importorskip("llguidance")
    import llguidance.hf
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer = llguidance.hf.from_tokenizer(hf)

    def check(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        ids = hf.encode(text, add_special_tokens=False)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    return check


POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}
# as pydantic writes a model's schema: references into the parameters' own root
WITH_REFS = {"type": "object", "$defs": {"Point": POINT},
             "properties": {"at": {"$ref": "#/$defs/Point"}, "again": {"$ref": "#/properties/at"}},
             "required": ["at"], "additionalProperties": False}


@pytest.mark.parametrize("fmt, call", [
    (HERMES, '<tool_call>\n{"name": "f", "arguments": %s}\n</tool_call>'),
    (LLAMA3_JSON, '{"name": "f", "parameters": %s}'),
    (MISTRAL, '[TOOL_CALLS][{"name": "f", "arguments": %s}]'),
])
def test_forced_call_grammars_resolve_references_within_the_parameters(accepts, fmt, call):
    grammar = tool_call_grammar(fmt, {"f": WITH_REFS, "g": {"type": "object"}}, parallel=False)
    assert accepts(grammar, call % '{"at": {"x": 1}, "again": {"x": 2}}')
    assert not accepts(grammar, call % '{"at": {"x": "1"}}')
    assert not accepts(grammar, call % '{"again": {"x": 2}}')


@pytest.mark.parametrize("params", [{}, {"properties": {"a": {"type": "integer"}}}, {"type": ["object", "null"]}])
def test_forced_call_arguments_are_always_an_object(accepts, params):
    # JSON Schema lets a typeless schema match any value; the parsers (and OpenAI) take only an object
    grammar = tool_call_grammar(HERMES, {"f": params}, parallel=True)
    call = '<tool_call>\n{"name": "f", "arguments": %s}\n</tool_call>'
    assert accepts(grammar, call % '{"a": 1}')
    for arguments in ("5", "null", '"x"', '"{\\"a\\": \\"not an integer\\"}"'):
        assert not accepts(grammar, call % arguments), arguments


def test_template_formats_and_the_fallback_for_templates_without_tools():
    assert tool_call_format("{{ '[TOOL_CALLS]' }}") == MISTRAL
    assert tool_call_format("<|python_tag|>{{ x }}") == LLAMA3_JSON
    assert tool_call_format("{% for m in messages %}<tool_call>{% endfor %}") == HERMES
    assert tool_call_format(None) == HERMES
    msgs = inline_tools([{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"function": {"name": "f", "arguments": '{"a": 1}'}}]},
                         {"role": "tool", "content": "3", "tool_call_id": "c"}],
                        [{"type": "function", "function": {"name": "f"}}])
    assert msgs[0]["role"] == "system" and "<tools>" in msgs[0]["content"] and '"name": "f"' in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert msgs[3] == {"role": "tool", "content": "<tool_response>\n3\n</tool_response>"}


def test_audit_metadata_keeps_the_shape_not_the_schema():
    params = {
        "temperature": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "rec", "schema": {"secret": "x"}}},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"p": 1}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    }
    summary = structure_params(params)
    assert summary["response_format"]["name"] == "rec" and len(summary["response_format"]["schema_sha256"]) == 64
    assert summary["tools"] == ["lookup"] and summary["tool_choice"] == {"function": "lookup"}
    assert "secret" not in json.dumps(summary)
