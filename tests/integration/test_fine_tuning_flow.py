"""The whole fine-tuning loop through the official SDK on a live `llmaas serve` (real SmolLM2 via
llama.cpp, a real worker process training LoRA with torch + PEFT): upload, create, events,
checkpoints, success, chat with the `ft:` model at once, cancel, a failing job, and crash-resume
after `kill -9` of the worker mid-training. Small slices of the vendored data/ folder keep it to minutes."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import httpx
import openai
import psutil
import pytest

from tests.data import data_bytes, data_lines
from tests.integration.conftest import MODEL, LiveServer


def sentiment_rows(n: int) -> bytes:
    out = []
    for line in data_lines("rotten_tomatoes", "train", n):
        r = json.loads(line)
        out.append(json.dumps({"messages": [
            {"role": "system", "content": "Classify the sentiment of the movie review as positive or negative."},
            {"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}]}))
    return ("\n".join(out) + "\n").encode()


@pytest.fixture(scope="module")
def ft_server(tmp_path_factory):
    s = LiveServer(tmp_path_factory.mktemp("ft"), "--max-seqs", "8", "--ctx-size", "1024",
                   env={"LLMAAS_JOB_LEASE_S": "6", "LLMAAS_CHECKPOINT_EVERY": "3"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tenant(ft_server):
    t = ft_server.admin("POST", "/tenants", json={"name": "ft-" + uuid.uuid4().hex[:6]})["id"]
    key = ft_server.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
    return t, ft_server.client(api_key=key, timeout=60)


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def wait_eval(server: LiveServer, key: str, eval_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = httpx.get(f"{server.url}/v1/evals/{eval_id}", headers={"Authorization": f"Bearer {key}"}).json()
        if ev["status"] in ("succeeded", "failed", "cancelled"):
            return ev
        time.sleep(0.3)
    raise AssertionError(f"eval {eval_id} still {ev['status']}")


def worker_pids(server: LiveServer) -> list[int]:
    return [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)
            if "worker" in " ".join(p.cmdline())]


def test_fine_tune_then_chat_with_the_model_at_once(ft_server, tenant):
    tid, c = tenant
    f = c.files.create(file=("sentiment.jsonl", sentiment_rows(48)), purpose="fine-tune")
    held_out = c.files.create(file=("valid.jsonl", data_bytes("rotten_tomatoes", "valid", 16)), purpose="evals")
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, suffix="sent", seed=3, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8,
                                                                 "learning_rate_multiplier": 5}}},
        extra_body={"eval": {"file_id": held_out.id, "task": {
            "type": "classification", "labels": ["positive", "negative"],
            "system": "Classify the sentiment of the movie review as positive or negative."}}})
    done = wait_for(c, job.id, ("succeeded", "failed", "cancelled"))
    t_done = time.monotonic()
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{MODEL}:{tid}:sent:{job.id}"
    prompt = [{"role": "system", "content": "Classify the sentiment of the movie review as positive or negative."},
              {"role": "user", "content": "A dull, lifeless film with nothing to say."}]
    stream = c.chat.completions.create(model=done.fine_tuned_model, messages=prompt, max_tokens=3, temperature=0,
                                       stream=True)
    first = next(iter(stream))
    ttft = time.monotonic() - t_done
    text = first.choices[0].delta.content or ""
    text += "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert ttft <= 2.0, f"first token {ttft:.2f} s after success"
    assert text.strip().lower().startswith(("positive", "negative")), text
    assert done.trained_tokens and done.trained_tokens > 1000
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and "train_loss" in metrics[0].data
    messages = " | ".join(e.message for e in events)
    for needle in ("Files validated", "Fine-tuning job started", "New fine-tuned model created"):
        assert needle in messages
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and all(ck.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model) for ck in ckpts)
    assert c.chat.completions.create(model=ckpts[-1].fine_tuned_model_checkpoint, messages=prompt, max_tokens=2).choices
    csv = c.files.content(done.result_files[0]).text
    assert csv.startswith("step,train_loss") and len(csv.splitlines()) > 2
    listed = {m.id: m for m in c.models.list().data}
    assert done.fine_tuned_model in listed
    lineage = c.models.retrieve(done.fine_tuned_model).model_extra["lineage"]
    assert lineage["base"] == MODEL and lineage["job"] == job.id
    usage = ft_server.admin("GET", "/usage", params={"tenant_id": tid, "group_by": "endpoint"})["data"]
    training = [u for u in usage if u["endpoint"] == "fine_tuning.jobs"]
    assert training and training[0]["prompt_tokens"] == done.trained_tokens
    # the eval the job asked for runs on the model and its checkpoints; results land in the job and lineage
    eval_id = c.fine_tuning.jobs.retrieve(job.id).model_extra["eval_id"]
    ev = wait_eval(ft_server, c.api_key, eval_id)
    assert ev["status"] == "succeeded", ev["error"]
    assert set(ev["model"]) == {done.fine_tuned_model, *(ck.fine_tuned_model_checkpoint for ck in ckpts)}
    evals = c.models.retrieve(done.fine_tuned_model).model_extra["lineage"]["evals"]
    assert evals[-1]["eval_id"] == eval_id and 0 <= evals[-1]["metrics"]["macro_f1"] <= 1
    ck_metrics = c.fine_tuning.jobs.checkpoints.list(job.id).data[0].metrics.model_extra
    assert "eval_accuracy" in ck_metrics and "eval_macro_f1" in ck_metrics
    assert any(e.type == "metrics" and eval_id in e.message
               for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data)
    # another tenant can neither see nor use it
    t2 = ft_server.admin("POST", "/tenants", json={"name": "other-" + uuid.uuid4().hex[:6]})["id"]
    other = ft_server.client(api_key=ft_server.admin("POST", f"/tenants/{t2}/keys", json={})["key"])
    assert done.fine_tuned_model not in {m.id for m in other.models.list().data}
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=done.fine_tuned_model, messages=prompt, max_tokens=2)


def test_cancel_stops_training_and_frees_the_worker(ft_server, tenant):
    _, c = tenant
    f = c.files.create(file=("chat.jsonl", data_bytes("chitchat", "train", 200)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 4}}})
    wait_for(c, job.id, ("running",), timeout=300)
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in c.fine_tuning.jobs.list_events(job.id, limit=50).data):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    c.fine_tuning.jobs.cancel(job.id)
    t0 = time.monotonic()
    done = wait_for(c, job.id, ("cancelled", "succeeded", "failed"), timeout=300)
    waited = time.monotonic() - t0
    steps = [e.data["step_time_s"] for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data
             if e.type == "metrics" and "step_time_s" in e.data]
    # within one step: the step in flight finishes (at most one step time) after the cancel is seen
    # (heartbeat every 2 s); the margin covers polling and the slower step a busy machine gives
    assert done.status == "cancelled" and waited < 2 * max(steps) + 5, (waited, steps)
    # the worker is free again: a small job runs to completion
    small = c.fine_tuning.jobs.create(model=MODEL, training_file=c.files.create(
        file=("s.jsonl", data_bytes("chitchat", "train", 8)), purpose="fine-tune").id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}})
    assert wait_for(c, small.id, ("succeeded", "failed")).status == "succeeded"


def test_a_job_that_cannot_train_fails_with_a_clear_error(ft_server, tenant):
    _, c = tenant
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 3000},
                                    {"role": "assistant", "content": "ok"}]})
    f = c.files.create(file=("long.jsonl", (long + "\n").encode() * 3), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    done = wait_for(c, job.id, ("failed", "succeeded"), timeout=300)
    assert done.status == "failed" and done.error and done.error.message
    assert "Traceback" not in done.error.message


def test_worker_killed_mid_training_resumes_from_its_checkpoint(ft_server, tenant):
    _, c = tenant
    f = c.files.create(file=("sentiment.jsonl", sentiment_rows(48)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, seed=11, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    deadline = time.monotonic() + 300
    while not c.fine_tuning.jobs.checkpoints.list(job.id).data:  # 12 steps, a checkpoint every 3
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.3)
    victims = worker_pids(ft_server)
    assert victims
    # Jobs run at a lower CPU priority than serving (LLMAAS_WORKER_NICE, default 10), restarted workers too.
    assert [psutil.Process(p).nice() for p in victims] == [10] * len(victims)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    done = wait_for(c, job.id, ("succeeded", "failed", "cancelled"), timeout=600)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=500).data]
    assert any("resuming from step-" in m for m in messages), messages[:10]
    restarted = worker_pids(ft_server)
    assert restarted and set(restarted).isdisjoint(victims)  # the supervisor restarted the worker
    assert [psutil.Process(p).nice() for p in restarted] == [10] * len(restarted)
