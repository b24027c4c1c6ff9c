"""The run-time model catalog through the admin API, on the fake engine: register, load in the background,
serve, unload, delete; memory refusal; capabilities; per-tenant visibility; the catalog across a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import llmaas.serving.deployments as catalog_mod
from llmaas.core.model_files import bundled_gguf
from tests.unit.conftest import Admin, bearer, chat, make_client


def wait_status(c, model: str, want: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = c.get(f"/v1/admin/models/{model}").json()
        if m["status"] == want:
            return m
        time.sleep(0.02)
    raise AssertionError(f"{model} did not become {want}: {m}")


def test_the_started_model_is_in_the_catalog_with_its_status_and_price(client):
    r = client.get("/v1/admin/models")
    assert r.status_code == 200
    (m,) = r.json()["data"]
    assert m["id"] == "fake-model" and m["status"] == "ready" and m["package"] == "smollm2"
    assert m["capabilities"] == ["chat", "completions", "embeddings", "fine_tuning"]
    assert m["input_usd_per_mtok"] == "0.10" and m["loaded"]["max_seqs"] == 4


def test_register_load_chat_unload_delete(client):
    r = client.post("/v1/admin/models", json={"id": "second", "package": "smollm2", "description": "two",
                                              "max_seqs": 2, "context_length": 128, "input_usd_per_mtok": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("loading", "ready") and r.json()["input_usd_per_mtok"] == "1.00"
    m = wait_status(client, "second", "ready")
    assert m["loaded"] == {"context_length": 128, "max_seqs": 2} and m["load_at_start"] is True
    ids = {x["id"]: x for x in client.get("/v1/models").json()["data"]}
    assert ids["second"]["status"] == "ready" and "chat" in ids["second"]["capabilities"]
    assert chat(client, "", model="second", max_tokens=2).status_code == 401  # a key is still needed
    r = client.post("/v1/chat/completions", json={"model": "second", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2})
    assert r.status_code == 200, r.text
    r = client.post("/v1/admin/models/second/unload")
    assert r.status_code == 200 and r.json()["status"] == "unloaded" and r.json()["load_at_start"] is False
    r = client.post("/v1/chat/completions", json={"model": "second", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.post("/v1/admin/models/second/load").status_code == 200
    wait_status(client, "second", "ready")
    r = client.delete("/v1/admin/models/second")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert client.get("/v1/admin/models/second").status_code == 404
    assert client.post("/v1/admin/models/second/load").status_code == 404
    actions = [e["action"] for e in client.get("/v1/admin/audit").json()["data"]]
    assert {"model.register", "model.update", "model.delete", "model.price"} <= set(actions)


def test_a_model_still_loading_answers_503_with_retry_after(client, monkeypatch):
    gate = threading.Event()
    real = catalog_mod.build_engine

    def slow(*a, **kw):
        gate.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(catalog_mod, "build_engine", slow)
    assert client.post("/v1/admin/models", json={"id": "slow", "package": "smollm2"}).json()["status"] == "loading"
    r = client.post("/v1/chat/completions", json={"model": "slow", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    assert int(r.headers["retry-after"]) > 0
    listed = {x["id"]: x["status"] for x in client.get("/v1/models").json()["data"]}
    assert listed["slow"] == "loading"
    gate.set()
    wait_status(client, "slow", "ready")


def test_a_failed_load_reports_its_error_and_the_server_keeps_serving(client, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("llama.cpp could not read the tensors")

    monkeypatch.setattr(catalog_mod, "build_engine", broken)
    client.post("/v1/admin/models", json={"id": "bad", "package": "smollm2"})
    m = wait_status(client, "bad", "failed")
    assert "could not read the tensors" in m["error"]
    assert chat(client, "", max_tokens=2, model="fake-model").status_code == 401
    r = client.post("/v1/chat/completions", json={"model": "fake-model",
                                                 "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 200


def test_a_load_that_does_not_fit_in_memory_is_refused_before_it_starts(client):
    # 256 slots x 1M tokens of SmolLM2's KV cache is ~ 23 TiB: no machine running these tests has that.
    r = client.post("/v1/admin/models", json={"id": "huge", "package": "smollm2", "max_seqs": 256,
                                              "context_length": 1 << 20})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and "does not fit in memory" in err["message"]
    assert "KV cache" in err["message"] and "max_seqs" in err["message"]
    m = client.get("/v1/admin/models/huge").json()  # registered, but not loaded and not marked to load
    assert m["status"] == "unloaded" and m["load_at_start"] is False


@pytest.mark.parametrize("body,param", [
    ({"id": "x"}, "package"),
    ({"id": "x", "package": "smollm2", "gguf_path": "/tmp/a.gguf"}, "gguf_path"),
    ({"id": "x", "package": "no-such-model"}, "package"),
    ({"id": "x", "gguf_path": "relative.gguf"}, "gguf_path"),
    ({"id": "x", "gguf_path": "/nonexistent/model.gguf"}, "gguf_path"),
    ({"id": "bad id!", "package": "smollm2"}, "id"),
    ({"id": "x", "package": "smollm2", "max_seqs": 0}, "max_seqs"),
    ({"id": "x", "package": "smollm2", "capabilities": ["dance"]}, "capabilities"),
    ({"id": "x", "package": "smollm2", "surprise": 1}, "surprise"),
])
def test_bad_registrations_are_400s_naming_the_field(client, body, param):
    r = client.post("/v1/admin/models", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param


def test_a_file_that_is_not_gguf_is_refused(client, tmp_path: Path):
    f = tmp_path / "notes.gguf"
    f.write_text("not a model")
    r = client.post("/v1/admin/models", json={"id": "x", "gguf_path": str(f)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "gguf_path"


def test_registering_an_existing_id_is_a_conflict(client):
    r = client.post("/v1/admin/models", json={"id": "fake-model", "package": "smollm2"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "id"


def test_capabilities_are_enforced_per_endpoint(client):
    r = client.post("/v1/admin/models", json={"id": "emb", "gguf_path": str(bundled_gguf()),
                                              "capabilities": ["embeddings"]})
    assert r.status_code == 200, r.text
    wait_status(client, "emb", "ready")
    r = client.post("/v1/chat/completions", json={"model": "emb", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    assert r.json()["error"]["param"] == "model" and "embeddings" in r.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"model": "emb", "input": "hello"}).status_code == 200
    r = client.patch("/v1/admin/models/emb", json={"capabilities": ["chat", "embeddings"]})
    assert r.status_code == 200 and r.json()["capabilities"] == ["chat", "embeddings"]
    r = client.post("/v1/chat/completions", json={"model": "emb", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2})
    assert r.status_code == 200


def test_a_model_can_be_limited_to_some_tenants(client):
    admin = Admin(client)
    a, b = admin.tenant("a"), admin.tenant("b")
    _, key_a = admin.key(a)
    _, key_b = admin.key(b)
    r = client.post("/v1/admin/models", json={"id": "private", "package": "smollm2", "tenants": [a]})
    assert r.status_code == 200
    wait_status(client, "private", "ready")
    assert chat(client, key_a, model="private").status_code == 200
    r = chat(client, key_b, model="private")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "private" not in {m["id"] for m in client.get("/v1/models", headers=bearer(key_b)).json()["data"]}
    assert "private" in {m["id"] for m in client.get("/v1/models", headers=bearer(key_a)).json()["data"]}
    assert client.get("/v1/admin/models", headers=bearer(key_a)).status_code == 403
    assert client.post("/v1/admin/models/private/unload", headers=bearer(key_a)).status_code == 403


def test_the_catalog_survives_a_restart(tmp_path: Path):
    with make_client(data_dir=tmp_path) as c:
        assert c.post("/v1/admin/models", json={"id": "kept", "package": "smollm2"}).status_code == 200
        assert c.post("/v1/admin/models", json={"id": "parked", "package": "smollm2", "load": False,
                                                "description": "not loaded"}).status_code == 200
        wait_status(c, "kept", "ready")
    with make_client(data_dir=tmp_path) as c:
        models = {m["id"]: m for m in c.get("/v1/admin/models").json()["data"]}
        assert set(models) == {"fake-model", "kept", "parked"}
        assert models["parked"]["status"] == "unloaded" and models["parked"]["description"] == "not loaded"
        wait_status(c, "kept", "ready")
        r = c.post("/v1/chat/completions", json={"model": "kept", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2})
        assert r.status_code == 200


def test_fine_tuning_and_evals_take_any_catalog_model_that_can_do_them(client):
    from tests.unit.conftest import TRAIN

    client.post("/v1/admin/models", json={"id": "parked", "package": "smollm2", "load": False})
    client.post("/v1/admin/models", json={"id": "emb", "package": "smollm2", "load": False,
                                          "capabilities": ["embeddings"]})
    fid = client.post("/v1/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "parked", "training_file": fid})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "parked"
    r = client.post("/v1/fine_tuning/jobs", json={"model": "emb", "training_file": fid})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "parked" in r.json()["error"]["message"] and "emb" not in r.json()["error"]["message"].split(": ")[-1]


@pytest.mark.parametrize("body,param", [
    ({"capabilities": None}, "capabilities"),
    ({"load_at_start": None}, "load_at_start"),
    ({"tenants": ["org-nonexistent"]}, "tenants"),
    ({"max_seqs": 1000}, "max_seqs"),
])
def test_bad_changes_are_400s_and_leave_the_model_as_it_was(client, body, param):
    before = client.get("/v1/admin/models/fake-model").json()
    r = client.patch("/v1/admin/models/fake-model", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param
    assert client.get("/v1/admin/models/fake-model").json() == before
