"""Fields shared by chat and completion requests: OpenAI's sampling options and Ward's extras.

Bounds follow OpenAI's where it has them, and otherwise the worker contract's integer widths, so a
valid request always fits its protobuf message.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)

from gateway.identifiers import ModelName

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1

TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]


def _text_or_tokens_form(value: Any) -> str:
    """The form a prompt or embeddings input takes, read from its JSON shape (an empty array and
    anything that is neither string nor array go to a form whose checks say what is wrong)."""
    if not isinstance(value, list):
        return "text"
    if not value or isinstance(value[0], str):
        return "texts"
    return "token_id_lists" if isinstance(value[0], list) else "token_ids"


# A string, several strings, one tokenized text or several. Validated as the one form its shape
# shows: a plain union tries every form, and a 1,024-token prompt then costs 0.18 ms of error objects
# from the forms it is not (the string arrays), against 0.01 ms for this.
TextOrTokens = Annotated[
    Union[
        Annotated[str, Tag("text")],
        Annotated[list[str], Tag("texts")],
        Annotated[list[TokenId], Tag("token_ids")],
        Annotated[list[list[TokenId]], Tag("token_id_lists")],
    ],
    Discriminator(_text_or_tokens_form),
]


def _one_key_per_token(bias: dict[str, float]) -> dict[str, float]:
    """Refuses one token id written twice ("1" and "01"): the worker gets one bias per id, so
    either value would silently be dropped."""
    seen: dict[int, str] = {}
    for key in bias:
        first = seen.setdefault(int(key), key)
        if first != key:
            raise ValueError(f"token id {int(key)} is given twice, as {first!r} and {key!r}")
    return bias


# OpenAI's logit_bias: token id (as a JSON object key) -> bias in [-100, 100], at most 300 entries
LogitBias = Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[StrictFloat, Field(ge=-100, le=100)]],
                      Field(max_length=300), AfterValidator(_one_key_per_token)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class UnsupportedField(ValueError):
    """A known OpenAI field whose feature Ward does not offer (a 400, never silently ignored)."""


class SamplingRequest(BaseModel):
    """The request fields that become the worker's SamplingParams. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    # Strict where OpenAI is strict: integers and booleans are never coerced from strings ("10",
    # "yes") or other types; numbers accept integers and decimals, never strings.
    n: StrictInt = Field(1, ge=1, le=128)
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # Ward's engine extras (vLLM's names and meanings)
    top_k: StrictInt | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: StrictFloat | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: StrictFloat | None = Field(None, gt=0.0, le=10.0)
    min_tokens: StrictInt = Field(0, ge=0, le=INT32_MAX)
    ignore_eos: StrictBool = False
    priority: StrictInt = Field(0, ge=-(2**31), le=INT32_MAX)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=64)
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        values = [stop] if isinstance(stop, str) else stop or []
        if len(values) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        if any(not s for s in values):
            raise ValueError("stop sequences must not be empty")
        return stop

    @model_validator(mode="after")
    def _consistent(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        budget = self.completion_budget()
        if budget is not None and self.min_tokens > budget:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self

    def completion_budget(self) -> int | None:
        """The most tokens to generate per choice (None: up to the context length)."""
        return self.max_tokens

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def reject_if_set(values: dict, field: str, feature: str) -> None:
    """Raises UnsupportedField when ``field`` carries a non-empty value."""
    if values.get(field) not in (None, False, [], {}, "", "none", "auto"):
        raise UnsupportedField(f"`{field}` is not supported: Ward does not offer {feature}")
