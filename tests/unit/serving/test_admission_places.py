"""Capacity is taken atomically at admission: a stream that got its 200 status line holds its places, so it is
never refused for capacity afterwards; the refusals are 503s with Retry-After, before any byte of a stream."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmaas.core.errors import OverloadedError
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationRequest, Places, SamplingParams
from tests.unit.conftest import make_client


async def test_reserved_places_count_until_taken_or_released():
    engine = BatchingEngine(FakeRunner(n_slots=1), max_queued=1)  # two places
    await engine.start()
    try:
        places = engine.reserve(2)
        with pytest.raises(OverloadedError):
            engine.check_capacity(1)
        req = GenerationRequest("a", [1, 2, 3], SamplingParams(max_tokens=2))
        outs = [o async for o in engine.generate(req, places)]  # takes a held place: no capacity check
        assert outs[-1].finished and places.left == 1
        with pytest.raises(OverloadedError):
            engine.check_capacity(2)  # the other place is still held
        places.release()
        engine.check_capacity(2)
    finally:
        await engine.shutdown()


async def test_places_a_stream_never_took_lapse(monkeypatch):
    engine = BatchingEngine(FakeRunner(n_slots=1), max_queued=0)
    await engine.start()
    try:
        engine.reserve(1)
        with pytest.raises(OverloadedError):
            engine.check_capacity(1)
        monkeypatch.setattr(time, "monotonic", lambda real=time.monotonic: real() + Places.LAPSE_S + 1)
        engine.check_capacity(1)
    finally:
        await engine.shutdown()


@pytest.mark.parametrize(("n", "holds_places"), [(1, True), (2, True), (1, False)])
def test_more_concurrent_streams_than_places_get_a_503_first_or_a_whole_stream(n, holds_places):
    # 2 slots + 2 queued = 4 places; 40 concurrent streams of n choices each, each step slow enough to overlap.
    # Without held places (a remote engine: its replicas admit each sequence themselves) the stream's first chunk
    # is made before the status line, so a replica's refusal is still a 503 first.
    with make_client(max_queued=2, n_slots=2, s_per_token=0.01) as c:
        if not holds_places:
            c.app.state.engines["fake-model"].reserve = lambda n=1: Places(0)
        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(lambda i: _stream_n(c, i, n), range(40)))
        ok = [text for status, _, text in results if status == 200]
        refused = [(status, retry) for status, retry, _ in results if status != 200]
        assert ok and refused
        assert all(status == 503 and retry for status, retry in refused), refused
        for text in ok:  # a stream that began with 200 ends with [DONE] and carries no error frame
            frames = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            assert frames[-1] == "[DONE]"
            assert not any("error" in json.loads(f) for f in frames[:-1]), text[:500]
        engine = c.app.state.engines["fake-model"]
        deadline = time.monotonic() + 5
        while (engine.stats().running or engine.stats().waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats().running == 0 and engine.stats().waiting == 0
        assert _stream_n(c, 99, 1)[0] == 200  # every place came back


def _stream_n(c, i: int, n: int, stream: bool = True) -> tuple[int, str | None, str]:
    r = c.post("/v1/chat/completions", json={
        "model": "fake-model", "stream": stream, "max_tokens": 12, "n": n,
        "messages": [{"role": "user", "content": f"hello {i}"}]})
    return r.status_code, r.headers.get("retry-after"), r.text



def test_a_request_refused_for_capacity_is_neither_billed_nor_recorded():
    # 1 slot + 1 queued against 32 concurrent chats, streamed and not: every 200 is one usage record with its
    # tokens, and a 503 leaves none (a batch line retried after 503s would otherwise pay for every try).
    with make_client(max_queued=1, n_slots=1, s_per_token=0.01) as c:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: _stream_n(c, i, 1, stream=i % 2 == 0)[0], range(32)))
        ok, refused = statuses.count(200), statuses.count(503)
        assert ok and refused and ok + refused == len(statuses), statuses

        def usage() -> dict:
            return c.get("/v1/usage", params={"group_by": "status"}).json()

        deadline = time.monotonic() + 5
        while usage()["totals"]["requests"] < ok and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything more would have been flushed by now
        report = usage()
        assert report["totals"]["requests"] == ok, report
        assert {row["status"] for row in report["data"]} == {"ok"}, report
        assert report["totals"]["completion_tokens"] == ok * 12, report  # each accepted chat ran to max_tokens
