"""RemoteEngine against a stand-in for Ray Serve's handle: a cold start past its bound is a 503 with
Retry-After; a replica that dies mid-stream ends the stream with an error carrying the tokens produced; an error
raised in a replica reaches the caller as itself; adapters travel with their files."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from ray.exceptions import ActorDiedError

from llmaas.cluster.remote import REPLICA_LOST, RemoteEngine
from llmaas.core.errors import InvalidRequestError, ModelNotReadyError
from llmaas.core.metrics import ClusterMetrics
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationOutput, GenerationRequest, SamplingParams


class Call:
    def __init__(self, result=None, outputs=(), fail: BaseException | None = None) -> None:
        self.result, self.outputs, self.fail, self.cancelled = result, list(outputs), fail, False

    def __await__(self):
        if self.result is None:
            yield from asyncio.sleep(3600).__await__()
        return self.result

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for o in self.outputs:
            yield o
        if self.fail is not None:
            raise self.fail

    def cancel(self) -> None:
        self.cancelled = True


class Method:
    def __init__(self, handle: Handle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args):
        self.handle.calls.append((self.name, self.handle.opts, args))
        return self.handle.next


class Handle:
    def __init__(self, next_call: Call) -> None:
        self.next, self.calls, self.opts = next_call, [], {}

    def options(self, **opts):
        self.opts = opts
        return self

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)


def remote(call: Call, replicas=(), timeout: float = 0.2) -> tuple[RemoteEngine, Handle]:
    h = Handle(call)
    front = BatchingEngine(FakeRunner(n_slots=4, context_size=256), 8)
    return RemoteEngine("m", front, h, cold_start_s=timeout, replicas=lambda: list(replicas),
                        metrics=ClusterMetrics(CollectorRegistry())), h


def req(adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest("r1", [1, 2, 3], SamplingParams(max_tokens=8), adapter)


async def test_a_cold_start_past_its_bound_is_a_503_with_retry_after():
    call = Call(result=None)  # no replica ever comes up
    e, _ = remote(call)
    with pytest.raises(ModelNotReadyError) as err:
        await e.ready()
    assert err.value.status_code == 503 and int(err.value.headers["Retry-After"]) > 0 and call.cancelled


async def test_ready_waits_for_a_replica_only_when_none_runs():
    e, h = remote(Call(result="replica-1"))
    await e.ready()
    assert [c[0] for c in h.calls] == ["ping"]
    e, h = remote(Call(result=None), replicas=[{"state": "running"}])
    await e.ready()  # a running replica: no call at all
    assert h.calls == []


async def test_a_replica_lost_mid_stream_ends_with_an_error_that_counts_the_tokens():
    outs = [GenerationOutput("a", [5], None, 3, 1), GenerationOutput("b", [6], None, 3, 2)]
    e, _ = remote(Call(outputs=outs, fail=ActorDiedError()))
    got = [o async for o in e.generate(req())]
    assert [o.text for o in got[:2]] == ["a", "b"]
    last = got[-1]
    assert last.finish_reason == "error" and last.completion_tokens == 2 and last.error == REPLICA_LOST


async def test_a_replicas_own_error_reaches_the_caller_as_itself():
    class Wrapped(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause

    e, _ = remote(Call(fail=Wrapped(InvalidRequestError("bad grammar", param="response_format"))))
    with pytest.raises(InvalidRequestError) as err:
        [o async for o in e.generate(req())]
    assert err.value.param == "response_format"


async def test_an_adapter_request_carries_its_file_and_is_multiplexed_by_name():
    e, h = remote(Call(outputs=[GenerationOutput("x", [1], None, 3, 1, finish_reason="stop")]))
    e.register_adapter("ft:m:t:a", "/shared/a.gguf")
    assert e.has_adapter("ft:m:t:a")
    [o async for o in e.generate(req("ft:m:t:a"))]
    name, opts, args = h.calls[-1]
    assert name == "generate" and opts["multiplexed_model_id"] == "ft:m:t:a" and args[1] == "/shared/a.gguf"
