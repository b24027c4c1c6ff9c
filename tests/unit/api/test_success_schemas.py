"""The success bodies the spec documents (api/schemas.py): every /v1 operation names the JSON schema of its 200,
real answers of the app validate against it, and a body that lost a required field or names another `object`
does not (what the fuzzer's schema check relies on)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tests.unit.api.routers.test_evals import run_worker
from tests.unit.conftest import TRAIN, Admin, bearer, make_client

# Operations whose 200 is not a JSON object, each with why.
NOT_JSON = {
    ("get", "/v1/files/{file_id}/content"): "the file's bytes as uploaded (JSONL, or CSV for a fine-tune's "
                                            "metrics): openapi.FILE_CONTENT documents those media types",
}
EVAL_ROWS = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(4)]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _schema(spec: dict, method: str, path: str) -> dict:
    return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


class Checked:
    """Calls the app and validates each 200 body against the schema the spec documents for that operation."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.c, self.key = client, key
        self.spec = client.get("/openapi.json").json()

    def __call__(self, method: str, path: str, *, at: dict | None = None, admin: bool = False, **kw: Any) -> dict:
        """`path` is the spec's template, `at` fills it; `kw` go to the client (json, params, files...)."""
        url = path.format(**(at or {}))
        headers = {} if admin else bearer(self.key)
        r = self.c.request(method.upper(), url, headers=headers, **kw)
        assert r.status_code == 200, (method, url, r.text)
        body = r.json()
        errors = sorted(Draft202012Validator(_schema(self.spec, method, path)).iter_errors(body), key=str)
        assert not errors, (method, path, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]])
        return body


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path, settings={"batch_poll_s": 0.05}) as c:
        a = Admin(c)
        tenant = a.tenant("one")
        _, key = a.key(tenant, role="owner")
        yield Checked(c, key), tenant, tmp_path


def test_every_v1_operation_documents_a_json_success_body(client):
    spec = client.get("/openapi.json").json()
    documented, missing = 0, []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not path.startswith("/v1/"):
                continue
            # every route answers 200 today; a 201 would be held to the same rule (a bodiless 204: NOT_JSON)
            ok = next((r for status, r in op["responses"].items() if status.startswith("2")), {})
            if (method, path) in NOT_JSON:
                assert set(ok["content"]) - {"application/json"}, (method, path)
                continue
            schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("required") or schema.get("anyOf"):
                documented += 1
            else:
                missing.append(f"{method.upper()} {path}")
    assert not missing, missing
    assert documented >= 60
    # the merge kept what the 200s already said: the links of created objects, the event stream of inference
    paths = spec["paths"]
    assert "links" in paths["/v1/files"]["post"]["responses"]["200"]
    assert "links" in paths["/v1/fine_tuning/jobs"]["post"]["responses"]["200"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, path


def test_inference_bodies_match_their_schemas(env):
    call, _, _ = env
    msg = [{"role": "user", "content": "hi"}]
    models = call("get", "/v1/models")
    assert models["data"]
    call("get", "/v1/models/{model}", at={"model": "fake-model"})
    done = call("post", "/v1/chat/completions", json={"model": "fake-model", "messages": msg, "max_tokens": 4,
                                                      "n": 2, "logprobs": True, "top_logprobs": 2,
                                                      "store": True, "metadata": {"k": "v"}})
    call("post", "/v1/completions", json={"model": "fake-model", "prompt": ["a", "b"], "max_tokens": 3,
                                          "logprobs": 1})
    call("post", "/v1/embeddings", json={"model": "fake-model", "input": ["hello", "world"]})
    call("post", "/v1/embeddings", json={"model": "fake-model", "input": "x", "encoding_format": "base64"})

    cid = {"completion_id": done["id"]}
    call("get", "/v1/chat/completions")
    call("get", "/v1/chat/completions/{completion_id}", at=cid)
    call("post", "/v1/chat/completions/{completion_id}", at=cid, json={"metadata": {"k": "w"}})
    call("get", "/v1/chat/completions/{completion_id}/messages", at=cid)
    call("post", "/v1/feedback", json={"completion_id": done["id"], "rating": -1, "correction": "better"})
    call("get", "/v1/feedback")
    call("delete", "/v1/chat/completions/{completion_id}", at=cid)

    resp = call("post", "/v1/responses", json={"model": "fake-model", "input": "hi", "max_output_tokens": 4,
                                               "instructions": "Be brief."})
    rid = {"response_id": resp["id"]}
    tool_turn = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                 {"type": "function_call_output", "call_id": "c1", "output": "42"},
                 {"role": "user", "content": [{"type": "input_text", "text": "and?"}]}]
    more = call("post", "/v1/responses", json={"model": "fake-model", "previous_response_id": resp["id"],
                                               "input": tool_turn, "max_output_tokens": 4})
    call("get", "/v1/responses/{response_id}", at=rid)
    items = call("get", "/v1/responses/{response_id}/input_items", at={"response_id": more["id"]})
    assert {i["type"] for i in items["data"]} == {"message", "function_call", "function_call_output"}
    call("delete", "/v1/responses/{response_id}", at=rid)


def test_file_job_eval_and_batch_bodies_match_their_schemas(env):
    call, _, data_dir = env
    up = lambda name, data, purpose: call("post", "/v1/files", files={"file": (name, data)},  # noqa: E731
                                          data={"purpose": purpose})
    train = up("train.jsonl", TRAIN, "fine-tune")
    fid = {"file_id": train["id"]}
    call("get", "/v1/files/{file_id}", at=fid)
    call("get", "/v1/files", params={"purpose": "fine-tune", "limit": 1})
    call("delete", "/v1/files/{file_id}", at={"file_id": up("x.jsonl", TRAIN, "fine-tune")["id"]})

    job = call("post", "/v1/fine_tuning/jobs", json={"model": "fake-model", "training_file": train["id"],
                                                     "suffix": "s", "metadata": {"team": "a"}})
    jid = {"fine_tuning_job_id": job["id"]}
    call("get", "/v1/fine_tuning/jobs")
    call("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}", at=jid)
    call("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", at=jid)
    call("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", at=jid)
    call("post", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", at=jid)

    data = up("rows.jsonl", jsonl(EVAL_ROWS), "evals")
    ev = call("post", "/v1/evals", json={"model": "fake-model", "file_id": data["id"], "name": "n",
                                         "task": {"type": "classification", "labels": ["pos", "neg"],
                                                  "prompt_template": "Review: {text}"}})
    run_worker(data_dir)  # the eval, so that its results and items are there
    eid = {"eval_id": ev["id"]}
    got = call("get", "/v1/evals/{eval_id}", at=eid)
    assert got["status"] == "succeeded", got
    call("get", "/v1/evals")
    items = call("get", "/v1/evals/{eval_id}/items", at=eid)
    assert len(items["data"]) == len(EVAL_ROWS)
    call("get", "/v1/evals/{eval_id}/events", at=eid)
    assert call("get", "/v1/evals/compare", params={"ids": ev["id"]})["rows"]
    call("post", "/v1/evals/{eval_id}/cancel",
         at={"eval_id": call("post", "/v1/evals", json={"model": "fake-model", "file_id": data["id"],
                                                            "task": {"type": "classification"}})["id"]})

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
    lines = up("batch.jsonl", jsonl([line, {**line, "custom_id": "b", "url": "/v1/nope"}]), "batch")
    batch = call("post", "/v1/batches", json={"input_file_id": lines["id"], "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h", "metadata": {"k": "v"}})
    bid = {"batch_id": batch["id"]}
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing assertion
    while call("get", "/v1/batches/{batch_id}", at=bid)["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, "the batch did not finish"
        time.sleep(0.05)
    call("get", "/v1/batches")
    second = call("post", "/v1/batches", json={"input_file_id": lines["id"], "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"})
    r = call.c.post(f"/v1/batches/{second['id']}/cancel", headers=bearer(call.key))
    assert r.status_code in (200, 400), r.text  # 400: it finished first


def test_usage_and_admin_bodies_match_their_schemas(env):
    call, tenant, _ = env
    call("post", "/v1/chat/completions", json={"model": "fake-model", "max_tokens": 2,
                                               "messages": [{"role": "user", "content": "hi"}]})
    deadline = time.monotonic() + 30  # usage is flushed in the background
    while not call("get", "/v1/usage")["data"]:
        assert time.monotonic() < deadline, "no usage recorded"
        time.sleep(0.05)
    report = call("get", "/v1/usage", params={"group_by": "model,day"})
    assert report["data"][0]["model"] == "fake-model"

    tid = {"tenant_id": tenant}
    call("get", "/v1/admin/usage", admin=True)
    call("get", "/v1/admin/tenants", admin=True)
    call("get", "/v1/admin/tenants/{tenant_id}", admin=True, at=tid)
    call("patch", "/v1/admin/tenants/{tenant_id}", admin=True, at=tid,
         json={"limits": {"rpm": 100, "budget_usd": "5"}, "metadata": {"a": "b"}})
    key = call("post", "/v1/admin/tenants/{tenant_id}/keys", admin=True, at=tid,
               json={"name": "k", "models": ["fake-model"], "expires_in_days": 3})
    kid = {**tid, "key_id": key["id"]}
    call("get", "/v1/admin/tenants/{tenant_id}/keys", admin=True, at=tid)
    call("get", "/v1/admin/tenants/{tenant_id}/keys/{key_id}", admin=True, at=kid)
    call("patch", "/v1/admin/tenants/{tenant_id}/keys/{key_id}", admin=True, at=kid, json={"role": "reader"})
    rotated = call("post", "/v1/admin/tenants/{tenant_id}/keys/{key_id}/rotate", admin=True, at=kid)
    call("delete", "/v1/admin/tenants/{tenant_id}/keys/{key_id}", admin=True,
         at={**tid, "key_id": rotated["id"]})
    call("get", "/v1/admin/audit", admin=True)
    other = Admin(call.c).tenant("two")
    call("delete", "/v1/admin/tenants/{tenant_id}", admin=True, at={"tenant_id": other})

    m = {"model": "fake-model"}
    call("get", "/v1/admin/models", admin=True)
    call("get", "/v1/admin/models/{model}", admin=True, at=m)
    call("put", "/v1/admin/models/{model}", admin=True, at=m, json={"input_usd_per_mtok": "0.2"})
    call("patch", "/v1/admin/models/{model}", admin=True, at=m, json={"description": "d"})
    # a price for a model that is not in the catalog answers the price alone
    call("put", "/v1/admin/models/{model}", admin=True, at={"model": "elsewhere"},
         json={"input_usd_per_mtok": "1", "output_usd_per_mtok": "2"})
    call("get", "/v1/admin/models/{model}", admin=True, at={"model": "elsewhere"})
    call("get", "/v1/admin/deployments", admin=True)
    call("get", "/v1/admin/deployments/{model}", admin=True, at=m)


def test_a_body_that_lost_a_field_or_names_another_object_is_outside_its_schema(env):
    call, _, _ = env
    f = call("post", "/v1/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
    listing = call("get", "/v1/files")
    file_schema = _schema(call.spec, "get", "/v1/files/{file_id}")
    list_schema = _schema(call.spec, "get", "/v1/files")
    validator = Draft202012Validator(file_schema)
    for broken in ({k: v for k, v in f.items() if k != "bytes"}, {**f, "object": "model"}, {**f, "bytes": "12"},
                   {**f, "created_at": None}):
        with pytest.raises(ValidationError):
            validator.validate(broken)
    validator.validate({**f, "our_extension": 1})  # extensions stay valid
    bad = copy.deepcopy(listing)
    del bad["data"][0]["filename"]
    with pytest.raises(ValidationError):
        Draft202012Validator(list_schema).validate(bad)
    with pytest.raises(ValidationError):
        Draft202012Validator(list_schema).validate({k: v for k, v in listing.items() if k != "has_more"})
