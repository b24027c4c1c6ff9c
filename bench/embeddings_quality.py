"""Embedding quality through the running API: SmolLM2-135M-Instruct's mean-pooled hidden states against
all-MiniLM-L6-v2, a model trained for sentence embeddings, both served by one `llmaas serve` and read with the
openai SDK (`client.embeddings.create`).

The task is same-label retrieval on the vendored, human-labelled data (data/README.md): each test row is a
query, the train rows are the corpus, ranked by cosine similarity. precision@k is the share of the k nearest
corpus rows that carry the query's label, kNN accuracy whether the majority of them does; `chance` is what a
random ranking scores (the sum of the squared label shares of the corpus).

    python bench/embeddings_quality.py                       # starts a server with both models (~10 min, 2 cores)
    python bench/embeddings_quality.py --url http://127.0.0.1:8000 --admin-key sk-...   # a running server
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from finetune_quality import ADMIN_KEY, start_server
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results"
MODELS = ("SmolLM2-135M-Instruct", "all-MiniLM-L6-v2")


def load(dataset: str, split: str, n: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / dataset / f"{split}.jsonl").read_text().splitlines()]
    if n is not None and n > len(rows):
        raise SystemExit(f"data/{dataset}/{split}.jsonl has {len(rows)} rows; asked for {n}")
    return rows[:n]


def embed(client: OpenAI, model: str, texts: list[str], batch: int = 32) -> np.ndarray:
    out: list[list[float]] = []
    for i in range(0, len(texts), batch):
        r = client.embeddings.create(model=model, input=texts[i:i + batch])
        out += [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    v = np.asarray(out, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def retrieval(queries: np.ndarray, q_labels: list[str], corpus: np.ndarray, c_labels: list[str],
              k: int) -> dict[str, float]:
    """precision@k and majority-vote kNN accuracy of cosine-ranked same-label retrieval."""
    top = np.argsort(-(queries @ corpus.T), axis=1)[:, :k]
    c = np.asarray(c_labels)
    hits = c[top] == np.asarray(q_labels)[:, None]
    votes = [Counter(row).most_common(1)[0][0] for row in c[top]]
    return {f"precision@{k}": float(hits.mean()),
            f"knn{k}_accuracy": float(np.mean([v == q for v, q in zip(votes, q_labels, strict=True)]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="bbc_news,rotten_tomatoes", help="folders of data/ with labelled rows")
    ap.add_argument("--corpus-rows", type=int, default=1000, help="first N train rows of each dataset: the corpus")
    ap.add_argument("--query-rows", type=int, default=500, help="first N test rows of each dataset: the queries")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--url", help="an already running llmaas that serves both models (needs --admin-key)")
    ap.add_argument("--admin-key", default=ADMIN_KEY)
    ap.add_argument("--port", type=int, default=8941)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=RESULTS / "embeddings_quality.json")
    args = ap.parse_args()

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(Path(tempfile.mkdtemp(prefix="llmaas-embq-")), args.port, args.threads,
                                 serve_args=("--model", "smollm2", "--model", "all-minilm-l6-v2", "--max-seqs", "4",
                                             "--workers", "0"), cwd=ROOT)
    client = OpenAI(base_url=f"{url}/v1", api_key=args.admin_key, timeout=600, max_retries=0)
    results: dict[str, dict] = {}
    try:
        for dataset in args.datasets.split(","):
            corpus, queries = load(dataset, "train", args.corpus_rows), load(dataset, "test", args.query_rows)
            c_labels, q_labels = [r["label"] for r in corpus], [r["label"] for r in queries]
            shares = np.array(list(Counter(c_labels).values())) / len(c_labels)
            results[dataset] = {"corpus": len(corpus), "queries": len(queries), "chance": float((shares**2).sum())}
            for model in MODELS:
                t0 = time.monotonic()
                c = embed(client, model, [r["text"] for r in corpus])
                q = embed(client, model, [r["text"] for r in queries])
                scores = retrieval(q, q_labels, c, c_labels, args.k)
                results[dataset][model] = {**scores, "embed_s": round(time.monotonic() - t0, 1)}
                print(f"{dataset:16} {model:22} " + "  ".join(f"{n} {v:.3f}" for n, v in scores.items())
                      + f"  ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            print(f"{dataset:16} {'chance':22} precision@{args.k} {results[dataset]['chance']:.3f}", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"k": args.k, "results": results}, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
