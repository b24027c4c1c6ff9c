"""The API layer over the fake engine: wire shapes, streaming, errors."""

from __future__ import annotations

import json

from tests.unit.conftest import make_client

MODEL = "fake-model"


def chat(client, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}
    return client.post("/v1/chat/completions", json=body)


def test_chat_completion_shape_and_usage(client):
    r = chat(client, max_tokens=5, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"]) == 5  # one byte per fake token
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


def test_stop_string_is_not_emitted(client):
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 20, "temperature": 0,
                                              "stop": ["ef"]})
    assert r.status_code == 200
    c = r.json()["choices"][0]
    assert c["text"] == "bcd" and c["finish_reason"] == "stop"


def test_eos_finishes_with_stop():
    with make_client(eos_after=6) as client:
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 50, "temperature": 0})
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "stop" and c["text"] == "def"


def test_n_choices_and_seed_determinism(client):
    a = chat(client, max_tokens=8, temperature=1.5, seed=7, n=3).json()
    b = chat(client, max_tokens=8, temperature=1.5, seed=7, n=3).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
    assert a["usage"]["completion_tokens"] == 24


def test_streaming_chat_with_usage(client):
    with client.stream("POST", "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text) == 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "length" for c in chunks)


def test_logprobs_shape(client):
    body = chat(client, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert len(content[0]["top_logprobs"]) == 2
    assert content[0]["logprob"] <= 0


def test_unknown_model_404(client):
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "model"


def test_bad_param_400_names_field(client):
    r = chat(client, temperature=5)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "temperature" and err["type"] == "invalid_request_error"


def test_bad_messages_400(client):
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["param"].startswith("messages")


def test_invalid_json_400(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "error" in r.json()


def test_context_length_exceeded(client):
    r = chat(client, max_tokens=10_000)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "max_tokens"


def test_logit_bias_bad_key(client):
    r = chat(client, logit_bias={"abc": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_logit_bias_steers_output(client):
    r = chat(client, max_tokens=3, temperature=0, logit_bias={str(ord("z")): 100}).json()
    assert r["choices"][0]["message"]["content"] == "zzz"


def test_queue_full_503_with_retry_after():
    with make_client(max_queued=0, n_slots=1) as client:
        r = chat(client, max_tokens=5, n=2)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "server_error"


def test_models_and_health(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == MODEL
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert client.get("/v1/models/other").status_code == 404


def test_metrics_exposed(client):
    chat(client, max_tokens=2)
    text = client.get("/metrics").text
    for name in ("llmaas:time_to_first_token_seconds", "llmaas:generation_tokens_total",
                 "llmaas:num_requests_running", "llmaas:kv_cache_usage_perc", "llmaas:prompt_tokens_total"):
        assert name in text


def test_embeddings(client):
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": ["hello", "world"]}).json()
    assert len(r["data"]) == 2 and abs(sum(x * x for x in r["data"][0]["embedding"]) - 1) < 1e-6
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": ""}).status_code == 400


def test_unknown_route_is_openai_error(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_engine_failure_mid_stream_is_sse_error_frame():
    with make_client(fail_at_decode=4) as client:
        with client.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True,
        }) as r:
            assert r.status_code == 200
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])
        assert err["error"]["type"] == "server_error" and "simulated" in err["error"]["message"]
        # The engine survives: the next request works.
        assert chat(client, max_tokens=3).status_code == 200


def test_engine_failure_non_stream_is_500_envelope():
    with make_client(fail_at_decode=2) as client:
        r = chat(client, max_tokens=5)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"


def test_empty_prompt_is_400_even_when_streaming(client):
    for stream in (False, True):
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": "", "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_bad_response_format_schema_is_400(client):
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "x"}}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format")
