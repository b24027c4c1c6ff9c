"""What one Ray Serve DeploymentHandle call costs on this machine, streamed against unary, with nothing else in it.

An "ingress" deployment calls an "engine" deployment that does no work, as llmaas's ingress calls its engine
replicas: a streaming-generator call yielding n items (how llmaas calls `generate` today) against a unary call
returning the same n items in one list. Rounds interleave the two; the p50 of each (after a warm-up) is printed,
and the unary saving. It bounds what a unary call for non-streamed requests could take off Ray mode's added
latency (bench/ray_mode.py), and shows how much of that latency one handle hop is at all.

    .venv/bin/python bench/ray_handle.py                 # 3 rounds of 200 calls per variant, ~1 min
    .venv/bin/python bench/ray_handle.py --calls 500 --items 1,2,8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator

WARM_UP = 20  # calls per variant dropped from each round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200, help="calls per variant and round")
    ap.add_argument("--items", default="1,2", help="items per call (comma-separated)")
    args = ap.parse_args()
    items = [int(x) for x in args.items.split(",")]

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="llmaas-ray-handle-"))
    import ray
    from ray import serve

    @serve.deployment
    class Engine:
        async def stream(self, n: int) -> AsyncGenerator[int, None]:
            for i in range(n):
                yield i

        async def unary(self, n: int) -> list[int]:
            return list(range(n))

    @serve.deployment
    class Ingress:
        def __init__(self, engine) -> None:
            self.engine = engine

        async def run(self, mode: str, n: int, calls: int) -> list[float]:
            out = []
            for _ in range(calls):
                t = time.perf_counter()
                if mode == "stream":
                    async for _ in self.engine.options(stream=True).stream.remote(n):
                        pass
                else:
                    await self.engine.unary.remote(n)
                out.append((time.perf_counter() - t) * 1000)
            return out

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        handle = serve.run(Ingress.bind(Engine.bind()), name="ray-handle-bench", route_prefix=None)
        p50: dict[tuple[str, int], list[float]] = {}

        async def rounds() -> None:
            for r in range(args.rounds):
                order = ("stream", "unary") if r % 2 == 0 else ("unary", "stream")
                for n in items:
                    for mode in order:
                        ms = await handle.run.remote(mode, n, args.calls + WARM_UP)
                        p50.setdefault((mode, n), []).append(statistics.median(ms[WARM_UP:]))

        asyncio.run(rounds())
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"== one DeploymentHandle call, ingress -> engine deployment, {args.rounds} rounds x {args.calls} calls; "
          "p50 per round, median over rounds ==")
    print(f"{'items':>5}  {'streamed (ms)':>13}  {'unary (ms)':>10}  {'unary saves (ms)':>16}")
    for n in items:
        s, u = statistics.median(p50[("stream", n)]), statistics.median(p50[("unary", n)])
        print(f"{n:>5}  {s:>13.2f}  {u:>10.2f}  {s - u:>16.2f}")


if __name__ == "__main__":
    main()
