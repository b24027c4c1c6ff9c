"""Serving while a job trains: chat latency and training speed at each worker CPU priority, side by side.

For each `--nice` value (default 0, 5, 10; 0 is equal priority, the peer setting) it starts `llmaas serve`
with LLMAAS_WORKER_NICE set, measures one chat stream back to back while idle, then starts a fine-tune
(rotten_tomatoes from data/, chat format) with an eval attached, and once the first training step
is done: streams chats back to back for `--busy-s` seconds (training steps/min under that load), pauses
for `--idle-s` (steps/min alone), and after the job succeeds times the first token of the new `ft:` model
and chat latency while its eval runs. Prints a table with ratios to the idle figures; writes
bench/results/jobs_vs_serving.json.

    python bench/jobs_vs_serving.py                 # ~12 min on 2 cores
    python bench/jobs_vs_serving.py --nice 0,10 --busy-s 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from finetune_quality import MODEL, RESULTS, load, new_tenant, start_server, to_chat
from openai import OpenAI

LABELS = ["positive", "negative"]
CHAT = [{"role": "user", "content": "Write a short poem about the sea."}]


def probe(c: OpenAI, model: str = MODEL, max_tokens: int = 32) -> tuple[float, float]:
    """(TTFT, mean inter-token latency) of one streamed chat, in ms."""
    t0, first, n = time.monotonic(), None, 0
    for ch in c.chat.completions.create(model=model, messages=CHAT, max_tokens=max_tokens, temperature=0,
                                        stream=True):
        if ch.choices and ch.choices[0].delta.content:
            n += 1
            first = first or time.monotonic()
    end = time.monotonic()
    return (first - t0) * 1000, (end - first) / max(1, n - 1) * 1000


def med(xs: list[tuple[float, float]], i: int) -> float:
    return round(statistics.median(x[i] for x in xs), 1)


def one(nice: int, a: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmaas-jobs-nice{nice}-"))
    proc, url = start_server(data_dir, a.port + nice, a.threads, {"LLMAAS_WORKER_NICE": str(nice)})
    try:
        _, c = new_tenant(url)
        idle = [probe(c) for _ in range(5)]
        train = c.files.create(file=("train.jsonl", to_chat(load("rotten_tomatoes", "train", a.rows), LABELS)),
                               purpose="fine-tune")
        valid = "\n".join(json.dumps(r) for r in load("rotten_tomatoes", "valid", 64)) + "\n"
        held = c.files.create(file=("valid.jsonl", valid.encode()), purpose="evals")
        job = c.fine_tuning.jobs.create(
            model=MODEL, training_file=train.id, suffix="jobs", seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
            extra_body={"eval": {"file_id": held.id, "task": {"type": "classification", "labels": LABELS}}})

        def steps() -> int:
            ev = c.fine_tuning.jobs.list_events(job.id, limit=100).data
            return max([int(e.data.get("step", 0)) for e in ev if e.type == "metrics" and e.data] + [0])

        while steps() < 1:  # model preparation and tokenization first: measure training proper
            time.sleep(0.5)
        busy, s0, w0 = [], steps(), time.monotonic()
        while time.monotonic() - w0 < a.busy_s:
            busy.append(probe(c))
        busy_rate = (steps() - s0) / (time.monotonic() - w0) * 60
        s1, w1 = steps(), time.monotonic()
        time.sleep(a.idle_s)
        idle_rate = (steps() - s1) / (time.monotonic() - w1) * 60
        while (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
        t_done = time.monotonic()
        stream = c.chat.completions.create(model=j.fine_tuned_model or MODEL, messages=CHAT, max_tokens=3,
                                           stream=True)
        next(iter(stream))
        after_ms = (time.monotonic() - t_done) * 1000
        list(stream)
        during_eval = [probe(c) for _ in range(5)]
        return {"nice": nice, "status": j.status, "idle_ttft_ms": med(idle, 0), "idle_itl_ms": med(idle, 1),
                "busy_ttft_ms": med(busy, 0), "busy_itl_ms": med(busy, 1), "busy_chats": len(busy),
                "steps_per_min_busy": round(busy_rate, 1), "steps_per_min_idle": round(idle_rate, 1),
                "first_token_after_success_ms": round(after_ms), "eval_itl_ms": med(during_eval, 1)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nice", default="0,5,10", help="worker nice values to compare (default 0,5,10)")
    ap.add_argument("--rows", type=int, default=240, help="training rows (batch 8: rows/8 steps; data/ holds 2400)")
    ap.add_argument("--busy-s", type=float, default=60, help="seconds of back-to-back chats during training")
    ap.add_argument("--idle-s", type=float, default=30, help="seconds of training alone after that")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--port", type=int, default=8700)
    a = ap.parse_args()
    runs = []
    for n in (int(x) for x in a.nice.split(",")):
        print(f"[nice {n}] running ...", flush=True)
        runs.append(one(n, a))
        print(json.dumps(runs[-1]), flush=True)
    print(f"\n{'nice':>4} | {'chat ITL idle':>13} | {'ITL training':>18} | {'train steps/min busy/idle':>26} | "
          f"{'ft: first token':>15} | {'ITL eval':>8}")
    for r in runs:
        ratio = r["busy_itl_ms"] / r["idle_itl_ms"]
        share = r["steps_per_min_busy"] / r["steps_per_min_idle"] if r["steps_per_min_idle"] else float("nan")
        print(f"{r['nice']:>4} | {r['idle_itl_ms']:>10.1f} ms | {r['busy_itl_ms']:>7.1f} ms ({ratio:4.1f}x) | "
              f"{r['steps_per_min_busy']:>5.1f} / {r['steps_per_min_idle']:>4.1f} ({share:4.2f}x) | "
              f"{r['first_token_after_success_ms']:>12} ms | {r['eval_itl_ms']:>5.1f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jobs_vs_serving.json").write_text(json.dumps({"argv": sys.argv, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
