"""The FastAPI app factory. Engines are built here (or injected by tests), never at import."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from llmaas import __version__
from llmaas.api.drain import Drain, DrainMiddleware
from llmaas.api.errors import install_error_handlers
from llmaas.api.input_guard import InputGuardMiddleware
from llmaas.api.metrics_auth import MetricsAuthMiddleware
from llmaas.api.middleware import RequestIdMiddleware
from llmaas.api.openapi import without_422
from llmaas.api.routers import (
    admin,
    admin_deployments,
    admin_models,
    batches,
    chat,
    completions,
    embeddings,
    evals,
    files,
    fine_tuning,
    health,
    models,
    responses,
    stored_completions,
    usage,
)
from llmaas.control.plane import ControlPlane
from llmaas.core.config import Settings
from llmaas.core.metrics import ControlMetrics, EngineMetrics
from llmaas.engine.client import EngineClient
from llmaas.serving.batches import BatchRunner
from llmaas.serving.catalog import ModelLoader
from llmaas.serving.deployments import Cluster, LocalDeployments
from llmaas.serving.models import ServedModels

log = logging.getLogger("llmaas")


def create_app(
    settings: Settings,
    engines: dict[str, EngineClient] | None = None,
    engine_metrics: EngineMetrics | None = None,
    *,
    cluster: Cluster | None = None,
) -> FastAPI:
    """Build the app. Tests inject `engines` (and the `engine_metrics` they were built with). With `cluster`
    (Ray mode) the engines run in the cluster's replicas and this process only routes to them."""
    engine_metrics = engine_metrics or EngineMetrics(CollectorRegistry())
    registry = cluster.registry if cluster is not None else engine_metrics.registry
    control_metrics = ControlMetrics(registry, tenant_labels=settings.metrics_tenant_labels)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engines is None and cluster is None:
            from llmaas.engine.factory import build_engines

            app.state.engines = build_engines(settings, engine_metrics)
        if settings.auth:
            app.state.control = await ControlPlane.open(settings, control_metrics, list(app.state.engines))
        else:
            log.warning("auth is disabled (LLMAAS_AUTH=false): no API keys, limits or metering")
        cp = app.state.control
        loader = ModelLoader(settings, app.state.engines, engine_metrics, cp.models if cp else None,
                             cluster.host() if cluster is not None else None)
        app.state.served = ServedModels(app.state.engines, cp, loader)
        app.state.deployments = (cluster.deployments(loader) if cluster is not None
                                 else LocalDeployments(settings, loader))
        for e in app.state.engines.values():
            await e.start()
            log.info("model %s ready (context %d, %d sequence slots)", e.info.model_id,
                     e.info.context_size, e.info.n_slots)
        if cluster is not None:
            await cluster.start(loader)
        elif cp is not None:
            await loader.start_catalog(settings.models if engines is None else [])
        # Everything loaded so far lives as long as the process: move it out of the collector's sight.
        # Full collections over it paused the event loop for 70-140 ms (every request waited, /health too).
        gc.collect()
        gc.freeze()
        # Batch lines run here, in the process that holds the engines, at a priority below interactive requests.
        runner = BatchRunner(app.state.served, cp, settings) if cp is not None else None
        if runner is not None:
            runner.start()
        app.state.batch_runner = runner
        try:
            yield
        finally:
            if runner is not None:
                await runner.close()  # before the control plane closes: a batch in progress is handed back
            if cluster is not None:
                await cluster.close()
            await loader.close()
            if app.state.control is not None:
                await app.state.control.close()  # flushes metering: no usage record is lost on a clean stop

    app = FastAPI(title="llmaas", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM-as-a-Service")
    app.state.settings = settings
    app.state.registry = registry
    app.state.engine_metrics = engine_metrics
    app.state.engines = engines or {}
    app.state.control = None
    app.state.served = ServedModels(app.state.engines, None)  # replaced once the lifespan has built both
    app.state.deployments = None
    install_error_handlers(app)
    # Starlette runs the last-added middleware first: proxy headers, the request id, the guard, the drain, so
    # even a refused body or a request refused while draining answers with an x-request-id.
    app.state.drain = Drain()
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(InputGuardMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsAuthMiddleware, settings=settings)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origin_list():  # off by default; API keys travel in a header, never in cookies
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list(), allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["*"],  # the openai SDK sends its own (x-stainless-*)
                           expose_headers=["x-request-id", "retry-after", *(
                               f"x-ratelimit-{w}-{k}" for w in ("limit", "remaining", "reset")
                               for k in ("requests", "tokens"))], max_age=600)
    if settings.trusted_proxy_list():
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list())
    for r in (health.router, models.router, chat.router, completions.router, embeddings.router, usage.router,
              files.router, batches.router, fine_tuning.router, evals.router, stored_completions.router,
              responses.router, admin.router,
              admin_models.router, admin_deployments.router):
        app.include_router(r)
    without_422(app)
    return app
