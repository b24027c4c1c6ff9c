"""Builds engines from settings. The backend is chosen here and only here: the layers above get an
EngineClient and never import a backend. Backend libraries (llama.cpp) are imported only when chosen."""

from __future__ import annotations

from collections.abc import Callable

from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.client import EngineClient
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.model_runner import ModelRunner


def _llamacpp(settings: Settings, spec: str) -> ModelRunner:
    from llmaas.engine.backends.llamacpp import LlamaCppRunner

    return LlamaCppRunner(spec, n_slots=settings.max_seqs, context_size=settings.context_size,
                          max_batch_tokens=settings.max_batch_tokens, threads=settings.threads,
                          gpu_layers=settings.gpu_layers, repack=settings.repack)


def _llamacpp_vocab(settings: Settings, spec: str) -> ModelRunner:
    from llmaas.engine.backends.llamacpp import LlamaCppRunner

    return LlamaCppRunner(spec, n_slots=settings.max_seqs, context_size=settings.context_size,
                          max_batch_tokens=settings.max_batch_tokens, threads=1, vocab_only=True)


def _fake(settings: Settings, spec: str) -> ModelRunner:
    from llmaas.engine.backends.fake import FakeRunner

    return FakeRunner(n_slots=settings.max_seqs, context_size=settings.context_size,
                      max_batch_tokens=settings.max_batch_tokens)


def _llamacpp_model_id(spec: str) -> str:
    from llmaas.engine.backends.llamacpp import resolve_model

    return resolve_model(spec)[0]


RunnerFor = Callable[[Settings, str], ModelRunner]

# settings.backend -> (runner for a model spec, the model id a spec serves without loading it, a runner that
# only tokenizes: what an API process needs of a model that runs elsewhere).
BACKENDS: dict[str, tuple[RunnerFor, Callable[[str], str] | None, RunnerFor]] = {
    "llamacpp": (_llamacpp, _llamacpp_model_id, _llamacpp_vocab),
    "fake": (_fake, None, _fake),
}


def _backend(settings: Settings) -> tuple[RunnerFor, Callable[[str], str] | None, RunnerFor]:
    return BACKENDS[settings.backend]


def build_engine(settings: Settings, spec: str, metrics: EngineMetrics | None = None,
                 model_id: str | None = None) -> EngineClient:
    """The engine for one model spec (a bundled model name or a .gguf path), served as `model_id` when given
    (a catalog entry's id) or under the id the spec implies."""
    runner = _backend(settings)[0](settings, spec)
    if model_id is not None:
        runner.model_id = model_id
    return BatchingEngine(runner, settings.max_queued, metrics, max_adapters=settings.max_adapters,
                          prefill_step_s=settings.prefill_step_ms / 1000)


def build_tokenizer(settings: Settings, spec: str, model_id: str | None = None) -> EngineClient:
    """An engine that is never started, over the model's vocabulary only: its tokenize, chat template, token
    and `info` methods serve an API process whose generation runs in another process (a Ray Serve replica),
    so prompts are tokenized once, where they arrive, as vLLM's API server does."""
    runner = _backend(settings)[2](settings, spec)
    if model_id is not None:
        runner.model_id = model_id
    return BatchingEngine(runner, settings.max_queued, None, max_adapters=settings.max_adapters)


def build_engines(settings: Settings, metrics: EngineMetrics | None) -> dict[str, EngineClient]:
    """One engine per configured model, keyed by model id."""
    engines = [build_engine(settings, spec, metrics) for spec in settings.models]
    return {e.info.model_id: e for e in engines}


def model_spec_for(settings: Settings, model_id: str) -> str | None:
    """The configured model spec (bundled name or .gguf path) that serves `model_id`, without loading it;
    None if no configured model does. With a backend that cannot tell (fake), the first configured model."""
    model_id_of = _backend(settings)[1]
    if model_id_of is None:
        return settings.models[0]
    for spec in settings.models:
        if model_id_of(spec) == model_id:
            return spec
    return None
