"""POST /v1/chat/completions request body."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.protocol.common import INT32_MAX, SamplingRequest, UnsupportedField, reject_if_set


# The content parts Ward reads, as the schema documents them (the validator below gives the 400).
_TEXT_PARTS_SCHEMA = {
    "type": "array",
    "items": {
        "oneOf": [
            {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
            {"type": "object", "required": ["type", "refusal"],
             "properties": {"type": {"const": "refusal"}, "refusal": {"type": "string"}}},
        ]
    },
}
ContentParts = Annotated[list[dict[str, Any]], WithJsonSchema(_TEXT_PARTS_SCHEMA)]


class ChatMessage(BaseModel):
    """One message; content may be a string or a list of text parts (joined for the worker)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | ContentParts | None = None
    name: str | None = Field(None, max_length=256)

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(content, list):
            for part in content:
                if part.get("type") not in ("text", "refusal") or not isinstance(part.get(part.get("type")), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
        return content

    def text(self) -> str:
        """The message content as one string (text parts concatenated)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part[part["type"]] for part in self.content)


class TextResponseFormat(BaseModel):
    """OpenAI's ``{"type": "text"}``, the only response format Ward serves until structured output lands."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


STRUCTURED_FORMATS = ("json_object", "json_schema")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: TextResponseFormat | None = None
    # vLLM's chat-template controls
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False

    @field_validator("response_format", mode="before")
    @classmethod
    def _no_structured_output_yet(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") in STRUCTURED_FORMATS:
            raise UnsupportedField(
                f"`{value['type']}` needs structured output, which Ward does not offer yet: "
                "send {'type': 'text'} or leave response_format out"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _unsupported_features(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reject_if_set(data, "tools", "tool calling")
            reject_if_set(data, "functions", "function calling")
            reject_if_set(data, "logit_bias", "logit bias")
            reject_if_set(data, "audio", "audio output")
        return data

    @model_validator(mode="after")
    def _logprobs_consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return self

    def completion_budget(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def worker_logprobs(self) -> int | None:
        """How many top alternatives to ask the worker for (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None
