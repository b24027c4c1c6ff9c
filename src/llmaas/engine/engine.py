"""BatchingEngine: the EngineClient protocol over a ModelRunner + BatchScheduler, bridged to asyncio.

LoRA adapters: `register_adapter(name, path)` makes an adapter known (nothing is loaded); a request
with `adapter=name` loads it on first use (off the event loop), and an AdapterCache keeps at most
`max_adapters` loaded, evicting the least recently used idle one. A request pins its adapter from
submission until the scheduler reports it finished, so a queued or running sequence never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from llmaas.core.errors import EngineUnavailableError, InvalidRequestError, OverloadedError
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.adapters import AdapterCache
from llmaas.engine.chat_template import ChatMessage, ChatTemplate
from llmaas.engine.client import EngineClient
from llmaas.engine.model_runner import ModelRunner
from llmaas.engine.scheduler import BatchScheduler
from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import EngineStats, GenerationOutput, GenerationRequest, ModelInfo, Places

log = logging.getLogger("llmaas.engine")

# A scheduler thread that dies is replaced at once, at most this many times a minute; after that the engine
# stays stopped and /health reports it, so that a process supervisor restarts the server.
MAX_RESTARTS_PER_MIN = 3
# Above this many characters, templating and tokenizing run on a worker thread: the event loop keeps
# answering other requests (and /health) while a large prompt is prepared.
OFF_LOOP_CHARS = 4096


class BatchingEngine:
    def __init__(
        self, runner: ModelRunner, max_queued: int, metrics: EngineMetrics | None = None, *, max_adapters: int = 8,
        prefill_step_s: float = 0.0,
    ) -> None:
        self.runner = runner
        self.info = ModelInfo(model_id=runner.model_id, context_size=runner.context_size, n_vocab=runner.n_vocab,
                              n_slots=runner.n_slots, capabilities=tuple(runner.capabilities))
        self._max_inflight = runner.n_slots + max_queued
        self._streams: dict[str, asyncio.Queue[GenerationOutput]] = {}
        self._places: list[Places] = []  # promised to streams about to start (reserve)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefill_step_s = prefill_step_s
        self._metrics = metrics
        self._scheduler = self._new_scheduler()
        self._started = self._stopping = False
        self._restarts: deque[float] = deque()
        self._template = ChatTemplate(
            runner.chat_template(), runner.special_token_text("bos"), runner.special_token_text("eos")
        )
        self._side_lock = threading.Lock()  # embed/score use a second context, one call at a time
        self._metrics = metrics
        self._adapters = AdapterCache(self._load_adapter, self._unload_adapter, max_adapters, self._adapters_changed)
        self._adapter_of: dict[str, str] = {}  # request id -> the adapter it pins

    def _new_scheduler(self) -> BatchScheduler:
        return BatchScheduler(self.runner, self._emit_threadsafe, self._metrics, prefill_step_s=self._prefill_step_s,
                              on_death=self._scheduler_died)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._scheduler.start()
        self._started = True

    def _scheduler_died(self, error: BaseException) -> None:
        """Scheduler thread, as it ends: recovery runs on the event loop, which owns the streams."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._recover, error)

    def _recover(self, error: BaseException) -> None:
        """Fail every sequence the dead scheduler held (their clients get an error, not a hang), then start a
        fresh scheduler on a clean KV cache, unless it keeps dying."""
        failed = GenerationOutput("", [], None, 0, 0, finish_reason="error",
                                  error=f"engine error: the scheduler stopped ({error!r}); retry the request")
        self._deliver([(rid, failed) for rid in list(self._streams)])
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS_PER_MIN:
            log.critical("model %s: the scheduler stopped %d times in a minute; the engine stays down "
                         "(/health answers 503)", self.info.model_id, len(self._restarts) + 1)
            return
        self._restarts.append(now)
        for slot in range(self.runner.n_slots):
            self.runner.kv_remove(slot, 0)
        self._scheduler = self._new_scheduler()
        self._scheduler.start()
        if self._metrics:
            self._metrics.engine_restarts.labels(self.info.model_id).inc()
        log.warning("model %s: scheduler restarted after %r", self.info.model_id, error)

    async def shutdown(self) -> None:
        self._stopping = True
        await self._adapters.close()
        await asyncio.to_thread(self._scheduler.shutdown)
        self.runner.close()

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        bos = self.runner.bos_token()
        return ([bos] if bos is not None else []) + self.runner.tokenize(text, special=special)

    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]:
        bos = self.runner.bos_token()
        toks = self._template.tokenize(messages, lambda t, sp: self.runner.tokenize(t, special=sp))
        if bos is not None and (not toks or toks[0] != bos):
            toks.insert(0, bos)
        return toks

    async def tokenize_chat_async(self, messages: list[ChatMessage]) -> list[int]:
        """tokenize_chat, off the event loop when the messages are large."""
        if sum(len(m.content) + 16 for m in messages) <= OFF_LOOP_CHARS:
            return self.tokenize_chat(messages)
        return await asyncio.to_thread(self.tokenize_chat, messages)

    async def tokenize_many(self, texts: list[str], *, special: bool = False) -> list[list[int]]:
        """tokenize for each text, off the event loop when they are large."""
        if sum(len(t) for t in texts) <= OFF_LOOP_CHARS:
            return [self.tokenize(t, special=special) for t in texts]
        return await asyncio.to_thread(lambda: [self.tokenize(t, special=special) for t in texts])

    def token_id(self, key: str) -> int | None:
        try:
            t = int(key)
        except ValueError:
            return None
        return t if 0 <= t < self.runner.n_vocab else None

    def eog_tokens(self) -> list[int]:
        return self.runner.eog_tokens()

    async def ready(self) -> None:
        """In process, an engine that was started is ready (check_capacity refuses when it is not)."""

    # -- generation ----------------------------------------------------------------------------
    def _emit_threadsafe(self, outputs: list[tuple[str, GenerationOutput]]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _deliver(self, outputs: list[tuple[str, GenerationOutput]]) -> None:
        for rid, out in outputs:
            if out.finished and rid in self._adapter_of:  # the scheduler is done with it: unpin
                self._adapters.release(self._adapter_of.pop(rid))
            q = self._streams.get(rid)
            if q is not None:
                q.put_nowait(out)

    def check_capacity(self, n: int = 1) -> None:
        """Admission control: raise OverloadedError unless `n` more sequences fit in slots + queue."""
        if not self._scheduler.alive:
            raise EngineUnavailableError(f"the engine of model {self.info.model_id} is not running; retry shortly")
        now = time.monotonic()
        self._places = [p for p in self._places if p.held(now)]
        if len(self._streams) + sum(p.left for p in self._places) + n > self._max_inflight:
            raise OverloadedError(
                f"the server is at capacity ({self._max_inflight} sequences running or queued); retry shortly",
                retry_after_s=1,
            )

    def reserve(self, n: int = 1) -> Places:
        """check_capacity, and the n places held for the caller's sequences (see Places)."""
        self.check_capacity(n)
        places = Places(n)
        self._places.append(places)
        return places

    async def generate(self, request: GenerationRequest,
                       places: Places | None = None) -> AsyncGenerator[GenerationOutput, None]:
        self.info.require("completions")
        if not request.prompt_tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if places is None or not places.take():
            self.check_capacity(1)
        rid = request.request_id
        if rid in self._streams:
            raise InvalidRequestError("duplicate request id", param="request_id")
        q: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._streams[rid] = q  # holds its place in the capacity count while an adapter loads
        if request.adapter is not None:
            try:
                await self._adapters.acquire(request.adapter)
            except BaseException:
                self._streams.pop(rid, None)
                raise
            self._adapter_of[rid] = request.adapter
        self._scheduler.submit(request)
        finished = False
        try:
            while True:
                out = await q.get()
                if out.finished:
                    finished = True
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self._scheduler.abort(request.request_id)
            self._streams.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        self._scheduler.abort(request_id)

    # -- side computations ---------------------------------------------------------------------
    async def _side(self, fn, *args):
        """Run fn(*args) on a thread that ends with the call (one call at a time). Not asyncio.to_thread:
        llama.cpp's OpenMP (libgomp) keeps a thread team for each thread that has run a decode, and while
        more such threads exist than cores its barriers sleep instead of spinning. A pool thread that had
        computed one embedding made every later 16-sequence step of the scheduler ~25% slower (76 -> 94 ms)
        for as long as it lived; a thread that exits takes its team with it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(result: object, error: BaseException | None) -> None:
            if not done.done():  # the caller may have been cancelled
                done.set_exception(error) if error is not None else done.set_result(result)

        def run() -> None:
            try:
                with self._side_lock:
                    result = fn(*args)
            except BaseException as e:  # handed to the caller
                loop.call_soon_threadsafe(settle, None, e)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        threading.Thread(target=run, name="llmaas-side", daemon=True).start()
        return await done

    async def embed(self, inputs: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        for toks in inputs:
            if len(toks) > self.runner.context_size:
                raise InvalidRequestError(
                    f"an input has {len(toks)} tokens; the maximum is {self.runner.context_size}",
                    param="input", code="context_length_exceeded",
                )
        async with self._pinned(adapter):
            return await self._side(lambda: [self.runner.embed(t, adapter) for t in inputs])

    async def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        async with self._pinned(adapter):
            return await self._side(self.runner.score, tokens, start, adapter)

    async def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                         shared: list[int] | None = None) -> list[list[list[float]]]:
        """Per item and continuation, the log-probabilities of its tokens given the item's prefix (batched;
        `shared`: a prefix many items start with, e.g. an eval's instructions, prefilled once per decode)."""
        async with self._pinned(adapter):
            return await self._side(self.runner.score_many, items, adapter, shared)

    # -- LoRA adapters -------------------------------------------------------------------------
    def register_adapter(self, name: str, path: str) -> None:
        """Make adapter `name` (a GGUF LoRA file for this model) usable by requests; loads nothing.
        Idempotent; raises ConflictError if `name` is loaded from another file."""
        self._adapters.register(name, path)

    async def ensure_adapter(self, name: str, path: str | None = None) -> None:
        """Register (when `path` is given) and load `name` now, so the first request does not wait for it."""
        if path is not None:
            self._adapters.register(name, path)
        await self._adapters.acquire(name)
        self._adapters.release(name)

    async def load_adapter(self, name: str, path: str) -> None:
        await self.ensure_adapter(name, path)

    async def unload_adapter(self, name: str) -> None:
        """Unregister `name`: new requests for it fail with AdapterNotFoundError; it is freed at once if
        idle, else when its last running or queued sequence ends. Unknown names are ignored."""
        await self._adapters.unregister(name)

    def adapters(self) -> list[str]:
        """Names of the adapters loaded now, least recently used first."""
        return self._adapters.loaded()

    def has_adapter(self, name: str) -> bool:
        """Whether `name` is registered (loaded or not)."""
        return self._adapters.is_registered(name)

    @asynccontextmanager
    async def _pinned(self, adapter: str | None) -> AsyncIterator[None]:
        if adapter is None:
            yield
            return
        await self._adapters.acquire(adapter)
        try:
            yield
        finally:
            self._adapters.release(adapter)

    async def _load_adapter(self, name: str, path: str) -> None:
        # The cache calls this only for an adapter that is not loaded, so each call is a real load.
        await asyncio.to_thread(self.runner.load_adapter, name, path)
        if self._metrics:
            self._metrics.adapter_loads.labels(self.runner.model_id).inc()

    async def _unload_adapter(self, name: str) -> None:
        await asyncio.wrap_future(self._scheduler.call(self._scheduler.drop_adapter, name))

    def _adapters_changed(self, n_loaded: int) -> None:
        if self._metrics:
            self._metrics.adapters_loaded.labels(self.runner.model_id).set(n_loaded)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._scheduler.running_count,
            waiting=self._scheduler.waiting_count,
            kv_cache_usage=self._scheduler.kv_usage(),
            adapters_loaded=len(self._adapters.loaded()),
        )

    def healthy(self) -> bool:
        """Started and running: what readiness needs."""
        return self._scheduler.alive

    def stopped(self) -> bool:
        """Started once and no longer running (not restarted): what liveness reports."""
        return self._started and not self._scheduler.alive and not self._stopping


if TYPE_CHECKING:
    def _implements_client(engine: BatchingEngine) -> EngineClient:
        """A type checker fails here when BatchingEngine stops satisfying the interface the layers above use
        (tests/unit/engine/test_client.py checks the same at run time)."""
        return engine
