"""Evals on a live `llmaas serve` with the real SmolLM2 (llama.cpp) and a real worker process:
classification (metrics checked against scikit-learn on the stored predictions), generation and loss
on slices of the vendored data/ folder, compare, the CLI with its table, isolation, and an eval that survives
`kill -9` of its worker (resumes after its last stored batch, no row lost or doubled)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from tests.data import data_bytes
from tests.integration.conftest import MODEL, LiveServer
from tests.integration.test_fine_tuning_flow import worker_pids

pytestmark = pytest.mark.integration
TEMPLATE = "Review: {text}\nIs this review positive or negative?"


@pytest.fixture(scope="module")
def ev_server(tmp_path_factory):
    s = LiveServer(tmp_path_factory.mktemp("evals"), "--max-seqs", "8", "--ctx-size", "1024",
                   env={"LLMAAS_JOB_LEASE_S": "6"})
    yield s
    s.stop()


class Tenant:
    def __init__(self, server: LiveServer) -> None:
        tid = server.admin("POST", "/tenants", json={"name": "ev-" + uuid.uuid4().hex[:6]})["id"]
        self.key = server.admin("POST", f"/tenants/{tid}/keys", json={"role": "member"})["key"]
        self.http = httpx.Client(base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {self.key}"},
                                 timeout=60)
        self.sdk = server.client(api_key=self.key)

    def upload(self, data: bytes, name: str = "eval.jsonl") -> str:
        return self.sdk.files.create(file=(name, data), purpose="evals").id

    def create(self, **body) -> dict:
        r = self.http.post("/evals", json={"model": MODEL, **body})
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, eval_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.http.get(f"/evals/{eval_id}").json()
            if ev["status"] in statuses:
                return ev
            time.sleep(0.3)
        raise AssertionError(f"eval {eval_id} still {ev['status']}")

    def items(self, eval_id: str, model: str | None = None) -> list[dict]:
        out, after = [], None
        while True:
            page = self.http.get(f"/evals/{eval_id}/items", params={"limit": 100, **({"after": after} if after else {}),
                                                                    **({"model": model} if model else {})}).json()
            out += page["data"]
            if not page["has_more"]:
                return out
            after = page["last_id"]


@pytest.fixture(scope="module")
def tenant(ev_server) -> Tenant:
    return Tenant(ev_server)


def test_classification_metrics_match_sklearn(tenant):
    fid = tenant.upload(data_bytes("rotten_tomatoes", "test", 48))
    ev = tenant.wait(tenant.create(file_id=fid, name="rt-base", task={
        "type": "classification", "labels": ["positive", "negative"], "prompt_template": TEMPLATE})["id"])
    assert ev["status"] == "succeeded", ev["error"]
    m = ev["results"][MODEL]
    items = tenant.items(ev["id"])
    assert [it["index"] for it in items] == list(range(48))
    labels = ["positive", "negative"]
    y, p = [it["label"] for it in items], [it["prediction"] for it in items]
    for it in items:  # the prediction is the most likely label, by the engine's log-likelihoods
        assert it["prediction"] == max(labels, key=lambda lb: it["log_likelihoods"][lb])
        assert all(v < 0 for v in it["log_likelihoods"].values())
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["macro"]["f1"] == pytest.approx(f1_score(y, p, labels=labels, average="macro", zero_division=0))
    assert m["weighted"]["f1"] == pytest.approx(f1_score(y, p, labels=labels, average="weighted", zero_division=0))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    assert [m["per_class"][lb]["recall"] for lb in labels] == pytest.approx(list(rec))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, p, labels=labels).tolist()
    probs = [[it["probabilities"][lb] for lb in sorted(labels)] for it in items]
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=sorted(labels)), rel=1e-6)
    assert 0 <= m["ece"] <= 1 and m["gold_label_loss"] > 0 and m["rows_per_s"] > 0
    # the same rows as chat rows (label = the assistant's answer) give the same predictions
    chat = "\n".join(json.dumps({"messages": [{"role": "user", "content": TEMPLATE.format(text=json.loads(x)["text"])},
                                              {"role": "assistant", "content": json.loads(x)["label"]}]})
                     for x in data_bytes("rotten_tomatoes", "test", 48).decode().splitlines())
    ev2 = tenant.wait(tenant.create(file_id=tenant.upload(chat.encode()), name="rt-chat",
                                    task={"type": "classification", "labels": labels})["id"])
    assert [it["prediction"] for it in tenant.items(ev2["id"])] == p
    cmp = tenant.http.get("/evals/compare", params={"ids": f"{ev['id']},{ev2['id']}"}).json()
    assert [r["metrics"]["accuracy"] for r in cmp["rows"]] == [m["accuracy"]] * 2
    assert "f1[positive]" in cmp["columns"]


def test_generation_and_loss(tenant):
    fid = tenant.upload(data_bytes("chitchat", "valid", 8))
    gen = tenant.create(file_id=fid, task={"type": "generation", "max_tokens": 24})
    loss = tenant.create(file_id=fid, task={"type": "loss"})
    g, lo = tenant.wait(gen["id"]), tenant.wait(loss["id"])
    assert g["status"] == lo["status"] == "succeeded", (g["error"], lo["error"])
    gm, items = g["results"][MODEL], tenant.items(gen["id"])
    assert len(items) == 8 and all(it["prediction"] for it in items)
    assert gm["token_f1"] == pytest.approx(sum(it["token_f1"] for it in items) / 8)
    assert 0 <= gm["rouge_l"] <= 1 and 0 <= gm["bleu"] <= 100
    assert gm["loss"] == pytest.approx(sum(it["ref_nll"] for it in items) / sum(it["ref_tokens"] for it in items))
    lm, litems = lo["results"][MODEL], tenant.items(loss["id"])
    assert lm["tokens"] == sum(it["tokens"] for it in litems) > sum(it["ref_tokens"] for it in items)
    assert 0.5 < lm["loss"] < 10 and lm["perplexity"] == pytest.approx(math.exp(lm["loss"]))


def test_cli_prints_the_table(ev_server, tenant, tmp_path):
    f = tmp_path / "rt.jsonl"
    f.write_bytes(data_bytes("rotten_tomatoes", "valid", 16))
    out = subprocess.run([sys.executable, "-m", "llmaas.cli", "eval", "run", "--base-url", f"{ev_server.url}/v1",
                          "-m", MODEL, "-f", str(f), "--template", TEMPLATE, "--name", "cli"],
                         env={**os.environ, "LLMAAS_API_KEY": tenant.key}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout and "macro P / R / F1" in out.stdout and "confusion matrix" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "llmaas.cli", "eval", "run", "--base-url", f"{ev_server.url}/v1",
                          "-m", "no-such-model", "-f", str(f)], env={**os.environ, "LLMAAS_API_KEY": tenant.key},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no-such-model" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_survives_kill_9_of_its_worker_and_is_isolated(ev_server, tenant):
    fid = tenant.upload(data_bytes("rotten_tomatoes", "test", 400))
    ev = tenant.create(file_id=fid, task={"type": "classification", "prompt_template": TEMPLATE})
    deadline = time.monotonic() + 300
    while (tenant.http.get(f"/evals/{ev['id']}").json()["progress"]["rows_done"] or 0) < 40:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victims = worker_pids(ev_server)
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    done = tenant.wait(ev["id"], timeout=900)
    assert done["status"] == "succeeded", done["error"]
    items = tenant.items(ev["id"])
    assert [it["index"] for it in items] == list(range(400))  # every row once
    assert done["results"][MODEL]["rows"] == 400
    events = [e["message"] for e in tenant.http.get(f"/evals/{ev['id']}/events", params={"limit": 100}).json()["data"]]
    assert any(m.startswith("Eval resumed") for m in events), events
    other = Tenant(ev_server)
    for path in ("", "/items", "/events"):
        assert other.http.get(f"/evals/{ev['id']}{path}").status_code == 404
    assert other.http.get("/evals").json()["data"] == []


def test_cancel_stops_a_running_eval_within_a_batch(ev_server, tenant):
    ev = tenant.create(file_id=tenant.upload(data_bytes("rotten_tomatoes", "train", 400)),
                       task={"type": "classification", "prompt_template": TEMPLATE})
    deadline = time.monotonic() + 300
    while (tenant.http.get(f"/evals/{ev['id']}").json()["progress"]["rows_done"] or 0) < 16:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert tenant.http.post(f"/evals/{ev['id']}/cancel").status_code == 200
    done = tenant.wait(ev["id"], timeout=120)
    assert done["status"] == "cancelled" and done["progress"]["rows_done"] < 400
    small = tenant.create(file_id=tenant.upload(data_bytes("rotten_tomatoes", "valid", 8)),
                          task={"type": "classification", "prompt_template": TEMPLATE})
    assert tenant.wait(small["id"], timeout=300)["status"] == "succeeded"  # the worker is free again
