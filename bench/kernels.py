"""Kernel bench: how fast one llama_decode step is for 1, 4 and 16 sequences with the served GGUF (Q4_1) and with
re-encodings of the same weights into types that llama.cpp's CPU backend has batched (repack / tinyBLAS) kernels
for, and what each re-encoding costs in quality against the served model.

Why: at concurrency 16 llmaas's step is one 16-sequence decode, so the decode itself bounds serving throughput
(16 / step time). This shows that bound per weight type on this machine, next to the quality price of changing
the type: KL divergence of next-token distributions to the served model, top-1 agreement and perplexity, on real
text from data/. Re-encodings are made with llama_model_quantize (allow_requantize) into a temp dir.

    python bench/kernels.py [--types Q8_0,IQ4_NL,Q4_0] [--texts 30]     -> bench/results/kernels.json
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
# The English sets the recorded quality figures were measured on; later data/ folders (thucnews: Chinese) would
# change the documents and so the figures.
QUALITY_SETS = ("bbc_news", "chitchat", "rotten_tomatoes")


def served_gguf() -> str:
    from llmaas.core.model_files import bundled_gguf

    return str(bundled_gguf())


def reencode(L, src: str, dst: str, ftype_name: str) -> None:
    p = L.llama_model_quantize_default_params()
    p.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    p.allow_requantize = True
    p.nthread = 2
    if L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
        raise RuntimeError(f"re-encoding to {ftype_name} failed")


def step_ms(L, path: str, n_seq: int, threads: int, steps: int = 25, prefill: int = 64) -> float:
    """Median wall time of one decode of `n_seq` tokens (one per sequence) after a `prefill`-token prompt each,
    on a unified KV cache as llmaas's serving context uses."""
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 16 * 1024, 2048, 2048, 16
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified, cp.no_perf = True, True
    ctx = L.llama_init_from_model(model, cp)
    b = L.llama_batch_init(2048, 0, 1)

    def put(i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
        b.seq_id[i][0] = seq

    n = 0
    for s in range(n_seq):
        for p in range(prefill):
            put(n, 100 + (p * 7 + s) % 5000, p, s, p == prefill - 1)
            n += 1
    b.n_tokens = n
    assert L.llama_decode(ctx, b) == 0
    times = []
    for st in range(steps):
        for s in range(n_seq):
            put(s, 200 + st + s, prefill + st, s, True)
        b.n_tokens = n_seq
        t = time.perf_counter()
        assert L.llama_decode(ctx, b) == 0
        times.append(time.perf_counter() - t)
    L.llama_batch_free(b)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return float(np.median(times) * 1000)


def texts(n: int) -> list[str]:
    out: list[str] = []
    files = sorted(f for f in glob.glob(str(DATA / "*" / "*.jsonl")) if Path(f).parent.name in QUALITY_SETS)
    per = max(1, n // max(1, len(files)))
    for f in files:
        with open(f) as fh:
            for i, line in enumerate(fh):
                if i >= per:
                    break
                row = json.loads(line)
                out.append((row.get("text") or json.dumps(row))[:1500])
    return out[:n]


def log_probs(path: str, docs: list[str], threads: int) -> list[tuple[np.ndarray, list[int]]]:
    from llama_cpp import Llama

    llm = Llama(path, n_ctx=512, logits_all=True, n_threads=threads, verbose=False)
    out = []
    for d in docs:
        toks = llm.tokenize(d.encode())[:500]
        llm.reset()
        llm.eval(toks)
        s = np.array(llm.scores[: len(toks)], dtype=np.float64)
        s -= s.max(1, keepdims=True)
        s -= np.log(np.exp(s).sum(1, keepdims=True))
        out.append((s, toks))
    return out


def perplexity(lp: list[tuple[np.ndarray, list[int]]]) -> float:
    nll = np.concatenate([-s[np.arange(len(t) - 1), t[1:]] for s, t in lp])
    return float(np.exp(nll.mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q8_0,IQ4_NL,Q4_0", help="re-encodings to compare with the served Q4_1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=30,
                    help="documents for the quality check: the first N/8 rows of each of the 8 files of "
                         "data/{bbc_news,chitchat,rotten_tomatoes}")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    args = ap.parse_args()
    from llama_cpp import llama_cpp as L

    L.llama_backend_init()
    tmp = tempfile.mkdtemp(prefix="llmaas-kernels-")
    variants = {"Q4_1 (served)": served_gguf()}
    for t in [t.strip() for t in args.types.split(",") if t.strip()]:
        variants[t] = os.path.join(tmp, f"{t}.gguf")
        reencode(L, served_gguf(), variants[t], t)
    docs = texts(args.texts)
    ref = log_probs(served_gguf(), docs, args.threads)
    rows = []
    for name, path in variants.items():
        ms = {bs: step_ms(L, path, bs, args.threads) for bs in (1, 4, 16)}
        lp = ref if path == served_gguf() else log_probs(path, docs, args.threads)
        kl = np.concatenate([(np.exp(r) * (r - x)).sum(1) for (r, _), (x, _) in zip(ref, lp, strict=True)])
        top1 = np.concatenate([r.argmax(1) == x.argmax(1) for (r, _), (x, _) in zip(ref, lp, strict=True)])
        rows.append({"type": name, "mib": round(os.path.getsize(path) / 2**20, 1),
                     **{f"step_ms_bs{bs}": round(v, 2) for bs, v in ms.items()},
                     "bound_tok_s_at_16": round(16_000 / ms[16], 1), "kl_mean": round(float(kl.mean()), 4),
                     "top1_agree": round(float(top1.mean()), 3), "ppl": round(perplexity(lp), 3)})
        r = rows[-1]
        print(f"{name:14} {r['mib']:6.1f} MiB  step bs1 {r['step_ms_bs1']:6.2f} ms  bs4 {r['step_ms_bs4']:6.2f} ms  "
              f"bs16 {r['step_ms_bs16']:6.2f} ms (<= {r['bound_tok_s_at_16']:5.1f} tok/s)  KL {r['kl_mean']:.4f}  "
              f"top-1 {r['top1_agree']:.3f}  ppl {r['ppl']:.2f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "texts": len(docs), "threads": args.threads,
                                       "tokens": sum(len(t) for _, t in ref),
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
