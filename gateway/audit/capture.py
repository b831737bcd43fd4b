"""How much of a request's content the log keeps: its team's capture level.

- ``full``: prompt, response and parameters as sent.
- ``redacted``: the same with common identifiers (emails, phone numbers, MRN-like numbers, dates, ...)
  masked by the configured patterns; structure (roles, tool names) is kept.
- ``metadata``: no text at all: SHA-256 of the canonical prompt and response instead, and only the
  numeric and boolean parameters.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from typing import Any

from gateway.audit.canonical import canonical_json, sha256_hex
from gateway.audit.errors import AuditInputError
from gateway.audit.settings import DEFAULT_REDACTION_PATTERNS, RedactionPattern


class CaptureLevel(str, Enum):
    FULL = "full"
    REDACTED = "redacted"
    METADATA = "metadata"

    @classmethod
    def parse(cls, value: str | CaptureLevel) -> CaptureLevel:
        try:
            return cls(value)
        except ValueError:
            raise AuditInputError(f"unknown capture level {value!r} (full, redacted or metadata)") from None


# Keys inside messages whose values are structure, not content: never masked.
_STRUCTURAL_KEYS = frozenset({"role", "type", "tool_call_id", "id", "index", "finish_reason"})


class Redactor:
    """Masks every match of the patterns, in order, in every string of a JSON-like value."""

    def __init__(self, patterns: Iterable[RedactionPattern] = DEFAULT_REDACTION_PATTERNS):
        self._rules = [(re.compile(p.pattern), p.mask()) for p in patterns]

    def text(self, value: str) -> str:
        for regex, mask in self._rules:
            value = regex.sub(mask, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: (v if k in _STRUCTURAL_KEYS else self.value(v)) for k, v in value.items()}
        return value


def scalar_params(params: dict[str, Any]) -> dict[str, Any]:
    """The numeric, boolean and null parameters: how a model was asked, without content; plus the
    shape it was asked for (response format type, schema name and digest, tool names, tool choice)."""
    out = {k: v for k, v in params.items() if v is None or isinstance(v, bool | int | float)}
    out.update(structure_params(params))
    return out


def structure_params(params: dict[str, Any]) -> dict[str, Any]:
    """Which output constraint a request used, without the schemas' text."""
    out: dict[str, Any] = {}
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        summary: dict[str, Any] = {"type": fmt["type"]}
        spec = fmt.get("json_schema")
        if isinstance(spec, dict):
            summary["name"] = spec.get("name")
            summary["schema_sha256"] = sha256_hex(canonical_json(spec.get("schema")))
        out["response_format"] = summary
    tools = params.get("tools")
    if isinstance(tools, list):
        out["tools"] = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
    choice = params.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict):
        out["tool_choice"] = {"function": (choice.get("function") or {}).get("name")}
    return out


def capture_request(level: CaptureLevel, redactor: Redactor, prompt: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The prompt and parameter fields of a record at the given level."""
    if level is CaptureLevel.FULL:
        return {"prompt": prompt, "params": params}
    if level is CaptureLevel.REDACTED:
        return {"prompt": redactor.value(prompt), "params": redactor.value(params)}
    return {
        "prompt": None,
        "prompt_sha256": None if prompt is None else sha256_hex(canonical_json(prompt)),
        "params": scalar_params(params),
    }


def capture_response(level: CaptureLevel, redactor: Redactor, response: Any) -> dict[str, Any]:
    """The response fields of a record at the given level."""
    if level is CaptureLevel.FULL:
        return {"response": response}
    if level is CaptureLevel.REDACTED:
        return {"response": redactor.value(response)}
    return {"response": None, "response_sha256": None if response is None else sha256_hex(canonical_json(response))}
