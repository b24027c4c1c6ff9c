"""`llmaas serve --ray`: start (or join) a Ray cluster, prepare the shared database, and deploy the platform's
Serve config; then stay in the foreground until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from llmaas.cluster.ray_env import check_shared_state, haproxy_env, require_ray, stop_haproxy
from llmaas.control.db.database import Database
from llmaas.control.model_catalog import Entry, ModelCatalog
from llmaas.core.config import Settings
from llmaas.core.model_files import bundled, model_id_for

log = logging.getLogger("llmaas.cluster")


def register_models(db: Database, settings: Settings) -> list[Entry]:
    """The --model specs join the catalog (if not there yet) and are marked loaded; returns the loaded set."""
    from llmaas.serving.catalog import default_capabilities, source_path

    catalog = ModelCatalog(db)
    catalog.reload()
    with db.session() as s:
        for spec in settings.models:
            b = bundled(spec)
            source_type, source = ("package", b.spec) if b else ("gguf_path", str(Path(spec).resolve()))
            model_id = model_id_for(spec)
            if catalog.entry(model_id) is None:
                path = source_path(source_type, source)
                catalog.register(s, None, id=model_id, source_type=source_type, source=source,
                                 description=b.description if b else "",
                                 capabilities=default_capabilities(source_type, source, path), load_at_start=True)
            elif not catalog.entry(model_id).load_at_start:  # type: ignore[union-attr]
                catalog.update(s, None, model_id, load_at_start=True)
    catalog.reload()
    return [e for e in catalog.entries() if e.load_at_start]


def prepare(settings: Settings) -> list[Entry]:
    """Migrate, create the admin key (printed once) and register the models: once, before any replica starts."""
    from llmaas.control.auth.keys import KeyService

    db = Database(settings.resolved_database_url())
    try:
        db.migrate()
        secret = KeyService(db).bootstrap(settings.admin_key)
        if secret:
            print("\n" + "=" * 72 + "\nllmaas: first start, created the platform admin key (shown only once):\n\n"
                  f"    {secret}\n\nKeep it safe.\n" + "=" * 72 + "\n", flush=True)
        return register_models(db, settings)
    finally:
        db.close()


def deploy(settings: Settings, overrides: dict[str, Any], models: list[Entry]) -> dict[str, Any]:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from llmaas.cluster.config import serve_config

    config = serve_config(settings, overrides, models)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    return config


def wait_running(app: str, timeout_s: float = 600) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = serve.status().applications.get(app)
        if st is not None and st.status == "RUNNING":
            return
        if st is not None and st.status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {app} failed to deploy: {st.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application {app} not running after {timeout_s:.0f} s")


def serve_ray(settings: Settings, overrides: dict[str, Any]) -> None:
    require_ray()
    check_shared_state(settings)
    import ray
    from ray import serve

    from llmaas.cluster.config import INGRESS_APP

    address = os.environ.get("RAY_ADDRESS")
    front = haproxy_env() if not address and settings.ray_haproxy else {}
    os.environ.update(front)  # before ray.init: the local cluster's processes inherit it
    models = prepare(settings)
    # Local: the replicas inherit this process's environment (LLMAAS_* settings, secrets included). "local", not
    # None: without an address ray.init() joins the cluster of the last `ray start` on this machine, which this
    # process would then treat as its own and shut down on exit.
    ray.init(address=address or "local", logging_level=logging.WARNING, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    deploy(settings, overrides, models)
    log.info("deploying llmaas on Ray Serve (%s): ingress and %s", address or "a local cluster",
             ", ".join(e.id for e in models) or "no model")
    wait_running(INGRESS_APP)
    log.info("llmaas (Ray mode) serving on http://%s:%d/v1 (HTTP through %s) with %d job workers", settings.host,
             settings.port, "HAProxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Serve's proxy",
             settings.workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if not address:  # a cluster we started goes with us; a shared one keeps serving
            serve.shutdown()
            ray.shutdown()
            stop_haproxy(front)
