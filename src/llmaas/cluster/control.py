"""The ingress side of Ray mode: where catalog models load (their Serve applications), the deployments the admin
API manages, and the replicas this ingress routes to, followed every second."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from llmaas.cluster.board import ReplicaBoard, families
from llmaas.cluster.config import ENGINE_DEPLOYMENT, INGRESS_APP, INGRESS_DEPLOYMENT, app_name, serve_config
from llmaas.cluster.remote import RemoteEngine
from llmaas.control.model_catalog import Entry
from llmaas.core.config import Settings
from llmaas.core.errors import NotFoundError
from llmaas.core.metrics import ClusterMetrics
from llmaas.engine.client import EngineClient
from llmaas.engine.factory import build_tokenizer
from llmaas.serving.catalog import ModelLoader, source_path
from llmaas.serving.deployments import DeploymentConfig, ModelHost

log = logging.getLogger("llmaas.cluster")
FOLLOW_EVERY_S = 1.0
# A model this process just deployed may not show in Serve's status for a moment: not detached before this.
DEPLOY_GRACE_S = 15.0
STATES = {"STARTING": "starting", "PENDING_MIGRATION": "running", "RUNNING": "running", "RECOVERING": "starting",
          "STOPPING": "stopping"}


def _state(state: Any) -> str:
    """Serve's replica state (an enum, or its value once serialised) in the API's words."""
    s = str(getattr(state, "value", state))
    return STATES.get(s, s.lower())


class _ReplicaSeries:
    """A Prometheus collector: every replica's own series, as last published on the board."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster

    def collect(self) -> Any:
        yield from families(self.cluster.records)


class RayCluster:
    def __init__(self, settings: Settings, overrides: dict[str, Any]) -> None:
        self.settings, self.overrides = settings, overrides
        self.registry = CollectorRegistry()
        self.metrics = ClusterMetrics(self.registry)
        self.registry.register(_ReplicaSeries(self))
        self.records: list[dict[str, Any]] = []  # the board: running replicas' load, adapters, series
        self.apps: dict[str, dict[str, Any]] = {}  # model id -> its application's details
        self.ingress: list[dict[str, Any]] = []  # the API (ingress) replicas
        self.loader: ModelLoader | None = None
        self._board = ReplicaBoard(settings.redis_url) if settings.redis_url else None
        self._deploying: dict[str, float] = {}  # model -> when this process deployed it, until Serve shows it
        self._task: asyncio.Task | None = None

    def host(self) -> ModelHost:
        return RayHost(self)

    def deployments(self, loader: ModelLoader) -> RayDeployments:
        return RayDeployments(self, loader)

    async def start(self, loader: ModelLoader) -> None:
        self.loader = loader
        if self.settings.workers and self.settings.auth:
            from llmaas.cluster.workers import ensure_workers

            await asyncio.to_thread(ensure_workers, self.overrides, self.settings.workers,
                                    num_cpus=self.settings.ray_worker_cpus, num_gpus=self.settings.ray_worker_gpus)
        await self.refresh()
        self._task = asyncio.create_task(self._follow(), name="llmaas-cluster-follow")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._board is not None:
            await self._board.close()

    # -- following the cluster -------------------------------------------------------------------
    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                await self.refresh()
            except Exception as e:  # the next round tries again; routing keeps what it had
                log.warning("could not read the cluster's state: %s", e)

    async def refresh(self) -> None:
        details = await asyncio.to_thread(lambda: _get_global_client().get_serve_details())
        apps: dict[str, dict[str, Any]] = {}
        for name, app in (details.get("applications") or {}).items():
            args = ((app.get("deployed_app_config") or {}).get("args")) or {}
            if "model_id" in args and name == app_name(args["model_id"]):
                apps[args["model_id"]] = app
        self.apps = apps
        ingress = ((details.get("applications") or {}).get(INGRESS_APP) or {}).get("deployments") or {}
        self.ingress = [{"id": r.get("replica_id"), "state": _state(r.get("state"))}
                        for r in (ingress.get(INGRESS_DEPLOYMENT) or {}).get("replicas") or ()]
        if self._board is not None:
            self.records = await self._board.records()
        self._export(apps)
        assert self.loader is not None
        loader = self.loader
        new = [m for m, app in apps.items() if m not in loader.engines and app.get("status") != "DELETING"
               and loader.state(m).status not in ("loading", "unloading")]
        catalog = loader.catalog
        if catalog is not None and any(catalog.entry(m) is None for m in new):
            # Another ingress registered and deployed it: its entry is in the database before this process's
            # periodic catalog reload, and routing must not wait for that (a 404 meanwhile).
            await asyncio.to_thread(catalog.reload)
        for model in new:
            entry = catalog.entry(model) if catalog is not None else None
            if entry is not None:
                loader.attach(model, await asyncio.to_thread(self.remote, entry))
        for model in apps:
            self._deploying.pop(model, None)
        for model in list(loader.engines):
            gone = model not in apps or apps[model].get("status") == "DELETING"
            if gone and time.monotonic() - self._deploying.get(model, 0) > DEPLOY_GRACE_S \
                    and loader.state(model).status == "ready":
                engine = loader.detach(model)
                if engine is not None:
                    await engine.shutdown()

    def _export(self, apps: dict[str, dict[str, Any]]) -> None:
        self.metrics.replicas.clear()
        self.metrics.replica_load.clear()
        for model in apps:
            counts = {"starting": 0, "running": 0, "stopping": 0}
            for r in self.replicas(model):
                counts[r["state"]] = counts.get(r["state"], 0) + 1
                if r["state"] == "running":
                    self.metrics.replica_load.labels(model, r["id"]).set(r["running"] + r["waiting"])
            for state, n in counts.items():
                self.metrics.replicas.labels(model, state).set(n)

    def replicas(self, model: str) -> list[dict[str, Any]]:
        """Each replica of the model's deployment: Serve's view (id, state) with its engine's load."""
        app = self.apps.get(model) or {}
        dep = (app.get("deployments") or {}).get(ENGINE_DEPLOYMENT) or {}
        board = {r["id"]: r for r in self.records if r.get("model") == model}
        out = []
        for r in dep.get("replicas") or ():
            rid = r.get("replica_id")
            b = board.get(rid, {})
            out.append({"id": rid, "state": _state(r.get("state")),
                        "node_id": r.get("node_id"), "pid": b.get("pid"), "running": b.get("running", 0),
                        "waiting": b.get("waiting", 0), "slots": b.get("slots", 0), "link": b.get("link"),
                        "adapters": b.get("adapters", [])})
        return out

    def target_replicas(self, model: str) -> int | None:
        dep = ((self.apps.get(model) or {}).get("deployments") or {}).get(ENGINE_DEPLOYMENT) or {}
        return dep.get("target_num_replicas")

    # -- applying the config ---------------------------------------------------------------------
    def apply(self, add: Entry | None = None, remove: str | None = None) -> None:
        """Deploy the config for the catalog's loaded models (plus `add`, minus `remove`), declaratively: Serve
        changes only what differs. Blocking (run off the event loop)."""
        assert self.loader is not None and self.loader.catalog is not None
        catalog = self.loader.catalog
        catalog.reload()
        models = {e.id: e for e in catalog.entries() if e.load_at_start}
        if add is not None:
            models[add.id] = add
        if remove is not None:
            models.pop(remove, None)
        config = serve_config(self.settings, self.overrides, models.values())
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))

    def remote(self, e: Entry) -> RemoteEngine:
        """The engine client of a deployed model (its tokenizer built here: vocabulary only)."""
        cfg = DeploymentConfig.of(self.settings, e)
        s = self.settings.model_copy(update={"max_seqs": cfg.max_seqs,
                                             "context_size": e.context_length or self.settings.context_size})
        front = build_tokenizer(s, str(source_path(e.source_type, e.source)), e.id)
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name(e.id), _check_exists=False)
        node = ray.get_runtime_context().get_node_id() if self.settings.ray_local_link else None
        return RemoteEngine(e.id, front, handle, cold_start_s=self.settings.cold_start_timeout_s,
                            replicas=lambda: self.replicas(e.id), metrics=self.metrics, node_id=node)


class RayHost:
    """Loading a catalog model in Ray mode deploys its application; unloading removes it."""

    local = False

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster

    def build(self, settings: Settings, spec: str, entry: Entry) -> EngineClient:
        self.cluster._deploying[entry.id] = time.monotonic()
        self.cluster.apply(add=entry)
        return self.cluster.remote(entry)

    def release(self, model_id: str) -> None:
        self.cluster.apply(remove=model_id)


class RayDeployments:
    mode = "ray"

    def __init__(self, cluster: RayCluster, loader: ModelLoader) -> None:
        self.cluster, self.loader = cluster, loader

    def _one(self, model: str) -> dict[str, Any]:
        catalog = self.loader.catalog
        entry = catalog.entry(model) if catalog is not None else None
        if entry is None or (model not in self.cluster.apps and model not in self.loader.engines):
            raise NotFoundError(f"No deployment for '{model}'. List them with GET /v1/admin/deployments.",
                                param="model")
        return {"id": model, "object": "deployment", "mode": self.mode, **self.loader.state(model).to_dict(),
                "application": app_name(model), "config": DeploymentConfig.of(self.cluster.settings, entry).to_dict(),
                "target_replicas": self.cluster.target_replicas(model), "replicas": self.cluster.replicas(model)}

    async def list(self) -> list[dict[str, Any]]:
        out = []
        for model in sorted(set(self.cluster.apps) | set(self.loader.engines)):
            try:
                out.append(self._one(model))
            except NotFoundError:
                continue
        return out

    async def get(self, model: str) -> dict[str, Any]:
        return self._one(model)

    def ingress(self) -> list[dict[str, Any]]:
        return self.cluster.ingress

    async def update(self, model: str, store: Callable[[], Awaitable[Entry]]) -> dict[str, Any]:
        self._one(model)  # 404 before anything is stored
        entry = await store()
        await asyncio.to_thread(self.cluster.apply, entry if model in self.loader.engines else None)
        await self.cluster.refresh()
        return self._one(model)
