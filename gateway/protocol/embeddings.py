"""POST /v1/embeddings request body."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from gateway.identifiers import ModelName
from gateway.protocol.common import UINT32_MAX, TextOrTokens

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ModelName
    input: TextOrTokens
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, le=UINT32_MAX)
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _inputs_present(cls, value):
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be empty")
        if isinstance(value[0], int):
            return value  # one tokenized input
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        if any(not item for item in value):
            raise ValueError("inputs must not be empty")
        return value

    def texts(self) -> list[str]:
        """The text inputs ([] when the input is tokenized)."""
        if isinstance(self.input, str):
            return [self.input]
        return list(self.input) if isinstance(self.input[0], str) else []

    def token_inputs(self) -> list[list[int]]:
        """The tokenized inputs ([] when the input is text)."""
        if isinstance(self.input, str) or isinstance(self.input[0], str):
            return []
        if isinstance(self.input[0], int):
            return [list(self.input)]
        return [list(x) for x in self.input]
