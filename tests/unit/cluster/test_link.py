"""The same-node link: RemoteEngine reaching a replica's engine over a real Unix socket (the fake engine behind it,
as a replica serves it), and the cases that must go through Serve's handle instead."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import sys
from collections.abc import AsyncGenerator

import pytest
from prometheus_client import CollectorRegistry

from llmaas.cluster.link import LinkServer
from llmaas.cluster.remote import REPLICA_LOST, RemoteEngine
from llmaas.core.errors import InvalidRequestError
from llmaas.core.metrics import ClusterMetrics
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationOutput, GenerationRequest, SamplingParams
from tests.unit.cluster.test_remote_engine import Call, Handle

NODE = "node-a"
_ids = itertools.count()


@pytest.fixture
async def replica(tmp_path) -> AsyncGenerator[tuple[BatchingEngine, LinkServer], None]:
    engine = BatchingEngine(FakeRunner(n_slots=2, context_size=256, s_per_token=0.002), 8)
    await engine.start()
    seen: list[tuple[GenerationRequest, str | None]] = []

    async def generate(request: GenerationRequest, path: str | None) -> AsyncGenerator[GenerationOutput, None]:
        seen.append((request, path))
        if request.prompt_tokens == [0]:
            raise InvalidRequestError("bad grammar", param="response_format")
        async for out in engine.generate(dataclasses.replace(request, adapter=None)):  # the fake has no adapters
            yield out

    server = LinkServer(str(tmp_path / "r1.sock"), generate)
    server.seen = seen  # type: ignore[attr-defined]
    await server.start()
    yield engine, server
    await server.close(0)
    await engine.shutdown()


def record(server: LinkServer, **kw) -> dict:
    return {"id": "r1", "state": "running", "node_id": NODE, "link": server.path, "slots": 2, "running": 0,
            "waiting": 0, "adapters": [], **kw}


def remote(replicas: list[dict], call: Call | None = None, node: str | None = NODE) -> tuple[RemoteEngine, Handle]:
    h = Handle(call or Call(outputs=[GenerationOutput("via handle", [9], None, 3, 1, finish_reason="stop")]))
    front = BatchingEngine(FakeRunner(n_slots=2, context_size=256), 8)
    return RemoteEngine("m", front, h, cold_start_s=1, replicas=lambda: replicas,
                        metrics=ClusterMetrics(CollectorRegistry()), node_id=node), h


def req(n: int = 6, adapter: str | None = None, prompt: list[int] | None = None) -> GenerationRequest:
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    return GenerationRequest(f"r{next(_ids)}", prompt or [1, 2, 3], params, adapter)


def routes(e: RemoteEngine) -> dict[str, float]:
    return {s.labels["route"]: s.value for m in e._metrics.engine_routes.collect() for s in m.samples
            if s.name.endswith("_total")}


async def test_a_request_to_a_replica_on_this_node_goes_over_the_link(replica):
    engine, server = replica
    e, h = remote([record(server)])
    outs = [o async for o in e.generate(req(6))]
    assert sum(len(o.token_ids) for o in outs) == 6 and outs[-1].finished and outs[-1].completion_tokens == 6
    assert h.calls == [] and routes(e) == {"link": 1.0}
    assert e._inflight == {"r1": 0}


async def test_a_client_that_leaves_aborts_the_sequence_on_the_replica(replica):
    engine, server = replica
    e, _ = remote([record(server)])
    gen = e.generate(req(200))
    async for _ in gen:
        break
    assert engine.stats().running == 1
    await gen.aclose()
    for _ in range(100):
        if engine.stats().running == 0 and not server._streams:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().running == 0 and not server._streams


async def test_a_replicas_error_reaches_the_caller_as_itself(replica):
    _, server = replica
    e, _ = remote([record(server)])
    with pytest.raises(InvalidRequestError) as err:
        [o async for o in e.generate(req(prompt=[0]))]
    assert err.value.param == "response_format"


REPLICA_PROCESS = """
import asyncio, sys
from llmaas.cluster.link import LinkServer
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine

async def main():
    engine = BatchingEngine(FakeRunner(n_slots=2, context_size=256, s_per_token=0.01), 8)
    await engine.start()
    await LinkServer(sys.argv[1], lambda r, p: engine.generate(r)).start()
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_replica_that_dies_mid_stream_ends_it_with_an_error_counting_the_tokens(tmp_path):
    path = str(tmp_path / "r9.sock")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", REPLICA_PROCESS, path,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        e, _ = remote([{"id": "r9", "state": "running", "node_id": NODE, "link": path, "slots": 2}])
        got = []
        async for o in e.generate(req(500)):
            got.append(o)
            if len(got) == 3:
                proc.kill()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    last = got[-1]
    assert last.finish_reason == "error" and last.error == REPLICA_LOST, got[-3:]
    assert last.completion_tokens == sum(len(o.token_ids) for o in got[:-1]) >= 3


async def test_the_handle_routes_what_the_link_cannot_take(replica):
    _, server = replica
    cases = {
        "another node": ([record(server, node_id="node-b")], None, NODE),
        "link off (no node id)": ([record(server)], None, None),
        "replica full": ([record(server, running=1, waiting=1)], None, NODE),
        "replica stopping": ([record(server, state="stopping")], None, NODE),
        "adapter not held": ([record(server)], "ft:m:t:a", NODE),
        "socket gone": ([record(server, link=str(server.path) + ".gone")], None, NODE),
    }
    for what, (replicas, adapter, node) in cases.items():
        e, h = remote(replicas, node=node)
        outs = [o async for o in e.generate(req(adapter=adapter))]
        assert [o.text for o in outs] == ["via handle"] and h.calls[-1][0] == "generate", what
        assert routes(e) == {"handle": 1.0}, what
    busy = LinkServer(str(server.path) + ".busy", server._generate, admit=lambda: False)
    await busy.start()
    e, h = remote([record(server, link=busy.path)])
    assert [o.text async for o in e.generate(req())] == ["via handle"] and routes(e) == {"handle": 1.0}
    await busy.close(0)
    e, h = remote([record(server, adapters=["ft:m:t:a"])])
    e.register_adapter("ft:m:t:a", "/shared/a.gguf")
    [o async for o in e.generate(req(adapter="ft:m:t:a"))]
    assert h.calls == [] and server.seen[-1][1] == "/shared/a.gguf"  # type: ignore[attr-defined]


async def test_streams_spread_over_local_replicas_by_what_this_ingress_sent_them(replica, tmp_path):
    engine, server = replica
    other = LinkServer(str(tmp_path / "r2.sock"), lambda r, p: engine.generate(r))
    await other.start()
    try:
        replicas = [record(server), {**record(other), "id": "r2"}]
        e, h = remote(replicas)
        gens = [e.generate(req(100)) for _ in range(4)]
        for g in gens:
            await g.__anext__()
        assert e._inflight == {"r1": 2, "r2": 2} and h.calls == []
        # Both full (2 slots each, as this ingress counts): the fifth goes to the handle.
        [o async for o in e.generate(req(2))]
        assert routes(e) == {"link": 4.0, "handle": 1.0}
        for g in gens:
            await g.aclose()
    finally:
        await other.close(0)


async def test_a_replica_that_answers_full_sends_the_request_to_the_next_local_one(replica):
    _, server = replica
    busy = LinkServer(str(server.path) + ".busy", server._generate, admit=lambda: False)
    await busy.start()
    try:
        # The busy one first: by what it last published it is the less loaded.
        e, h = remote([{**record(server, running=1), "id": "r2"}, record(server, link=busy.path, id="r3")])
        outs = [o async for o in e.generate(req(4))]
        assert outs[-1].completion_tokens == 4 and h.calls == [] and routes(e) == {"link": 1.0}
    finally:
        await busy.close(0)


async def test_closing_the_link_lets_streams_under_way_finish_and_refuses_new_ones(replica):
    _, server = replica
    e, _ = remote([record(server)])

    async def whole() -> list[GenerationOutput]:
        return [o async for o in e.generate(req(40))]

    task = asyncio.create_task(whole())
    while not server._streams:
        await asyncio.sleep(0.005)
    await server.close(10)
    outs = await task
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 40
    assert not os.path.exists(server.path)
