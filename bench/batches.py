"""Batches: throughput of a chat batch against the same requests from a client, and interactive latency while
a batch runs, in one run of one `llmaas serve` (real SmolLM2).

1. Throughput: `--lines` chat requests (distinct prompts, `max_tokens` fixed with ignore_eos, greedy) sent by an
   SDK client at concurrency 16, and the same requests as one batch (upload, create, poll until completed), in
   `--throughput-rounds` rounds whose order alternates. Target: batch time <= 1.1x client time (summed).
2. Interactive latency at concurrency 4 (streamed chats; TTFT and inter-token latency), idle and with a batch
   running, interleaved round by round (`--rounds`): idle, busy, idle, busy... For a busy round a batch of
   `--busy-lines` lines is started, the probe runs once its lines are in flight, and the batch is cancelled.
   Target: busy p50 TTFT and p50 ITL <= 1.2x idle.

    python bench/batches.py --quick     # 200 lines, 2 rounds (~5 min on 2 cores)
    python bench/batches.py             # 1,000 lines, 3 rounds

Writes bench/results/batches.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from finetune_quality import MODEL, RESULTS, new_tenant, start_server
from openai import AsyncOpenAI, OpenAI

FINAL = ("completed", "failed", "expired", "cancelled")


def body(i: int, max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def sdk_kw(i: int, max_tokens: int) -> dict:
    """The same request through the SDK (ignore_eos is an extension: extra_body)."""
    kw = body(i, max_tokens)
    extra = {"ignore_eos": kw.pop("ignore_eos")}
    return {**kw, "extra_body": extra}


def start_batch(c: OpenAI, n: int, max_tokens: int, offset: int = 0) -> str:
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": body(offset + i, max_tokens)} for i in range(n)]
    f = c.files.create(file=("b.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def wait(c: OpenAI, bid: str, until: tuple[str, ...] = FINAL, poll_s: float = 0.2):
    while True:
        b = c.batches.retrieve(bid)
        if b.status in until:
            return b
        time.sleep(poll_s)


async def client_run(url: str, key: str, n: int, max_tokens: int, concurrency: int = 16) -> float:
    c = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, timeout=600, max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await c.chat.completions.create(**sdk_kw(i, max_tokens))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - t0


async def probe(url: str, key: str, requests: int, max_tokens: int, concurrency: int = 4) -> tuple[list, list]:
    """TTFTs and inter-token gaps (ms) of `requests` streamed chats at `concurrency`."""
    c = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, timeout=600, max_retries=0)
    ttft: list[float] = []
    gaps: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            t0 = last = time.monotonic()
            first = True
            stream = await c.chat.completions.create(**sdk_kw(10_000 + i, max_tokens), stream=True)
            async for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    now = time.monotonic()
                    if first:
                        ttft.append((now - t0) * 1000)
                        first = False
                    else:
                        gaps.append((now - last) * 1000)
                    last = now

    await asyncio.gather(*(one(i) for i in range(requests)))
    return ttft, gaps


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 1) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 lines, 2 rounds")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="idle/busy latency rounds")
    ap.add_argument("--throughput-rounds", type=int, default=2, help="client/batch rounds, order alternating")
    ap.add_argument("--probe-requests", type=int, default=16)
    ap.add_argument("--busy-lines", type=int, default=400)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--max-seqs", type=int, default=16)
    a = ap.parse_args()
    if a.quick:
        a.lines, a.rounds, a.probe_requests, a.busy_lines, a.throughput_rounds = 200, 2, 8, 200, 1
    data_dir = Path(tempfile.mkdtemp(prefix="llmaas-bench-batches-"))
    proc, url = start_server(data_dir, a.port, a.threads, serve_args=("--max-seqs", str(a.max_seqs)))
    try:
        key, c = new_tenant(url)
        asyncio.run(client_run(url, key, 16, a.max_tokens))  # warm-up
        pairs = []
        for r in range(a.throughput_rounds):  # client and batch alternate who goes first (the machine drifts)
            times: dict[str, float] = {}
            for who in (("client", "batch") if r % 2 == 0 else ("batch", "client")):
                t0 = time.monotonic()
                if who == "client":
                    asyncio.run(client_run(url, key, a.lines, a.max_tokens))
                else:
                    b = wait(c, start_batch(c, a.lines, a.max_tokens, offset=1_000_000 * (r + 1)))
                    assert b.status == "completed" and b.request_counts.completed == a.lines, b
                times[who] = time.monotonic() - t0
            pairs.append(times)
            print(f"throughput round {r}: {a.lines} lines, client c=16 {times['client']:.1f} s, batch "
                  f"{times['batch']:.1f} s ({times['batch'] / times['client']:.2f}x)", flush=True)
        client_s = sum(p["client"] for p in pairs)
        batch_s = sum(p["batch"] for p in pairs)
        rounds = []
        for r in range(a.rounds):
            idle = asyncio.run(probe(url, key, a.probe_requests, a.max_tokens))
            bid = start_batch(c, a.busy_lines, a.max_tokens, offset=100_000 * (r + 1))
            wait(c, bid, until=("in_progress", *FINAL))
            time.sleep(2.0)  # its lines fill the slots
            busy = asyncio.run(probe(url, key, a.probe_requests, a.max_tokens))
            during = c.batches.retrieve(bid).request_counts
            c.batches.cancel(bid)
            wait(c, bid)
            rounds.append({"idle": idle, "busy": busy, "batch_done_during_round": during.completed})
            print(f"round {r}: idle ttft {p50(idle[0])} ms itl {p50(idle[1])} ms | with batch ttft {p50(busy[0])} ms "
                  f"itl {p50(busy[1])} ms", flush=True)
        idle_t = [x for r in rounds for x in r["idle"][0]]
        idle_i = [x for r in rounds for x in r["idle"][1]]
        busy_t = [x for r in rounds for x in r["busy"][0]]
        busy_i = [x for r in rounds for x in r["busy"][1]]
        out = {"quick": a.quick, "lines": a.lines, "max_tokens": a.max_tokens, "max_seqs": a.max_seqs,
               "throughput_rounds": [{k: round(v, 2) for k, v in p.items()} for p in pairs],
               "client_c16_s": round(client_s, 2), "batch_s": round(batch_s, 2),
               "batch_over_client": round(batch_s / client_s, 3),
               "idle_ttft_p50_ms": p50(idle_t), "busy_ttft_p50_ms": p50(busy_t),
               "idle_itl_p50_ms": p50(idle_i), "busy_itl_p50_ms": p50(busy_i)}
        out["ttft_ratio"] = round(out["busy_ttft_p50_ms"] / out["idle_ttft_p50_ms"], 3)
        out["itl_ratio"] = round(out["busy_itl_p50_ms"] / out["idle_itl_p50_ms"], 3)
        out["targets"] = {"batch <= 1.1x client": out["batch_over_client"] <= 1.1,
                          "ttft <= 1.2x idle": out["ttft_ratio"] <= 1.2, "itl <= 1.2x idle": out["itl_ratio"] <= 1.2}
        print(json.dumps(out, indent=2))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "batches.json").write_text(json.dumps(out, indent=2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
