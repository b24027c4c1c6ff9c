"""One request's fault stays its own: sampler and engine errors fail that request only, a dead scheduler is
replaced (in-flight requests get an error, never a hang), and an engine that stays down says so on /health."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmaas.core.errors import InvalidRequestError
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import MAX_RESTARTS_PER_MIN, BatchingEngine
from llmaas.engine.sampling import rng_seed
from llmaas.engine.types import GenerationRequest, SamplingParams
from tests.unit.conftest import make_client

MODEL = "fake-model"


def chat(client, **kw):
    return client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, **kw})


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1, 2**32, -(2**31)])
def test_any_signed_64_bit_seed_is_served_and_deterministic(client, seed):
    a = chat(client, temperature=1.5, seed=seed, n=3)
    assert a.status_code == 200, a.text
    b = chat(client, temperature=1.5, seed=seed, n=3)
    assert [c["message"]["content"] for c in a.json()["choices"]] == \
        [c["message"]["content"] for c in b.json()["choices"]]
    assert client.get("/health").status_code == 200
    assert chat(client, temperature=0).status_code == 200  # the scheduler still serves everyone


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30])
def test_seed_outside_64_bits_is_400(client, seed):
    r = chat(client, seed=seed)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text


def test_rng_seed_maps_signed_seeds_apart():
    seeds = [-1, -2, 0, 1, 2**63 - 1, -(2**63)]
    mapped = [rng_seed(s) for s in seeds]
    assert len(set(mapped)) == len(seeds) and all(0 <= m < 2**64 for m in mapped)


def _break_sampler_for(runner: FakeRunner, bad_seed: int, exc: Exception, *, at_sample: bool = False) -> None:
    make = runner.new_sampler

    def new_sampler(params, seed):
        sampler = make(params, seed)
        if params.seed == bad_seed:
            if not at_sample:
                raise exc

            def boom(idx):
                raise exc
            sampler.sample = boom
        return sampler

    runner.new_sampler = new_sampler


@pytest.mark.parametrize("at_sample", [False, True])
def test_sampler_fault_fails_only_its_request(at_sample):
    with make_client() as client:
        engine = client.app.state.engines[MODEL]
        _break_sampler_for(engine.runner, 666, RuntimeError("sampler exploded"), at_sample=at_sample)
        bad = chat(client, seed=666)
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "engine_error", bad.text
        good = chat(client, seed=1, temperature=0)
        assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
        assert engine.healthy() and engine.stats().running == 0


def test_request_own_error_from_the_sampler_reaches_the_client_as_400():
    with make_client() as client:
        engine = client.app.state.engines[MODEL]
        _break_sampler_for(engine.runner, 7, InvalidRequestError("bad grammar", param="response_format"))
        r = chat(client, seed=7)
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
        assert chat(client, temperature=0).status_code == 200


class _Crash(BaseException):
    """Not an Exception: gets past every per-request guard and ends the scheduler thread."""


def _kill_next_step(engine: BatchingEngine) -> None:
    sched = engine._scheduler

    def step(out):
        raise _Crash("scheduler bug")

    sched._step = step


async def _drain(engine: BatchingEngine, rid: str, max_tokens: int = 8) -> str:
    async for out in engine.generate(GenerationRequest(rid, list(b"hello"), SamplingParams(max_tokens=max_tokens))):
        if out.finished:
            return out.finish_reason or ""
    return ""


async def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_dead_scheduler_fails_in_flight_requests_and_is_replaced():
    engine = BatchingEngine(FakeRunner(n_slots=2, s_per_token=0.002), max_queued=4)
    await engine.start()
    try:
        _kill_next_step(engine)
        reasons = await asyncio.wait_for(asyncio.gather(*[_drain(engine, f"r{i}") for i in range(3)]), 5)
        assert reasons == ["error"] * 3  # each in-flight request ends, with an error, instead of hanging
        await _wait(engine.healthy)
        assert not engine.stopped()
        assert await asyncio.wait_for(_drain(engine, "after"), 5) == "length"
    finally:
        await engine.shutdown()


async def test_engine_that_keeps_dying_stays_stopped_and_says_so():
    engine = BatchingEngine(FakeRunner(n_slots=2), max_queued=4)
    await engine.start()
    try:
        for i in range(MAX_RESTARTS_PER_MIN + 1):
            _kill_next_step(engine)
            assert await asyncio.wait_for(_drain(engine, f"r{i}"), 5) == "error"
            if i < MAX_RESTARTS_PER_MIN:
                await _wait(engine.healthy)
        await _wait(engine.stopped)
        from llmaas.core.errors import EngineUnavailableError
        with pytest.raises(EngineUnavailableError) as e:
            engine.check_capacity(1)
        assert e.value.status_code == 503 and "Retry-After" in e.value.headers
    finally:
        await engine.shutdown()


def test_health_is_503_when_an_engine_stopped_and_requests_get_503():
    with make_client() as client:
        engine = client.app.state.engines[MODEL]
        assert client.get("/health").json() == {"status": "ok"}
        engine._restarts.extend([time.monotonic()] * MAX_RESTARTS_PER_MIN)  # no restart left this minute
        _kill_next_step(engine)
        r = chat(client)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        deadline = time.monotonic() + 5
        while not engine.stopped() and time.monotonic() < deadline:
            time.sleep(0.01)
        h = client.get("/health")
        assert h.status_code == 503 and h.json()["stopped"] == [MODEL]
        r = chat(client)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers["retry-after"]


@pytest.mark.parametrize("temperature", [1e-320, 1e-9])
def test_subnormal_temperature_is_greedy_not_a_crash(client, temperature):
    r = chat(client, temperature=temperature, seed=3)
    greedy = chat(client, temperature=0)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]


def test_numpy_sampler_survives_logits_pushed_to_infinity():
    import numpy as np

    from llmaas.engine.sampling import NumpySampler

    logits = np.full(8, 1e38, dtype=np.float32)
    logits[5] = np.inf
    s = NumpySampler(lambda i: logits, SamplingParams(temperature=1.0, repetition_penalty=0.01), 1, [])
    assert s.sample(0) == 5


def test_repetition_penalty_below_the_floor_is_400(client):
    r = chat(client, repetition_penalty=1e-320)
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty", r.text
