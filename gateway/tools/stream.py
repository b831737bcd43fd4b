"""Streaming with tools: content streams as it comes until the text may be turning into a tool call;
from there the text is held and parsed once the choice ends (a call is only sent once it is whole,
so its arguments are always complete JSON)."""

from __future__ import annotations

from gateway.tools.grammar import HERMES, LLAMA3_JSON, MISTRAL
from gateway.tools.parsers import ParsedCall, parse_tool_calls

MARKERS = {HERMES: "<tool_call>", MISTRAL: "[TOOL_CALLS]"}


def _partial_marker_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """One choice's text deltas in, content to send now out; ``finish`` gives the rest and the calls."""

    def __init__(self, fmt: str, *, forced: bool) -> None:
        self.fmt = fmt
        self.held = ""  # text not sent yet
        self.capturing = forced  # a required or named choice: the whole output is calls
        self.sent_any = False

    def feed(self, text: str) -> str:
        if self.capturing:
            self.held += text
            return ""
        text = self.held + text
        self.held = ""
        if self.fmt == LLAMA3_JSON:
            if not self.sent_any:
                stripped = text.lstrip()
                if not stripped:
                    self.held = text
                    return ""
                if stripped[0] == "{" or stripped.startswith("<|python_tag|>") or "<|python_tag|>".startswith(stripped):
                    self.capturing = True
                    self.held = text
                    return ""
            self.sent_any = True
            return text
        marker = MARKERS.get(self.fmt, MARKERS[HERMES])
        at = text.find(marker)
        if at >= 0:
            self.capturing = True
            self.held = text[at:]
            text = text[:at]
        else:
            keep = _partial_marker_suffix(text, marker)
            if keep:
                self.held = text[-keep:]
                text = text[:-keep]
        self.sent_any = self.sent_any or bool(text)
        return text

    def finish(self, complete: bool = True) -> tuple[str, list[ParsedCall]]:
        """(content still to send, the calls) once the choice has ended; an incomplete choice (cut by
        its budget) has no calls, as in a non-streamed response."""
        held, self.held = self.held, ""
        if not self.capturing or not complete:
            return held, []
        content, calls = parse_tool_calls(self.fmt, held)
        if not calls:
            return held, []
        return content or "", calls
