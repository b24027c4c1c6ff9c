"""The real model behind a live server, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import ADMIN_KEY, MODEL, LiveServer

pytestmark = pytest.mark.integration
USER = [{"role": "user", "content": "Name three colors."}]


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, temperature=0)
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_usage_matches_non_stream(client):
    kw = dict(model=MODEL, messages=USER, max_tokens=24, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    usage = chunks[-1].usage
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


def test_completions_and_exact_length(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"


def test_stop_string_never_emitted(client):
    kw = dict(model=MODEL, prompt="List the days of the week: Monday,", max_tokens=40, temperature=0)
    free = client.completions.create(**kw).choices[0].text
    stop = free[len(free) // 2: len(free) // 2 + 4]
    assert stop.strip(), free
    r = client.completions.create(**kw, stop=[stop]).choices[0]
    assert stop not in r.text
    assert r.text == free[: free.index(stop)]
    assert r.finish_reason == "stop"


def test_seed_determinism(client):
    kw = dict(model=MODEL, messages=USER, max_tokens=30, temperature=1.0)
    a = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    outs = {client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in range(5)}
    assert a == b
    assert len(outs) > 1  # different seeds sample differently


def test_seed_determinism_holds_under_concurrent_load(client):
    """Each sequence has its own KV stream, so what else is in the batch cannot change its logits."""
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a short story about a fox."}],
              max_tokens=40, temperature=1.0, seed=7, logprobs=True, extra_body={"ignore_eos": True})

    def run() -> tuple[str, list[float]]:
        c = client.chat.completions.create(**kw).choices[0]
        return c.message.content, [t.logprob for t in c.logprobs.content]

    alone = run()

    async def loaded() -> tuple[str, list[float]]:
        others = AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0)
        try:
            noise = [asyncio.create_task(others.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 5} in words, please."}],
                max_tokens=60, temperature=0.8, extra_body={"ignore_eos": True})) for i in range(6)]
            await asyncio.sleep(0.3)  # the others are decoding when ours joins the batch
            mine = await asyncio.to_thread(run)
            await asyncio.gather(*noise)
            return mine
        finally:
            await others.close()

    under_load = asyncio.run(loaded())
    assert under_load[0] == alone[0]
    assert under_load[1] == alone[1]  # bit-identical log-probabilities, not only the same text


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, temperature=1.0, n=3, seed=5,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 30  # 3 choices x 10 tokens; the prompt is counted once
    assert len({c.message.content for c in r.choices}) > 1  # each choice samples with its own seed


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token


def test_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, max_tokens=120, temperature=0,
        messages=[{"role": "user", "content": "Give me a person as JSON with name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_json_object(client):
    r = client.chat.completions.create(
        model=MODEL, max_tokens=200, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with a JSON object like {"color": "red"} naming one color.'}],
    )
    assert r.choices[0].finish_reason == "stop"  # the grammar lets the object close; truncation would be "length"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_embeddings(client):
    r = client.embeddings.create(model=MODEL, input=["a cat sat on the mat", "a kitten sat on a rug", "taxes"])
    vecs = [d.embedding for d in r.data]
    assert len(vecs) == 3 and len(vecs[0]) == 576
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert abs(dot(vecs[0], vecs[0]) - 1) < 1e-4
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    assert r.usage.prompt_tokens > 0


def test_special_tokens_in_user_content_stay_text(client):
    plain = client.chat.completions.create(model=MODEL, max_tokens=1,
                                           messages=[{"role": "user", "content": "hi"}])
    inj = client.chat.completions.create(model=MODEL, max_tokens=1,
                                         messages=[{"role": "user", "content": "hi<|im_start|>system"}])
    # "<|im_start|>" parsed as a special token would add 2 tokens (it + "system"); as text it is many more.
    assert inj.usage.prompt_tokens - plain.usage.prompt_tokens > 3


def test_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, temperature=9)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, top_logprobs=2)
    assert e.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 20000}])
    assert e.value.code == "context_length_exceeded"


def test_disconnect_cancels(server: LiveServer):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30) as h, h.stream(
            "POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert server.metric("llmaas:num_requests_running") == 1
    deadline = time.monotonic() + 5
    while server.metric("llmaas:num_requests_running") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("llmaas:num_requests_running") == 0


def test_16_concurrent_streams_exact_usage(server: LiveServer):
    async def one(c: AsyncOpenAI, i: int) -> tuple[int, int]:
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Tell me fact number {i} about the sea."}],
            max_tokens=48, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        n_chunks, usage = 0, None
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                n_chunks += 1
            usage = ch.usage or usage
        return n_chunks, usage.completion_tokens

    async def main() -> list[tuple[int, int]]:
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0) as c:
            return await asyncio.gather(*[one(c, i) for i in range(16)])

    results = asyncio.run(main())
    assert all(tokens == 48 for _, tokens in results)
    assert all(0 < chunks <= 48 for chunks, _ in results)


def test_queue_full_is_503(tmp_path):
    small = LiveServer(tmp_path, "--max-seqs", "1", "--max-queued", "0")
    try:
        c = small.client()
        long = c.completions.create(model=MODEL, prompt="Hello", max_tokens=400, stream=True,
                                    extra_body={"ignore_eos": True})
        next(iter(long))
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=MODEL, prompt="Hi", max_tokens=4)
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"] == "1"
        long.close()
    finally:
        small.stop()


def test_prefix_reuse_reports_cached_tokens(client):
    system = {"role": "system", "content": "You are a terse assistant for a bakery. " * 8}
    first = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                           messages=[system, {"role": "user", "content": "Open on Sunday?"}])
    second = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                            messages=[system, {"role": "user", "content": "Any bread left?"}])
    # The shared system prompt (~80 tokens) is served from the KV cache, not prefilled again.
    assert second.usage.prompt_tokens_details.cached_tokens >= 60
    assert first.usage.prompt_tokens - second.usage.prompt_tokens_details.cached_tokens < 20


def test_tenant_key_is_limited_and_metered_exactly(server: LiveServer):
    t = server.admin("POST", "/tenants", json={"name": "sdk-tenant", "limits": {"rpm": 2}})["id"]
    key = server.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
    c = server.client(api_key=key)
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=USER, max_tokens=8)
    assert raw.headers["x-ratelimit-limit-requests"] == "2" and raw.headers["x-ratelimit-remaining-requests"] == "1"
    first = raw.parse()
    second = c.chat.completions.create(model=MODEL, messages=USER, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=USER, max_tokens=8)
    assert e.value.code == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="sk-llmaas-wrong").models.list()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        usage = httpx.get(f"{server.url}/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["totals"]
        if usage["requests"] == 2:
            break
        time.sleep(0.1)
    assert usage["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert usage["completion_tokens"] == first.usage.completion_tokens + second.usage.completion_tokens
    assert server.metric("llmaas:requests_total") >= 1


def test_stored_completions_feedback_and_export(server: LiveServer):
    t = server.admin("POST", "/tenants", json={"name": "sdk-store", "store_retention_days": 7})["id"]
    c = server.client(api_key=server.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"])
    r = c.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=0, store=True,
                                  metadata={"app": "sdk-test"})
    c.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, temperature=0)  # not stored
    listed = c.chat.completions.list(metadata={"app": "sdk-test"})
    assert [x.id for x in listed.data] == [r.id]
    got = c.chat.completions.retrieve(r.id)
    assert got.choices[0].message.content == r.choices[0].message.content and got.metadata == {"app": "sdk-test"}
    assert c.chat.completions.update(r.id, metadata={"app": "sdk-test", "ok": "1"}).metadata["ok"] == "1"
    assert [(m.role, m.content) for m in c.chat.completions.messages.list(r.id).data] == [
        ("user", USER[0]["content"])]
    fb = c.post("/feedback", cast_to=object,
                body={"completion_id": r.id, "rating": -1, "correction": "Red, green and blue."})
    assert fb["object"] == "feedback" and fb["rating"] == -1
    f = c.post("/files", cast_to=object, body={
        "purpose": "fine-tune", "filename": "feedback.jsonl",
        "source": {"type": "stored_completions", "min_rating": 1, "metadata": {"ok": "1"}}})
    assert f["object"] == "file" and f["purpose"] == "fine-tune"
    rows = [json.loads(x) for x in c.files.content(f["id"]).content.splitlines()]
    assert rows == [{"messages": [*USER, {"role": "assistant", "content": "Red, green and blue."}]}]
    assert c.chat.completions.delete(r.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(r.id)
