"""Loading and unloading catalog models on the running server, in the background and without a restart.

A load is checked against memory first (weights + KV cache of its slots against what the machine has left,
minus loads already under way) and refused whole if it would not fit. Then the engine is built off the event
loop and started; until it is, requests for the model get 503 with Retry-After. An unload takes the model out
of routing at once, lets running streams finish (up to a deadline), then frees the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llmaas.control.model_catalog import Entry, ModelCatalog
from llmaas.core.config import Settings
from llmaas.core.errors import InsufficientMemoryError, InvalidRequestError, ModelNotReadyError
from llmaas.core.gguf_header import read_gguf_arch
from llmaas.core.memory import available_bytes, estimate_model_bytes, gib
from llmaas.core.metrics import EngineMetrics
from llmaas.core.model_files import CAPABILITIES, ModelPackageMissingError, bundled, gguf_path
from llmaas.engine.client import EngineClient
from llmaas.serving.deployments import LocalHost, ModelHost
from llmaas.serving.models import engine_capabilities

log = logging.getLogger("llmaas.catalog")

# Architectures llama.cpp runs as encoders: they embed, they do not generate.
ENCODER_ARCHS = frozenset({"bert", "nomic-bert", "jina-bert-v2", "t5encoder", "modern-bert", "neo-bert"})
UNLOAD_DRAIN_S = 30.0


@dataclass
class ModelState:
    status: str  # loading | ready | failed | unloading | unloaded
    error: str | None = None
    since: float = 0.0

    def to_dict(self) -> dict:
        return {"status": self.status, "error": self.error}


def source_path(source_type: str, source: str) -> Path:
    """The GGUF file behind a catalog source; a missing package or file is a 400 that says what to do."""
    if source_type == "package":
        if bundled(source) is None:
            raise InvalidRequestError(f"'{source}' is not a bundled model package; bundled ones: smollm2, "
                                      "gemma3-270m, all-minilm-l6-v2. Use gguf_path for any other file.",
                                      param="package")
        try:
            return gguf_path(source)
        except ModelPackageMissingError as e:
            raise InvalidRequestError(str(e), param="package") from e
    path = Path(source)
    if not path.is_absolute():
        raise InvalidRequestError("gguf_path must be an absolute path on the server", param="gguf_path")
    if not path.is_file():
        raise InvalidRequestError(f"no file at {path} on the server", param="gguf_path")
    try:
        read_gguf_arch(path)
    except (ValueError, OSError, KeyError) as e:
        raise InvalidRequestError(f"{path} is not a usable GGUF model: {e}", param="gguf_path") from e
    return path


def default_capabilities(source_type: str, source: str, path: Path) -> list[str]:
    b = bundled(source) if source_type == "package" else None
    if b is not None:
        return list(b.capabilities)
    return ["embeddings"] if read_gguf_arch(path).architecture in ENCODER_ARCHS else list(CAPABILITIES)


class ModelLoader:
    """The serving process's loaded models: `engines` (shared with ServedModels) and each model's state."""

    def __init__(self, settings: Settings, engines: dict[str, EngineClient], metrics: EngineMetrics | None,
                 catalog: ModelCatalog | None, host: ModelHost | None = None) -> None:
        self.settings, self.engines, self.metrics, self.catalog = settings, engines, metrics, catalog
        self.host: ModelHost = host or LocalHost(metrics)
        self.states: dict[str, ModelState] = {m: ModelState("ready", since=time.time()) for m in engines}
        self._tasks: dict[str, asyncio.Task] = {}
        self._reserved: dict[str, int] = {}  # bytes promised to loads under way

    def state(self, model_id: str) -> ModelState:
        return self.states.get(model_id) or ModelState("unloaded")

    def check_ready(self, model_id: str) -> None:
        """503 + Retry-After while a model is on its way in or out."""
        st = self.states.get(model_id)
        if st is not None and st.status in ("loading", "unloading"):
            raise ModelNotReadyError(model_id, st.status)

    def settings_for(self, e: Entry) -> Settings:
        return self.settings.model_copy(update={"context_size": e.context_length or self.settings.context_size,
                                                "max_seqs": e.max_seqs or self.settings.max_seqs})

    def check_memory(self, e: Entry, path: Path) -> int:
        """The bytes loading `e` needs; InsufficientMemoryError if that is more than is left."""
        s = self.settings_for(e)
        need = estimate_model_bytes(path, n_slots=s.max_seqs, context_size=s.context_size)
        avail = available_bytes()
        left = None if avail is None else avail - sum(self._reserved.values())
        if left is not None and need.total > left:
            raise InsufficientMemoryError(
                f"Model '{e.id}' does not fit in memory: it needs about {gib(need.total)} (weights "
                f"{gib(need.weights)}, KV cache {gib(need.kv_cache)} for {s.max_seqs} sequences x {s.context_size} "
                f"tokens) and {gib(max(left, 0))} is available. Lower its max_seqs or context_length, or unload "
                "another model.", param="model")
        return need.total

    async def load(self, e: Entry) -> ModelState:
        """Start loading `e` in the background (a no-op if it is loaded or loading); memory is checked first."""
        before = self.states.get(e.id)
        if before is not None and before.status in ("loading", "ready"):
            return before
        if before is not None and before.status == "unloading":
            raise ModelNotReadyError(e.id, "unloading")
        # Marked loading before the checks: a second load of the same model meanwhile is a no-op, not a twin.
        st = self.states[e.id] = ModelState("loading", since=time.time())
        try:
            path = await asyncio.to_thread(source_path, e.source_type, e.source)
            if self.host.local:  # a cluster places replicas by the resources they ask for
                self._reserved[e.id] = await asyncio.to_thread(self.check_memory, e, path)
        except BaseException:
            if before is None:
                self.states.pop(e.id, None)
            else:
                self.states[e.id] = before
            raise
        self._tasks[e.id] = asyncio.create_task(self._load(e, str(path), self.settings_for(e)), name=f"load {e.id}")
        return st

    async def _load(self, e: Entry, spec: str, s: Settings) -> None:
        t0 = time.monotonic()
        log.info("model %s: loading %s", e.id, spec)
        try:
            engine = await asyncio.to_thread(self.host.build, s, spec, e)
            await engine.start()
        except Exception as err:  # a model that cannot load must not take the server with it
            log.error("model %s: load failed: %s", e.id, err)
            self.states[e.id] = ModelState("failed", error=str(err) or type(err).__name__, since=time.time())
            return
        finally:
            self._reserved.pop(e.id, None)
            self._tasks.pop(e.id, None)
        self.engines[e.id] = engine
        self.states[e.id] = ModelState("ready", since=time.time())
        log.info("model %s ready in %.1f s (context %d, %d sequence slots)", e.id, time.monotonic() - t0,
                 engine.info.context_size, engine.info.n_slots)

    async def wait(self, model_id: str) -> ModelState:
        """Until a load under way ends (tests, the CLI's --wait)."""
        task = self._tasks.get(model_id)
        if task is not None:
            await asyncio.shield(task)
        return self.state(model_id)

    async def unload(self, model_id: str, drain_s: float = UNLOAD_DRAIN_S) -> ModelState:
        """Out of routing now; running streams finish (up to `drain_s`), then the engine is freed."""
        task = self._tasks.get(model_id)
        if task is not None:  # a load under way: let it end, then unload what it built
            await asyncio.shield(task)
        engine = self.engines.pop(model_id, None)
        if engine is None:
            st = self.states[model_id] = ModelState("unloaded", since=time.time())
            return st
        self.states[model_id] = ModelState("unloading", since=time.time())
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            stats = engine.stats()
            if stats.running == 0 and stats.waiting == 0:
                break
            await asyncio.sleep(0.1)
        await engine.shutdown()
        await asyncio.to_thread(self.host.release, model_id)
        log.info("model %s unloaded", model_id)
        st = self.states[model_id] = ModelState("unloaded", since=time.time())
        return st

    def attach(self, model_id: str, engine: EngineClient) -> None:
        """A model another process loaded (a cluster's deployment) joins this process's routing."""
        self.engines[model_id] = engine
        self.states[model_id] = ModelState("ready", since=time.time())

    def detach(self, model_id: str) -> EngineClient | None:
        """A model unloaded elsewhere leaves this process's routing."""
        self.states[model_id] = ModelState("unloaded", since=time.time())
        return self.engines.pop(model_id, None)

    async def start_catalog(self, specs: list[str]) -> None:
        """At start: the models the server was started with join the catalog (if they are not in it yet),
        and the catalog's models marked `load_at_start` begin loading in the background."""
        assert self.catalog is not None
        specs = specs or list(self.settings.models)
        await asyncio.to_thread(self._register_started, specs)
        for e in self.catalog.entries():
            if e.load_at_start and e.id not in self.engines:
                try:
                    await self.load(e)
                except Exception as err:  # one bad entry must not stop the server from starting
                    log.error("model %s: not loaded at start: %s", e.id, getattr(err, "message", err))
                    self.states[e.id] = ModelState("failed", error=getattr(err, "message", str(err)),
                                                   since=time.time())

    def _register_started(self, specs: list[str]) -> None:
        assert self.catalog is not None
        with self.catalog.db.session() as s:
            for i, model_id in enumerate(self.engines):
                if self.catalog.entry(model_id) is not None:
                    continue
                spec = specs[i] if i < len(specs) else specs[0]
                b = bundled(spec)
                source_type, source = ("package", b.spec) if b else ("gguf_path", str(Path(spec).resolve()))
                caps = engine_capabilities(self.engines[model_id])
                self.catalog.register(s, None, id=model_id, source_type=source_type, source=source,
                                      description=b.description if b else "", capabilities=list(caps))

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for engine in self.engines.values():
            await engine.shutdown()
