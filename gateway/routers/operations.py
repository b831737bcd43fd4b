"""Unauthenticated operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.workers.metrics_relay import relayed_metrics

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process is up and serving HTTP."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """200 once every worker has been polled and at least one model has a ready worker, else 503;
    the body says which models can serve. 503 at once when the gateway is draining for shutdown, so
    balancers stop sending it requests.

    One model's workers being down (crashed, restarting) must not take the gateway out of a load
    balancer: its other models still serve, and that model's requests get 503 with Retry-After.
    """
    ward = request.app.state.ward
    pool = ward.pool
    models = {}
    for name in pool.models():
        handles = pool.handles(name)
        models[name] = {
            "ready": pool.is_ready(name),
            "ready_workers": sum(h.ready for h in handles),
            "workers": len(handles),
        }
    polled = all(h.polled for h in pool.handles())
    draining = ward.shutdown.draining
    ready = polled and any(m["ready"] for m in models.values()) and not draining
    body = {"ready": ready, "draining": draining, "models": models}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """The gateway's own metrics, then every worker's (labelled ``worker``), relayed at scrape time."""
    ward = request.app.state.ward
    own = generate_latest(ward.metrics.registry)
    workers = await relayed_metrics(h.client for h in ward.pool.handles())
    return Response(own + workers, media_type=CONTENT_TYPE_LATEST)
