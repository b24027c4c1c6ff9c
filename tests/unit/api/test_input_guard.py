"""Text is validated once, at the edge: lone surrogates, NUL outside free text, non-UTF-8 bodies, query
strings and path segments, oversized and too deeply nested JSON bodies are refused with an OpenAI envelope
naming the field."""

from __future__ import annotations

import json

import pytest

from llmaas.api.input_guard import MAX_JSON_DEPTH, json_depth
from tests.unit.conftest import Admin, bearer, make_client

MODEL = "fake-model"
LONE = "\\ud800"  # the JSON escape of a lone high surrogate, written into raw bodies as is


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path, settings={"max_request_bytes": 4096}) as c:
        a = Admin(c)
        tenant = a.tenant("acme")
        _, key = a.key(tenant)
        yield c, key, tenant


def raw(c, path: str, body: str | bytes, key: str | None = None, method: str = "POST"):
    headers = {"content-type": "application/json", **(bearer(key) if key else {})}
    return c.request(method, path, content=body if isinstance(body, bytes) else body.encode(), headers=headers)


def assert_400(r, param: str | None, status: int = 400) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions",
     f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a{LONE}b"}}]}}', "messages[0].content"),
    ("/v1/chat/completions",
     f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "{LONE}"}}]}}]}}',
     "messages[0].content[0].text"),
    ("/v1/completions", f'{{"model": "{MODEL}", "prompt": "x{LONE}"}}', "prompt"),
    ("/v1/completions", f'{{"model": "{MODEL}", "prompt": ["ok", "\\udfff"]}}', "prompt[1]"),
    ("/v1/embeddings", f'{{"model": "{MODEL}", "input": "{LONE}"}}', "input"),
    ("/v1/chat/completions", f'{{"model": "fake{LONE}", "messages": [{{"role": "user", "content": "hi"}}]}}',
     "model"),
    ("/v1/chat/completions", f'{{"model": "{MODEL}", "store": true, "metadata": {{"k": "{LONE}"}}, '
                             '"messages": [{"role": "user", "content": "hi"}]}', "metadata.k"),
    ("/v1/fine_tuning/jobs", f'{{"model": "{MODEL}", "training_file": "file-x", "metadata": {{"k": "{LONE}"}}}}',
     "metadata.k"),
    ("/v1/evals", f'{{"model": "{MODEL}", "file_id": "file-x", "task": {{"type": "loss"}}, '
                  f'"metadata": {{"k": "v{LONE}"}}}}', "metadata.k"),
])
def test_lone_surrogates_are_400_naming_the_field(env, path, body, param):
    c, key, _ = env
    assert_400(raw(c, path, body, key), param)


def test_lone_surrogate_in_a_key_models_list_and_tenant_metadata(env):
    c, _, tenant = env
    assert_400(raw(c, f"/v1/admin/tenants/{tenant}/keys", f'{{"models": ["{MODEL}", "{LONE}"]}}'), "models[1]")
    assert_400(raw(c, f"/v1/admin/tenants/{tenant}", f'{{"metadata": {{"a": "{LONE}"}}}}', method="PATCH"),
               "metadata.a")
    assert_400(raw(c, "/v1/admin/tenants", f'{{"name": "x", "metadata": {{"{LONE}": "v"}}}}'), "metadata.\\ud800")
    # nothing of it was stored: the key list and the audit log still answer
    assert c.get(f"/v1/admin/tenants/{tenant}/keys").status_code == 200
    assert c.get("/v1/admin/audit").status_code == 200


def test_after_a_refused_store_every_list_still_answers(env):
    c, key, _ = env
    bad = f'{{"model": "{MODEL}", "store": true, "metadata": {{"k": "{LONE}"}}, ' \
          '"messages": [{"role": "user", "content": "hi"}]}'
    assert raw(c, "/v1/chat/completions", bad, key).status_code == 400
    for path in ("/v1/chat/completions", "/v1/fine_tuning/jobs", "/v1/evals"):
        assert c.get(path, headers=bearer(key)).status_code == 200, path


def test_valid_surrogate_pairs_and_nul_in_free_text_pass(env):
    c, key, _ = env
    pair = "\\ud83d\\ude00"
    emoji = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{pair} a\\u0000b"}}], ' \
            f'"max_tokens": 2, "store": true, "metadata": {{"e": "{pair}"}}}}'
    r = raw(c, "/v1/chat/completions", emoji, key)
    assert r.status_code == 200, r.text
    stored = c.get("/v1/chat/completions", headers=bearer(key)).json()["data"]
    assert stored[0]["metadata"] == {"e": "\U0001F600"}
    r = raw(c, "/v1/completions", f'{{"model": "{MODEL}", "prompt": "a\\u0000b", "max_tokens": 2}}', key)
    assert r.status_code == 200, r.text
    # an escaped backslash followed by "ud800" is text, not an escape
    r = raw(c, "/v1/completions", f'{{"model": "{MODEL}", "prompt": "\\\\ud800", "max_tokens": 2}}', key)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("body", "param"), [
    ('{"model": "%s", "user": "a\\u0000", "messages": [{"role": "user", "content": "hi"}]}', "user"),
    ('{"model": "%s", "store": true, "metadata": {"k": "\\u0000"}, '
     '"messages": [{"role": "user", "content": "hi"}]}', "metadata.k"),
    ('{"model": "%s", "store": true, "metadata": {"content": "\\u0000"}, '
     '"messages": [{"role": "user", "content": "hi"}]}', "metadata.content"),
    ('{"model": "%s", "messages": [{"role": "user", "name": "a\\u0000", "content": "hi"}]}', "messages[0].name"),
])
def test_nul_outside_free_text_is_400(env, body, param):
    c, key, _ = env
    assert_400(raw(c, "/v1/chat/completions", body % MODEL, key), param)


def test_non_utf8_body_is_400(env):
    c, key, _ = env
    body = b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    assert_400(raw(c, "/v1/chat/completions", body, key), None)
    assert_400(raw(c, "/v1/chat/completions", b'{"model": "\xff"}', key), None)


@pytest.mark.parametrize(("path", "param"), [
    ("/v1/files?after=%ff", "after"),
    ("/v1/files?purpose=a%00b", "purpose"),
    ("/v1/chat/completions?metadata%5Bk%5D=%c3", "metadata[k]"),
    ("/v1/files/%ff", "file_id"),
    ("/v1/files/file-%00/content", "file_id"),
    ("/v1/fine_tuning/jobs/%ed%a0%80/events", "fine_tuning_job_id"),
])
def test_query_and_path_must_be_utf8_without_nul(env, path, param):
    c, key, _ = env
    assert_400(c.get(path, headers=bearer(key)), param)


def test_valid_percent_encoded_text_passes(env):
    c, key, _ = env
    assert c.get("/v1/files?purpose=%C3%A9", headers=bearer(key)).status_code == 200
    assert c.get("/v1/files/file-%C3%A9", headers=bearer(key)).status_code == 404


def test_json_body_limit_from_content_length_and_while_streaming(env):
    c, key, _ = env
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]})
    r = raw(c, "/v1/chat/completions", big, key)
    assert_400(r, None, status=413)
    assert r.json()["error"]["code"] == "request_too_large" and "x-request-id" in r.headers

    def chunks():  # no Content-Length: the body is counted as it streams in
        yield big[:3000].encode()
        yield big[3000:].encode()

    r = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json", **bearer(key)})
    assert_400(r, None, status=413)
    small = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 2})
    assert raw(c, "/v1/chat/completions", small, key).status_code == 200


def test_uploads_keep_their_own_limit(env):
    c, key, _ = env
    data = b"".join(b'{"text": "%d", "label": "a"}\n' % i for i in range(400))  # > 4096 bytes
    r = c.post("/v1/files", headers=bearer(key), files={"file": ("d.jsonl", data)}, data={"purpose": "evals"})
    assert r.status_code == 200, r.text


def test_guard_is_on_without_auth():
    with make_client(auth=False) as c:
        r = raw(c, "/v1/completions", f'{{"model": "{MODEL}", "prompt": "{LONE}"}}')
        assert_400(r, "prompt")


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/fine_tuning/jobs", "/v1/evals"])
def test_nesting_deeper_than_the_limit_is_refused_before_anything_parses_it(env, path):
    # 2,000 levels: enough for a RecursionError in the JSON parser (a 500 without the guard).
    c, key, _ = env
    r = raw(c, path, f'{{"model": "{MODEL}", "metadata": {{"k": {nested(2000)}}}}}', key)
    assert_400(r, None)
    assert r.json()["error"]["code"] == "too_deeply_nested" and str(MAX_JSON_DEPTH) in r.json()["error"]["message"]


def test_nesting_at_the_limit_and_brackets_inside_strings_pass_the_guard(env):
    c, key, _ = env
    at_limit = f'{{"model": "{MODEL}", "metadata": {{"k": {nested(MAX_JSON_DEPTH - 2)}}}}}'  # the route decides
    r = raw(c, "/v1/chat/completions", at_limit, key)
    assert r.status_code == 400 and r.json()["error"]["code"] != "too_deeply_nested", r.text
    text = json.dumps("[{" * 60 + '\\"[')  # brackets and an escaped quote inside a string are text
    body = f'{{"model": "{MODEL}", "max_tokens": 2, "messages": [{{"role": "user", "content": {text}}}]}}'
    r = raw(c, "/v1/chat/completions", body, key)
    assert r.status_code == 200, r.text


def test_json_depth_counts_only_structure():
    assert json_depth(nested(MAX_JSON_DEPTH + 6).encode()) == MAX_JSON_DEPTH + 6
    assert json_depth(json.dumps({"a": "[" * 500, "b": [[[1]]] * 30}).encode()) == 4
    assert json_depth(json.dumps(["\\", "\"[[[", [1]] * 40).encode()) == 2
