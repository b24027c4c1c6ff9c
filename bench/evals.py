"""Classification-eval scoring throughput: rows/s of llmaas's eval path vs llama-cpp-python's `Llama` scoring
the same labels, on the same GGUF (SmolLM2-135M-Instruct Q4_1) with the same threads, in one process run.

Every row is a chat (user message = the dataset's prompt template filled with the row's text, rendered with the
model's chat template); each label is scored as the assistant's answer including the end-of-turn token, and the
prediction is the label with the highest summed log-probability. Contenders, one after the other, each after a
warm-up on the first rows:

- **llmaas eval**: `llmaas.evals.model_run.ModelRun` (what an eval job's worker runs: tokenization included),
  `Settings.eval_batch_rows` (16) rows per `engine.score_many` call.
- **llmaas score_many**: the same items, built once outside the clock, through `engine.score_many` in batches of
  16 rows (scoring only).
- **llmaas unbatched**: the same llama.cpp runner, one `runner.score(prefix + label, start)` call per label (no
  batching, no prefix sharing): what batching buys.
- **peer**: `llama_cpp.Llama(logits_all=True)`; per row and label `reset()`, `eval(prefix + label)`, then the sum
  of log_softmax(scores[i - 1])[token] over the label's tokens: the same token ids, only the scoring differs.
  Its flash_attn is off by default (llama-cpp-python's default); llmaas's contexts use llama.cpp's default (auto:
  on, on CPU), which moves a label's log-probability by up to ~0.8 here. `--peer-flash-attn on` gives the peer
  exactly the numbers of "llmaas unbatched"; `both` runs the two peers (ratios are against the "off" one).

    .venv/bin/python bench/evals.py                              # rotten_tomatoes, 200 rows (~2 min on 2 cores)
    .venv/bin/python bench/evals.py --dataset bbc_news --rows 100
    .venv/bin/python bench/evals.py --rows 32 --skip-unbatched   # smoke run (~20 s)
    .venv/bin/python bench/evals.py --peer-flash-attn both       # also the peer with flash attention

Reported per contender: rows/s, wall s, accuracy, agreement of its predictions with the peer's, and the largest
difference of a label's summed log-probability from the peer's. Results: bench/results/evals.json
(`--output`), one entry per dataset, with the machine's load average before and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from llmaas.core.config import Settings
from llmaas.engine.backends.llamacpp import resolve_model
from llmaas.engine.factory import build_engine
from llmaas.engine.scoring import ScoreItem
from llmaas.evals.model_run import ModelRun, shared_prompt
from llmaas.evals.tasks import Row, Tokens, read_rows

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results"

DATASETS = {
    "rotten_tomatoes": (["positive", "negative"], "Review: {text}\nIs this review positive or negative?"),
    "bbc_news": (["business", "entertainment", "politics", "sports", "tech"],
                 "Article: {text}\nTopic: one of business, entertainment, politics, sports, tech?"),
}
WARMUP_ROWS = 4


def argmax_labels(sums: list[list[float]], labels: list[str]) -> list[str]:
    return [labels[max(range(len(s)), key=s.__getitem__)] for s in sums]


def summary(name: str, wall: float, sums: list[list[float]], labels: list[str], rows: list[Row]) -> dict:
    preds = argmax_labels(sums, labels)
    return {"name": name, "rows": len(rows), "wall_s": round(wall, 3), "rows_per_s": round(len(rows) / wall, 2),
            "accuracy": round(sum(p == r.answer for p, r in zip(preds, rows, strict=True)) / len(rows), 4),
            "predictions": preds, "sums": sums}


async def run_llmaas(a: argparse.Namespace, task: dict, labels: list[str], rows: list[Row]) -> tuple[list, list]:
    engine = build_engine(Settings(threads=a.threads, models=["smollm2"]), "smollm2")
    await engine.start()
    out = []
    try:
        toks = Tokens(engine.tokenize_chat, set(engine.runner.eog_tokens()))
        items = []
        for r in rows:
            prefix = toks.prompt(r.prompt)
            items.append(ScoreItem(prefix, [toks.answer(r.prompt, label, prefix) for label in labels]))
        warm = rows[:WARMUP_ROWS]

        # 1. the real eval path: ModelRun, as an eval job's worker runs it
        collected: dict[int, dict] = {}

        async def on_batch(results: list[tuple[int, dict]], _p: int, _g: int) -> None:
            collected.update(results)

        shared = shared_prompt(engine, rows)  # what the eval worker computes once per eval
        run = ModelRun(engine, None, task, labels, a.batch_rows, shared)
        await run.run(warm, on_batch, lambda: False)
        collected.clear()
        t0 = time.perf_counter()
        await run.run(rows, on_batch, lambda: False)
        wall = time.perf_counter() - t0
        sums = [[collected[r.idx]["log_likelihoods"][lb] for lb in labels] for r in rows]
        out.append(summary("llmaas eval (ModelRun)", wall, sums, labels, rows))
        print(f"  {out[-1]['name']}: {out[-1]['rows_per_s']} rows/s", flush=True)

        # 2. score_many on prebuilt items, 16 rows per call
        await engine.score_many(items[:WARMUP_ROWS], None, shared)
        t0 = time.perf_counter()
        scores = []
        for s in range(0, len(items), a.batch_rows):
            scores += await engine.score_many(items[s: s + a.batch_rows], None, shared)
        wall = time.perf_counter() - t0
        out.append(summary("llmaas score_many", wall, [[sum(lp) for lp in sc] for sc in scores], labels, rows))
        print(f"  {out[-1]['name']}: {out[-1]['rows_per_s']} rows/s", flush=True)

        # 3. the same runner, one continuation at a time
        if not a.skip_unbatched:
            runner = engine.runner
            for it in items[:WARMUP_ROWS]:
                [runner.score(it.prefix + c, len(it.prefix)) for c in it.continuations]
            t0 = time.perf_counter()
            sums = [[sum(runner.score(it.prefix + c, len(it.prefix))) for c in it.continuations] for it in items]
            wall = time.perf_counter() - t0
            out.append(summary("llmaas unbatched", wall, sums, labels, rows))
            print(f"  {out[-1]['name']}: {out[-1]['rows_per_s']} rows/s", flush=True)
    finally:
        await engine.shutdown()
    return out, items


def run_peer(a: argparse.Namespace, path: str, items: list[ScoreItem], labels: list[str], rows: list[Row],
             flash_attn: bool) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_threads=a.threads, n_batch=512, logits_all=True, verbose=False,
                flash_attn=flash_attn)

    def score(it: ScoreItem) -> list[float]:
        sums = []
        for c in it.continuations:
            llm.reset()
            llm.eval(it.prefix + c)
            n = len(it.prefix)
            total = 0.0
            for i, tok in enumerate(c, n):
                row = np.asarray(llm.scores[i - 1], dtype=np.float64)
                m = row.max()
                total += float(row[tok] - m - np.log(np.exp(row - m).sum()))
            sums.append(total)
        return sums

    for it in items[:WARMUP_ROWS]:
        score(it)
    t0 = time.perf_counter()
    sums = [score(it) for it in items]
    wall = time.perf_counter() - t0
    llm.close()
    return summary("peer: Llama" + (" (flash_attn)" if flash_attn else ""), wall, sums, labels, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="rotten_tomatoes")
    ap.add_argument("--rows", type=int, default=200,
                    help="first N rows of data/<dataset>/test.jsonl (default 200; the vendored files hold "
                         "1000 rotten_tomatoes and 598 bbc_news rows, a larger N gives all of them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=Settings.model_fields["eval_batch_rows"].default)
    ap.add_argument("--skip-unbatched", action="store_true", help="leave out the 'llmaas unbatched' contender")
    ap.add_argument("--peer-flash-attn", choices=["off", "on", "both"], default="off",
                    help="the peer's flash_attn (llama-cpp-python's default: off; llmaas's contexts use llama.cpp's "
                         "default, auto = on for CPU); with 'both' the off one is the reference for ratios")
    ap.add_argument("--output", type=Path, default=RESULTS / "evals.json")
    a = ap.parse_args()

    labels, template = DATASETS[a.dataset]
    task = {"type": "classification", "labels": labels, "prompt_template": template}
    rows = read_rows((DATA / a.dataset / "test.jsonl").read_bytes(), task, max_rows=a.rows)
    model_id, path = resolve_model("smollm2")
    load0 = os.getloadavg()
    print(f"{a.dataset}: {len(rows)} rows, {len(labels)} labels, {model_id}, threads {a.threads}, "
          f"load average {load0[0]:.2f}", flush=True)

    results, items = asyncio.run(run_llmaas(a, task, labels, rows))
    n_ours = len(results)
    for fa in {"off": [False], "on": [True], "both": [False, True]}[a.peer_flash_attn]:
        results.append(run_peer(a, str(path), items, labels, rows, fa))
        print(f"  {results[-1]['name']}: {results[-1]['rows_per_s']} rows/s", flush=True)
    load1 = os.getloadavg()

    peer = results[n_ours]
    for r in results:
        r["agreement_with_peer"] = round(sum(
            p == q for p, q in zip(r["predictions"], peer["predictions"], strict=True)) / len(rows), 4)
        r["max_abs_logprob_diff_vs_peer"] = round(max(
            abs(x - y) for s, t in zip(r["sums"], peer["sums"], strict=True) for x, y in zip(s, t, strict=True)), 5)
        r["ratio_vs_peer"] = round(r["rows_per_s"] / peer["rows_per_s"], 2)
    tokens = sum(it.n_tokens for it in items)
    print(f"\n== {a.dataset}: {len(rows)} rows x {len(labels)} labels ({tokens} tokens with each prefix once), "
          f"{a.threads} threads, {a.batch_rows} rows per call; load average {load0[0]:.2f} -> {load1[0]:.2f} ==")
    print(f"{'contender':32} {'rows/s':>8} {'wall s':>8} {'accuracy':>9} {'agree':>7} {'max |dLL|':>10} {'ratio':>7}")
    for r in results:
        print(f"{r['name']:32} {r['rows_per_s']:8.2f} {r['wall_s']:8.2f} {r['accuracy']:9.3f} "
              f"{r['agreement_with_peer']:7.3f} {r['max_abs_logprob_diff_vs_peer']:10.4f} {r['ratio_vs_peer']:6.2f}x")
    print(f"ratio llmaas eval / {peer['name']} = {results[0]['ratio_vs_peer']:.2f}x")

    doc = {
        "config": {"dataset": a.dataset, "rows": len(rows), "labels": labels, "prompt_template": template,
                   "threads": a.threads, "batch_rows": a.batch_rows, "warmup_rows": WARMUP_ROWS,
                   "peer_flash_attn": a.peer_flash_attn, "reference_peer": peer["name"],
                   "model": model_id, "gguf": str(path), "tokens": tokens},
        "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                "llama_cpp_python": version("llama-cpp-python"), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in load1]},
        "contenders": [{k: v for k, v in r.items() if k not in ("predictions", "sums")} for r in results],
        "ratio_llmaas_eval_vs_peer": results[0]["ratio_vs_peer"],
        "ratio_score_many_vs_unbatched": (round(results[1]["rows_per_s"] / results[2]["rows_per_s"], 2)
                                          if not a.skip_unbatched else None),
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(a.output.read_text()) if a.output.is_file() else {}
    a.output.write_text(json.dumps({**prev, a.dataset: doc}, indent=2) + "\n")  # one entry per dataset
    print(f"wrote {a.output.relative_to(ROOT) if a.output.is_relative_to(ROOT) else a.output}")


if __name__ == "__main__":
    main()
