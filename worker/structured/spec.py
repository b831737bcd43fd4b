"""What a request asks its output to match (plain data: travels in SamplingParams, no library)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

GrammarKind = Literal["json_schema", "json_object", "lark"]


@dataclass(frozen=True)
class GrammarSpec:
    kind: GrammarKind
    text: str = ""  # the JSON schema's JSON text, or the Lark grammar; empty for json_object

    @property
    def key(self) -> str:
        """The compiled-grammar cache key."""
        return hashlib.sha256(f"{self.kind}\0{self.text}".encode("utf-8", "surrogatepass")).hexdigest()
