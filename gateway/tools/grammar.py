"""The Lark grammar (llguidance's dialect) that forces a tool call in the model's own format, with
arguments that match the function's parameters schema."""

from __future__ import annotations

import json
from typing import Any

HERMES, LLAMA3_JSON, MISTRAL = "hermes", "llama3_json", "mistral"
FORMATS = (HERMES, LLAMA3_JSON, MISTRAL)
# compact JSON, as the worker compiles response_format schemas
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_schema(name: str, parameters: dict[str, Any], arguments_key: str = "arguments") -> dict[str, Any]:
    """One call's JSON: ``{"name": <name>, "<arguments_key>": <matching parameters>}``."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def tool_call_grammar(fmt: str, functions: dict[str, dict[str, Any]], *, parallel: bool) -> str:
    """A grammar whose every sentence is one call (several when ``parallel``) of one of ``functions``
    (name -> parameters schema), written in ``fmt``."""
    key = "parameters" if fmt == LLAMA3_JSON else "arguments"
    calls = [call_schema(name, params, key) for name, params in functions.items()]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    body = json.dumps({**schema, "x-guidance": JSON_STYLE})
    if fmt == HERMES:
        call = 'call: "<tool_call>\\n" body "\\n</tool_call>"'
        start = 'start: call ("\\n" call)*' if parallel else "start: call"
        return f"{start}\n{call}\nbody: %json {body}\n"
    if fmt == MISTRAL:
        start = 'start: "[TOOL_CALLS][" body (", " body)* "]"' if parallel else 'start: "[TOOL_CALLS][" body "]"'
        return f"{start}\nbody: %json {body}\n"
    if fmt == LLAMA3_JSON:  # Llama 3.x writes one JSON call per message
        return f"start: body\nbody: %json {body}\n"
    raise ValueError(f"unknown tool call format {fmt!r}")
