"""The Lark grammar (llguidance's dialect) that forces a tool call in the model's own format, with
arguments that match the function's parameters schema."""

from __future__ import annotations

import json
from typing import Any

HERMES, LLAMA3_JSON, MISTRAL = "hermes", "llama3_json", "mistral"
FORMATS = (HERMES, LLAMA3_JSON, MISTRAL)
# compact JSON, as the worker compiles response_format schemas
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str) -> str:
    """``text`` as a Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def call_rules(index: int, name: str, parameters: dict[str, Any], arguments_key: str = "arguments") -> str:
    """Rule ``call_<index>``: one call's JSON, ``{"name": <name>, "<arguments_key>": <matching parameters>}``.

    The parameters are the root of their own %json schema, so their references (``#/$defs/...``, as
    pydantic writes them, or ``#/properties/...``) resolve as they do for the caller. They are held
    to an object: a schema without a type would let the model write ``5`` or a JSON string, which is
    no call (and a string's decoded text was never checked against the schema)."""
    head = _literal(f'{{"name": {json.dumps(name)}, "{arguments_key}": ')
    arguments = json.dumps({**parameters, "type": "object", "x-guidance": JSON_STYLE})
    return f'call_{index}: {head} args_{index} "}}"\nargs_{index}: %json {arguments}\n'


def tool_call_grammar(fmt: str, functions: dict[str, dict[str, Any]], *, parallel: bool) -> str:
    """A grammar whose every sentence is one call (several when ``parallel``) of one of ``functions``
    (name -> parameters schema), written in ``fmt``."""
    key = "parameters" if fmt == LLAMA3_JSON else "arguments"
    rules = "".join(call_rules(i, name, params, key) for i, (name, params) in enumerate(functions.items()))
    body = "body: " + " | ".join(f"call_{i}" for i in range(len(functions)))
    if fmt == HERMES:
        call = 'call: "<tool_call>\\n" body "\\n</tool_call>"'
        start = 'start: call ("\\n" call)*' if parallel else "start: call"
        return f"{start}\n{call}\n{body}\n{rules}"
    if fmt == MISTRAL:
        start = 'start: "[TOOL_CALLS][" body (", " body)* "]"' if parallel else 'start: "[TOOL_CALLS][" body "]"'
        return f"{start}\n{body}\n{rules}"
    if fmt == LLAMA3_JSON:  # Llama 3.x writes one JSON call per message
        return f"start: body\n{body}\n{rules}"
    raise ValueError(f"unknown tool call format {fmt!r}")
