"""The continuous-batching scheduler, driven through BatchingEngine with the fake runner."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.scheduler import BatchScheduler
from llmaas.engine.slots import Seq
from llmaas.engine.types import GenerationRequest, SamplingParams


async def _run(engine: BatchingEngine, rid: str, prompt: list[int], max_tokens: int) -> tuple[str, object]:
    text, last = "", None
    async for out in engine.generate(GenerationRequest(rid, prompt, SamplingParams(max_tokens=max_tokens,
                                                                                      temperature=0))):
        text += out.text
        last = out
    return text, last


@asynccontextmanager
async def running(max_queued: int = 4, prefill_step_s: float = 0.0,
                  **runner_kw) -> AsyncIterator[tuple[BatchingEngine, FakeRunner]]:
    runner = FakeRunner(**runner_kw)
    engine = BatchingEngine(runner, max_queued, prefill_step_s=prefill_step_s)
    await engine.start()
    try:
        yield engine, runner
    finally:
        await engine.shutdown()


async def test_sequences_share_decode_steps():
    async with running(8, n_slots=4, context_size=256, max_batch_tokens=64) as (engine, runner):
        results = await asyncio.gather(*[_run(engine, f"r{i}", list(b"hello"), 20) for i in range(4)])
        assert all(len(t) == 20 for t, _ in results)
        # 4 sequences of 20 tokens: batched, far fewer than 80 decode calls.
        assert len(runner.decode_calls) < 40
        assert max(runner.decode_calls) >= 4


async def test_long_prompt_is_prefilled_in_chunks():
    async with running(n_slots=2, context_size=512, max_batch_tokens=16) as (engine, runner):
        text, _ = await _run(engine, "long", list(b"x" * 100), 3)
        assert len(text) == 3
        assert max(runner.decode_calls) <= 16


async def test_prefix_reuse_counts_cached_tokens():
    async with running(n_slots=2, context_size=256, max_batch_tokens=64) as (engine, _):
        prompt = list(b"system prompt that is shared; ")
        await _run(engine, "a", prompt + list(b"q1"), 4)
        _, out = await _run(engine, "b", prompt + list(b"q2"), 4)
        assert out.cached_tokens >= len(prompt)


@pytest.mark.parametrize(("shared", "expect_copy"), [(b"short:", False), (b"a long system prompt, shared: ", True)])
async def test_kv_of_a_busy_slot_is_copied_only_for_a_prefix_worth_a_stream_copy(shared: bytes, expect_copy: bool):
    """Copying KV between slots moves a whole llama.cpp KV stream, so a few shared tokens are re-prefilled
    instead; a long shared prefix is copied."""
    async with running(n_slots=4, context_size=4096, max_batch_tokens=64) as (engine, runner):
        copies: list[tuple[int, int, int]] = []
        real_copy = runner.kv_copy
        runner.kv_copy = lambda s, d, n: (copies.append((s, d, n)), real_copy(s, d, n))[1]
        busy = engine.generate(GenerationRequest("a", list(shared + b"first"),
                                                 SamplingParams(max_tokens=4000, temperature=0)))
        await busy.__anext__()  # "a" holds its slot, decoding
        _, out = await _run(engine, "b", list(shared + b"second"), 4)
        await busy.aclose()  # aborts "a"
        assert bool(copies) == expect_copy
        assert out.cached_tokens == (len(shared) if expect_copy else 0)


@pytest.mark.parametrize(("s_per_token", "expect_copy"), [(0.003, True), (0.0001, False)])
async def test_a_short_prefix_is_copied_when_its_prefill_costs_more_than_the_stream_copy(s_per_token, expect_copy):
    """With a prefill cost estimate the copy threshold follows it: at 3 ms a token (this CPU), 6 shared tokens
    cost more to prefill than copying a 2048-cell stream (~5 ms); at 0.1 ms a token (a GPU) they do not."""
    async with running(prefill_step_s=0.2, n_slots=4, context_size=2048, max_batch_tokens=64,
                       s_per_token=s_per_token) as (engine, runner):
        copies: list[tuple[int, int, int]] = []
        real_copy = runner.kv_copy
        runner.kv_copy = lambda s, d, n: (copies.append((s, d, n)), real_copy(s, d, n))[1]
        busy = engine.generate(GenerationRequest("a", list(b"short:first"),
                                                 SamplingParams(max_tokens=4000, temperature=0)))
        await busy.__anext__()
        _, out = await _run(engine, "b", list(b"short:second"), 2)
        await busy.aclose()
        assert bool(copies) == expect_copy
        assert out.cached_tokens == (6 if expect_copy else 0)


async def test_new_requests_take_the_lowest_free_slot():
    """Running sequences stay packed into low slots: llama.cpp's attention spans the range of streams a step uses."""
    async with running(8, n_slots=8, context_size=256, max_batch_tokens=64) as (engine, runner):
        # Every slot holds a cached prompt, the higher slots the shorter ones (cheapest to evict).
        await asyncio.gather(*[_run(engine, f"w{i}", list(f"warm {'x' * (16 - 2 * i)}".encode()), 2) for i in range(8)])
        runner.decode_seq_ids.clear()
        await asyncio.gather(*[_run(engine, f"n{i}", list(f"new {i}!".encode()), 3) for i in range(3)])
        assert {s for ids in runner.decode_seq_ids for s in ids} == {0, 1, 2}


async def test_abort_frees_slot():
    async with running(2, n_slots=1, context_size=4096, max_batch_tokens=64) as (engine, _):
        gen = engine.generate(GenerationRequest("x", list(b"ab"), SamplingParams(max_tokens=4000, temperature=0)))
        await gen.__anext__()
        await gen.aclose()  # client went away
        for _ in range(50):
            if engine.stats().running == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.stats().running == 0
        text, _ = await _run(engine, "y", list(b"ab"), 3)
        assert len(text) == 3


async def test_a_new_request_fills_a_hole_between_running_slots_before_an_empty_slot():
    async with running(8, n_slots=8, context_size=4096, max_batch_tokens=64) as (engine, runner):
        gens = [engine.generate(GenerationRequest(f"r{i}", list(f"run {i}".encode()),
                                                  SamplingParams(max_tokens=4000, temperature=0))) for i in range(4)]
        for g in gens:
            await g.__anext__()  # slots 0-3 decoding
        await gens[1].aclose()  # a hole at slot 1; slots 4-7 are empty
        await asyncio.sleep(0.01)
        runner.decode_seq_ids.clear()
        await _run(engine, "new", list(b"new one"), 3)
        new_slots = {s for ids in runner.decode_seq_ids for s in ids} - {0, 2, 3}
        assert new_slots == {1}
        for g in (gens[0], gens[2], gens[3]):
            await g.aclose()


async def _first_token_at(engine: BatchingEngine, rid: str, prompt: list[int], max_tokens: int = 2) -> float:
    first = 0.0
    async for _ in engine.generate(GenerationRequest(rid, prompt, SamplingParams(max_tokens=max_tokens,
                                                                                    temperature=0))):
        first = first or time.monotonic()
    return first


async def test_in_a_burst_short_prompts_are_prefilled_before_a_long_one_in_time_bounded_steps():
    # 1 ms per token, 20 ms of prefill per step: at most 20 prompt tokens (+ one per decoding sequence) a step.
    async with running(8, prefill_step_s=0.02, n_slots=4, context_size=512, max_batch_tokens=256,
                       s_per_token=0.001) as (engine, runner):
        long = asyncio.create_task(_first_token_at(engine, "long", list(b"x" * 120)))
        await asyncio.sleep(0)  # the long prompt arrives first
        short = [asyncio.create_task(_first_token_at(engine, f"s{i}", list(f"short {i}!".encode())))
                 for i in range(3)]
        t_long, t_short = await long, await asyncio.gather(*short)
        assert max(t_short) < t_long  # first come, first served would have prefilled the long one first
        assert max(runner.decode_calls) <= 20 + 3


async def test_a_long_prompt_that_has_waited_goes_before_a_newer_short_one():
    runner = FakeRunner(n_slots=2)
    sched = BatchScheduler(runner, lambda _: None, prefill_step_s=0.05)
    sched.s_per_token = 0.001
    old = Seq(GenerationRequest("old", [1] * 100, SamplingParams()), arrived=10.0)
    old.pending = [1] * 100  # 0.1 s of prefill left
    newer = Seq(GenerationRequest("new", [1] * 10, SamplingParams()), arrived=10.05)
    newer.pending = [1] * 10
    assert sorted([old, newer], key=sched._prefill_key) == [newer, old]  # 50 ms late, 90 ms shorter: first
    newer.arrived = 10.2  # arrived after the old one's prefill would have finished
    assert sorted([old, newer], key=sched._prefill_key) == [old, newer]


async def test_the_prefill_cost_estimate_follows_measured_steps():
    # The runner's first estimate is 4x too low; steps that are mostly prefill correct it.
    async with running(8, prefill_step_s=0.02, n_slots=2, context_size=512, max_batch_tokens=256,
                       s_per_token=0.002, prefill_s_per_token=0.0005) as (engine, runner):
        for i in range(8):
            await _run(engine, f"r{i}", list(f"{i}".encode() * 60), 2)
        assert engine._scheduler.s_per_token >= 0.0015
        assert max(runner.decode_calls) <= 40 + 2  # the corrected budget: 20 ms / 0.5 ms at first


async def test_embeddings_and_scoring_run_on_threads_that_end_with_the_call():
    # A long-lived thread that has run a llama.cpp decode keeps an OpenMP team, which slows every scheduler
    # step (BatchingEngine._side): side computations must not run on asyncio's pooled threads.
    async with running() as (engine, runner):
        seen: list[threading.Thread] = []
        embed, score = runner.embed, runner.score

        def spy(fn):
            def call(*args):
                seen.append(threading.current_thread())
                return fn(*args)
            return call

        runner.embed, runner.score = spy(embed), spy(score)
        assert len(await engine.embed([[1, 2, 3], [4, 5]])) == 2
        assert len(await engine.score([1, 2, 3], 1)) == 2
        assert len(seen) == 3 and threading.main_thread() not in seen
        for t in seen:
            t.join(timeout=2)
            assert not t.is_alive()
        with pytest.raises(ValueError):  # errors reach the caller
            runner.score = spy(lambda *a: (_ for _ in ()).throw(ValueError("boom")))
            await engine.score([1, 2], 1)


async def test_a_small_common_prefix_does_not_evict_a_cached_prompt():
    async with running(n_slots=4, context_size=256, max_batch_tokens=64) as (engine, _):
        a, b = list(b"What is the capital of France?"), list(b"What is the answer to the big question?")
        await _run(engine, "a1", a, 2)
        await _run(engine, "b", b, 2)  # 12 tokens in common, under half of b: an empty slot, not a's
        _, out = await _run(engine, "a2", a, 2)
        assert out.cached_tokens == len(a) - 1


async def test_when_no_slot_is_empty_the_least_recently_used_is_overwritten():
    async with running(n_slots=2, context_size=256, max_batch_tokens=64) as (engine, _):
        a, b, c = list(b"first prompt here"), list(b"second prompt here"), list(b"third prompt here")
        await _run(engine, "a", a, 2)
        await _run(engine, "b", b, 2)
        _, out = await _run(engine, "a2", a, 2)  # a is now the most recently used
        assert out.cached_tokens == len(a) - 1
        await _run(engine, "c", c, 2)  # evicts b, not a
        _, out = await _run(engine, "a3", a, 2)
        assert out.cached_tokens == len(a) - 1


async def test_waiting_interactive_requests_go_before_batch_lines():
    # One slot, held by a batch line (priority 1); three more batch lines wait, then an interactive request
    # (priority 0) arrives. It preempts the running line and finishes first; the preempted line resumes first
    # of the batch lines, which keep their order among themselves.
    async with running(n_slots=1, max_queued=8, s_per_token=0.002) as (engine, _):
        done: list[str] = []

        async def run(rid: str, priority: int) -> None:
            req = GenerationRequest(rid, [1, 2, 3], SamplingParams(max_tokens=5, temperature=0), priority=priority)
            async for _ in engine.generate(req):
                pass
            done.append(rid)

        first = asyncio.create_task(run("busy", 1))
        await asyncio.sleep(0.005)
        waiting = [asyncio.create_task(run(f"batch-{i}", 1)) for i in range(3)]
        await asyncio.sleep(0.005)
        waiting.append(asyncio.create_task(run("interactive", 0)))
        await asyncio.gather(first, *waiting)
        assert done == ["interactive", "busy", "batch-0", "batch-1", "batch-2"]
        assert engine._scheduler.preemptions == 1


async def _collect(engine: BatchingEngine, req: GenerationRequest, started: asyncio.Event | None = None):
    text, last, n = "", None, 0
    async for out in engine.generate(req):
        text, last, n = text + out.text, out, n + 1
        if started is not None and n == 3:
            started.set()
    return text, last


def _batch_line(rid: str, max_tokens: int, prompt: bytes = b"xyz") -> GenerationRequest:
    return GenerationRequest(rid, list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
                             priority=1)


async def test_a_preempted_batch_line_resumes_exactly_where_it_stopped():
    """Its text and token counts are those of a run that was never preempted: the tokens so far re-enter the
    KV cache and its sampler state carries on."""
    async with running(n_slots=1, max_queued=8, context_size=512, s_per_token=0.002) as (engine, runner):
        alone, alone_out = await _collect(engine, _batch_line("alone", 40))
        started = asyncio.Event()
        line = asyncio.create_task(_collect(engine, _batch_line("line", 40), started))
        await started.wait()
        text, _ = await _run(engine, "interactive", list(b"hello"), 5)
        assert text == "pqrst"  # the byte after "o", and on
        assert not line.done()  # the interactive request finished while the line waited
        resumed, out = await line
        assert engine._scheduler.preemptions == 1
        assert resumed == alone and len(resumed) == 40
        assert (out.prompt_tokens, out.completion_tokens) == (alone_out.prompt_tokens, alone_out.completion_tokens)
        assert engine._scheduler.running_count == 0 and runner.kv_cells_used() <= 512


async def test_batch_lines_sit_out_the_steps_while_interactive_requests_run(monkeypatch: pytest.MonkeyPatch):
    """Free slots, no preemption: the batch lines keep theirs, but a step holds only the interactive sequence,
    so it costs what the interactive request alone costs."""
    monkeypatch.setattr("llmaas.engine.priority.EVERY_S", 60.0)
    async with running(n_slots=4, max_queued=8, context_size=512, s_per_token=0.001) as (engine, runner):
        started = [asyncio.Event(), asyncio.Event()]
        lines = [asyncio.create_task(_collect(engine, _batch_line(f"l{i}", 200), started[i])) for i in range(2)]
        await asyncio.gather(*(e.wait() for e in started))
        before = len(runner.decode_seq_ids)
        await _run(engine, "interactive", list(b"hello"), 20)
        during = runner.decode_seq_ids[before:]
        interactive_slot = 2  # the first free slot next to the busy ones (0 and 1)
        # From its admission to its last token, every step decodes the interactive request alone.
        mine = [i for i, ids in enumerate(during) if interactive_slot in ids]
        assert len(mine) >= 20
        assert all(ids == [interactive_slot] for ids in during[mine[0]:mine[-1] + 1])
        results = await asyncio.gather(*lines)
        assert [len(t) for t, _ in results] == [200, 200]
        assert engine._scheduler.preemptions == 0


async def test_batch_lines_still_move_under_endless_interactive_traffic(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("llmaas.engine.priority.EVERY_S", 0.02)
    async with running(n_slots=2, max_queued=8, context_size=1024, s_per_token=0.001) as (engine, runner):
        started = asyncio.Event()
        line = asyncio.create_task(_collect(engine, _batch_line("line", 30), started))
        await started.wait()
        interactive = asyncio.create_task(_run(engine, "interactive", list(b"hi"), 600))
        text, _ = await line
        assert len(text) == 30
        assert not interactive.done()  # the line finished in the steps it was let into
        await interactive


async def test_aborting_a_preempted_batch_line_frees_everything():
    async with running(n_slots=1, max_queued=8, s_per_token=0.002) as (engine, _):
        gen = engine.generate(_batch_line("line", 400))
        seen = 0
        async for _ in gen:
            seen += 1
            if seen == 3:
                break
        interactive = asyncio.create_task(_run(engine, "interactive", list(b"hello"), 50))
        while engine._scheduler.preemptions == 0:
            await asyncio.sleep(0.001)
        await gen.aclose()  # the line is waiting, preempted: the abort takes it off the queue
        await interactive
        for _ in range(100):
            if engine._scheduler.waiting_count == 0:
                break
            await asyncio.sleep(0.01)
        assert engine._scheduler.waiting_count == 0 and engine._scheduler.running_count == 0


async def test_interactive_requests_take_contiguous_slots_among_batch_lines(monkeypatch: pytest.MonkeyPatch):
    """llama.cpp decodes a run of consecutive slots as one ubatch: interactive requests arriving while batch
    lines hold every slot take neighbouring slots, so their steps are one run, not one per gap."""
    monkeypatch.setattr("llmaas.engine.priority.EVERY_S", 60.0)
    async with running(n_slots=8, max_queued=16, context_size=512, s_per_token=0.0005) as (engine, runner):
        started = [asyncio.Event() for _ in range(8)]
        # Odd slots' lines have short prompts, so the cheapest to preempt are scattered: 1, 3, 5, 7.
        prompts = [b"xyz" + bytes([97 + i]) * (1 if i % 2 else 40) for i in range(8)]
        lines = [asyncio.create_task(_collect(engine, _batch_line(f"l{i}", 300, prompts[i]), started[i]))
                 for i in range(8)]
        await asyncio.gather(*(e.wait() for e in started))
        chats = []
        for i in range(3):  # one after another, each while the earlier ones run
            chats.append(asyncio.create_task(_run(engine, f"chat{i}", list(b"hi"), 40 - 5 * i)))
            await asyncio.sleep(0.01)
        before = len(runner.decode_seq_ids)
        await asyncio.gather(*chats)
        steps = [ids for ids in runner.decode_seq_ids[before:] if len(ids) == 3]
        assert steps and all(ids == list(range(ids[0], ids[0] + 3)) for ids in steps), steps
        assert engine._scheduler.preemptions == 3
        results = await asyncio.gather(*lines)
        assert all(len(t) == 300 for t, _ in results)
