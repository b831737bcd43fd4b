"""Incremental detokenization: correct text deltas as tokens arrive, multi-byte characters
included (a partial UTF-8 sequence is held until it completes), and stop strings that may
straddle token boundaries (text that could still become a stop string is held back)."""
from __future__ import annotations

import functools
import re

from tokenizers.decoders import DecodeStream

# Prompt tokens fed to the stream first, so the first generated token decodes with its context
# (e.g. a leading space that a sentencepiece decoder would strip at the start of a text).
_PROMPT_CONTEXT = 8
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte tokens


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's spelling of bytes (GPT-2's table, as transformers defines it), inverted:
    character -> byte. Loaded on first need: only a token holding part of a character reads it."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer, token_id: int, text: str) -> bytes:
    """The bytes a token stands for; ``text`` is the token decoded alone. A token holding part of a
    multi-byte character decodes to U+FFFD, so its bytes are read from its vocabulary spelling: a
    byte-fallback token (``<0xE4>``) or a byte-level BPE piece. Any other token: its text's UTF-8."""
    if "\ufffd" in text:
        piece = tokenizer.id_to_token(token_id) or ""
        if (match := _BYTE_FALLBACK.fullmatch(piece)) is not None:
            return bytes([int(match.group(1), 16)])
        alphabet = _byte_level_alphabet()
        if piece and all(c in alphabet for c in piece) and "ByteLevel" in repr(tokenizer.decoder):
            return bytes(alphabet[c] for c in piece)
    return text.encode("utf-8", "surrogatepass")


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str], include_stop: bool, skip_special: bool):
        self._tok = tokenizer  # a tokenizers.Tokenizer
        tail = prompt_token_ids[-_PROMPT_CONTEXT:]
        try:
            self._stream = DecodeStream(ids=tail, skip_special_tokens=skip_special)
        except TypeError:  # older tokenizers: no prefill
            self._stream = DecodeStream(skip_special_tokens=skip_special)
        self.text = ""
        self._sent = 0
        self._stop = stop
        self._include_stop = include_stop
        self._holdback = max((len(s) for s in stop), default=1) - 1

    def add_tokens(self, token_ids: list[int]) -> str | None:
        """Appends tokens; returns the stop string if one now appears (the text is cut there)."""
        for t in token_ids:
            piece = self._stream.step(self._tok, t)
            if piece:
                start = max(0, len(self.text) - self._holdback)
                self.text += piece
                hit = self._find_stop(start)
                if hit is not None:
                    return hit
        return None

    def _find_stop(self, start: int) -> str | None:
        best = None
        for s in self._stop:
            j = self.text.find(s, start)
            if j >= 0 and (best is None or j < best[0]):
                best = (j, s)
        if best is None:
            return None
        j, s = best
        self.text = self.text[: j + len(s)] if self._include_stop else self.text[:j]
        return s

    @property
    def sent_text(self) -> str:
        return self.text[: self._sent]

    def take_delta(self, finished: bool) -> str:
        """Text not yet sent, minus what could still be the start of a stop string."""
        end = len(self.text) if finished else max(self._sent, len(self.text) - self._holdback)
        delta = self.text[self._sent : end]
        self._sent = end
        return delta
