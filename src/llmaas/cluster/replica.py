"""The engine deployment: one BatchingEngine per replica, serving the requests the ingress routes to it.

LoRA adapters ride on Ray Serve's model multiplexing: a request for an `ft:` model carries its adapter as the
multiplexed model id, Serve routes it to a replica that already holds that adapter when one has room, and a
replica without it loads it from the shared artifact directory on first use (evicting the least recently used
beyond `max_adapters`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve.multiplex import _ModelMultiplexWrapper

from llmaas.cluster.autoscaling import LOAD_METRIC
from llmaas.cluster.board import ReplicaBoard, snapshot
from llmaas.cluster.link import LinkServer, socket_path
from llmaas.core.config import load_settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.client import EngineClient
from llmaas.engine.factory import build_engine
from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import GenerationOutput, GenerationRequest, SamplingParams

log = logging.getLogger("llmaas.cluster")
PUBLISH_EVERY_S = 1.0
LINK_GRACE_S = 25.0  # under the deployment's graceful_shutdown_timeout_s (30 s), after which Serve kills it


class _HeldAdapter:
    """What Serve's multiplexer keeps per adapter; it calls __del__ when it evicts one (GC may call it again)."""

    def __init__(self, engine: EngineClient, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.name, self.loop, self.dropped = engine, name, loop, False

    def __del__(self) -> None:
        if not self.dropped and not self.loop.is_closed():
            self.dropped = True
            asyncio.run_coroutine_threadsafe(self.engine.unload_adapter(self.name), self.loop)


class EngineReplica:
    """A Ray Serve deployment class (wrapped with serve.deployment by llmaas.cluster.apps)."""

    async def __init__(self, model_id: str, spec: str, settings: dict[str, Any], replica: dict[str, Any]) -> None:
        s = load_settings(**settings).model_copy(update=replica)
        logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.model_id = model_id
        self.metrics = EngineMetrics(CollectorRegistry())
        self.engine = await asyncio.to_thread(build_engine, s, spec, self.metrics, model_id)
        await self.engine.start()
        await self._warm_up()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._paths: dict[str, str] = {}
        # Serve's multiplexer caps held adapters at a number fixed where the method is decorated; ours is a
        # per-deployment setting, so the wrapper the decorator would create lazily is created here with it.
        setattr(self, "__serve_multiplex_wrapper",
                _ModelMultiplexWrapper(EngineReplica._hold.__wrapped__, self, s.max_adapters))
        self._ongoing = 0  # generate calls under way, from the handle and the link
        self._link: LinkServer | None = None
        if s.ray_local_link:  # ingresses on this node skip the handle (llmaas.cluster.link)
            self._link = LinkServer(socket_path(self.replica_id), self.generate,
                                    admit=lambda: self._ongoing < self.engine.info.n_slots)
            await self._link.start()
        self._board = ReplicaBoard(s.redis_url) if s.redis_url else None
        self._publisher = asyncio.create_task(self._publish_loop())
        log.info("replica %s of %s ready (%d slots, %d threads)", self.replica_id, model_id, s.max_seqs, s.threads)

    async def _warm_up(self) -> None:
        """One token before Serve marks the replica running: the engine's first decode (graph allocation, its
        prefill-cost measurement) is paid here, not by the first request routed to a new replica."""
        if "completions" not in self.engine.info.capabilities:
            return
        prompt = self.engine.tokenize("Hello") or [0]
        async for _ in self.engine.generate(GenerationRequest("warm-up", prompt, SamplingParams(max_tokens=1))):
            pass

    # -- adapters --------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=8)  # the replica's own cap replaces 8 (see __init__)
    async def _hold(self, name: str) -> _HeldAdapter:
        await self.engine.ensure_adapter(name, self._paths[name])
        return _HeldAdapter(self.engine, name, asyncio.get_running_loop())

    async def _use(self, adapter: str | None, path: str | None) -> None:
        if adapter is None:
            return
        if path is not None:
            self._paths[adapter] = path
        await self._hold(adapter)

    # -- requests --------------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest, adapter_path: str | None) -> AsyncGenerator[
            GenerationOutput, None]:
        self._ongoing += 1  # first, with no await before it: the link's admission counts it at once
        try:
            await self._use(request.adapter, adapter_path)
            async for out in self.engine.generate(request):
                yield out
        finally:
            self._ongoing -= 1

    # Side computations: (adapter, its file) first, then the EngineClient method's own arguments.
    async def embed(self, adapter: str | None, path: str | None, inputs: list[list[int]]) -> list[list[float]]:
        await self._use(adapter, path)
        return await self.engine.embed(inputs, adapter)

    async def score(self, adapter: str | None, path: str | None, tokens: list[int], start: int) -> list[float]:
        await self._use(adapter, path)
        return await self.engine.score(tokens, start, adapter)

    async def score_many(self, adapter: str | None, path: str | None, items: list[ScoreItem],
                         shared: list[int] | None) -> list[list[list[float]]]:
        await self._use(adapter, path)
        return await self.engine.score_many(items, adapter, shared)

    async def load_adapter(self, adapter: str, path: str | None) -> None:
        await self._use(adapter, path)

    async def ping(self) -> str:
        """What a request for a scaled-to-zero model awaits: it makes Serve start a replica."""
        return self.replica_id

    # -- Serve hooks -----------------------------------------------------------------------------
    def record_autoscaling_stats(self) -> dict[str, float]:
        st = self.engine.stats()
        return {LOAD_METRIC: float(st.running + st.waiting)}

    def check_health(self) -> None:
        if self.engine.stopped():
            raise RuntimeError(f"the engine of {self.model_id} stopped")

    def record(self) -> dict[str, Any]:
        st = self.engine.stats()
        return {"id": self.replica_id, "model": self.model_id, "pid": os.getpid(), "running": st.running,
                "waiting": st.waiting,
                "kv_cache_usage": st.kv_cache_usage, "slots": self.engine.info.n_slots,
                "adapters": self.engine.adapters(), "link": self._link.path if self._link is not None else None,
                "t": time.time(), "metrics": snapshot(self.metrics.registry)}

    async def _publish_loop(self) -> None:
        while self._board is not None:
            try:
                await self._board.publish(self.model_id, self.replica_id, self.record())
            except Exception as e:  # a Redis hiccup must not stop the replica serving
                log.warning("replica %s: could not publish its state: %s", self.replica_id, e)
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica, once the requests its handles routed here are done; the
        link's streams, which Serve does not count, get as long (within graceful_shutdown_timeout_s)."""
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.cancel()
        link = getattr(self, "_link", None)
        if link is not None:
            await link.close(LINK_GRACE_S)
