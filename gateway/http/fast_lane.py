"""The inference routes reached without FastAPI's routing layers.

Per request, the router matches the path against every route in turn, and FastAPI's route handler
builds the request, opens two exit stacks, solves the endpoint's dependencies and wraps it in its
own exception layer before calling it: on the 2-core benchmark box that was a tenth of the event
loop's time per governed request (docs/performance.md). The POST routes whose endpoint takes only
the ``Request`` (the OpenAI inference routes: they authenticate and parse themselves) need none of
it, so :class:`FastLane` sits where the router sits, inside every middleware and inside the
exception middleware, and calls those endpoints directly. What a route sees is unchanged: the
scope carries its ``route``, ``endpoint`` and ``path_params`` as the router sets them, errors rise
to the same exception handlers, and every other request (another method, path or route) goes to
the router as before.
"""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send


def direct_routes(router: APIRouter) -> dict[str, APIRoute]:
    """The router's plain POST routes (no path parameters, no dependencies, one ``Request``
    parameter) by path: the ones :class:`FastLane` may call without routing, for a router the app
    includes without a prefix or dependencies of its own (the route's path is then the app's)."""
    if router.dependencies:
        return {}
    found: dict[str, APIRoute] = {}
    for route in router.routes:
        if not isinstance(route, APIRoute) or route.methods != {"POST"} or route.param_convertors:
            continue
        if route.dependencies or route.dependant.dependencies:
            continue
        parameters = list(inspect.signature(route.endpoint).parameters.values())
        if len(parameters) != 1 or parameters[0].annotation not in (Request, "Request"):
            continue
        found.setdefault(route.path, route)  # the first registered wins, as in routing
    return found


class FastLane:
    """Calls the router's plain POST routes (``direct_routes``) directly; the rest goes to the router."""

    def __init__(self, router: ASGIApp, routes: dict[str, APIRoute]) -> None:
        self.router = router
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.router(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        response = await route.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)
