"""/v1/evals on the fake engine with an in-process worker: create, run, metrics (checked against
scikit-learn on the stored predictions), items, compare, cancel, bad input, tenant isolation.
The real model is exercised in tests/integration/test_evals_live.py."""

from __future__ import annotations

import json
import threading

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from llmaas.core.config import Settings
from llmaas.workers.jobs import HANDLERS
from llmaas.workers.worker import Worker
from tests.unit.conftest import ADMIN_KEY, Admin, bearer, make_client

ROWS = [{"text": f"review {i}", "label": "pos" if i % 3 else "negative"} for i in range(30)]
CHAT = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
        for w in ("abc", "bcd", "hello there", "xyz")]


def jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def run_worker(data_dir) -> None:
    """One job, in a thread (the worker installs signal handlers only on the main thread)."""
    w = Worker(Settings(backend="fake", data_dir=data_dir, admin_key=ADMIN_KEY, job_lease_s=5), HANDLERS)
    t = threading.Thread(target=w.run, kwargs={"once": True})
    t.start()
    t.join(60)
    assert not t.is_alive()


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path) as c:
        a = Admin(c)
        keys = {n: a.key(a.tenant(n))[1] for n in ("one", "two")}

        def upload(key: str, data: bytes, purpose: str = "evals") -> str:
            r = c.post("/v1/files", headers=bearer(key), files={"file": ("d.jsonl", data)}, data={"purpose": purpose})
            assert r.status_code == 200, r.text
            return r.json()["id"]

        yield c, keys, upload, tmp_path


def create(c, key: str, **body) -> dict:
    r = c.post("/v1/evals", headers=bearer(key), json={"model": "fake-model", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_classification_eval_metrics_items_compare(env):
    c, keys, upload, data_dir = env
    k = keys["one"]
    fid = upload(k, jsonl(ROWS))
    ev = create(c, k, file_id=fid, name="sum", metadata={"run": "1"},
                task={"type": "classification", "labels": ["pos", "negative"], "prompt_template": "Review: {text}"})
    assert ev["object"] == "eval" and ev["status"] == "queued" and ev["model"] == ["fake-model"]
    run_worker(data_dir)
    ev = c.get(f"/v1/evals/{ev['id']}", headers=bearer(k)).json()
    assert ev["status"] == "succeeded", ev
    assert ev["progress"]["rows_done"] == ev["progress"]["rows_total"] == 30
    m = ev["results"]["fake-model"]

    items, after = [], None
    while True:
        page = c.get(f"/v1/evals/{ev['id']}/items", headers=bearer(k),
                     params={"limit": 7, **({"after": after} if after else {})}).json()
        items += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [it["index"] for it in items] == list(range(30))
    assert [it["label"] for it in items] == [r["label"] for r in ROWS]
    y, p = [it["label"] for it in items], [it["prediction"] for it in items]
    labels = ["pos", "negative"]
    assert m["rows"] == 30 and m["accuracy"] == pytest.approx(accuracy_score(y, p))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for i, lb in enumerate(labels):
        assert m["per_class"][lb]["f1"] == pytest.approx(f1[i]) and m["per_class"][lb]["support"] == sup[i]
    macro = precision_recall_fscore_support(y, p, labels=labels, average="macro", zero_division=0)
    assert m["macro"]["f1"] == pytest.approx(macro[2])
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, p, labels=labels).tolist()
    assert all(abs(sum(it["probabilities"].values()) - 1) < 1e-9 for it in items)

    ev2 = create(c, k, file_id=fid, name="mean",
                 task={"type": "classification", "prompt_template": "Review: {text}", "normalization": "mean"})
    run_worker(data_dir)
    cmp = c.get("/v1/evals/compare", headers=bearer(k), params={"ids": f"{ev['id']},{ev2['id']}"}).json()
    assert [r["name"] for r in cmp["rows"]] == ["sum", "mean"]
    assert {"accuracy", "macro_f1", "f1[pos]", "log_loss", "ece"} <= set(cmp["columns"])
    assert cmp["rows"][0]["metrics"]["accuracy"] == pytest.approx(m["accuracy"])
    listed = c.get("/v1/evals", headers=bearer(k)).json()["data"]
    assert [e["id"] for e in listed] == [ev2["id"], ev["id"]]
    events = c.get(f"/v1/evals/{ev['id']}/events", headers=bearer(k)).json()["data"]
    assert any(e["type"] == "metrics" and "accuracy=" in e["message"] for e in events)


def test_generation_and_loss_evals(env):
    c, keys, upload, data_dir = env
    k = keys["one"]
    fid = upload(k, jsonl(CHAT))
    gen = create(c, k, file_id=fid, task={"type": "generation", "max_tokens": 8})
    loss = create(c, k, file_id=fid, task={"type": "loss"})
    run_worker(data_dir)
    run_worker(data_dir)
    g = c.get(f"/v1/evals/{gen['id']}", headers=bearer(k)).json()
    assert g["status"] == "succeeded", g
    gm = g["results"]["fake-model"]
    items = c.get(f"/v1/evals/{gen['id']}/items", headers=bearer(k)).json()["data"]
    assert gm["exact_match"] == pytest.approx(sum(it["exact_match"] for it in items) / len(items))
    assert {"token_f1", "rouge_l", "bleu", "loss", "perplexity"} <= set(gm)
    lm = c.get(f"/v1/evals/{loss['id']}", headers=bearer(k)).json()["results"]["fake-model"]
    assert lm["loss"] == pytest.approx(1.0) and lm["perplexity"] == pytest.approx(2.718281828, rel=1e-6)


def test_invalid_file_fails_the_eval_with_the_line(env):
    c, keys, upload, data_dir = env
    k = keys["one"]
    fid = upload(k, jsonl(ROWS[:3] + [{"text": "x", "label": "neutral"}]))
    ev = create(c, k, file_id=fid, task={"type": "classification", "labels": ["pos", "negative"]})
    run_worker(data_dir)
    ev = c.get(f"/v1/evals/{ev['id']}", headers=bearer(k)).json()
    assert ev["status"] == "failed" and ev["error"]["code"] == "invalid_file"
    assert "line 4" in ev["error"]["message"] and "neutral" in ev["error"]["message"]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "gpt-4o"}, 404, "model"),
    ({"file_id": "file-nope"}, 400, "file_id"),
    ({"task": {"type": "ranking"}}, 400, "task"),
    ({"task": {"type": "classification", "labels": ["a", "a"]}}, 400, "task.labels"),
    ({"max_rows": 0}, 400, "max_rows"),
])
def test_bad_parameters(env, body, status, param):
    c, keys, upload, _ = env
    fid = upload(keys["one"], jsonl(ROWS))
    r = c.post("/v1/evals", headers=bearer(keys["one"]),
               json={"model": "fake-model", "file_id": fid, "task": {"type": "classification"}, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"].startswith(param), err


def test_cancel_and_isolation(env):
    c, keys, upload, _ = env
    one, two = keys["one"], keys["two"]
    fid = upload(one, jsonl(ROWS))
    ev = create(c, one, file_id=fid, task={"type": "classification"})
    for method, path in (("GET", ""), ("GET", "/items"), ("GET", "/events"), ("POST", "/cancel")):
        r = c.request(method, f"/v1/evals/{ev['id']}{path}", headers=bearer(two))
        assert r.status_code == 404, (path, r.text)
    assert c.get("/v1/evals/compare", headers=bearer(two), params={"ids": ev["id"]}).status_code == 404
    assert c.get("/v1/evals", headers=bearer(two)).json()["data"] == []
    r = c.post("/v1/evals", headers=bearer(two), json={"model": "fake-model", "file_id": fid,
                                                       "task": {"type": "classification"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file_id"  # another tenant's file: no such file
    cancelled = c.post(f"/v1/evals/{ev['id']}/cancel", headers=bearer(one)).json()
    assert cancelled["status"] == "cancelled"
    assert c.post(f"/v1/evals/{ev['id']}/cancel", headers=bearer(one)).status_code == 400


def test_eval_cost_is_reserved_and_metered(env):
    c, keys, upload, data_dir = env
    a = Admin(c)
    poor = a.key(a.tenant("poor", budget_usd="0.00001"))[1]
    ev = create(c, poor, file_id=upload(poor, jsonl(ROWS)), task={"type": "classification"})
    run_worker(data_dir)
    ev = c.get(f"/v1/evals/{ev['id']}", headers=bearer(poor)).json()
    assert ev["status"] == "failed" and ev["error"]["code"] == "insufficient_quota", ev
    k = keys["one"]
    ev = create(c, k, file_id=upload(k, jsonl(ROWS)), task={"type": "classification"})
    run_worker(data_dir)
    assert c.get(f"/v1/evals/{ev['id']}", headers=bearer(k)).json()["status"] == "succeeded"
    usage = c.get("/v1/usage", headers=bearer(k), params={"group_by": "model"}).json()
    assert usage["totals"]["prompt_tokens"] > 30 * 10 and float(usage["totals"]["cost_usd"]) > 0, usage
