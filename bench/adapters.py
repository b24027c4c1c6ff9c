"""LoRA serving benchmark: aggregate output tok/s of the real engine (SmolLM2 via llama.cpp, in-process
BatchingEngine) with N concurrent streams all on the base model vs the same N spread over K LoRA adapters.

Every stream generates exactly `--tokens` tokens (greedy, ignore_eos) from its own prompt (no prefix sharing).
Adapters are random rank-8 f16 LoRA files on attn_q/attn_v of all layers (llmaas.training.lora_gguf), loaded
before the clock starts. With K adapters a decode step is K llama_decode calls (llama.cpp applies adapters per
call), and each adapter switch makes llama.cpp re-reserve its compute graph; the ratio shows what that costs.
Modes alternate over rounds (base, adapters, adapters, base, ...) so that drift in machine load cancels out.

    .venv/bin/python bench/adapters.py              # 16 streams x 128 tokens, 4 adapters, 2 rounds
    .venv/bin/python bench/adapters.py --quick      # 8 streams x 64 tokens, 1 round

`--threads` defaults to 1: on a small shared machine llama.cpp's threads stall on each other's barriers when
another process holds a core, which makes multi-thread numbers noise. Results: bench/results/adapters.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from llmaas.engine.backends.llamacpp import LlamaCppRunner
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationRequest, SamplingParams
from llmaas.training.lora_gguf import write_random_lora

ROOT = Path(__file__).resolve().parent.parent

TOPICS = ["the history of the printing press", "how vaccines work", "the water cycle", "a day in Rome",
          "the rules of chess", "why the sky is blue", "how to bake bread", "the life of bees"]


async def run_mode(engine: BatchingEngine, streams: int, tokens: int, adapters: list[str | None], tag: str) -> dict:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    async def one(i: int) -> int:
        prompt = engine.tokenize(f"Request {tag}-{i}. Write a short essay about {TOPICS[i % len(TOPICS)]}.")
        req = GenerationRequest(f"{tag}-{i}", prompt, params, adapters[i % len(adapters)])
        n = 0
        async for out in engine.generate(req):
            n += len(out.token_ids)
        return n

    s = engine._scheduler
    steps0, decodes0 = s.steps, s.decodes
    t0 = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(streams)])
    wall = time.perf_counter() - t0
    assert all(c == tokens for c in counts), counts
    steps, decodes = s.steps - steps0, s.decodes - decodes0
    return {"tokens": sum(counts), "wall_s": round(wall, 3), "tok_s": round(sum(counts) / wall, 2),
            "steps": steps, "decodes_per_step": round(decodes / max(steps, 1), 2)}


async def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="llmaas-bench-lora-"))
    names = [f"bench-lora-{k}" for k in range(args.adapters)]
    runner = LlamaCppRunner("smollm2", n_slots=args.streams, context_size=args.ctx_size,
                            max_batch_tokens=args.max_batch_tokens, threads=args.threads)
    engine = BatchingEngine(runner, max_queued=args.streams, max_adapters=max(args.adapters, 1))
    await engine.start()
    try:
        for k, name in enumerate(names):
            await engine.ensure_adapter(name, str(write_random_lora(tmp / f"{name}.gguf", seed=k)))
        modes: dict[str, list[str | None]] = {"base": [None], "adapters": list(names)}
        for mode, ads in modes.items():  # warm-up: first decodes, graph reserves, page faults
            await run_mode(engine, min(args.streams, len(ads) * 2), 8, ads, f"warm-{mode}")
        runs: dict[str, list[dict]] = {"base": [], "adapters": []}
        for r in range(args.rounds):
            order = ["base", "adapters"] if r % 2 == 0 else ["adapters", "base"]
            for mode in order:
                res = await run_mode(engine, args.streams, args.tokens, modes[mode], f"r{r}-{mode}")
                runs[mode].append(res)
                print(f"round {r} {mode:8s} {res['tok_s']:8.1f} tok/s  wall {res['wall_s']:6.1f} s  "
                      f"steps {res['steps']:4d}  decodes/step {res['decodes_per_step']:.2f}", flush=True)
    finally:
        await engine.shutdown()
    tok_s = {m: sum(x["tokens"] for x in v) / sum(x["wall_s"] for x in v) for m, v in runs.items()}
    ratio = tok_s["adapters"] / tok_s["base"]
    print(f"\n{args.streams} streams x {args.tokens} tokens, threads {args.threads}: base {tok_s['base']:.1f} tok/s, "
          f"{args.adapters} adapters {tok_s['adapters']:.1f} tok/s, ratio {ratio:.2f} (target >= 0.70)")
    return {"config": vars(args), "runs": runs, "tok_s": {m: round(v, 2) for m, v in tok_s.items()},
            "ratio": round(ratio, 3)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ctx-size", type=int, default=512)
    p.add_argument("--max-batch-tokens", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="8 streams x 64 tokens, 1 round")
    a = p.parse_args()
    if a.quick:
        a.streams, a.tokens, a.rounds = 8, 64, 1
    result = asyncio.run(main(a))
    out = ROOT / "bench" / "results" / "adapters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
