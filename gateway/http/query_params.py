"""Query parameters of Ward's own APIs (admin, audit, usage): none a route does not take, times as text.

A misspelt filter would otherwise be dropped without a word: ``GET /audit/records?tem=cardiology``
would answer every record the caller may read as if it were the team's. Each such router takes
``declared_query_only(principal)`` as a dependency: after the caller's authentication (so an
anonymous caller still gets its 401), a query naming a parameter the route does not declare is a 400
``unknown_parameter`` naming it and the ones the route takes. The OpenAI routes stay as lenient as
OpenAI's own.

Times and days in those queries are ISO-8601 text (``IsoDateTime``, ``IsoDate``): pydantic would read a
bare number as Unix seconds, or milliseconds past a size, so ``since=0.0`` or a mistyped stamp would
be a guess the caller never sees.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from gateway.http.errors import InvalidRequest

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DECLARED = "ward_declared_query"  # the route attribute that keeps its query parameters once found


def declared_query_only(principal: Callable[..., Any]) -> Any:
    """A router dependency refusing undeclared query parameters once ``principal`` (the router's own
    authentication dependency, which FastAPI solves once a request) has let the caller in."""

    # the dependency as a default: an Annotated hint naming this closure's variable would not resolve
    async def refuse_undeclared_query(request: Request, _caller: Any = Depends(principal)) -> None:
        check_declared_query(request)

    return Depends(refuse_undeclared_query)


def check_declared_query(request: Request) -> None:
    """Raises InvalidRequest (400) for a query parameter the route does not take (``unknown_parameter``)
    or one that takes a single value given more than once (``duplicate_parameter``: which of them
    would count is a guess)."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    declared = getattr(route, _DECLARED, None)
    if declared is None:
        declared = _query_parameters(route.dependant)
        setattr(route, _DECLARED, declared)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in declared:
            takes = ", ".join(f"`{n}`" for n in sorted(declared)) or "none"
            raise InvalidRequest(f"Unknown query parameter `{name}` for {request.method} {route.path_format} "
                                 f"(it takes: {takes}).", param=name, code="unknown_parameter")
        if name in seen and not declared[name]:
            raise InvalidRequest(f"The query parameter `{name}` takes one value; it was given more than once.",
                                 param=name, code="duplicate_parameter")
        seen.add(name)


def _query_parameters(dependant: Any) -> dict[str, bool]:
    """The query parameters (by alias) of a route's dependency tree, its own and its dependencies',
    each with whether it takes several values (a list). (A query parameter declared as one pydantic
    model would need its fields here; no route has one.)"""
    parameters: dict[str, bool] = {}
    pending = [dependant]
    while pending:
        current = pending.pop()
        for field in current.query_params:
            parameters[field.alias] = _takes_several(getattr(getattr(field, "field_info", None), "annotation", None))
        pending.extend(current.dependencies)
    return parameters


def _takes_several(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin is Annotated:
        return _takes_several(get_args(annotation)[0])
    return any(_takes_several(arg) for arg in get_args(annotation))  # a union: list[str] | None


def _iso_text(value: object) -> object:
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("expected ISO-8601 text such as 2026-12-01T00:00:00Z (or 2026-12-01 for a day), not a number")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]
IsoDate = Annotated[date, BeforeValidator(_iso_text)]
