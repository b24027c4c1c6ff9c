"""Builds engines from settings; backend libraries are imported only when chosen."""

from __future__ import annotations

from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.engine import BatchingEngine


def build_engines(settings: Settings, metrics: EngineMetrics | None) -> dict[str, BatchingEngine]:
    """One engine per configured model, keyed by model id."""
    engines: dict[str, BatchingEngine] = {}
    for spec in settings.models:
        if settings.backend == "fake":
            from llmaas.engine.backends.fake import FakeRunner

            runner = FakeRunner(
                n_slots=settings.max_seqs, context_size=settings.context_size,
                max_batch_tokens=settings.max_batch_tokens,
            )
        else:
            from llmaas.engine.backends.llamacpp import LlamaCppRunner

            runner = LlamaCppRunner(
                spec, n_slots=settings.max_seqs, context_size=settings.context_size,
                max_batch_tokens=settings.max_batch_tokens, threads=settings.threads,
            )
        engines[runner.model_id] = BatchingEngine(runner, settings.max_queued, metrics,
                                                  max_adapters=settings.max_adapters)
    return engines
