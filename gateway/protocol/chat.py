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
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.protocol.common import INT32_MAX, LogitBias, SamplingRequest, reject_if_set
from gateway.protocol.structured import (
    MAX_TOOLS,
    AssistantToolCall,
    JsonObjectFormat,
    JsonSchemaFormat,
    ResponseFormat,
    Tool,
    ToolChoice,
    check_constrainable,
    forced_tool,
    validate_tool_choice,
    validate_tools,
)


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
    tool_calls: list[AssistantToolCall] | None = Field(None, max_length=128)  # assistant messages
    tool_call_id: str | None = Field(None, max_length=256)  # tool messages

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.content is None and self.role != "assistant":
            # required by OpenAI for every other role: a misspelt key would otherwise send an empty turn
            raise ValueError(f"a {self.role} message needs content")
        return self

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


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    # tools, then tool_choice and response_format: their validators read the fields before them
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    response_format: ResponseFormat | None = None
    logit_bias: LogitBias | None = None
    modalities: list[str] | None = Field(None, max_length=8)
    # vLLM's chat-template controls
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[Tool] | None) -> list[Tool] | None:
        validate_tools(tools)
        return tools

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, modalities: list[str] | None) -> list[str] | None:
        # Ward answers in text only; audio asked for here must be refused, never answered with text
        other = next((m for m in modalities or () if m != "text"), None)
        if other is not None:
            raise ValueError(f'only "text" is supported: Ward does not offer {other!r} output')
        return modalities

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        validate_tool_choice(choice, info.data.get("tools"))
        return choice

    @field_validator("response_format")
    @classmethod
    def _one_constraint(cls, fmt: Any, info: ValidationInfo) -> Any:
        structured = isinstance(fmt, (JsonObjectFormat, JsonSchemaFormat))
        choice = info.data.get("tool_choice")
        if structured and (choice == "required" or forced_tool(None, choice)):
            raise ValueError("a JSON response format cannot be combined with a required or named tool_choice")
        return fmt

    @model_validator(mode="before")
    @classmethod
    def _unsupported_features(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reject_if_set(data, "functions", "the deprecated `functions` (send `tools`)")
            reject_if_set(data, "audio", "audio output")
        return data

    def tools_in_use(self) -> list[Tool]:
        """The tools the model is shown and may call (none with tool_choice "none")."""
        return list(self.tools or []) if self.tool_choice != "none" else []

    def forced_function(self) -> str | None:
        return forced_tool(self.tools, self.tool_choice)

    @model_validator(mode="after")
    def _logprobs_consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        structured = self.tool_choice == "required" or self.forced_function() is not None or isinstance(
            self.response_format, (JsonObjectFormat, JsonSchemaFormat))
        if structured:
            check_constrainable(self.min_tokens)
        return self

    def completion_budget(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def worker_logprobs(self) -> int | None:
        """How many top alternatives to ask the worker for (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None
