"""The whole loop on a labeled classification set, against a running llmaas server:

  1. evaluate the base model on the test split        (POST /v1/evals, task "classification")
  2. fine-tune it on the train split                   (POST /v1/files + /v1/fine_tuning/jobs, LoRA)
  3. evaluate the fine-tuned `ft:` model, same task    (served at once: no restart)
  4. print both side by side                           (GET /v1/evals/compare) with wall times

Rows are {"text": ..., "label": ...}; the label set is read from the data, so any such dataset works:

    llmaas serve                                   # in another terminal (prints an admin key on first start)
    export OPENAI_API_KEY=sk-llmaas-...            # a tenant key (or the admin key, on a laptop)
    python examples/classify_finetune.py                                   # rotten_tomatoes (2 classes)
    python examples/classify_finetune.py --dataset bbc_news                # 5 classes, nothing else changes
    python examples/classify_finetune.py --train-rows 400 --test-rows 200  # a quick look

The model classifies by log-likelihood: each label is scored as the assistant's answer, through the
serving engine, so the prompt the eval uses is exactly the one the fine-tune trains on.
Needs only the official `openai` package (pip install openai).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from openai import OpenAI

DATA = Path(__file__).resolve().parents[1] / "data"  # the repository's data/ folder


def read(path: Path, n: int | None) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows[:n] if n else rows


def jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def system_prompt(labels: list[str]) -> str:
    return f"Classify the text. Answer with exactly one of: {', '.join(labels)}."


def wait_eval(client: OpenAI, eval_id: str, what: str) -> dict:
    t0 = time.monotonic()
    while True:
        ev = client.get(f"/evals/{eval_id}", cast_to=object)
        p = ev["progress"]
        print(f"\r  {what}: {ev['status']:<10} {p['rows_done'] or 0}/{p['rows_total'] or '?'} rows "
              f"({time.monotonic() - t0:.0f} s)", end="", flush=True)
        if ev["status"] in ("succeeded", "failed", "cancelled"):
            print()
            if ev["status"] != "succeeded":
                sys.exit(f"eval {eval_id} {ev['status']}: {(ev.get('error') or {}).get('message')}")
            return ev
        time.sleep(2)


def wait_fine_tune(client: OpenAI, job_id: str):
    t0, seen = time.monotonic(), set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=20).data
        last = next((e for e in events if e.type == "metrics"), events[0] if events else None)
        if last is not None and last.id not in seen:
            seen.add(last.id)
            print(f"\r  fine-tune: {job.status:<10} {last.message[:90]:<90} ({time.monotonic() - t0:.0f} s)",
                  end="", flush=True)
        if job.status in ("succeeded", "failed", "cancelled"):
            print()
            if job.status != "succeeded":
                sys.exit(f"fine-tuning job {job_id} {job.status}: {job.error.message if job.error else ''}")
            return job
        time.sleep(3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-url", default=None, help="API base URL (default: OPENAI_BASE_URL or "
                    "http://127.0.0.1:8000/v1)")
    ap.add_argument("--api-key", default=None, help="tenant key (default: OPENAI_API_KEY)")
    ap.add_argument("--model", default="SmolLM2-135M-Instruct", help="base model to fine-tune")
    ap.add_argument("--dataset", default="rotten_tomatoes",
                    help="a folder of the repository's data/ with train/test.jsonl:\n"
                         "rotten_tomatoes (2400 train / 1000 test rows) or bbc_news (1400 / 598)")
    ap.add_argument("--train", type=Path, help="train file ({text, label} rows); overrides --dataset")
    ap.add_argument("--test", type=Path, help="test file ({text, label} rows); overrides --dataset")
    ap.add_argument("--train-rows", type=int, default=None, help="use the first N training rows (default: all of them)")
    ap.add_argument("--test-rows", type=int, default=None, help="use the first N test rows (default: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr-multiplier", type=float, default=2.0, help="times llmaas's base LoRA rate (2e-4)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    import os

    client = OpenAI(base_url=args.base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1",
                    api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), max_retries=2)
    train = read(args.train or DATA / args.dataset / "train.jsonl", args.train_rows)
    test = read(args.test or DATA / args.dataset / "test.jsonl", args.test_rows)
    labels = sorted({r["label"] for r in train})
    task = {"type": "classification", "labels": labels, "system": system_prompt(labels), "prompt_template": "{text}"}
    print(f"{len(train)} training rows, {len(test)} test rows, labels: {', '.join(labels)}")
    walls: dict[str, float] = {}

    t0 = time.monotonic()
    test_file = client.files.create(file=("test.jsonl", jsonl(test)), purpose="evals")
    base = client.post("/evals", cast_to=object, body={"model": args.model, "file_id": test_file.id, "task": task,
                                                        "name": f"{args.model} (base)"})
    base = wait_eval(client, base["id"], "base eval")
    walls["base eval"] = time.monotonic() - t0

    t0 = time.monotonic()
    chats = [{"messages": [{"role": "system", "content": task["system"]}, {"role": "user", "content": r["text"]},
                           {"role": "assistant", "content": r["label"]}]} for r in train]
    train_file = client.files.create(file=("train.jsonl", jsonl(chats)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=args.model, training_file=train_file.id, suffix=args.dataset[:20],
                                         seed=0, method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": args.epochs, "batch_size": args.batch_size,
                                             "learning_rate_multiplier": args.lr_multiplier}}})
    job = wait_fine_tune(client, job.id)
    walls["fine-tune"] = time.monotonic() - t0

    t0 = time.monotonic()
    tuned = client.post("/evals", cast_to=object, body={"model": job.fine_tuned_model, "file_id": test_file.id,
                                                         "task": task, "name": "fine-tuned"})
    tuned = wait_eval(client, tuned["id"], "fine-tuned eval")
    walls["fine-tuned eval"] = time.monotonic() - t0

    cmp = client.get("/evals/compare", cast_to=object, options={"params": {"ids": f"{base['id']},{tuned['id']}"}})
    cols = ["accuracy", "macro_f1", *(f"f1[{lb}]" for lb in labels), "log_loss", "gold_label_loss", "ece"]
    head = f"{'model':<{max(12, len(job.fine_tuned_model))}}" + "".join(f"{c:>{max(9, len(c) + 1)}}" for c in cols)
    print("\n" + head + "\n" + "-" * len(head))
    for row, name in zip(cmp["rows"], (args.model + " (base)", job.fine_tuned_model), strict=True):
        print(f"{name:<{max(12, len(job.fine_tuned_model))}}"
              + "".join(f"{row['metrics'].get(c, float('nan')):>{max(9, len(c) + 1)}.4f}" for c in cols))
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
          + f"; trained tokens {job.trained_tokens}")
    b, t = cmp["rows"][0]["metrics"]["macro_f1"], cmp["rows"][1]["metrics"]["macro_f1"]
    print(f"macro-F1 {b:.3f} -> {t:.3f} ({t - b:+.3f})")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "train_rows": len(train), "test_rows": len(test),
                                        "base_eval": base["id"], "tuned_eval": tuned["id"],
                                        "fine_tuned_model": job.fine_tuned_model, "comparison": cmp,
                                        "wall_s": walls, "trained_tokens": job.trained_tokens}, indent=2))


if __name__ == "__main__":
    main()
