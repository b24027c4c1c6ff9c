"""Application builders named by the Serve config's import paths (`llmaas.cluster.apps:ingress`, `:engine`).
Serve calls them with the application's `args` wherever the config is applied."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from llmaas.cluster.config import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT
from llmaas.cluster.replica import EngineReplica


class ServedBy:
    """ASGI middleware: each response names the ingress replica that answered (x-llmaas-ingress), for tracing a
    request through the cluster's logs."""

    def __init__(self, app: Any, replica_id: str) -> None:
        self.app, self._header = app, (b"x-llmaas-ingress", replica_id.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self._header]
            await send(message)

        await self.app(scope, receive, tagged)

    def __getattr__(self, name: str) -> Any:  # Serve reads the app's routes and docs_url
        return getattr(self.app, name)


def engine(args: dict[str, Any]) -> Application:
    return serve.deployment(EngineReplica, name=ENGINE_DEPLOYMENT).bind(
        args["model_id"], args["spec"], args.get("settings", {}), args["replica"])


def ingress(args: dict[str, Any]) -> Application:
    overrides = dict(args.get("settings", {}))

    def build() -> Any:  # runs in each ingress replica
        from llmaas.api.app import create_app
        from llmaas.cluster.control import RayCluster
        from llmaas.core.config import load_settings

        settings = load_settings(**overrides)
        app = create_app(settings, cluster=RayCluster(settings, overrides))
        if settings.console:
            from llmaas.console import mount

            mount(app)
        return ServedBy(app, serve.get_replica_context().replica_id.unique_id)

    class Ingress:
        pass

    return serve.deployment(serve.ingress(build)(Ingress), name=INGRESS_DEPLOYMENT).bind()
