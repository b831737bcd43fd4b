"""The request-lifecycle seam: hook order, what the context carries, rejections, and the
guarantee that before_finish completes before the last byte is sent."""

from __future__ import annotations

import asyncio

import pytest
from fake_worker import (
    API_KEY,
    TEAM,
    FakeConfig,
    FakeWorker,
    parse_sse,
    running_gateway,
)
from fastapi import APIRouter
from starlette.requests import Request

from gateway.auth.errors import AuthenticationError
from gateway.auth.principal import AuthMethod, Principal, Role
from gateway.http.errors import OpenAIError, RateLimited
from gateway.hooks import HookChain, NoopHooks

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
EMBED = "fake-embed"
USER = [{"role": "user", "content": "three short words"}]


class RecordingHooks(NoopHooks):
    """Records each hook call with the context state that matters at that point."""

    def __init__(self, events: list | None = None) -> None:
        self.events = events if events is not None else []
        self.contexts = []
        self.token_counts = []
        self.headers = {"x-ratelimit-remaining-requests": "41"}

    def _record(self, point, ctx):
        self.events.append(point)
        if ctx not in self.contexts:
            self.contexts.append(ctx)

    async def before_dispatch(self, ctx):
        self._record("before_dispatch", ctx)
        self.token_counts.append(await ctx.prompt_token_count())

    def response_headers(self, ctx):
        self._record("response_headers", ctx)
        return self.headers

    async def on_start(self, ctx):
        self._record("on_start", ctx)

    async def on_first_token(self, ctx):
        self._record("on_first_token", ctx)

    async def before_finish(self, ctx):
        self._record("before_finish:start", ctx)
        await asyncio.sleep(0.05)  # e.g. an audit commit
        self._record("before_finish:end", ctx)

    async def on_failure(self, ctx):
        self._record("on_failure", ctx)


@pytest.fixture
async def workers():
    async with FakeWorker(FakeConfig(model=MODEL)) as chat, FakeWorker(FakeConfig(model=EMBED, task="embed")) as embed:
        yield {MODEL: [chat], EMBED: [embed]}


def recording_app_sends(app, events):
    """Wraps ``app`` so every body chunk it sends is recorded in ``events`` (in hook order)."""

    async def wrapped(scope, receive, send):
        async def recording_send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                events.append(("sent", message["body"]))
            await send(message)

        await app(scope, receive, recording_send)

    return wrapped


async def test_streamed_request_runs_every_hook_in_order_and_commits_before_done(workers):
    hooks = RecordingHooks()
    async with running_gateway(workers, hooks=hooks) as gw:
        gw.client._transport.app = recording_app_sends(gw.app, hooks.events)
        r = await gw.client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True, "seed": 1}
        )
    assert r.status_code == 200
    points = [e for e in hooks.events if isinstance(e, str)]
    assert points == [
        "before_dispatch",
        "response_headers",
        "on_start",
        "on_first_token",
        "before_finish:start",
        "before_finish:end",
    ]
    finish_end = hooks.events.index("before_finish:end")
    done_at = next(i for i, e in enumerate(hooks.events) if isinstance(e, tuple) and b"[DONE]" in e[1])
    finish_chunk_at = next(
        i for i, e in enumerate(hooks.events) if isinstance(e, tuple) and b'"finish_reason":"stop"' in e[1]
    )
    assert finish_end < finish_chunk_at <= done_at  # nothing that completes the response precedes the commit
    assert r.headers["x-ratelimit-remaining-requests"] == "41"
    [ctx] = hooks.contexts
    assert ctx.principal.team == TEAM and ctx.model == MODEL and ctx.endpoint == "/v1/chat/completions"
    assert ctx.stream and ctx.status_code == 200 and ctx.error is None and not ctx.cancelled
    assert ctx.prompt == [{"role": "user", "content": "three short words"}]
    assert ctx.worker == workers[MODEL][0].address
    assert ctx.response_text(0) == "".join(c["choices"][0]["delta"].get("content", "") for c in parse_sse(r.text)[:-1])
    assert ctx.finish_reasons == ["stop"] and ctx.completion_tokens == 6
    assert hooks.token_counts == [ctx.prompt_tokens] == [5]
    assert ctx.received_at <= ctx.first_token_at <= ctx.finished_at
    assert ctx.max_model_len == 256 and ctx.max_tokens is None


async def test_non_streamed_body_is_sent_only_after_before_finish(workers):
    hooks = RecordingHooks()
    async with running_gateway(workers, hooks=hooks) as gw:
        gw.client._transport.app = recording_app_sends(gw.app, hooks.events)
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 3})
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "41"
    first_send = next(i for i, e in enumerate(hooks.events) if isinstance(e, tuple))
    assert hooks.events.index("before_finish:end") < first_send
    assert hooks.contexts[0].max_tokens == 3


async def test_embeddings_run_the_lifecycle_with_token_counts(workers):
    hooks = RecordingHooks()
    async with running_gateway(workers, hooks=hooks) as gw:
        r = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": ["a b", "c"]})
    assert r.status_code == 200
    assert hooks.events == [
        "before_dispatch",
        "response_headers",
        "on_start",
        "before_finish:start",
        "before_finish:end",
    ]
    assert hooks.token_counts == [3] and hooks.contexts[0].prompt_tokens == 3


class Refusing(RecordingHooks):
    async def before_dispatch(self, ctx):
        self._record("before_dispatch", ctx)
        raise RateLimited(
            "Rate limit reached for requests.",
            code="rate_limit_exceeded",
            headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"},
        )


async def test_before_dispatch_can_refuse_with_429_and_headers_and_nothing_reaches_the_worker(workers):
    hooks = Refusing()
    async with running_gateway(workers, hooks=hooks) as gw:
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True})
    assert r.status_code == 429
    assert r.json()["error"] == {
        "message": "Rate limit reached for requests.",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert r.headers["retry-after"] == "7" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert hooks.events == ["before_dispatch", "on_failure"]
    assert hooks.contexts[0].status_code == 429 and isinstance(hooks.contexts[0].error, RateLimited)
    assert workers[MODEL][0].servicer.generate_requests == []


async def test_rejections_before_routing_reach_on_failure(workers):
    hooks = RecordingHooks()
    async with running_gateway(workers, hooks=hooks) as gw:
        await gw.client.post(
            "/v1/chat/completions", json={"model": MODEL}, headers={"authorization": "Bearer nope-nope"}
        )
        await gw.client.post("/v1/chat/completions", content=b"{oops")
        await gw.client.post("/v1/chat/completions", json={"model": "unknown", "messages": USER})
        await gw.client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "w " * 300}]}
        )
    assert hooks.events == [
        "on_failure",
        "on_failure",
        "on_failure",
        "before_dispatch",
        "response_headers",
        "on_start",
        "on_failure",
    ]
    unauthorized, malformed, unknown, too_long = hooks.contexts
    assert (unauthorized.status_code, unauthorized.principal) == (401, None)
    assert (malformed.status_code, malformed.principal.team) == (400, TEAM)
    assert (unknown.status_code, unknown.model) == (404, "unknown")
    assert (too_long.status_code, too_long.error.code) == (400, "context_length_exceeded")


async def test_a_failing_before_finish_turns_the_stream_into_an_error_event(workers):
    class AuditDown(RecordingHooks):
        async def before_finish(self, ctx):
            self._record("before_finish", ctx)
            raise OpenAIError("The audit log is unavailable.", status_code=503, code="audit_unavailable")

    hooks = AuditDown()
    async with running_gateway(workers, hooks=hooks) as gw:
        streamed = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True})
        plain = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    events = parse_sse(streamed.text)
    assert "[DONE]" not in events and events[-1]["error"]["code"] == "audit_unavailable"
    assert not any(c.get("choices") and c["choices"][0].get("finish_reason") for c in events[:-1])
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "audit_unavailable"
    assert hooks.events.count("on_failure") == 2


async def test_hook_chain_runs_hooks_in_order_and_every_on_failure():
    events = []

    class Broken(RecordingHooks):
        async def on_failure(self, ctx):
            events.append("broken")
            raise RuntimeError("boom")

    first, second = Broken(events), RecordingHooks(events)
    second.headers = {"x-b": "2"}
    first.headers = {"x-a": "1"}
    chain = HookChain([first, second])
    assert chain.response_headers(object()) == {"x-a": "1", "x-b": "2"}
    await chain.on_failure(object())
    assert events == ["response_headers", "response_headers", "broken", "on_failure"]


class Lifecycled(NoopHooks):
    """A member with its own start and stop, as the quota service and the audit log have."""

    def __init__(self, name: str, events: list, fail_start: bool = False) -> None:
        self.name, self.events, self.fail_start = name, events, fail_start

    async def startup(self):
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.events.append(f"start {self.name}")

    async def shutdown(self):
        self.events.append(f"stop {self.name}")


async def test_hook_chain_starts_members_last_first_and_stops_them_first_first_with_the_app(workers):
    events = []
    chain = HookChain([Lifecycled("quota", events), NoopHooks(), Lifecycled("audit", events)])
    async with running_gateway(workers, hooks=chain) as gw:
        assert events == ["start audit", "start quota"]  # the audit log runs before anything may write to it
        assert (await gw.client.get("/healthz")).status_code == 200
    assert events == ["start audit", "start quota", "stop quota", "stop audit"]


async def test_a_member_that_fails_to_start_stops_those_already_started():
    events = []
    chain = HookChain([Lifecycled("quota", events, fail_start=True), Lifecycled("audit", events)])
    with pytest.raises(RuntimeError, match="quota cannot start"):
        await chain.startup()
    assert events == ["start audit", "stop audit"]


async def test_custom_authenticator_extra_routers_and_error_converters(workers):
    class HeaderAuth:
        async def authenticate(self, request: Request) -> Principal:
            team = request.headers.get("x-team")
            if not team:
                raise AuthenticationError("no team header")
            return Principal(subject="svc", team=team, roles=frozenset({Role.USER}), auth_method=AuthMethod.MTLS)

    class QuotaExceeded(Exception):
        pass

    class Raising(NoopHooks):
        async def before_dispatch(self, ctx):
            if ctx.principal.team == "over-budget":
                raise QuotaExceeded()

    admin = APIRouter(prefix="/admin")

    @admin.get("/ping")
    async def ping():
        return {"pong": True}

    converters = {QuotaExceeded: lambda exc: RateLimited("Budget exhausted.", code="insufficient_quota")}
    hooks = HookChain([Raising(), RecordingHooks()])
    async with running_gateway(
        workers, authenticator=HeaderAuth(), routers=[admin], hooks=hooks, error_converters=converters
    ) as gw:
        body = {"model": MODEL, "messages": USER}
        assert (
            await gw.client.post("/v1/chat/completions", json=body)
        ).status_code == 401  # the API key no longer works
        assert (
            await gw.client.post("/v1/chat/completions", json=body, headers={"x-team": "radiology"})
        ).status_code == 200
        assert workers[MODEL][0].servicer.generate_requests[-1].cache_salt == "team:radiology"
        refused = await gw.client.post("/v1/chat/completions", json=body, headers={"x-team": "over-budget"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        assert (await gw.client.get("/admin/ping")).json() == {"pong": True}
    recorder = hooks.hooks[1]
    assert recorder.events[-1] == "on_failure" and recorder.contexts[-1].status_code == 429


async def test_the_admin_key_authenticates_as_a_platform_admin(workers):
    admin_key = "sk-admin-" + "x" * 30
    hooks = RecordingHooks()
    async with running_gateway(workers, hooks=hooks, settings={"auth": {"admin_key": admin_key}}) as gw:
        r = await gw.client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": USER},
            headers={"authorization": f"Bearer {admin_key}"},
        )
        assert r.status_code == 200
        assert (await gw.client.get("/v1/models", headers={"authorization": f"Bearer {API_KEY}"})).status_code == 200
    assert hooks.contexts[0].principal.has(Role.PLATFORM_ADMIN)


class SlowOpenLog:
    """An audit log whose stream entries are committed only when the test says so."""

    def __init__(self, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.fail = fail
        self.opened: list = []
        self.completed: list = []
        self.requests: list = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def open(self, start):
        self.opened.append(start)
        await self.release.wait()
        if self.fail:
            from gateway.audit.errors import AuditUnavailable

            raise AuditUnavailable("database down")
        return ("handle", start.request_id)

    async def complete(self, handle, end, *, alone: bool = False) -> None:
        self.completed.append((handle, end.status))

    async def record_request(self, start, end, *, alone: bool = False) -> None:
        self.requests.append((start.request_id, end.status))


def recording_response_start(app, events):
    async def wrapped(scope, receive, send):
        async def recording_send(message):
            if message["type"] == "http.response.start":
                events.append(("start", message["status"]))
            await send(message)

        await app(scope, receive, recording_send)

    return wrapped


async def _streamed_with_a_slow_open(workers, log, then=None):
    from gateway.audit.hooks import AuditHooks

    events: list = []
    worker = workers[MODEL][0].servicer
    async with running_gateway(workers, hooks=AuditHooks(log)) as gw:
        gw.client._transport.app = recording_response_start(gw.app, events)
        before = len(worker.generate_requests)
        call = asyncio.ensure_future(gw.client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True}))
        for _ in range(200):  # the worker starts on the prompt while the open entry is being written
            if len(worker.generate_requests) > before:
                break
            await asyncio.sleep(0.01)
        assert len(worker.generate_requests) == before + 1 and len(log.opened) == 1
        await asyncio.sleep(0.2)
        assert events == [] and not call.done()  # nothing reaches the client before the entry is durable
        log.release.set()
        response = await call
        if then is not None:
            await then(worker)
    return response, events, worker


async def test_a_streams_open_entry_is_written_while_the_worker_starts_and_before_its_first_byte(workers):
    log = SlowOpenLog()
    response, events, _ = await _streamed_with_a_slow_open(workers, log)
    assert response.status_code == 200 and parse_sse(response.text)[-1] == "[DONE]"
    assert events == [("start", 200)]
    [(handle, status)] = log.completed
    assert handle[1] == log.opened[0].request_id and status.value == "ok"
    assert log.requests == []  # completed, not written a second time


async def test_a_streams_open_entry_that_cannot_be_written_is_a_503_and_the_worker_call_is_cancelled():
    async def cancelled(worker) -> None:
        for _ in range(100):
            if worker.generate_requests[-1].request_id in worker.cancelled:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the Generate call was not cancelled")

    log = SlowOpenLog(fail=True)
    async with FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.5)) as slow:  # still generating at the 503
        response, events, _ = await _streamed_with_a_slow_open({MODEL: [slow]}, log, then=cancelled)
    assert response.status_code == 503 and response.json()["error"]["code"] == "audit_unavailable"
    assert events == [("start", 503)]
    assert log.completed == [] and log.requests == []  # the database is down: nothing more is tried


class AloneRecorder(NoopHooks):
    """Notes, per finished request, whether the lifecycle found it the only one being served."""

    def __init__(self) -> None:
        self.alone: list[bool] = []

    async def before_finish(self, ctx) -> None:
        self.alone.append(ctx.alone)


async def test_finishing_requests_are_told_whether_they_are_the_only_one_served():
    hooks = AloneRecorder()
    config = FakeConfig(model=MODEL, token_delay_s=0.02, natural_length=4)
    async with FakeWorker(config) as worker, running_gateway({MODEL: [worker]}, hooks=hooks) as gw:
        body = {"model": MODEL, "messages": USER, "max_tokens": 4}
        assert (await gw.client.post("/v1/chat/completions", json=body)).status_code == 200
        assert hooks.alone == [True]  # the audit may write a lone request's record inline
        answers = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=body) for _ in range(4)))
        assert [a.status_code for a in answers] == [200] * 4
    assert hooks.alone[1:].count(False) >= 3  # all four were in flight together: at most the last was alone
