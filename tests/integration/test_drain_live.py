"""SIGTERM on a real `llmaas serve` (real SmolLM2): new requests get 503 + Retry-After and /ready turns 503 while
the accepted streams run to their end; the process exits cleanly, and after a restart every accepted request is
in the usage records. Past the drain deadline the streams still open are cut, and what they produced is billed.
A fine-tuning job running at the SIGTERM is handed back, not failed, and the restarted server resumes it from its
last checkpoint."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.data import data_bytes
from tests.integration.conftest import ADMIN_KEY, MODEL, LiveServer

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _streams(s: LiveServer, n: int, max_tokens: int) -> tuple[list[dict], threading.Event, list[threading.Thread]]:
    """n streams in threads; each result: finish reason, tokens, whether [DONE] came, an error frame if any."""
    results: list[dict] = [{} for _ in range(n)]
    started = threading.Event()

    def run(i: int) -> None:
        body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "stream_options": {"include_usage": True}, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Tell story number {i} about a lighthouse."}]}
        r = results[i]
        try:
            with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=120) as resp:
                r["status"] = resp.status_code
                for line in resp.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    started.set()
                    data = line[6:]
                    if data == "[DONE]":
                        r["done"] = True
                    elif '"error"' in data:
                        r["error"] = data
                    elif '"usage":{' in data.replace(" ", ""):
                        r["usage"] = httpx.Response(200, content=data).json()["usage"]
        except httpx.HTTPError as e:
            r["transport_error"] = repr(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return results, started, threads


def _usage_requests(s: LiveServer) -> int:
    return httpx.get(f"{s.url}/v1/usage", headers=HEADERS, timeout=30).json()["totals"]["requests"]


def test_sigterm_drains_accepted_streams_refuses_new_ones_and_loses_no_usage(tmp_path: Path):
    s = LiveServer(tmp_path, "--workers", "0", "--max-seqs", "4")
    try:
        before = _usage_requests(s)
        results, started, threads = _streams(s, 3, 160)
        assert started.wait(60)
        time.sleep(0.3)  # every stream admitted and producing
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.post(f"{s.url}/v1/chat/completions", headers=HEADERS, timeout=10, json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "server_shutting_down"
        ready = httpx.get(f"{s.url}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        for t in threads:
            t.join(120)
        for r in results:  # each accepted stream ran to its end
            assert r.get("status") == 200 and r.get("done") and "error" not in r, r
            assert r["usage"]["completion_tokens"] == 160
        assert s.proc.wait(60) == 0  # a clean exit, after the drain
    finally:
        s.stop()
    s = LiveServer(tmp_path, "--workers", "0", "--max-seqs", "4")
    try:
        assert _usage_requests(s) == before + 3
    finally:
        s.stop()


def test_past_the_drain_deadline_open_streams_are_cut_and_billed_for_what_they_produced(tmp_path: Path):
    s = LiveServer(tmp_path, "--workers", "0", "--max-seqs", "4", env={"LLMAAS_DRAIN_S": "1"})
    try:
        before = _usage_requests(s)
        results, started, threads = _streams(s, 2, 1500)
        assert started.wait(60)
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert all(not r.get("done") for r in results), results  # cut before the end
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
    s = LiveServer(tmp_path, "--workers", "0", "--max-seqs", "4")
    try:
        assert _usage_requests(s) == before + 2
        usage = httpx.get(f"{s.url}/v1/usage", headers=HEADERS, timeout=30).json()["totals"]
        assert 0 < usage["completion_tokens"] < 2 * 1500
    finally:
        s.stop()


def _job(s: LiveServer, job_id: str) -> dict:
    return httpx.get(f"{s.url}/v1/fine_tuning/jobs/{job_id}", headers=HEADERS, timeout=30).json()


def test_sigterm_hands_a_running_fine_tuning_job_back_and_the_restarted_server_resumes_it(tmp_path: Path):
    env = {"LLMAAS_CHECKPOINT_EVERY": "2", "LLMAAS_JOB_LEASE_S": "6"}
    s = LiveServer(tmp_path, "--max-seqs", "2", env=env)
    try:
        f = httpx.post(f"{s.url}/v1/files", headers=HEADERS, timeout=60, data={"purpose": "fine-tune"},
                       files={"file": ("chats.jsonl", data_bytes("chitchat", "train", 32))}).json()
        job = httpx.post(f"{s.url}/v1/fine_tuning/jobs", headers=HEADERS, timeout=60, json={
            "model": MODEL, "training_file": f["id"], "seed": 3, "method": {"type": "supervised", "supervised": {
                "hyperparameters": {"n_epochs": 1, "batch_size": 4}}}}).json()  # 8 steps, a checkpoint every 2
        deadline = time.monotonic() + 300
        while not httpx.get(f"{s.url}/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=HEADERS,
                            timeout=30).json()["data"]:
            assert time.monotonic() < deadline and _job(s, job["id"])["status"] in ("validating_files", "queued",
                                                                                  "running"), _job(s, job["id"])
            time.sleep(0.3)
        assert _job(s, job["id"])["status"] == "running"
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0  # a clean exit: the worker stopped at its next step and handed the job back
    finally:
        s.stop()
    with sqlite3.connect(tmp_path / "data" / "llmaas.db") as db:  # while no server runs: handed back, not failed
        status, owner = db.execute("SELECT status, lease_owner FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert status == "running" and owner is None, (status, owner)  # no lease: the next worker claims it at once

    s = LiveServer(tmp_path, "--max-seqs", "2", env=env)
    try:
        deadline = time.monotonic() + 600
        while (j := _job(s, job["id"]))["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, j
            time.sleep(0.5)
        assert j["status"] == "succeeded", j
        events = httpx.get(f"{s.url}/v1/fine_tuning/jobs/{job['id']}/events", headers=HEADERS,
                           params={"limit": 500}, timeout=30).json()["data"]
        assert any("resuming from step-" in e["message"] for e in events), [e["message"] for e in events][:20]
    finally:
        s.stop()
