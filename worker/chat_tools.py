"""Tools in the prompt: which tool-call format a chat template speaks, and how a conversation with
tools and tool calls is handed to it.

A template that renders tools itself (it reads ``tools``) gets them as transformers passes them. A
template that does not (small chat models such as SmolLM2) gets the Hermes convention spelled out in
a system message, and earlier calls and results written as Hermes text, so the model still sees the
tools and the grammar-constrained output has a prompt that matches it.
"""
from __future__ import annotations

import json
from typing import Any

HERMES, LLAMA3_JSON, MISTRAL = "hermes", "llama3_json", "mistral"


def tool_call_format(chat_template: str | None) -> str:
    """The format the template's model writes tool calls in (Hermes when the template has none)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA3_JSON
    return HERMES


def renders_tools(chat_template: str | None) -> bool:
    return "tools" in (chat_template or "")


def hermes_system_prompt(tools: list[dict[str, Any]]) -> str:
    signatures = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to assist with the user query. The function signatures are "
        f"within <tools></tools> XML tags:\n<tools>\n{signatures}\n</tools>\n\nFor each function call, return "
        "a JSON object with the function name and arguments within <tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def hermes_calls_text(calls: list[dict[str, Any]]) -> str:
    parts = []
    for call in calls:
        fn = call.get("function", call)
        arguments = fn.get("arguments") or {}
        if isinstance(arguments, str):  # OpenAI's JSON text (the worker's convert step parses it already)
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        body = json.dumps({"name": fn.get("name", ""), "arguments": arguments}, ensure_ascii=False)
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(parts)


def inline_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The conversation as plain-text messages for a template that knows no tools (Hermes convention)."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        m.pop("tool_call_id", None)
        content = m.get("content") or ""
        if calls:
            content = f"{content}\n{hermes_calls_text(calls)}" if content else hermes_calls_text(calls)
        if m["role"] == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        m["content"] = content
        out.append(m)
    if tools:
        prompt = hermes_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
