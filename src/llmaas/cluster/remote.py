"""RemoteEngine: the EngineClient of a model whose engine runs in Ray Serve replicas.

Prompts are tokenized here, in the ingress, by a vocabulary-only engine (no weights), as vLLM's API server does;
token ids go to a replica and output deltas stream back: over a Unix socket to a replica on this node with a free
slot (llmaas.cluster.link), else through the deployment's handle, which routes and queues. A replica that dies
mid-stream ends its streams with an error output carrying the tokens already produced, so they are metered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from llmaas.cluster import link
from llmaas.core.errors import EngineUnavailableError, LlmaasError, ModelNotReadyError, OverloadedError
from llmaas.core.metrics import ClusterMetrics
from llmaas.engine.chat_template import ChatMessage
from llmaas.engine.client import EngineClient
from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import EngineStats, GenerationOutput, GenerationRequest, Places

REPLICA_LOST = ("the replica serving this request stopped before the answer was complete; the tokens produced so "
                "far are billed; retry the request")



class RemoteEngine:
    def __init__(self, model_id: str, front: EngineClient, handle: Any, *, cold_start_s: float,
                 replicas: Callable[[], list[dict[str, Any]]], metrics: ClusterMetrics | None = None,
                 node_id: str | None = None) -> None:
        """front: a vocabulary-only engine (never started); handle: the Engine deployment's handle;
        replicas: the replicas the ingress last saw (state, load, node, link), refreshed by the cluster;
        node_id: this process's Ray node, whose replicas are reached over their link (None: never)."""
        self.model_id, self.front, self._handle = model_id, front, handle
        self.info = front.info
        self._cold_start_s, self._replicas, self._metrics = cold_start_s, replicas, metrics
        self._node_id = node_id
        self._paths: dict[str, str] = {}
        self._inflight: dict[str, int] = {}  # this ingress's link streams per replica, exact between board updates

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        """Frees this process's tokenizer; the deployment itself is removed by an unload, not here."""
        await self.front.shutdown()

    # -- tokens: local --------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.front.tokenize(text, special=special)

    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]:
        return self.front.tokenize_chat(messages)

    async def tokenize_chat_async(self, messages: list[ChatMessage]) -> list[int]:
        return await self.front.tokenize_chat_async(messages)

    async def tokenize_many(self, texts: list[str], *, special: bool = False) -> list[list[int]]:
        return await self.front.tokenize_many(texts, special=special)

    def token_id(self, key: str) -> int | None:
        return self.front.token_id(key)

    def eog_tokens(self) -> list[int]:
        return self.front.eog_tokens()

    # -- generation: in a replica -----------------------------------------------------------------
    def _running(self) -> int:
        return sum(1 for r in self._replicas() if r.get("state") == "running")

    async def ready(self) -> None:
        if self._running() > 0:
            return
        # No replica runs: a call queued at the handle makes Serve start one. The caller waits for it (a stream
        # sees it as time to first token), up to the bound, then gets a 503 that says when to retry.
        t0 = time.monotonic()
        resp = self._handle.ping.remote()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_await(resp))), self._cold_start_s)
        except TimeoutError:
            resp.cancel()
            raise ModelNotReadyError(self.model_id, f"starting a replica (none ready after {self._cold_start_s:g} s)",
                                     retry_after_s=10) from None
        except BackPressureError as e:
            raise self._error(e) from e
        if self._metrics is not None:
            self._metrics.cold_starts.labels(self.model_id).inc()
            self._metrics.cold_start_seconds.labels(self.model_id).observe(time.monotonic() - t0)

    def check_capacity(self, n: int = 1) -> None:
        """Capacity is the replicas' (and Serve's queue bound, max_queued_requests, answered with 503)."""

    def reserve(self, n: int = 1) -> Places:
        """Nothing to hold here: a replica's own admission decides. A stream's first chunk is made before its
        status line (serving.sequences.started), so a replica's refusal is still a 503, not an error frame."""
        return Places(n)

    def _call(self, adapter: str | None, stream: bool = False) -> Any:
        return self._handle.options(stream=stream, multiplexed_model_id=adapter or "")

    def _local(self, adapter: str | None) -> list[dict[str, Any]]:
        """The running replicas on this node with a free slot, holding the adapter of an `ft:` model, least loaded
        first. A replica's load is what it last published or, when higher, what this ingress has sent it since."""
        if self._node_id is None:
            return []
        loads = []
        for r in self._replicas():
            if r.get("state") != "running" or not r.get("link") or r.get("node_id") != self._node_id or \
                    (adapter and adapter not in r.get("adapters", ())):
                continue
            load = max(r.get("running", 0) + r.get("waiting", 0), self._inflight.get(r["id"], 0))
            if load < r.get("slots", 0):
                loads.append((load, len(loads), r))
        return [r for _, _, r in sorted(loads)]

    def _routed(self, route: str) -> None:
        if self._metrics is not None:
            self._metrics.engine_routes.labels(self.model_id, route).inc()

    async def generate(self, request: GenerationRequest,
                       places: Places | None = None) -> AsyncGenerator[GenerationOutput, None]:
        path = self._paths.get(request.adapter) if request.adapter else None
        for replica in self._local(request.adapter):  # the next one when a replica answers that it is full
            rid = replica["id"]
            self._inflight[rid] = self._inflight.get(rid, 0) + 1
            try:
                opened = await self._open_link(replica["link"], request, path)
                if opened is not None:
                    self._routed("link")
                    async for out in self._over_link(*opened, request):
                        yield out
                    return
            finally:
                self._inflight[rid] -= 1
        self._routed("handle")
        resp = self._call(request.adapter, stream=True).generate.remote(request, path)
        produced, finished = 0, False
        try:
            async for out in resp:
                produced += len(out.token_ids)
                finished = out.finished
                yield out
                if finished:
                    return
        except RayActorError:
            finished = True
            yield GenerationOutput("", [], None, len(request.prompt_tokens), produced, finish_reason="error",
                                   error=REPLICA_LOST)
        except Exception as e:
            raise self._error(e) from e
        finally:
            if not finished:
                resp.cancel()  # the client went away: the replica aborts the sequence

    async def _open_link(self, path: str, request: GenerationRequest, adapter_path: str | None) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter, GenerationOutput] | None:
        """Sends the request over the replica's link and waits for its first output. None, for the handle to
        route it, when the replica is gone or stopping or answers that its slots are full."""
        try:
            reader, writer = await link.connect(path)
        except OSError:
            return None
        try:
            await link.send(writer, (request, adapter_path))
            first = await link.receive(reader)
        except (OSError, asyncio.IncompleteReadError):
            first = None  # nothing produced yet: safe to send elsewhere
        except BaseException:
            writer.close()
            raise
        if isinstance(first, GenerationOutput):
            return reader, writer, first
        writer.close()
        if isinstance(first, LlmaasError):
            raise first
        return None

    async def _over_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: GenerationOutput,
                         request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        out, produced = first, 0
        try:
            while True:
                produced += len(out.token_ids)
                yield out
                if out.finished:
                    return
                out = await link.receive(reader)
                if isinstance(out, LlmaasError):
                    raise out
        except (OSError, asyncio.IncompleteReadError):  # the replica died: its socket ended early
            yield GenerationOutput("", [], None, len(request.prompt_tokens), produced, finish_reason="error",
                                   error=REPLICA_LOST)
        finally:
            writer.close()  # before the end: the client went away, and the replica aborts the sequence

    async def abort(self, request_id: str) -> None:
        """Streams are aborted by cancelling their call (closing the generator)."""

    async def _side(self, method: str, adapter: str | None, *args: Any) -> Any:
        path = self._paths.get(adapter) if adapter else None
        try:
            return await getattr(self._call(adapter), method).remote(adapter, path, *args)
        except Exception as e:
            raise self._error(e) from e

    def _error(self, e: Exception) -> Exception:
        """What a failed call raises here: a replica's own error as itself, Serve's queue bound as 503 with
        Retry-After, anything else (a lost replica, Ray's own faults) as the engine being unavailable."""
        if isinstance(e, LlmaasError):
            return e
        if isinstance(e, BackPressureError):
            return OverloadedError(f"model {self.model_id} is at capacity; retry shortly")
        cause = getattr(e, "cause", None)
        if isinstance(cause, LlmaasError):
            return cause
        detail = REPLICA_LOST if isinstance(e, RayActorError) else str(e)
        return EngineUnavailableError(f"model {self.model_id}: {detail}")

    async def embed(self, inputs: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        return await self._side("embed", adapter, inputs)

    async def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        return await self._side("score", adapter, tokens, start)

    async def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                         shared: list[int] | None = None) -> list[list[list[float]]]:
        return await self._side("score_many", adapter, items, shared)

    # -- adapters: loaded by the replicas a request reaches ---------------------------------------
    def register_adapter(self, name: str, path: str) -> None:
        self._paths[name] = path

    def has_adapter(self, name: str) -> bool:
        return name in self._paths

    async def ensure_adapter(self, name: str, path: str | None = None) -> None:
        if path is not None:
            self._paths[name] = path
        await self._side("load_adapter", name)

    async def load_adapter(self, name: str, path: str) -> None:
        await self.ensure_adapter(name, path)

    async def unload_adapter(self, name: str) -> None:
        """No new request names it; replicas drop it as other adapters need the room."""
        self._paths.pop(name, None)

    def adapters(self) -> list[str]:
        return sorted({a for r in self._replicas() for a in r.get("adapters", ())})

    # -- health ----------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        rs = self._replicas()
        return EngineStats(running=sum(r.get("running", 0) for r in rs), waiting=sum(r.get("waiting", 0) for r in rs),
                           kv_cache_usage=max((r.get("kv_cache_usage", 0.0) for r in rs), default=0.0),
                           adapters_loaded=len(self.adapters()))

    def healthy(self) -> bool:
        return True  # a deployment at zero replicas is healthy: the next request starts one

    def stopped(self) -> bool:
        return False


async def _await(resp: Any) -> Any:
    return await resp
