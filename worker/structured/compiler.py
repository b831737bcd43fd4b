"""Compiles grammar specs into matcher prototypes, cached by the spec's hash.

A prototype is a fresh llguidance matcher; every choice of every request deep-copies it (cheap), so
a schema is parsed and its lexer built once however many requests use it.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from worker.errors import InvalidRequestError
from worker.structured.spec import GrammarSpec

CACHE_SIZE = 256
# Compact but readable JSON (", " and ": ", no other whitespace): free whitespace lets a sampled
# model pad its output with newlines until max_tokens runs out.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class StructuredOutputUnavailable(InvalidRequestError):
    code = "structured_output_unavailable"


class InvalidGrammarError(InvalidRequestError):
    """A schema or grammar the library refuses; the code names which, so the gateway can name the field."""

    def __init__(self, message: str, spec: GrammarSpec) -> None:
        super().__init__(message)
        self.code = "invalid_json_schema" if spec.kind != "lark" else "invalid_grammar"


def library_available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def grammar_text(spec: GrammarSpec) -> str:
    """llguidance's grammar for ``spec``; raises InvalidRequestError for a malformed spec."""
    import llguidance

    if spec.kind == "lark":
        return spec.text
    if spec.kind == "json_object":
        schema: Any = {"type": "object"}
    else:
        try:
            schema = json.loads(spec.text)
        except ValueError as exc:
            raise InvalidGrammarError(f"the JSON schema is not valid JSON: {exc}", spec) from None
        if not isinstance(schema, (dict, bool)):
            raise InvalidGrammarError("a JSON schema must be an object", spec)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidGrammarError(f"invalid JSON schema: {exc}", spec) from None


class GrammarCompiler:
    """One per engine: the tokenizer's grammar view (built on first use) and the prototype cache."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._hf = hf_tokenizer
        self._vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._tokenizer: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # requests are prepared on several threads

    def _llg_tokenizer(self) -> Any:
        if self._tokenizer is None:
            import llguidance.hf

            self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._vocab_size, eos_token=self._eos)
        return self._tokenizer

    def compile(self, spec: GrammarSpec) -> Any:
        """A matcher prototype for ``spec`` (never advanced: deep-copy it per choice).

        Raises StructuredOutputUnavailable without the library, InvalidRequestError (naming the
        problem) for an invalid or unsupported grammar."""
        if self._hf is None:
            raise StructuredOutputUnavailable("structured output needs the model's tokenizer")
        if not library_available():
            raise StructuredOutputUnavailable(
                "structured output is not available on this worker: its grammar library (llguidance) is not installed"
            )
        import llguidance

        key = spec.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            tokenizer = self._llg_tokenizer()
        grammar = grammar_text(spec)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise InvalidGrammarError(f"unsupported {_what(spec)}: {_first_line(messages[0])}", spec)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidGrammarError(f"unsupported {_what(spec)}: {_first_line(matcher.get_error())}", spec)
        with self._lock:
            self._cache[key] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def _what(spec: GrammarSpec) -> str:
    return {"json_schema": "JSON schema", "json_object": "JSON object format", "lark": "grammar"}[spec.kind]


def _first_line(message: str) -> str:
    # llguidance's messages can end in a multi-line caret diagram; the first lines say what is wrong
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines[:4])[:500]
