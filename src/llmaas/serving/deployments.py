"""Where a loaded model's engine runs, and how it scales: a *deployment* per base model.

In one process (the default) a model's deployment is its one in-process engine. In Ray mode (llmaas.cluster) it
is a Ray Serve deployment whose replicas Ray places, scales and replaces; the same admin routes show both. A
deployment's settings use Ray Serve's names where it has one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from llmaas.control.model_catalog import Entry
from llmaas.core.config import Settings
from llmaas.core.errors import ConflictError, InvalidRequestError, NotFoundError
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.client import EngineClient
from llmaas.engine.factory import build_engine

if TYPE_CHECKING:
    from llmaas.serving.catalog import ModelLoader

# Autoscaling fields (Ray Serve's autoscaling_config names) and per-replica engine fields.
SCALING_FIELDS = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests", "upscale_delay_s",
                  "downscale_delay_s", "downscale_to_zero_delay_s")
REPLICA_FIELDS = ("threads", "max_seqs", "max_adapters")


@dataclass(frozen=True)
class DeploymentConfig:
    """What a model's deployment runs with: stored changes (the catalog entry's `deployment`) over defaults."""

    min_replicas: int
    max_replicas: int
    initial_replicas: int | None
    target_ongoing_requests: float  # running + waiting sequences per replica the autoscaler aims for
    upscale_delay_s: float
    downscale_delay_s: float
    downscale_to_zero_delay_s: float | None
    threads: int
    max_seqs: int
    max_adapters: int

    @classmethod
    def of(cls, settings: Settings, entry: Entry | None) -> DeploymentConfig:
        stored = dict(entry.deployment) if entry is not None else {}
        max_seqs = stored.get("max_seqs") or (entry.max_seqs if entry is not None else None) or settings.max_seqs
        base: dict[str, Any] = {
            "min_replicas": 1, "max_replicas": 1, "initial_replicas": None,
            # Three quarters of the slots: a replica filling up brings the next one before requests queue, and a
            # steady load of exactly one replica does not flap between one and two (bench/autoscale_sim.py).
            "target_ongoing_requests": max(1.0, round(0.75 * max_seqs)),
            "upscale_delay_s": 3.0, "downscale_delay_s": 60.0,
            "downscale_to_zero_delay_s": None, "threads": settings.threads, "max_seqs": max_seqs,
            "max_adapters": settings.max_adapters,
        }
        base.update({k: v for k, v in stored.items() if k in base and v is not None})
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*SCALING_FIELDS, *REPLICA_FIELDS)}

    def changed(self, changes: dict[str, Any]) -> DeploymentConfig:
        """This config with `changes` applied; 400 naming the field when the result is inconsistent."""
        new = DeploymentConfig(**{**self.to_dict(), **changes})
        if new.min_replicas > new.max_replicas:
            field = "min_replicas" if "min_replicas" in changes else "max_replicas"
            raise InvalidRequestError(f"min_replicas ({new.min_replicas}) is above max_replicas "
                                      f"({new.max_replicas})", param=field)
        if new.initial_replicas is not None and not new.min_replicas <= new.initial_replicas <= new.max_replicas:
            raise InvalidRequestError(f"initial_replicas ({new.initial_replicas}) must lie between min_replicas "
                                      f"({new.min_replicas}) and max_replicas ({new.max_replicas})",
                                      param="initial_replicas")
        return new


class ModelHost(Protocol):
    """Where the engines of loaded models run: this process, or a cluster."""

    local: bool  # engines share this process's memory: a load is checked against it first

    def build(self, settings: Settings, spec: str, entry: Entry) -> EngineClient:
        """The engine serving `entry` (called off the event loop)."""

    def release(self, model_id: str) -> None:
        """After an unload: free what serves `model_id` beyond this process (called off the event loop)."""


class LocalHost:
    """Engines in this process, built by the engine factory."""

    local = True

    def __init__(self, metrics: EngineMetrics | None) -> None:
        self.metrics = metrics

    def build(self, settings: Settings, spec: str, entry: Entry) -> EngineClient:
        return build_engine(settings, spec, self.metrics, entry.id)

    def release(self, model_id: str) -> None:
        pass


class Deployments(Protocol):
    """What the /v1/admin/deployments routes manage."""

    mode: str  # "process" | "ray"

    async def list(self) -> list[dict[str, Any]]: ...
    async def get(self, model: str) -> dict[str, Any]: ...
    def ingress(self) -> list[dict[str, Any]]:
        """The API processes (replicas of the ingress) and their state."""

    async def update(self, model: str, store: Callable[[], Awaitable[Entry]]) -> dict[str, Any]:
        """Store the changed settings (`store`) and apply them to the running deployment."""


class Cluster(Protocol):
    """What the API process needs of a cluster that runs the engines (Ray Serve): where models load, the
    deployments it manages, and one metrics registry that also carries every replica's series."""

    registry: CollectorRegistry

    def host(self) -> ModelHost: ...
    def deployments(self, loader: ModelLoader) -> Deployments: ...
    async def start(self, loader: ModelLoader) -> None:
        """Attach the models the cluster serves now, and keep following it."""

    async def close(self) -> None: ...


class LocalDeployments:
    """Single-process mode: each loaded model is one in-process engine, a deployment of exactly one replica."""

    mode = "process"

    def __init__(self, settings: Settings, loader: ModelLoader) -> None:
        self.settings, self.loader = settings, loader

    def _one(self, model: str) -> dict[str, Any]:
        engine = self.loader.engines.get(model)
        catalog = self.loader.catalog
        entry = catalog.entry(model) if catalog is not None else None
        if engine is None and entry is None:
            raise NotFoundError(f"No deployment for '{model}'. List them with GET /v1/admin/deployments.",
                                param="model")
        cfg = DeploymentConfig.of(self.settings, entry).to_dict()
        replicas = []
        if engine is not None:
            st = engine.stats()
            cfg.update(min_replicas=1, max_replicas=1, initial_replicas=1, max_seqs=engine.info.n_slots)
            replicas.append({"id": "local", "state": "running" if engine.healthy() else "stopping",
                             "running": st.running, "waiting": st.waiting, "adapters": engine.adapters()})
        return {"id": model, "object": "deployment", "mode": self.mode, **self.loader.state(model).to_dict(),
                "config": cfg, "target_replicas": len(replicas), "replicas": replicas}

    def ingress(self) -> list[dict[str, Any]]:
        return [{"id": "local", "state": "running"}]

    async def list(self) -> list[dict[str, Any]]:
        models = set(self.loader.engines) | {m for m, st in self.loader.states.items() if st.status != "unloaded"}
        return [self._one(m) for m in sorted(models)]

    async def get(self, model: str) -> dict[str, Any]:
        return self._one(model)

    async def update(self, model: str, store: Callable[[], Awaitable[Entry]]) -> dict[str, Any]:
        raise ConflictError("This server runs every model in one process, as one replica: replica counts, "
                            "autoscaling and per-replica settings apply in Ray mode (`llmaas serve --ray`). "
                            "Change max_seqs or context_length with PATCH /v1/admin/models/{id} and reload.",
                            param="model")
