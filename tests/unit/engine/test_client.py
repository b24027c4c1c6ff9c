"""The engine boundary: BatchingEngine implements EngineClient, and the serving handlers run on an
EngineClient alone, without FastAPI (as a batch worker or a Ray replica will call them)."""

from __future__ import annotations

import asyncio
import inspect

from llmaas.control.auth.principal import Principal, Role
from llmaas.control.auth.tenants import PLATFORM_TENANT
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.client import EngineClient
from llmaas.engine.engine import BatchingEngine
from llmaas.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmaas.serving.chat import ServingChat
from llmaas.serving.completions import ServingCompletion
from llmaas.serving.embeddings import ServingEmbedding
from llmaas.serving.models import ServedModels

ANON = Principal(key_id=None, tenant_id=PLATFORM_TENANT, role=Role.ADMIN, label="test")


def _members(proto: type) -> dict[str, object]:
    return {k: v for k, v in vars(proto).items() if not k.startswith("_")}


def test_batching_engine_implements_engine_client():
    engine = BatchingEngine(FakeRunner(n_slots=3), max_queued=2)
    assert "info" in EngineClient.__annotations__
    assert engine.info.n_slots == 3
    for name, member in _members(EngineClient).items():
        impl = getattr(engine, name, None)
        assert impl is not None, f"BatchingEngine lacks {name}"
        if callable(member):
            # awaited in the protocol <=> a coroutine in the engine (generate: an async generator in both)
            assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(impl), name


def test_handlers_serve_without_a_web_framework():
    async def main() -> None:
        engine = BatchingEngine(FakeRunner(n_slots=4, context_size=256), max_queued=8)
        await engine.start()
        try:
            models = ServedModels({engine.info.model_id: engine}, control=None)
            msgs = [{"role": "user", "content": "hi"}]
            chat = ServingChat(models)
            body = await chat.create(ChatCompletionRequest(model="fake-model", messages=msgs, max_tokens=5,
                                                           temperature=0, n=2), ANON, "req-1")
            assert body.stream is None and body.body is not None
            texts = [c["message"]["content"] for c in body.body["choices"]]
            assert body.body["usage"]["completion_tokens"] == 10

            # The stream carries the same completion, chunk by chunk, the usage last when asked for.
            served = await chat.create(ChatCompletionRequest(
                model="fake-model", messages=msgs, max_tokens=5, temperature=0, n=2, stream=True,
                stream_options={"include_usage": True}), ANON, "req-2")
            assert served.body is None and served.stream is not None
            chunks = [c async for c in served.stream]
            streamed = ["", ""]
            for c in chunks[:-1]:
                for ch in c["choices"]:
                    streamed[ch["index"]] += ch["delta"].get("content", "")
            assert streamed == texts
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10

            cmpl = await ServingCompletion(models).create(
                CompletionRequest(model="fake-model", prompt=["a", "b"], max_tokens=3, temperature=0, logprobs=1),
                ANON, "req-3")
            assert [len(c["logprobs"]["tokens"]) for c in cmpl.body["choices"]] == [3, 3]
            offsets = cmpl.body["choices"][0]["logprobs"]["text_offset"]
            assert offsets == sorted(offsets) and offsets[0] == 0

            emb = await ServingEmbedding(models).create(EmbeddingRequest(model="fake-model", input=["x", "y"]),
                                                        ANON, "req-4")
            assert [d["index"] for d in emb.body["data"]] == [0, 1]
        finally:
            await engine.shutdown()

    asyncio.run(main())
