"""Pure parsers: a model's text -> (content, tool calls), one per tool-call format.

Text that does not form a complete, well-formed call stays content: a parser never invents a call.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from gateway.tools.grammar import HERMES, LLAMA3_JSON, MISTRAL


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out = {"index": index, **out}
        return out


def _call(obj: Any, arguments_keys: tuple[str, ...]) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    for key in arguments_keys:
        if key in obj:
            args = obj[key]
            if isinstance(args, str):  # some models write the arguments as JSON text
                try:
                    args = json.loads(args)
                except ValueError:
                    return None
            if not isinstance(args, dict):
                return None
            return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))
    return None


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parse_hermes(text: str) -> tuple[str | None, list[ParsedCall]]:
    """Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number of them.

    A call ends where its JSON ends, not at the first closing tag: a string argument may hold the
    tags themselves. An opening tag never closed is left as content."""
    decoder = json.JSONDecoder()
    calls, content, pos = [], [], 0
    while (at := text.find(_OPEN, pos)) >= 0 and text.find(_CLOSE, at) >= 0:
        try:
            obj, end = decoder.raw_decode(text, _skip_space(text, at + len(_OPEN)))
        except ValueError:
            return text, []  # a malformed call: the whole text is content
        end = _skip_space(text, end)
        call = _call(obj, ("arguments", "parameters"))
        if call is None or not text.startswith(_CLOSE, end):
            return text, []
        content.append(text[pos:at])
        calls.append(call)
        pos = end + len(_CLOSE)
    if not calls:
        return text, []
    rest = ("".join(content) + text[pos:]).strip()
    return rest or None, calls


def parse_llama3_json(text: str) -> tuple[str | None, list[ParsedCall]]:
    """Llama 3.x: the message is ``{"name": ..., "parameters": {...}}`` (optionally after
    ``<|python_tag|>``), several separated by ``;``."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    decoder = json.JSONDecoder()
    calls, pos = [], 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return text, []
        call = _call(obj, ("parameters", "arguments"))
        if call is None:
            return text, []
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \n\t;":
            pos += 1
    return None, calls


def parse_mistral(text: str) -> tuple[str | None, list[ParsedCall]]:
    """Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` after any content."""
    marker = "[TOOL_CALLS]"
    at = text.find(marker)
    if at < 0:
        return text, []
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[at + len(marker):].lstrip())
    except ValueError:
        return text, []
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call(item, ("arguments", "parameters")) for item in items]
    if not calls or any(c is None for c in calls):
        return text, []
    content = text[:at].strip()
    return content or None, calls  # type: ignore[return-value]


PARSERS = {HERMES: parse_hermes, LLAMA3_JSON: parse_llama3_json, MISTRAL: parse_mistral}


def parse_tool_calls(fmt: str, text: str) -> tuple[str | None, list[ParsedCall]]:
    """(content, calls) of a finished message in ``fmt`` (unknown formats: Hermes, the fallback)."""
    return PARSERS.get(fmt, parse_hermes)(text)
