"""LoRA adapters in the batching engine, with the fake runner (an adapter shifts the cycled alphabet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llmaas.core.errors import AdapterNotFoundError, ConflictError, EngineError
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationOutput, GenerationRequest, SamplingParams

ENDLESS = SamplingParams(max_tokens=1 << 19, temperature=0)  # runs until aborted (with a context to match)


def expected(last: str, shift: int, n: int) -> str:
    """What the fake model generates greedily after `last` under an adapter of `shift`."""
    out, c = "", ord(last) - 97
    for _ in range(n):
        c = (c + 1 + shift) % 26
        out += chr(97 + c)
    return out


async def run(engine: BatchingEngine, rid: str, prompt: str, n: int, adapter: str | None = None
              ) -> tuple[str, GenerationOutput]:
    text, last = "", None
    req = GenerationRequest(rid, list(prompt.encode()), SamplingParams(max_tokens=n, temperature=0), adapter)
    async for out in engine.generate(req):
        text += out.text
        last = out
    assert last is not None
    return text, last


@asynccontextmanager
async def running(tmp_path: Path, shifts: dict[str, int], *, max_adapters: int = 8, metrics=None, max_queued: int = 8,
                  **runner_kw) -> AsyncIterator[tuple[BatchingEngine, FakeRunner]]:
    runner = FakeRunner(**{"n_slots": 4, "context_size": 512, "max_batch_tokens": 64, **runner_kw})
    engine = BatchingEngine(runner, max_queued, metrics, max_adapters=max_adapters)
    for name, shift in shifts.items():
        (tmp_path / f"{name}.gguf").write_text(f"shift={shift}")
        engine.register_adapter(name, str(tmp_path / f"{name}.gguf"))
    await engine.start()
    try:
        yield engine, runner
    finally:
        await engine.shutdown()


async def settle(cond, timeout: float = 2.0) -> None:
    """Wait for background evictions (they run on the scheduler thread) to make `cond()` true."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    assert cond()


async def test_mixed_batch_each_sequence_gets_its_adapter(tmp_path):
    async with running(tmp_path, {"a2": 2, "a5": 5}) as (engine, runner):
        for name in ("a2", "a5"):  # loaded up front: all four requests are submitted at once
            await engine.ensure_adapter(name)
        specs = [("base", None, 0), ("x2", "a2", 2), ("y5", "a5", 5), ("base2", None, 0)]
        results = await asyncio.gather(*[run(engine, rid, "hello", 12, ad) for rid, ad, _ in specs])
        for (rid, _, shift), (text, out) in zip(specs, results, strict=True):
            assert text == expected("o", shift, 12), rid
            assert out.finish_reason == "length"
        s = engine._scheduler
        # Three adapter sets in one step: one decode each, never one decode mixing them.
        assert s.decodes == len(runner.decode_calls)
        assert s.steps < s.decodes <= 3 * s.steps
        assert set(runner.decode_adapters) == {None, "a2", "a5"}
        # The adapter left set by a step is decoded first in the next: fewer switches than decodes.
        switches = sum(a != b for a, b in zip(runner.decode_adapters, runner.decode_adapters[1:], strict=False))
        assert switches < s.decodes - 1


async def test_one_adapter_in_use_keeps_one_decode_per_step(tmp_path):
    async with running(tmp_path, {"a2": 2}) as (engine, runner):
        await engine.ensure_adapter("a2")
        results = await asyncio.gather(*[run(engine, f"r{i}", "hello", 10, "a2") for i in range(4)])
        assert all(t == expected("o", 2, 10) for t, _ in results)
        assert engine._scheduler.decodes == engine._scheduler.steps
        assert max(runner.decode_calls) >= 4  # the four sequences shared decode calls


async def test_prefill_budget_spans_groups(tmp_path):
    async with running(tmp_path, {"a2": 2}, n_slots=2, max_batch_tokens=16) as (engine, runner):
        await engine.ensure_adapter("a2")
        texts = await asyncio.gather(run(engine, "b", "x" * 200 + "a", 3), run(engine, "l", "y" * 200 + "a", 3, "a2"))
        assert [t for t, _ in texts] == [expected("a", 0, 3), expected("a", 2, 3)]
        s = engine._scheduler
        assert s.decodes > s.steps  # the prefills overlapped, in two groups
        # One budget of 16 tokens per step across both groups, not one per group.
        assert max(runner.decode_calls) <= 16 and sum(runner.decode_calls) <= 16 * s.steps


async def test_prefix_reuse_never_crosses_adapters(tmp_path):
    system = "a shared system prompt, long enough to matter; "
    async with running(tmp_path, {"a2": 2}, n_slots=2) as (engine, _):
        _, first = await run(engine, "a1", system + "qa", 4, "a2")
        assert first.cached_tokens == 0
        # Same prefix, base model: the KV of the adapter's slot must not be reused (the fake raises if it is).
        text, base = await run(engine, "b1", system + "qb", 4)
        assert base.cached_tokens == 0 and text == expected("b", 0, 4) and base.finish_reason == "length"
        # Same prefix, same adapter: reused.
        text, again = await run(engine, "a2", system + "qc", 4, "a2")
        assert again.cached_tokens >= len(system) and text == expected("c", 2, 4)
        # And the base model finds its own copy.
        text, base2 = await run(engine, "b2", system + "qd", 4)
        assert base2.cached_tokens >= len(system) and text == expected("d", 0, 4)


async def test_kv_copy_across_slots_only_within_an_adapter(tmp_path):
    system = "another shared prefix for copying between slots; "
    async with running(tmp_path, {"a2": 2, "a5": 5}, n_slots=4, context_size=1 << 20) as (engine, _):
        # A running a2 sequence holds the prefix in its slot while others arrive.
        long = engine.generate(GenerationRequest("long", list((system + "l").encode()), ENDLESS, "a2"))
        assert (await long.__anext__()).text == "o"
        text, other = await run(engine, "o5", system + "m", 4, "a5")
        assert other.cached_tokens == 0 and text == expected("m", 5, 4)  # not copied from the a2 slot
        text, same = await run(engine, "o2", system + "n", 4, "a2")
        assert same.cached_tokens >= len(system) and text == expected("n", 2, 4)  # copied from it
        await long.aclose()


async def test_lru_eviction_beyond_cap(tmp_path):
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    async with running(tmp_path, {"a1": 1, "a2": 2, "a3": 3}, max_adapters=2, metrics=metrics) as (engine, runner):
        for name in ("a1", "a2", "a3"):
            text, _ = await run(engine, name, "hello", 3, name)
            assert text == expected("o", int(name[1]), 3)
        await settle(lambda: engine.adapters() == ["a2", "a3"] and not runner.has_adapter("a1"))
        assert registry.get_sample_value("llmaas:adapters_loaded", {"model": "fake-model"}) == 2
        # a1 is loaded again on demand; now a2 is the least recently used.
        text, _ = await run(engine, "again", "hello", 3, "a1")
        assert text == expected("o", 1, 3)
        await settle(lambda: engine.adapters() == ["a3", "a1"] and not runner.has_adapter("a2"))
        assert runner.adapter_loads == ["a1", "a2", "a3", "a1"]
        assert engine.stats().adapters_loaded == 2


async def test_adapter_loads_counts_real_loads_only(tmp_path):
    registry = CollectorRegistry()

    def loads() -> float | None:
        return registry.get_sample_value("llmaas:adapter_loads_total", {"model": "fake-model"})

    async with running(tmp_path, {"a1": 1, "a2": 2}, max_adapters=1, metrics=EngineMetrics(registry)) as (engine, _):
        await run(engine, "x", "hello", 3, "a1")
        await run(engine, "y", "hello", 3, "a1")  # already loaded: no load
        await engine.ensure_adapter("a1")
        assert loads() == 1
        await engine.ensure_adapter("a2")  # evicts a1 beyond the cap of 1 ...
        await settle(lambda: engine.adapters() == ["a2"])
        await run(engine, "z", "hello", 3, "a1")  # ... so using it again is a second load
        assert loads() == 3
        engine.register_adapter("broken", str(tmp_path / "missing.gguf"))
        with pytest.raises(EngineError):  # a load that fails loads nothing
            await run(engine, "b", "hello", 3, "broken")
        assert loads() == 3


async def test_adapters_in_use_are_never_evicted(tmp_path):
    # One slot: r1 runs (until aborted), q2 waits in the queue; loading a3 beyond the cap of 1 evicts neither.
    async with running(tmp_path, {"a1": 1, "a2": 2, "a3": 3}, max_adapters=1, n_slots=1,
                       context_size=1 << 20) as (engine, runner):
        r1 = engine.generate(GenerationRequest("r1", list(b"hello"), ENDLESS, "a1"))
        assert (await r1.__anext__()).text == "q"
        q2 = asyncio.create_task(run(engine, "q2", "hello", 5, "a2"))
        await settle(lambda: engine.stats().waiting == 1)
        await engine.ensure_adapter("a3")  # loaded, then evicted as the only idle one: pinned ones stay
        await settle(lambda: set(engine.adapters()) == {"a1", "a2"})
        assert runner.has_adapter("a1") and runner.has_adapter("a2") and not runner.has_adapter("a3")
        assert runner.adapter_loads == ["a1", "a2", "a3"]
        await r1.aclose()  # client gone: r1 is aborted, q2 gets the slot
        assert (await q2)[0] == expected("o", 2, 5)
        await settle(lambda: len(engine.adapters()) == 1)  # idle again: back under the cap
        assert runner.has_adapter(engine.adapters()[0])


async def test_unknown_adapter_is_a_clear_error(tmp_path):
    async with running(tmp_path, {"a2": 2}) as (engine, _):
        with pytest.raises(AdapterNotFoundError) as e:
            await run(engine, "x", "hello", 3, "nope")
        assert e.value.status_code == 404 and "nope" in e.value.message
        with pytest.raises(AdapterNotFoundError):
            await engine.score(list(b"hello"), 1, adapter="nope")
        assert engine.healthy() and engine.stats().running == 0 and not engine._streams
        assert (await run(engine, "ok", "hello", 3))[0] == expected("o", 0, 3)


async def test_unloaded_adapter_reaching_the_scheduler_fails_only_that_request(tmp_path):
    async with running(tmp_path, {}) as (engine, _):
        # Bypasses the engine's cache, as a bug would: the scheduler must answer with an error, not die.
        engine._streams["raw"] = q = asyncio.Queue()
        engine._scheduler.submit(GenerationRequest("raw", list(b"hi"), SamplingParams(max_tokens=3), "ghost"))
        out = await asyncio.wait_for(q.get(), 5)
        del engine._streams["raw"]
        assert out.finish_reason == "error" and "ghost" in out.error
        assert engine.healthy()
        assert (await run(engine, "ok", "hello", 3))[0] == expected("o", 0, 3)


async def test_bad_adapter_file(tmp_path):
    async with running(tmp_path, {}) as (engine, _):
        engine.register_adapter("broken", str(tmp_path / "missing.gguf"))
        with pytest.raises(EngineError):
            await run(engine, "x", "hello", 3, "broken")
        assert engine.adapters() == [] and engine.healthy() and not engine._streams
        (tmp_path / "d1").write_text("1")
        await engine.load_adapter("dup", str(tmp_path / "d1"))
        engine.register_adapter("dup", str(tmp_path / "d1"))  # same file: a no-op
        with pytest.raises(ConflictError):  # another file under a loaded name
            engine.register_adapter("dup", str(tmp_path / "d2"))


async def test_failed_decode_fails_only_its_group(tmp_path):
    async with running(tmp_path, {"a2": 2}, fail_at_decode=4) as (engine, _):
        results = await asyncio.gather(run(engine, "b", "hello", 8), run(engine, "a", "hello", 8, "a2"))
        reasons = sorted(out.finish_reason for _, out in results)
        assert reasons == ["error", "length"]


async def test_unload_waits_for_running_sequences(tmp_path):
    async with running(tmp_path, {"a2": 2}, context_size=1 << 20) as (engine, runner):
        long = engine.generate(GenerationRequest("long", list(b"hello"), ENDLESS, "a2"))
        assert (await long.__anext__()).text == "r"
        await engine.unload_adapter("a2")
        assert runner.has_adapter("a2")  # still in use: freed when it finishes
        with pytest.raises(AdapterNotFoundError):
            await run(engine, "new", "hello", 3, "a2")
        assert (await long.__anext__()).text == "u"  # still decoded under a2
        await long.aclose()
        await settle(lambda: not runner.has_adapter("a2"))
        assert engine.adapters() == [] and not engine.has_adapter("a2")
        await engine.unload_adapter("a2")  # unknown: ignored
        # Registered again (same name, new file): a fresh load, and no stale KV from the old one.
        (tmp_path / "v2.gguf").write_text("shift=5")
        await engine.load_adapter("a2", str(tmp_path / "v2.gguf"))
        assert (await run(engine, "v2", "hello", 3, "a2"))[0] == expected("o", 5, 3)


async def test_unload_idle_adapter_frees_it_and_its_kv(tmp_path):
    async with running(tmp_path, {"a2": 2}, n_slots=2) as (engine, runner):
        await run(engine, "a", "some prompt", 3, "a2")
        assert runner.kv_cells_used() > 0
        await engine.unload_adapter("a2")
        assert not runner.has_adapter("a2") and engine.adapters() == []
        assert runner.kv_cells_used() == 0  # its slot's KV was computed under it: dropped


async def test_score_and_embed_with_adapter(tmp_path):
    async with running(tmp_path, {"a2": 2}) as (engine, _):
        toks = list(b"hello")
        assert await engine.score(toks, 1) == [-1.0] * 4
        assert await engine.score(toks, 1, adapter="a2") == [-3.0] * 4
        assert await engine.embed([toks], adapter="a2") != await engine.embed([toks])
        assert engine.adapters() == ["a2"]  # loaded on first use by score
