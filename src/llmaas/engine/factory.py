"""Builds engines from settings; backend libraries are imported only when chosen."""

from __future__ import annotations

from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.engine import BatchingEngine


def build_engine(settings: Settings, spec: str, metrics: EngineMetrics | None = None) -> BatchingEngine:
    """The engine for one model spec (a bundled model name or a .gguf path)."""
    if settings.backend == "fake":
        from llmaas.engine.backends.fake import FakeRunner

        runner = FakeRunner(n_slots=settings.max_seqs, context_size=settings.context_size,
                            max_batch_tokens=settings.max_batch_tokens)
    else:
        from llmaas.engine.backends.llamacpp import LlamaCppRunner

        runner = LlamaCppRunner(spec, n_slots=settings.max_seqs, context_size=settings.context_size,
                                max_batch_tokens=settings.max_batch_tokens, threads=settings.threads)
    return BatchingEngine(runner, settings.max_queued, metrics, max_adapters=settings.max_adapters,
                          prefill_step_s=settings.prefill_step_ms / 1000)


def build_engines(settings: Settings, metrics: EngineMetrics | None) -> dict[str, BatchingEngine]:
    """One engine per configured model, keyed by model id."""
    engines = [build_engine(settings, spec, metrics) for spec in settings.models]
    return {e.info.model_id: e for e in engines}
