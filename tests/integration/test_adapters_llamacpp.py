"""LoRA adapters on the real model: SmolLM2 through llama.cpp, in-process BatchingEngine, GGUF LoRA files
written by llmaas.training.lora_gguf (random rank-8 f16 A/B on attn_q/attn_v of all 30 layers, or all linear).

Greedy texts of concurrent and solo runs are compared up to near-ties. llama.cpp's numerics depend a little on
the KV cache layout (cells of sequences interleave differently when they run together; the CPU flash attention
accumulates V in f16) and, for some LoRA shapes, on the number of tokens in a decode call; random adapters
amplify that, so a greedy path may fork where its two best tokens are within a few hundredths. A wrong adapter
(or none) shows instead as a fork at a clear margin, usually at the first token. Leakage between the rows of a
decode call is checked exactly (a row's logits never depend on the other rows' contents)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from llmaas.core.errors import AdapterNotFoundError, EngineError
from llmaas.core.metrics import EngineMetrics
from llmaas.core.model_files import bundled_gguf
from llmaas.engine.backends.llamacpp import LlamaCppRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationRequest, SamplingParams, TokenLogprob
from llmaas.training.lora_gguf import GGUF_LINEAR, base_linear_shapes, write_lora_gguf, write_random_lora

pytestmark = pytest.mark.integration
PROMPT = "The three most important inventions in history are"
N = 24


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("lora")
    return {
        "ft-a": str(write_random_lora(d / "a.gguf", seed=1)),
        "ft-b": str(write_random_lora(d / "b.gguf", seed=2)),
        "ft-all": str(write_random_lora(d / "all.gguf", seed=3, targets=GGUF_LINEAR)),
    }


@asynccontextmanager
async def engine_with(lora_files: dict[str, str], metrics: EngineMetrics | None = None
                      ) -> AsyncIterator[BatchingEngine]:
    # One thread: on a shared 2-core machine two llama.cpp threads stall on each other's barriers.
    runner = LlamaCppRunner("smollm2", n_slots=4, context_size=512, max_batch_tokens=128, threads=1)
    engine = BatchingEngine(runner, 4, metrics, max_adapters=2)
    for name, path in lora_files.items():
        engine.register_adapter(name, path)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


@dataclass
class Run:
    toks: list[int]
    lps: list[TokenLogprob]
    cached: int


async def greedy(engine: BatchingEngine, rid: str, adapter: str | None, prompt: str = PROMPT) -> Run:
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, logprobs=5)
    run = Run([], [], -1)
    async for out in engine.generate(GenerationRequest(rid, engine.tokenize(prompt), params, adapter)):
        assert out.finish_reason in (None, "length"), out.error
        run.toks += out.token_ids
        run.lps += out.logprobs or []
        run.cached = out.cached_tokens
    assert len(run.toks) == N
    return run


def assert_same_greedy(ref: Run, other: Run, tie: float = 0.1) -> None:
    """`other` follows `ref`'s greedy path, or forks from it only at a near-tie of ref's distribution."""
    for i, (x, y) in enumerate(zip(ref.toks, other.toks, strict=True)):
        if x != y:
            top = {t[1]: t[2] for t in ref.lps[i].top}
            gap = ref.lps[i].logprob - top.get(other.lps[i].token_bytes, -np.inf)
            assert gap < tie, f"forked at token {i} by a margin of {gap:.3f}: {ref.toks} vs {other.toks}"
            return


async def test_adapters_change_outputs_and_batch_with_the_base_model(lora_files):
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    async with engine_with(lora_files, metrics) as engine:
        solo_a = await greedy(engine, "a", "ft-a")
        solo_b = await greedy(engine, "b", "ft-b")
        base = await greedy(engine, "base", None)
        solo_a2 = await greedy(engine, "a1", "ft-a")
        # Slots held the prompt under the other adapters: only ft-a's second run may reuse KV (its own).
        assert [solo_a.cached, solo_b.cached, base.cached] == [0, 0, 0]
        assert solo_a2.cached == len(engine.tokenize(PROMPT)) - 1
        assert_same_greedy(solo_a, solo_a2)
        assert solo_a.toks != base.toks and solo_b.toks != base.toks and solo_a.toks != solo_b.toks
        assert engine.adapters() == ["ft-b", "ft-a"]  # least recently used first
        assert registry.get_sample_value("llmaas:adapters_loaded", {"model": engine.info.model_id}) == 2
        # All three in one batch (three decode calls per step): each as when it ran alone.
        decodes0, steps0 = engine._scheduler.decodes, engine._scheduler.steps
        together = await asyncio.gather(greedy(engine, "base2", None), greedy(engine, "a2", "ft-a"),
                                        greedy(engine, "b2", "ft-b"))
        for ref, run in zip((base, solo_a, solo_b), together, strict=True):
            assert_same_greedy(ref, run)
        assert engine._scheduler.decodes - decodes0 > engine._scheduler.steps - steps0


async def test_all_linear_adapter_and_no_cross_row_leak(lora_files):
    async with engine_with(lora_files) as engine:
        base = await greedy(engine, "base", None)
        assert (await greedy(engine, "all", "ft-all")).toks != base.toks
        # Runner level: in one decode call under an adapter, a row's logits do not depend on the other rows.
        r = engine.runner
        p, q = engine.tokenize(PROMPT), engine.tokenize("Once upon a time")

        def row0(other_token: int) -> np.ndarray:
            for sid in (2, 3):
                r.kv_remove(sid, 0)
            r.decode(p[:-1] + q, list(range(len(p) - 1)) + list(range(len(q))),
                     [2] * (len(p) - 1) + [3] * len(q), [False] * (len(p) - 1 + len(q)))
            r.decode([p[-1], other_token], [len(p) - 1, len(q)], [2, 3], [True, True])
            return r.logits(0).copy()

        def on_scheduler_thread(fn, *args):
            return asyncio.wrap_future(engine._scheduler.call(fn, *args))

        async def rows(adapter: str) -> tuple[np.ndarray, np.ndarray]:
            await on_scheduler_thread(r.set_adapter, adapter)
            return await on_scheduler_thread(row0, 100), await on_scheduler_thread(row0, 5000)

        async with engine._pinned("ft-all"):
            x, y = await rows("ft-all")
        assert np.array_equal(x, y)


async def test_score_with_adapter(lora_files):
    async with engine_with(lora_files) as engine:
        base_out = (await greedy(engine, "base", None)).toks
        a_out = (await greedy(engine, "a", "ft-a")).toks
        prompt = engine.tokenize(PROMPT)

        async def total(cont: list[int], adapter: str | None) -> float:
            return float(np.sum(await engine.score(prompt + cont, len(prompt), adapter=adapter)))

        base_on_base = await total(base_out, None)
        assert await total(a_out, "ft-a") > await total(a_out, None)  # each prefers its own greedy text
        assert await total(base_out, "ft-a") < base_on_base
        assert await total(base_out, None) == pytest.approx(base_on_base)  # the side context dropped it again


async def test_unload_and_reload(lora_files):
    async with engine_with(lora_files) as engine:
        runner = engine.runner
        base = await greedy(engine, "base", None)
        # Hot load: ft-a is loaded (on a worker thread) while a base-model stream is being decoded.
        running = asyncio.create_task(greedy(engine, "base-running", None))
        while engine.stats().running == 0:
            await asyncio.sleep(0.005)
        await engine.ensure_adapter("ft-a")
        assert not running.done()
        assert_same_greedy(base, await running)
        first = await greedy(engine, "a", "ft-a")
        assert runner.has_adapter("ft-a")
        await engine.unload_adapter("ft-a")
        assert not runner.has_adapter("ft-a") and engine.adapters() == []
        with pytest.raises(AdapterNotFoundError):
            await greedy(engine, "gone", "ft-a")
        await engine.load_adapter("ft-a", lora_files["ft-a"])
        assert_same_greedy(first, await greedy(engine, "again", "ft-a"))
        # LRU beyond the cap of 2: the least recently used, idle adapter goes.
        await engine.load_adapter("ft-b", lora_files["ft-b"])
        await engine.load_adapter("ft-c", str(write_random_lora(lora_files["ft-a"] + ".c.gguf", seed=3)))
        for _ in range(100):
            if engine.adapters() == ["ft-b", "ft-c"]:
                break
            await asyncio.sleep(0.02)
        assert engine.adapters() == ["ft-b", "ft-c"] and not runner.has_adapter("ft-a")


async def test_adapter_for_another_model_is_refused(lora_files, tmp_path):
    arch, shapes = base_linear_shapes(bundled_gguf())
    rng = np.random.default_rng(0)
    wrong = {name: (rng.normal(size=(8, n_in + 64)).astype(np.float32), rng.normal(size=(n_out, 8)).astype(np.float32))
             for name, (n_in, n_out) in shapes.items()}
    path = write_lora_gguf(tmp_path / "wrong.gguf", arch, wrong, alpha=8)
    async with engine_with(lora_files) as engine:
        with pytest.raises(EngineError, match="could not load"):
            await engine.load_adapter("wrong", str(path))
        assert engine.adapters() == [] and engine.healthy()
        assert len((await greedy(engine, "still", None)).toks) == N
