"""The gateway application: ``create_app(settings, ...)`` builds the FastAPI app.

Seams for later layers, all optional:
- ``authenticator``: any :class:`gateway.auth.authenticator.Authenticator` (default: static API keys
  from the settings);
- ``hooks``: a :class:`gateway.hooks.RequestHooks` (quotas, audit; default: no-op);
- ``routers``: extra APIRouters to mount (admin APIs);
- ``error_converters``: exception type -> OpenAIError converters for errors other layers raise
  (e.g. from a hook), so they leave in OpenAI's shape and reach ``on_failure`` and the metrics;
- ``connect``: the WorkerClient factory per worker address (default: gRPC channels; tests and
  in-process engines pass their own);
- ``resolver``: how models' ``dns`` names become worker addresses (default: the system resolver);
- ``policy``: a :class:`gateway.policy.team_policy.TeamPolicy`: which models a caller's team may use
  and the scheduling class and weight its Generate calls carry (default: every model, class 0, weight 1).

An authenticator, hooks or policy object with ``async startup()`` / ``async shutdown()`` methods has
them awaited when the app starts and stops (connection pools, background tasks).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from gateway.auth.authenticator import Authenticator
from gateway.http.body_limit import BodyLimitMiddleware
from gateway.http.drain_gate import DrainGate
from gateway.http.error_boundary import GatewayApp
from gateway.http.fast_lane import direct_routes
from gateway.http.error_handlers import ErrorConverter, install_error_handlers
from gateway.http.openapi import gateway_openapi
from gateway.hooks import NoopHooks, RequestHooks
from gateway.metrics import GatewayMetrics, WorkerPoolCollector
from gateway.policy.team_policy import OpenTeamPolicy, TeamPolicy
from gateway.routers import openai as openai_routes
from gateway.routers import operations
from gateway.serving.chat import ChatService
from gateway.serving.completions import CompletionService
from gateway.serving.dispatch import Dispatcher
from gateway.serving.embeddings import EmbeddingService
from gateway.serving.lifecycle import Lifecycle
from gateway.serving.shutdown import ServerShutdown
from gateway.serving.text_generation import GenerationService
from gateway.settings import GatewaySettings
from gateway.static_auth import StaticKeyAuthenticator
from gateway.workers.channels import InsecureWorkerChannel, open_channel, worker_host
from gateway.workers.client import GrpcWorkerClient, WorkerClient
from gateway.workers.discovery import DnsDiscovery, Resolver
from gateway.workers.pool import WorkerPool

log = logging.getLogger("ward.gateway")


@dataclass
class GatewayServices:
    """What routes reach through ``request.app.state.ward`` (built at startup)."""

    settings: GatewaySettings
    authenticator: Authenticator
    hooks: RequestHooks
    metrics: GatewayMetrics
    pool: WorkerPool
    lifecycle: Lifecycle
    shutdown: ServerShutdown
    dispatcher: Dispatcher
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingService
    policy: TeamPolicy
    started_at: int = field(default_factory=lambda: int(time.time()))

    def model_card(self, name: str) -> dict[str, Any]:
        """A /v1/models entry: OpenAI's fields, whether a worker can serve it now (``ready``), and the
        context length and weight format (``quantization``, ``kv_cache_dtype``) once a worker reported them."""
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.started_at, "owned_by": "ward",
                                "ready": self.pool.is_ready(name)}
        info = self.pool.model_info(name)
        if info is not None and info.max_model_len:
            card["max_model_len"] = info.max_model_len
        if info is not None and info.quantization:  # how the worker holds the weights and KV cache
            card["quantization"] = info.quantization
            card["kv_cache_dtype"] = info.kv_cache_dtype or "auto"
        return card


def grpc_connector(settings: GatewaySettings) -> Callable[[str], WorkerClient]:
    """The default WorkerClient factory: one gRPC channel per address, TLS per ``auth.worker_tls``."""
    tls = settings.auth.worker_tls
    allow_insecure = settings.auth.insecure_worker_channel
    multiplex = settings.routing.multiplex

    def connect(address: str) -> WorkerClient:
        return GrpcWorkerClient(address, open_channel(address, tls=tls, allow_insecure=allow_insecure),
                                multiplex=multiplex)

    return connect


def check_worker_channels(settings: GatewaySettings) -> None:
    """Fails fast (before serving) when a worker would be reached in plaintext over a network."""
    from gateway.auth.settings import is_loopback_host

    if settings.auth.worker_tls is not None or settings.auth.insecure_worker_channel:
        return
    for model, route in settings.models.items():
        for address in [*route.workers, *route.dns]:
            if not is_loopback_host(worker_host(address)):
                raise InsecureWorkerChannel(
                    f"worker {address} of model `{model}` is not on this host: configure auth.worker_tls "
                    "(or set auth.insecure_worker_channel, never in production)"
                )


NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False, "auto_configure": False}


async def _call_optional(component: object, name: str) -> None:
    method = getattr(component, name, None)
    if callable(method):
        await method()


def create_app(
    settings: GatewaySettings,
    *,
    authenticator: Authenticator | None = None,
    hooks: RequestHooks | None = None,
    routers: Sequence[APIRouter] = (),
    error_converters: Mapping[type[Exception], ErrorConverter] | None = None,
    connect: Callable[[str], WorkerClient] | None = None,
    registry: CollectorRegistry | None = None,
    resolver: Resolver | None = None,
    policy: TeamPolicy | None = None,
) -> FastAPI:
    """The gateway app; workers are connected and polled from startup until shutdown.

    Raises InsecureWorkerChannel when a remote worker has no TLS configured (and the default
    gRPC connector is used).
    """
    if connect is None:
        check_worker_channels(settings)
        connect = grpc_connector(settings)
    if authenticator is None:
        keys = {key.get_secret_value(): team for key, team in settings.api_keys.items()}
        authenticator = StaticKeyAuthenticator(keys, admin_key=settings.auth.admin_key)
        if not keys and not settings.auth.admin_key:
            log.warning("no API keys configured: every /v1 request will be refused with 401")
    hooks = hooks or NoopHooks()
    policy = policy or OpenTeamPolicy()
    metrics = GatewayMetrics(registry)
    shutdown = ServerShutdown()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routes = {name: route.workers for name, route in settings.models.items()}
        pool = WorkerPool(routes, connect, settings.routing)
        dns_names = {name: route.dns for name, route in settings.models.items()}
        discovery = DnsDiscovery(pool, dns_names, resolver=resolver, refresh_s=settings.routing.dns_refresh_s)
        lifecycle = Lifecycle(hooks, metrics, routes, shutdown)
        dispatcher = Dispatcher(pool, hooks)
        generation = GenerationService(pool, dispatcher, lifecycle, metrics, policy)
        app.state.ward = GatewayServices(
            settings=settings,
            authenticator=authenticator,
            hooks=hooks,
            metrics=metrics,
            pool=pool,
            lifecycle=lifecycle,
            shutdown=shutdown,
            dispatcher=dispatcher,
            chat=ChatService(generation),
            completions=CompletionService(generation),
            embeddings=EmbeddingService(generation, dispatcher, lifecycle),
            policy=policy,
        )
        collector = WorkerPoolCollector(pool)
        metrics.registry.register(collector)
        await discovery.start()
        await pool.start()
        for component in (authenticator, hooks, policy):
            await _call_optional(component, "startup")
        try:
            yield
        finally:
            for component in (policy, hooks, authenticator):
                await _call_optional(component, "shutdown")
            await discovery.close()
            await pool.close()
            metrics.registry.unregister(collector)

    app = GatewayApp(
        title="Ward gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.openapi else None,
        # FastAPI's OpenTelemetry hooks stay off: they would record validation failures (which can
        # quote request bodies, i.e. patient data) and cost time on every request. Ward exports
        # Prometheus metrics instead and sends nothing out.
        telemetry=NO_TELEMETRY,
    )
    install_error_handlers(app, error_converters)
    # Outermost last: the body limit answers before anything else, then the drain gate.
    app.add_middleware(DrainGate, shutdown=shutdown)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.include_router(operations.router)
    app.include_router(openai_routes.router)
    app.direct_routes = direct_routes(openai_routes.router)  # the inference routes skip routing (FastLane)
    for router in routers:
        app.include_router(router)
    app.openapi = lambda: gateway_openapi(app)  # type: ignore[method-assign]
    app.state.shutdown = shutdown  # for the server: SIGTERM drains (gateway.http.server)
    return app
