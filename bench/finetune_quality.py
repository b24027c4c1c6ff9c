"""Fine-tuning quality benchmark, end to end through the API: base model vs. the fine-tuned one on a
labeled classification set from data/ (rotten_tomatoes by default; bbc_news works the same).

It starts `llmaas serve` (real model, one worker) on a fresh data dir — or uses `--url` + `--admin-key`
— uploads the training split as chat-format examples (system: the task, user: the text, assistant: the
label), fine-tunes through /v1/fine_tuning/jobs, then classifies the test split with both models.
Prediction: one generated token with top_logprobs; the label whose first token scores highest wins
(no free-text parsing, so a chatty base model is not penalised for formatting). Prints accuracy,
macro-F1, per-class F1 and wall times; writes bench/results/finetune_quality.json.

    python bench/finetune_quality.py                       # rotten_tomatoes, all 2400 train / 1000 test rows
    python bench/finetune_quality.py --dataset bbc_news
    python bench/finetune_quality.py --train-rows 400 --test-rows 200 --epochs 1   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from openai import AsyncOpenAI, OpenAI

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results"
MODEL = "SmolLM2-135M-Instruct"
ADMIN_KEY = "sk-llmaas-bench-admin-key-00000000000000"


def task_prompt(labels: list[str]) -> str:
    return f"Classify the text. Answer with exactly one word: {', '.join(labels)}."


def load(dataset: str, split: str, n: int | None) -> list[dict]:
    rows = [json.loads(x) for x in (DATA / dataset / f"{split}.jsonl").read_text().splitlines() if x.strip()]
    return rows[:n] if n else rows


def to_chat(rows: list[dict], labels: list[str]) -> bytes:
    sys_msg = task_prompt(labels)
    lines = [json.dumps({"messages": [{"role": "system", "content": sys_msg}, {"role": "user", "content": r["text"]},
                                      {"role": "assistant", "content": r["label"]}]}) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def pick(top: list, labels: list[str]) -> str | None:
    """The label whose first token has the highest log-probability among the returned alternatives."""
    best, best_lp = None, -math.inf
    for alt in top:
        tok = alt.token.strip().lower()
        if not tok:
            continue
        matches = [lb for lb in labels if lb.startswith(tok)]
        if len(matches) == 1 and alt.logprob > best_lp:
            best, best_lp = matches[0], alt.logprob
    return best


async def classify(url: str, key: str, model: str, rows: list[dict], labels: list[str],
                   concurrency: int) -> tuple[list[str | None], float]:
    # One client per event loop: an AsyncOpenAI client must not outlive the asyncio.run() that made it.
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, timeout=120, max_retries=2)
    sem = asyncio.Semaphore(concurrency)
    sys_msg = task_prompt(labels)
    done = [0]
    t0 = time.monotonic()

    async def one(r: dict) -> str | None:
        async with sem:
            out = await client.chat.completions.create(
                model=model, messages=[{"role": "system", "content": sys_msg}, {"role": "user", "content": r["text"]}],
                max_tokens=1, temperature=0, logprobs=True, top_logprobs=20)
            done[0] += 1
            if done[0] % 100 == 0:
                print(f"  {model[:40]}: {done[0]}/{len(rows)} classified", file=sys.stderr)
            lp = out.choices[0].logprobs
            return pick(lp.content[0].top_logprobs, labels) if lp and lp.content else None

    try:
        preds = await asyncio.gather(*[one(r) for r in rows])
    finally:
        await client.close()
    return preds, time.monotonic() - t0


def scores(gold: list[str], pred: list[str | None], labels: list[str]) -> dict:
    per = {}
    for lb in labels:
        tp = sum(g == lb and p == lb for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lb and p == lb for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lb and p != lb for g, p in zip(gold, pred, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        per[lb] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                   "support": tp + fn}
    return {"accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold),
            "macro_f1": sum(v["f1"] for v in per.values()) / len(labels), "per_class": per,
            "unparsed": sum(p is None for p in pred)}


def new_tenant(url: str, admin_key: str = ADMIN_KEY) -> tuple[str, OpenAI]:
    """A fresh tenant's member key, and an SDK client with it."""
    admin = httpx.Client(base_url=f"{url}/v1/admin", headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    tenant = admin.post("/tenants", json={"name": "bench-" + uuid.uuid4().hex[:6]}).json()["id"]
    key = admin.post(f"/tenants/{tenant}/keys", json={"role": "member"}).json()["key"]
    return key, OpenAI(base_url=f"{url}/v1", api_key=key, timeout=300)


def start_server(data_dir: Path, port: int, threads: int | None, env: dict[str, str] | None = None,
                 serve_args: tuple[str, ...] = ("--max-seqs", "16"), cwd: Path | None = None) -> tuple[object, str]:
    """A `llmaas serve` of its own (admin key ADMIN_KEY), once /ready answers: (process, base URL)."""
    import subprocess

    env = {**os.environ, "LLMAAS_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    cmd = [sys.executable, "-m", "llmaas.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
           *serve_args, "--log-level", "warning", *(["--threads", str(threads)] if threads else [])]
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {data_dir / 'server.log'}")
        time.sleep(0.5)
    raise SystemExit("server not ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="rotten_tomatoes", help="a folder of data/: rotten_tomatoes or bbc_news")
    ap.add_argument("--train-rows", type=int, default=None,
                    help="first N rows of train.jsonl (default: all vendored: rotten_tomatoes 2400, bbc_news 1400)")
    ap.add_argument("--test-rows", type=int, default=None,
                    help="first N rows of test.jsonl (default: all vendored: rotten_tomatoes 1000, bbc_news 598)")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--lr-multiplier", default="2")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--url", help="an already running llmaas (needs --admin-key)")
    ap.add_argument("--admin-key", default=ADMIN_KEY)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=RESULTS / "finetune_quality.json")
    args = ap.parse_args()

    train, test = load(args.dataset, "train", args.train_rows), load(args.dataset, "test", args.test_rows)
    labels = sorted({r["label"] for r in train})
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_server(Path(tempfile.mkdtemp(prefix="llmaas-ftq-")), args.port, args.threads)
    try:
        key, client = new_tenant(url, args.admin_key)

        print(f"{args.dataset}: {len(train)} train / {len(test)} test rows, labels {labels}", file=sys.stderr)
        base_pred, base_s = asyncio.run(classify(url, key, MODEL, test, labels, args.concurrency))
        gold = [r["label"] for r in test]
        base = scores(gold, base_pred, labels)
        print(f"base: accuracy {base['accuracy']:.3f}, macro-F1 {base['macro_f1']:.3f} ({base_s:.0f} s)",
              file=sys.stderr)

        f = client.files.create(file=(f"{args.dataset}.jsonl", to_chat(train, labels)), purpose="fine-tune")
        hp = {k: (v if v == "auto" else float(v) if k == "learning_rate_multiplier" else int(v)) for k, v in
              (("n_epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate_multiplier",
                                                                             args.lr_multiplier))}
        t0 = time.monotonic()
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, suffix=args.dataset[:20], seed=0,
                                             method={"type": "supervised", "supervised": {"hyperparameters": hp}})
        last = ""
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(5)
            job = client.fine_tuning.jobs.retrieve(job.id)
            ev = client.fine_tuning.jobs.list_events(job.id, limit=1).data
            if ev and ev[0].message != last:
                last = ev[0].message
                print(f"  [{time.monotonic() - t0:6.0f} s] {job.status}: {last}", file=sys.stderr)
        train_s = time.monotonic() - t0
        if job.status != "succeeded":
            raise SystemExit(f"fine-tuning {job.status}: {job.error}")
        ft_pred, ft_s = asyncio.run(classify(url, key, job.fine_tuned_model, test, labels,
                                                   args.concurrency))
        ft = scores(gold, ft_pred, labels)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\n== fine-tuning quality: {args.dataset}, {len(train)} train rows, {job.trained_tokens} trained tokens, "
          f"hyperparameters {job.hyperparameters.model_dump()} ==")
    print(f"{'model':<10}{'accuracy':>10}{'macro-F1':>10}" + "".join(f"{'F1 ' + lb[:10]:>16}" for lb in labels)
          + f"{'unparsed':>10}{'eval s':>9}")
    for name, s, secs in (("base", base, base_s), ("fine-tuned", ft, ft_s)):
        print(f"{name:<10}{s['accuracy']:>10.3f}{s['macro_f1']:>10.3f}"
              + "".join(f"{s['per_class'][lb]['f1']:>16.3f}" for lb in labels) + f"{s['unparsed']:>10}{secs:>9.0f}")
    ok = ft["macro_f1"] >= 0.80 and ft["macro_f1"] >= base["macro_f1"] + 0.15
    print(f"training wall time {train_s:.0f} s ({job.trained_tokens / train_s:.0f} tokens/s end to end); "
          f"target fine-tuned macro-F1 >= 0.80 and >= base + 0.15: {'MET' if ok else 'MISSED'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "dataset": args.dataset, "train_rows": len(train), "test_rows": len(test), "labels": labels,
        "job": {"id": job.id, "model": job.fine_tuned_model, "hyperparameters": job.hyperparameters.model_dump(),
                "trained_tokens": job.trained_tokens}, "train_wall_s": train_s, "base": base, "fine_tuned": ft,
        "eval_wall_s": {"base": base_s, "fine_tuned": ft_s}, "target_met": ok,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
