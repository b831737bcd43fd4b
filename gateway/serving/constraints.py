"""What constrains a request's output, as the worker contract carries it: the grammar for a JSON
response format or a required / named tool call, the tools for the chat template, logit_bias."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.http.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.common import SamplingRequest
from gateway.protocol.structured import JsonObjectFormat, JsonSchemaFormat
from gateway.tools.grammar import FORMATS, HERMES, tool_call_grammar
from proto.ward.worker.v1 import worker_pb2 as pb


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request's tool calls are produced and read back."""

    fmt: str  # the model's tool-call format
    forced: bool  # tool_choice required or named: the grammar makes the whole output calls
    parallel: bool = True  # False: the first call only (the grammar allows one; a free answer may hold more)


def tool_format(info: pb.ModelInfoResponse | None) -> str:
    fmt = info.tool_call_format if info is not None else ""
    return fmt if fmt in FORMATS else HERMES


def tool_plan(request: ChatCompletionRequest, info: pb.ModelInfoResponse | None) -> ToolPlan | None:
    """None when the output is not read for tool calls (no tools, or tool_choice "none")."""
    if not request.tools_in_use():
        return None
    forced = request.tool_choice == "required" or request.forced_function() is not None
    return ToolPlan(tool_format(info), forced, request.parallel_tool_calls)


def _require_support(info: pb.ModelInfoResponse | None, model: str, param: str) -> None:
    if info is not None and not info.structured_output:
        raise InvalidRequest(
            f"The model `{model}` is served by workers that cannot constrain decoding (structured output).",
            param=param, code="structured_output_unavailable",
        )


def structured_output(
    request: SamplingRequest, info: pb.ModelInfoResponse | None, plan: ToolPlan | None = None
) -> pb.StructuredOutput | None:
    """The grammar for the worker, or None for free text; raises InvalidRequest when no worker can."""
    model = request.model
    fmt = getattr(request, "response_format", None)
    if isinstance(fmt, JsonObjectFormat):
        _require_support(info, model, "response_format")
        return pb.StructuredOutput(json_object=True)
    if isinstance(fmt, JsonSchemaFormat):
        _require_support(info, model, "response_format")
        return pb.StructuredOutput(json_schema=json.dumps(fmt.json_schema.schema_))
    if plan is not None and plan.forced and isinstance(request, ChatCompletionRequest):
        _require_support(info, model, "tool_choice")
        tools = request.tools_in_use()
        named = request.forced_function()
        functions = {t.function.name: t.function.parameters_schema() for t in tools
                     if named is None or t.function.name == named}
        # a named choice is one call of that function (OpenAI's meaning); "required" may make several
        parallel = request.parallel_tool_calls and named is None
        return pb.StructuredOutput(lark=tool_call_grammar(plan.fmt, functions, parallel=parallel))
    return None


def logit_bias(request: SamplingRequest) -> dict[int, float]:
    bias = getattr(request, "logit_bias", None) or {}
    return {int(token): float(value) for token, value in bias.items()}


def tools_json(request: ChatCompletionRequest) -> str:
    """The tools for the chat template, as OpenAI's JSON array ("" when none are in use)."""
    tools = request.tools_in_use()
    if not tools:
        return ""
    return json.dumps([t.model_dump(exclude_none=True, by_alias=True) for t in tools], ensure_ascii=False)
