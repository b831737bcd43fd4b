"""The inference routes called without FastAPI's routing (gateway/http/fast_lane.py): which routes
take the lane, and that a request through it looks to the route, its errors and the metrics exactly
as one through the router."""

from __future__ import annotations

import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.fast_lane import FastLane, direct_routes
from gateway.routers import openai

pytestmark = pytest.mark.anyio

MODEL = "fake-lane"


@pytest.fixture
async def gw():
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}) as harness:
        yield harness


def test_the_openai_post_routes_take_the_lane_and_the_model_routes_do_not():
    assert sorted(direct_routes(openai.router)) == ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


def test_routes_with_dependencies_parameters_or_other_methods_keep_the_router():
    def dependency() -> int:
        return 1

    router = APIRouter()

    @router.post("/with-dependency")
    async def with_dependency(request: Request, value: int = Depends(dependency)) -> Response:
        return Response()

    @router.post("/items/{item}")
    async def with_path_parameter(request: Request, item: str) -> Response:
        return Response()

    @router.get("/read")
    async def read(request: Request) -> Response:
        return Response()

    @router.post("/plain")
    async def plain(request: Request) -> Response:
        return Response()

    assert list(direct_routes(router)) == ["/plain"]
    assert direct_routes(APIRouter(dependencies=[Depends(dependency)], routes=router.routes)) == {}


async def test_the_app_stack_holds_the_lane_with_the_inference_routes(gw):
    await gw.client.get("/healthz")  # the stack is built on the first request
    layer = gw.app.middleware_stack
    while not isinstance(layer, FastLane):  # down the middleware chain, each holding the next as .app
        layer = layer.app
    assert layer.router is gw.app.router and "/v1/chat/completions" in layer.routes


async def test_a_request_through_the_lane_is_answered_counted_and_labelled_as_through_the_router(gw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    r = await gw.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    metrics = (await gw.client.get("/metrics")).text
    assert 'route="/v1/chat/completions",status="200"' in metrics


async def test_errors_in_the_lane_leave_through_the_same_handlers(gw):
    r = await gw.client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": []},
                             headers={"authorization": "Bearer sk-wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = await gw.client.get("/v1/chat/completions")  # another method: the router's 405, OpenAI-shaped
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_pass_through_middlewares_hand_back_the_inner_apps_awaitable_for_inference_routes(path):
    # No frame of theirs stays on the request's await chain, which each streamed token resumes.
    from gateway.audit.admin_reads import AuditedAdminReads
    from gateway.console.middleware import ConsoleSessions
    from gateway.http.body_limit import BodyLimitMiddleware

    sentinel = object()

    def inner(scope, receive, send):
        return sentinel

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"10")]}
    for middleware in (AuditedAdminReads(inner, recorder=None), ConsoleSessions(inner, sessions=None),
                       BodyLimitMiddleware(inner, max_bytes=100)):
        assert middleware(scope, None, None) is sentinel
