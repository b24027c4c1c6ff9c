"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmaas.api.openapi import HEALTH, METRICS, READY

router = APIRouter()


@router.get("/health", responses=HEALTH)
async def health(request: Request) -> JSONResponse:
    """Liveness: 503 when a model's engine has stopped and did not come back, so a supervisor restarts us."""
    down = [name for name, e in request.app.state.engines.items() if e.stopped()]
    if down:
        return JSONResponse({"status": "unhealthy", "stopped": down}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses=READY)
async def ready(request: Request) -> JSONResponse:
    """Readiness: 503 until every model is loaded, and while the server drains to stop."""
    engines = request.app.state.engines
    states = {name: e.healthy() for name, e in engines.items()}
    if request.app.state.drain.draining:
        return JSONResponse({"status": "draining", "models": states}, status_code=503)
    ok = bool(engines) and all(states.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "models": states}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=METRICS)
async def metrics(request: Request) -> Response:
    for e in request.app.state.engines.values():  # refresh gauges that only move between steps
        s = e.stats()
        m = request.app.state.engine_metrics
        m.running.labels(e.info.model_id).set(s.running)
        m.waiting.labels(e.info.model_id).set(s.waiting)
        m.kv_usage.labels(e.info.model_id).set(s.kv_cache_usage)
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
