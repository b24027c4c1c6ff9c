"""The Ray Serve config of the platform: a pure function of the settings and the catalog.

One application `llmaas` (the ingress, at /) and one application per loaded base model (its Engine deployment,
no HTTP route of its own). `llmaas ray config` writes it as YAML for `serve deploy` or a KubeRay RayService; the
running platform applies the same config, declaratively, when a model is loaded or unloaded or a deployment
changes, so Serve updates autoscaling in place and replaces replicas only when their engine settings change."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from llmaas.control.model_catalog import Entry
from llmaas.core.config import Settings
from llmaas.serving.deployments import DeploymentConfig

INGRESS_APP = "llmaas"
MODEL_APP_PREFIX = "llmaas-model-"
ENGINE_DEPLOYMENT = "Engine"
INGRESS_DEPLOYMENT = "Ingress"
POLICY = "llmaas.cluster.autoscaling:engine_load_policy"
# Settings that never go into the config (it is shown by Serve's dashboard and stored by KubeRay): every node
# reads them from its environment (LLMAAS_*).
SECRET_SETTINGS = frozenset({"admin_key", "master_key", "metrics_key", "database_url", "redis_url"})


def app_name(model_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
    if safe != model_id:  # two ids that differ only in replaced characters must not share an application
        safe += "-" + hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return MODEL_APP_PREFIX + safe


def public_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The explicitly set settings (CLI flags) a replica needs, JSON-ready, secrets left to the environment."""
    return {k: str(v) if not isinstance(v, (int, float, bool, str, list, type(None))) else v
            for k, v in overrides.items() if k not in SECRET_SETTINGS and v is not None}


def model_app(settings: Settings, overrides: dict[str, Any], e: Entry) -> dict[str, Any]:
    cfg = DeploymentConfig.of(settings, e)
    replica = {"threads": cfg.threads, "max_seqs": cfg.max_seqs, "max_adapters": cfg.max_adapters,
               "context_size": e.context_length or settings.context_size}
    autoscaling: dict[str, Any] = {
        "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests, "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
        # The engines report every second and the policy looks at the last few: a load step shows within seconds.
        "metrics_interval_s": 1.0, "look_back_period_s": 3.0, "policy": {"policy_function": POLICY},
    }
    if cfg.initial_replicas is not None:
        autoscaling["initial_replicas"] = cfg.initial_replicas
    if cfg.downscale_to_zero_delay_s is not None:
        autoscaling["downscale_to_zero_delay_s"] = cfg.downscale_to_zero_delay_s
    return {
        "name": app_name(e.id),
        "route_prefix": None,  # reached through the ingress only
        "import_path": "llmaas.cluster.apps:engine",
        "args": {"model_id": e.id, "spec": e.source, "settings": public_settings(overrides), "replica": replica},
        "deployments": [{
            "name": ENGINE_DEPLOYMENT,
            "autoscaling_config": autoscaling,
            # As many as the replica has slots: the rest wait at the handles (where the autoscaler counts them)
            # and go to whichever replica frees a slot first, a new one included; past max_queued_requests, 503.
            "max_ongoing_requests": cfg.max_seqs,
            "max_queued_requests": settings.max_queued,
            "ray_actor_options": {"num_cpus": cfg.threads},
            "graceful_shutdown_timeout_s": 30.0,
            "health_check_period_s": 5.0,
        }],
    }


def ingress_app(overrides: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    return {
        "name": INGRESS_APP,
        "route_prefix": "/",
        "import_path": "llmaas.cluster.apps:ingress",
        "args": {"settings": public_settings(overrides)},
        "deployments": [{"name": INGRESS_DEPLOYMENT, "num_replicas": replicas,
                         # Routing, auth and metering are light; the CPUs are the engines'.
                         "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 1000}],
    }


def serve_config(settings: Settings, overrides: dict[str, Any], models: Iterable[Entry]) -> dict[str, Any]:
    """The whole config: `serve deploy`-able (ray.serve.schema.ServeDeploySchema)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [ingress_app(overrides, settings.ray_ingress_replicas),
                         *(model_app(settings, overrides, e) for e in sorted(models, key=lambda e: e.id))],
    }
