"""response_format, tools and tool_choice: OpenAI's shapes, validated before anything is queued.

Schemas are checked against the JSON Schema meta-schema here; what the worker's grammar library
cannot enforce (a look-behind in a pattern, say) the worker refuses before queueing, also a 400.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, model_validator

# OpenAI's rule for function and schema names
FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024


def check_schema(schema: Any, what: str) -> dict[str, Any]:
    """``schema`` when it is a JSON Schema object; raises ValueError naming the problem."""
    if not isinstance(schema, dict):
        raise ValueError(f"{what} must be a JSON Schema object")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"{what} is larger than {MAX_SCHEMA_BYTES} bytes")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"{what} is not a valid JSON Schema{f' at /{where}' if where else ''}: {exc.message}") from None
    except (RecursionError, ValueError, TypeError, LookupError) as exc:  # an unknown $schema, a cycle, ...
        raise ValueError(f"{what} cannot be checked as a JSON Schema: {exc}") from None
    return schema


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)  # "schema" in the audit log too

    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {}, alias="schema")
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _valid_schema(self) -> JsonSchemaSpec:
        check_schema(self.schema_, f"the schema of response format '{self.name}'")
        return self


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _valid_parameters(self) -> FunctionDefinition:
        if self.parameters is not None:
            what = f"the parameters of function '{self.name}'"
            check_schema(self.parameters, what)
            # arguments are a JSON object: a call with other arguments could never be returned
            kind = self.parameters.get("type", "object")
            if kind != "object" and not (isinstance(kind, list) and "object" in kind):
                raise ValueError(f"{what} must be a JSON Schema of type \"object\", got type {json.dumps(kind)}")
        return self

    def parameters_schema(self) -> dict[str, Any]:
        # OpenAI: omitted parameters mean a function that takes none
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: FunctionName
    arguments: str  # JSON text, as OpenAI sends it back


class AssistantToolCall(BaseModel):
    """A tool call in an assistant message of the history."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: ToolCallFunction


def check_constrainable(min_tokens: int) -> None:
    """Raises ValueError for a field that a grammar-constrained output cannot honour: min_tokens may
    outlast a grammar that allows only the end. (Stop strings and stop_token_ids are honoured as at
    OpenAI and vLLM: one met inside the JSON ends the output there, with finish_reason "stop".)"""
    if min_tokens:
        raise ValueError("min_tokens cannot be combined with a JSON response format or a required tool call")


def forced_tool(tools: list[Tool] | None, choice: ToolChoice | None) -> str | None:
    """The function a named tool_choice names (None for the string choices)."""
    return choice.function.name if isinstance(choice, NamedToolChoice) else None


def validate_tool_choice(choice: ToolChoice | None, tools: list[Tool] | None) -> None:
    """Raises ValueError for a tool_choice that the tools cannot satisfy."""
    if choice is None or choice == "none":
        return
    if not tools:
        raise ValueError("tool_choice is only allowed when tools are given")
    name = forced_tool(tools, choice)
    if name is not None and name not in {t.function.name for t in tools}:
        raise ValueError(f"tool_choice names the function '{name}', which is not among the tools")


def validate_tools(tools: list[Tool] | None) -> None:
    if tools is None:
        return
    names = [t.function.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"function names must be unique; repeated: {', '.join(duplicates)}")
