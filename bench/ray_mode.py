"""Ray mode vs single process, one engine replica, the real model (SmolLM2-135M-Instruct), in one run.

Starts `llmaas serve` and `llmaas serve --ray` (a local Ray cluster of its own) side by side: same --threads,
--max-seqs 16, no job workers, gateway on (admin key), both on the same PostgreSQL server and Redis, so that what
differs is Ray. In interleaved rounds (targets alternate, order reversed every other round):

  (a) concurrency 1: GET /health (the HTTP hop alone), non-streamed chats of max_tokens 1 (latency = overhead +
      one prefill + one token) and streamed chats of 32 tokens (TTFT);
  (b) concurrency 16: 32 streams of 128 tokens each (ignore_eos), aggregate output tok/s.

Then Ray's cold start: the deployment scaled to zero (min_replicas 0, 2 s delays), one stream's time to first
token from the client, three times. Prints the numbers, the ratios and each target (added p50 <= 5 ms, tok/s >=
0.9x, cold start <= 10 s); writes bench/results/ray_mode.json.

    .venv/bin/python bench/ray_mode.py            # 3 rounds, ~11 min on 2 cores
    .venv/bin/python bench/ray_mode.py --quick    # 1 round, fewer requests

Ray mode runs with its defaults: HTTP through HAProxy into the ingress replica, the engine replica reached over
the same-node link. `--ray-env LLMAAS_RAY_HAPROXY=false` (Serve's Python proxy) and `--ray-env
LLMAAS_RAY_LOCAL_LINK=false` (Serve's handle) measure without them.

The servers run this checkout's src/ (PYTHONPATH), whatever llmaas the interpreter has installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from finetune_quality import ADMIN_KEY, MODEL, RESULTS, ROOT, start_server
from serving import KEY, PROMPTS, auth_headers, free_port, one_request, payload, pct, run_level

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/9"
TARGETS = ("single", "ray")
ADDED_P50_MS, TOK_S_RATIO, COLD_START_S = 5.0, 0.9, 10.0
SHORT = PROMPTS[:6]  # 36-41 prompt tokens each


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    startup_s: float
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"c1": [], "c16": []})


# -- setup ---------------------------------------------------------------------------------------------------------
def reset_db(name: str, create: bool = True) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if create:
            c.execute(f"CREATE DATABASE {name}")


def admin(url: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = httpx.request(method, f"{url}/v1/admin{path}", headers=auth_headers(), timeout=60, **kw)
    r.raise_for_status()
    return dict(r.json())


def wait_replicas(url: str, running: bool, timeout: float = 300.0) -> None:
    """Until the Ray deployment has a running replica (running=True) or none at all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = admin(url, "GET", f"/deployments/{MODEL}")
        up = [r for r in d["replicas"] if r["state"] == "running"]
        if (running and up) or (not running and not d["replicas"] and d.get("target_replicas") == 0):
            return
        time.sleep(0.25)
    raise TimeoutError(f"deployment not {'up' if running else 'at zero'} after {timeout:.0f} s: {d}")


def start(name: str, threads: int, db: str, ray_tmp: Path | None, ray_env: dict[str, str]) -> Server:
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmaas-raybench-{name}-"))
    # Absolute: the Ray workers that import llmaas do not start in this directory.
    env = {"PYTHONPATH": str(ROOT / "src"), "LLMAAS_DATABASE_URL": f"{PG}/{db}", "LLMAAS_REDIS_URL": REDIS_URL}
    flags = ["--max-seqs", "16", "--workers", "0"]
    if ray_tmp is not None:
        # A Ray temp dir of our own: the cluster's session files and logs (Serve's access logs, read below) stay
        # apart from any other Ray on this machine, and its processes can be told from theirs (ray_leftovers).
        env |= {"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", **ray_env}
        flags.append("--ray")
    print(f"[{name}] starting (data dir {data_dir}, log {data_dir / 'server.log'})", flush=True)
    t0 = time.perf_counter()
    proc, url = start_server(data_dir, free_port(), threads, env, tuple(flags), cwd=ROOT)
    s = Server(name, proc, url, data_dir, 0.0)  # type: ignore[arg-type]
    if ray_tmp is not None:
        wait_replicas(url, running=True)  # /ready answers once the model is attached, before its replica runs
    s.startup_s = round(time.perf_counter() - t0, 1)
    # Warm-up, not reported: every prompt of the concurrency-1 phase (its first request pays a full prefill; later
    # ones may find its KV cached), then a few streams.
    asyncio.run(conc1({name: url}, 2 * len(SHORT)))
    asyncio.run(run_level(url, "chat", MODEL, 4, 4, None))
    print(f"[{name}] ready in {s.startup_s} s at {url}", flush=True)
    return s


def ray_leftovers(ray_tmp: Path) -> list[psutil.Process]:
    """Processes of our Ray cluster (their command lines name its temp dir)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(ray_tmp) in " ".join(p.info["cmdline"] or ()):
            out.append(p)
    return out


def stop(s: Server) -> None:
    s.proc.send_signal(signal.SIGTERM)  # Ray mode: serve.shutdown() and ray.shutdown() of the cluster it started
    try:
        s.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        print(f"[{s.name}] did not stop in 90 s: killed", flush=True)
        s.proc.kill()
        s.proc.wait()


def remove_ray(ray_tmp: Path, keep_logs: Path | None) -> None:
    """After the Ray-mode server stopped (or failed to start): no process of its cluster may remain. Its logs go to
    `keep_logs` if given (after a failure), else with the rest of its temp dir."""
    time.sleep(2)
    left = ray_leftovers(ray_tmp)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    print(f"[ray] still running after the server stopped, killed: {[(p.pid, p.name()) for p in left]}" if left
          else "[ray] cluster gone (no process names its temp dir)", flush=True)
    if keep_logs is not None and (logs := ray_tmp / "ray" / "session_latest" / "logs").is_dir():
        shutil.copytree(logs, keep_logs, dirs_exist_ok=True)
        print(f"[ray] its logs: {keep_logs}", flush=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def tree(pid: int) -> list[psutil.Process]:
    """A server's process and its descendants (in Ray mode: GCS, raylet, and the Serve actors under it)."""
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def cpu(ps: list[psutil.Process]) -> float:
    """CPU seconds (user + system) used so far by these processes."""
    total = 0.0
    for p in ps:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def tree_usage(procs: dict[str, subprocess.Popen[bytes]], seconds: float = 5.0) -> dict[str, dict[str, float]]:
    """Per server: RSS of its process tree (MiB) and the CPU it burns while idle (% of one core), same window."""
    trees = {n: tree(p.pid) for n, p in procs.items()}
    before = {n: cpu(ps) for n, ps in trees.items()}
    time.sleep(seconds)
    out = {}
    for n, ps in trees.items():
        rss = sum(p.memory_info().rss for p in ps if p.is_running())
        out[n] = {"rss_mib": round(rss / 2**20), "idle_cpu_pct": round((cpu(ps) - before[n]) / seconds * 100, 1),
                  "processes": len(ps), "max_nice": max(p.nice() for p in ps if p.is_running())}
    return out


# -- measurements --------------------------------------------------------------------------------------------------
async def conc1(urls: dict[str, str], n: int, tag: str = "warm") -> dict[str, Any]:
    """Concurrency 1, request by request alternating the targets (so that both see the same moment of a noisy
    machine): n GET /health, n one-token chats, n streamed chats of 32 tokens, short prompts (the prefill stays
    small next to what is measured)."""
    health: dict[str, list[float]] = {t: [] for t in urls}
    lat: dict[str, list[float]] = {t: [] for t in urls}
    ttft: dict[str, list[float]] = {t: [] for t in urls}
    errors: dict[str, list[str]] = {t: [] for t in urls}
    by_id: dict[str, dict[str, float]] = {t: {} for t in urls}  # x-request-id -> one-token chat latency (ms)
    clients = {t: httpx.AsyncClient(base_url=u, headers=auth_headers(), timeout=120) for t, u in urls.items()}
    try:
        for kind in ("health", "chat", "stream"):
            for i in range(n):
                prompt = SHORT[i % len(SHORT)]
                for t in (list(urls) if i % 2 == 0 else list(urls)[::-1]):
                    c, rid = clients[t], f"{tag}-{kind}-{i}"  # Serve logs each hop under this id
                    c.headers["x-request-id"] = rid
                    t0 = time.perf_counter()
                    if kind == "health":
                        await c.get("/health")
                        health[t].append(time.perf_counter() - t0)
                    elif kind == "chat":
                        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                                "temperature": 0}
                        r = await c.post("/v1/chat/completions", json=body)
                        if r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1:
                            lat[t].append(time.perf_counter() - t0)
                            by_id[t][rid] = round(lat[t][-1] * 1000, 2)
                        else:
                            errors[t].append(f"HTTP {r.status_code}: {r.text[:200]}")
                    else:
                        res = await one_request(c, f"{urls[t]}/v1/chat/completions", payload("chat", MODEL, prompt, 32))
                        if res.ok:
                            ttft[t].append(res.ttft)
                        else:
                            errors[t].append(res.error)
    finally:
        for c in clients.values():
            await c.aclose()
    out: dict[str, Any] = {t: {"health_p50_ms": pct(health[t], 50), "lat_p50_ms": pct(lat[t], 50),
                               "lat_p95_ms": pct(lat[t], 95), "ttft_p50_ms": pct(ttft[t], 50),
                               "ttft_p95_ms": pct(ttft[t], 95), "errors": len(errors[t]),
                               "error_samples": errors[t][:3], "chat_ms_by_id": by_id[t]} for t in urls}
    if len(urls) == 2 and len(lat["ray"]) == len(lat["single"]):  # each pair ran back to back
        out["ray"]["lat_paired_diff_p50_ms"] = pct([a - b for a, b in zip(lat["ray"], lat["single"], strict=True)], 50)
    return out


def serve_log(ray_tmp: Path) -> dict[str, Any]:
    """What Serve logged: per request id and hop (proxy, ingress, engine), the durations (ms) of its calls; and per
    engine replica started, (seconds to start, of which the constructor)."""
    logs = ray_tmp / "ray" / "session_latest" / "logs" / "serve"
    hops: dict[str, dict[str, list[float]]] = {"proxy": {}, "ingress": {}, "engine": {}}
    starts: list[tuple[float, float]] = []
    for f in sorted(logs.glob("*.log")):
        text = f.read_text(errors="replace")
        if f.name.startswith("controller_"):
            starts += [(float(a), float(b)) for a, b in re.findall(
                r"deployment='Engine'.*started successfully .* after ([\d.]+)s .* took ([\d.]+)s", text)]
            continue
        hop = "proxy" if f.name.startswith("proxy_") else "ingress" if "_Ingress_" in f.name else "engine"
        for rid, ms in re.findall(r" (\S+) -- .* ([\d.]+)ms$", text, re.M):
            hops[hop].setdefault(rid, []).append(float(ms))
    return {"hops": hops, "engine_starts": starts}


def hop_breakdown(servers: dict[str, Server], hops: dict[str, dict[str, list[float]]]) -> dict[str, float | None]:
    """Medians over the concurrency-1 one-token chats: where Ray's time goes, and single's time outside the engine
    (its latency minus the Ray engine's call for the same request, run just before or after)."""
    proxy, app, engine, single_out = [], [], [], []
    for ray_r, single_r in zip(servers["ray"].rounds["c1"], servers["single"].rounds["c1"], strict=True):
        for rid, client in ray_r["chat_ms_by_id"].items():
            ing, eng = hops["ingress"].get(rid), hops["engine"].get(rid)
            if not ing:
                continue
            proxy.append(client - ing[0])
            if not eng:  # sent over the same-node link: no Serve call on the engine replica to time
                continue
            app.append(ing[0] - max(eng))
            engine.append(max(eng))
            if rid in single_r["chat_ms_by_id"]:
                single_out.append(single_r["chat_ms_by_id"][rid] - max(eng))
    return {"ray_proxy_hop_ms": med(proxy), "ray_ingress_minus_engine_ms": med(app), "ray_engine_call_ms": med(engine),
            "single_outside_engine_ms": med(single_out), "requests": len(proxy)}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def routes(url: str) -> dict[str, float]:
    """Generation requests by how the ingress reached the engine replica: link (same node) or handle."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {"link": 0.0, "handle": 0.0}
    for m in re.finditer(r'^llmaas:engine_routes_total\{[^}]*route="(\w+)"[^}]*\} (\S+)$', text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def cold_starts(url: str, n: int) -> list[dict[str, Any]]:
    """Scale the Ray deployment to zero, then time one stream's first token; n times."""
    admin(url, "PUT", f"/deployments/{MODEL}",
          json={"min_replicas": 0, "downscale_to_zero_delay_s": 2, "downscale_delay_s": 2})
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        wait_replicas(url, running=False)
        at_zero_after = time.perf_counter() - t0
        waited = metric(url, "llmaas:cold_start_seconds_sum")
        res = asyncio.run(_one_stream(url, SHORT[i % len(SHORT)], f"cold-{i}"))
        waited = metric(url, "llmaas:cold_start_seconds_sum") - waited
        out.append({"rid": f"cold-{i}", "ttft_s": round(res.ttft, 3) if res.ok else None, "error": res.error or None,
                    "ingress_wait_s": round(waited, 3), "scale_to_zero_s": round(at_zero_after, 1)})
        print(f"[ray] cold start {i + 1}/{n}: {out[-1]}", flush=True)
    return out


async def _one_stream(url: str, prompt: str, rid: str) -> Any:
    async with httpx.AsyncClient(headers={**auth_headers(), "x-request-id": rid}, timeout=300) as c:
        return await one_request(c, f"{url}/v1/chat/completions", payload("chat", MODEL, prompt, 16))


def run_rounds(servers: dict[str, Server], rounds: int, n1: int, n16: int) -> None:
    for r in range(rounds):
        order = TARGETS if r % 2 == 0 else TARGETS[::-1]  # neither target always goes first
        print(f"round {r + 1}/{rounds}: concurrency 1, {n1} x (health, one-token chat, stream) per target, "
              "alternating", flush=True)
        res1 = asyncio.run(conc1({t: servers[t].url for t in order}, n1, f"r{r + 1}"))
        for t in order:
            servers[t].rounds["c1"].append(res1[t])
        for t in order:
            print(f"[{t}] round {r + 1}/{rounds}: concurrency 16, {n16} streams of 128 tokens", flush=True)
            procs = tree(servers[t].proc.pid)
            before = cpu(procs)
            res = asyncio.run(run_level(servers[t].url, "chat", MODEL, 16, n16, None))
            # CPU per token: what serving costs, whatever share of the cores the rest of the machine leaves us.
            res["cpu_ms_per_token"] = round((cpu(procs) - before) * 1000 / max(res["output_tokens"], 1), 2)
            servers[t].rounds["c16"].append(res)
        for t in order:
            for phase in ("c1", "c16"):
                if (res := servers[t].rounds[phase][-1])["errors"]:
                    print(f"[{t}] {phase}: {res['errors']} errors, e.g. {res['error_samples'][0]}", flush=True)


# -- report --------------------------------------------------------------------------------------------------------
def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(float(np.median(vals)), 3) if vals else None


def paired(servers: dict[str, Server], phase: str, key: str, op: str) -> float | None:
    """Median over rounds of ray - single (op "-") or ray / single (op "/"): each pair ran back to back."""
    vals = []
    for a, b in zip(servers["ray"].rounds[phase], servers["single"].rounds[phase], strict=True):
        if a[key] is not None and b[key]:
            vals.append(a[key] - b[key] if op == "-" else a[key] / b[key])
    return med(vals)


def verdict(value: float | None, limit: float, higher_is_better: bool, unit: str) -> str:
    if value is None:
        return "no data"
    margin = value - limit if higher_is_better else limit - value
    return f"{'met' if margin >= 0 else 'MISSED'} by {abs(margin):.3g}{unit}"


def summarise(servers: dict[str, Server], colds: list[dict[str, Any]], usage: dict[str, Any],
              log: dict[str, Any]) -> dict[str, Any]:
    rows: list[tuple[str, Any, Any, Any, str, str]] = []
    hops = hop_breakdown(servers, log["hops"])

    def add(label: str, phase: str, key: str, op: str = "-", target: str = "", check: str = "") -> float | None:
        v = [med([r[key] for r in servers[t].rounds[phase]]) for t in TARGETS]
        d = paired(servers, phase, key, op)
        rows.append((label, v[0], v[1], None if d is None else f"{'+' if op == '-' and d >= 0 else ''}{d:.3g}"
                     + (" ms" if op == "-" else "x"), target, check))
        return d

    add("c1 GET /health p50 (ms)", "c1", "health_p50_ms")
    added = paired(servers, "c1", "lat_p50_ms", "-")
    add("c1 chat max_tokens 1, p50 (ms)", "c1", "lat_p50_ms", "-", f"<= +{ADDED_P50_MS:g} ms",
        verdict(added, ADDED_P50_MS, False, " ms"))
    diff = med([r.get("lat_paired_diff_p50_ms") for r in servers["ray"].rounds["c1"]])
    rows.append(("  same, median per-request difference", None, None, None if diff is None else f"{diff:+.3g} ms",
                 "", ""))
    rows.append(("  ray: requests over the link / the handle", None,
                 f"{log['routes']['link']:g} / {log['routes']['handle']:g}", None, "", ""))
    for label, key, col in (("  ray: client - ingress (the HTTP front hop)", "ray_proxy_hop_ms", 2),
                            ("  ray: ingress - engine call (app + handle hop; handle-routed only)",
                             "ray_ingress_minus_engine_ms", 2),
                            ("  ray: engine replica's call", "ray_engine_call_ms", 2),
                            ("  single: latency - ray engine call (app + HTTP)", "single_outside_engine_ms", 1)):
        rows.append((label, *((hops[key], None) if col == 1 else (None, hops[key])), None, "", ""))
    add("c1 chat max_tokens 1, p95 (ms)", "c1", "lat_p95_ms")
    add("c1 stream 32 tok, TTFT p50 (ms)", "c1", "ttft_p50_ms")
    ratio = paired(servers, "c16", "tok_s", "/")
    add("c16 streams of 128 tokens: tok/s", "c16", "tok_s", "/", f">= {TOK_S_RATIO:g}x",
        verdict(ratio, TOK_S_RATIO, True, "x"))
    add("c16 server CPU per output token (ms)", "c16", "cpu_ms_per_token", "/")
    add("c16 TTFT p50 (ms)", "c16", "ttft_p50_ms", "/")
    add("c16 e2e p50 (ms)", "c16", "e2e_p50_ms", "/")
    ttfts = [c["ttft_s"] for c in colds if c["ttft_s"] is not None]
    cold_p50 = med(ttfts)
    cold_max = max(ttfts) if ttfts and len(ttfts) == len(colds) else None
    rows.append(("cold start 0 -> first token p50 (s)", None, cold_p50, None, f"<= {COLD_START_S:g} s",
                 verdict(cold_p50, COLD_START_S, False, " s")))
    rows.append(("cold start 0 -> first token max (s)", None, cold_max, None, f"<= {COLD_START_S:g} s",
                 verdict(cold_max, COLD_START_S, False, " s")))
    starts = log["engine_starts"][-len(colds):] if len(log["engine_starts"]) > len(colds) else []
    for c, (start_s, ctor_s) in zip(colds, starts, strict=False):
        c.update(replica_start_s=start_s, constructor_s=ctor_s,
                 generate_call_s=max(calls) / 1000 if (calls := log["hops"]["engine"].get(c["rid"])) else None)
    for key, label in (("ingress_wait_s", "ingress waits for a replica"), ("replica_start_s", "replica start"),
                       ("constructor_s", "  of which its constructor"), ("generate_call_s", "generate call on it")):
        rows.append((f"  cold p50: {label} (s)", None, med([c.get(key) for c in colds]), None, "", ""))
    rows.append(("startup to first replica (s)", servers["single"].startup_s, servers["ray"].startup_s, None, "", ""))
    for k, label in (("rss_mib", "RSS of the process tree (MiB)"), ("idle_cpu_pct", "idle CPU (% of a core)"),
                     ("processes", "processes"), ("max_nice", "highest nice value in the tree")):
        rows.append((label, usage["single"][k], usage["ray"][k], None, "", ""))
    errors = sum(r["errors"] for s in servers.values() for ph in s.rounds.values() for r in ph)
    return {"rows": rows, "hops": hops, "added_p50_ms": added, "tok_s_ratio": ratio, "cold_p50_s": cold_p50,
            "cold_max_s": cold_max, "errors": errors}


def print_table(summary: dict[str, Any]) -> None:
    heads = ("metric", "single", "ray", "ray vs single", "target", "result")
    rows = [tuple("-" if v is None else str(v) for v in r) for r in summary["rows"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    for r in (heads, tuple("-" * w for w in widths), *rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(f"errors: {summary['errors']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3; --quick: 1]")
    ap.add_argument("--requests", type=int, default=20, help="concurrency-1 requests per kind and round [20]")
    ap.add_argument("--streams", type=int, default=32, help="concurrency-16 streams per round [32]")
    ap.add_argument("--cold-starts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads of each server [1]")
    ap.add_argument("--quick", action="store_true", help="1 round, 8 requests, 16 streams, 2 cold starts")
    ap.add_argument("--ray-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the Ray-mode server and its cluster (repeatable), e.g. "
                         "RAY_worker_niceness=0 (Ray runs its workers, the replicas, at nice 15)")
    ap.add_argument("--keep-db", action="store_true", help="keep the databases bench_ray and bench_ray_single")
    ap.add_argument("--output", type=Path, default=RESULTS / "ray_mode.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.streams, args.cold_starts = 1, 8, 16, 2
    ray_env = dict(e.split("=", 1) for e in args.ray_env)
    KEY["value"] = ADMIN_KEY  # serving's load generator sends this key
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops the servers
    import redis

    redis.from_url(REDIS_URL).flushdb()  # db 9 is this bench's: no stale replica records
    dbs = {"single": "bench_ray_single", "ray": "bench_ray"}
    load_before = os.getloadavg()
    servers: dict[str, Server] = {}
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    done = False
    try:
        for t in TARGETS:
            reset_db(dbs[t])
            servers[t] = start(t, args.threads, dbs[t], ray_tmp if t == "ray" else None, ray_env)
        usage = tree_usage({t: s.proc for t, s in servers.items()})
        run_rounds(servers, args.rounds, args.requests, args.streams)
        route_counts = routes(servers["ray"].url)  # before the cold starts, which go through the handle
        colds = cold_starts(servers["ray"].url, args.cold_starts)
        log = {**serve_log(ray_tmp), "routes": route_counts}  # before remove_ray() deletes it
        done = True
    finally:
        for s in servers.values():
            stop(s)
        remove_ray(ray_tmp, None if done else Path(tempfile.gettempdir()) / f"llmaas-raybench-{ray_tmp.name}-logs")
        if not args.keep_db:
            for db in dbs.values():
                reset_db(db, create=False)
    for s in servers.values():  # after a failure they stay, with the servers' logs
        shutil.rmtree(s.data_dir, ignore_errors=True)
    summary = summarise(servers, colds, usage, log)
    print(f"\n== Ray mode vs single process: --threads {args.threads}, --max-seqs 16, {args.rounds} rounds; "
          f"single/ray: medians over rounds; ray vs single: median of paired per-round differences or ratios ==")
    print_table(summary)
    doc = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_before": load_before,
                "loadavg_after": os.getloadavg()},
        "summary": {k: v for k, v in summary.items() if k != "rows"}, "table": summary["rows"],
        "targets": {t: {"url": s.url, "startup_s": s.startup_s, "usage": usage[t], "rounds": s.rounds}
                    for t, s in servers.items()},
        "cold_starts": colds,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
