"""Gateway benchmark: what the control plane (auth + rate limits + budget reservation + metering) costs per request.

Two `llmaas serve --backend fake` servers: `off` with LLMAAS_AUTH=false (no keys, limits or metering) and `on`
with the control plane, driven by a `member` key of a tenant that has RPM/TPM/parallel limits and a budget, key and
tenant alike, all far too high to trigger, so every check runs and none refuses. `--no-budget` drops the budgets
to show what the budget reservation costs. Every request is a non-streaming 1-token `POST /v1/chat/completions`,
so the fake model costs next to nothing and the HTTP + gateway path dominates.

Per server and round: (1) latency: sequential requests on one keep-alive connection after a warm-up, p50/p95/mean;
(2) throughput: `--concurrency` clients back to back for `--duration` s, req/s, errors (non-200s) and p50 under load.
Both servers stay up but only one is driven at a time, and rounds alternate off/on, on/off, ... so that the load
of this shared machine drifts over both alike; the summary takes medians over rounds.

How to read it: `gateway overhead p50` = on p50 - off p50 (target <= 2 ms); `auth-on throughput` (target >= 500
req/s) and the on/off ratio. The client shares the machine's cores with the server: the CPU both use is printed
(1.0 = one core busy); with the default raw client the client's share is small, with `--client httpx` it is not.
Finally GET /v1/usage of the `on` server must count exactly the 200s we got from it, or the run fails.
Run `python bench/gateway.py --help`; results go to bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
NEVER = {"rpm": 10_000_000, "tpm": 1_000_000_000, "max_parallel": 100_000}  # limits that run but never refuse
BUDGET = {"budget_usd": "100000"}  # a request costs ~1e-5 USD: never exhausted (the API caps budgets at 1e6)
TARGET_OVERHEAD_MS, TARGET_RPS = 2.0, 500.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `llmaas serve --backend fake` subprocess with its own data dir and log file."""

    def __init__(self, name: str, auth: bool) -> None:
        self.name, self.auth = name, auth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "sk-llmaas-" + secrets.token_hex(15)  # 40 chars
        self.log_path = RESULTS / f"gateway-{name}.server.log"
        self.data_dir = tempfile.mkdtemp(prefix=f"llmaas-gw-{name}-")  # fresh database: usage starts at zero
        self.cmd = [sys.executable, "-m", "llmaas.cli", "serve", "--backend", "fake", "--port", str(self.port),
                    "--data-dir", self.data_dir, "--max-seqs", "64", "--max-queued", "1024", "--log-level", "warning"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "LLMAAS_AUTH": "true" if self.auth else "false"}
        if self.auth:
            env["LLMAAS_ADMIN_KEY"] = self.admin_key
        print(f"[{self.name}] starting: {' '.join(self.cmd)}  (log: {self.log_path})", flush=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"[{self.name}] server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"[{self.name}] /ready not 200 within {timeout:.0f}s")

    def setup_tenant(self, budget: bool) -> dict[str, Any]:
        """Through the admin API: a tenant with limits (+ budget), and a member key with its own; use that key."""
        if not self.auth:
            return {}
        limits = {**NEVER, **(BUDGET if budget else {})}
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}) as c:

            def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                r = c.post(path, json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"[{self.name}] POST {path} -> {r.status_code}: {r.text[:500]}")
                return r.json()

            t = post("/v1/admin/tenants", {"name": f"bench-{secrets.token_hex(4)}", "limits": limits})
            k = post(f"/v1/admin/tenants/{t['id']}/keys",
                     {"name": "bench", "role": "member", "limits": {**limits, "rpm": NEVER["rpm"] // 2}})
        self.headers = {"Authorization": f"Bearer {k['key']}"}
        return {"tenant": t, "key": {x: v for x, v in k.items() if x != "key"}}

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            ps = psutil.Process(self.proc.pid)
            return sum(sum(p.cpu_times()[:2]) for p in [ps, *ps.children(recursive=True)])
        except psutil.Error:
            return 0.0

    def log_tail(self, n: int = 25) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n  ".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class RawConn:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams. httpx costs 2-4 ms of client CPU per request here
    (its pool and anyio layers), as much as the server under test, and on 2 shared cores that caps what we can
    measure; this costs ~0.1 ms. It handles exactly what the server sends back: Content-Length bodies."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        body = json.dumps(BODY).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{extra}"
                        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self) -> tuple[int, str]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                           if k.strip().lower() == b"content-length"), None)
            if length is None:
                raise ValueError(f"response without content-length: {head[:200]!r}")
            body = await reader.readexactly(length)
        except BaseException:
            await self.close()  # the connection state is unknown: start a fresh one
            raise
        return int(head[9:12]), body.decode(errors="replace")

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class HttpxConn:
    """The same through httpx (`--client httpx`): one AsyncClient per worker, cheaper than one shared pool."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0,
                                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def post(self) -> tuple[int, str]:
        r = await self.client.post("/v1/chat/completions", json=BODY)
        return r.status_code, r.text

    async def close(self) -> None:
        await self.client.aclose()


async def _drive(client: str, url: str, headers: dict[str, str], conc: int, duration: float | None,
                 n: int | None, start_at: float = 0.0) -> dict[str, Any]:
    """`conc` workers, each with its own keep-alive connection, posting back to back until `duration` s have
    passed or `n` requests are done. Latencies of the 200s are kept."""
    lat: list[float] = []
    errors, samples = 0, []
    conns = [(RawConn if client == "raw" else HttpxConn)(url, headers) for _ in range(conc)]
    left = iter(range(n)) if n is not None else None
    await asyncio.sleep(max(0.0, start_at - time.time()))  # all client processes start together
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration if duration is not None else float("inf")

    async def worker(conn: RawConn | HttpxConn) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and (left is None or next(left, None) is not None):
            t = time.perf_counter()
            try:
                status, text = await conn.post()
            except (OSError, ValueError, asyncio.IncompleteReadError, httpx.HTTPError) as e:
                status, text = type(e).__name__, str(e)
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{status}: {text[:300]}")

    await asyncio.gather(*(worker(c) for c in conns))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for c in conns:
        await c.close()
    return {"ok": len(lat), "errors": errors, "error_samples": samples, "wall_s": wall, "client_cpu_s": cpu,
            "lat": lat}


def _drive_proc(*a: Any) -> dict[str, Any]:
    return asyncio.run(_drive(*a))


def latency(srv: Server, n: int, client: str) -> dict[str, Any]:
    """Sequential requests on one keep-alive connection (concurrency 1)."""
    r = _drive_proc(client, srv.url, srv.headers, 1, None, n)
    ms = np.array(r["lat"]) * 1000 if r["lat"] else np.array([np.nan])
    return {"requests": n, "ok": r["ok"], "errors": r["errors"], "error_samples": r["error_samples"],
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "client_cpu_ms_per_req": round(r["client_cpu_s"] * 1000 / max(1, n), 3)}


def throughput(srv: Server, idle: Server, args: argparse.Namespace, pool: ProcessPoolExecutor | None) -> dict[str, Any]:
    """`concurrency` clients (split over `client_procs` processes) posting back to back for `duration` s."""
    procs = args.client_procs
    shares = [args.concurrency // procs + (i < args.concurrency % procs) for i in range(procs)]
    start_at = time.time() + (1.0 if pool else 0.0)  # let worker processes get ready
    s_cpu, i_cpu = srv.cpu_s(), idle.cpu_s()
    a = (args.client, srv.url, srv.headers)
    if pool is None:
        parts = [_drive_proc(*a, shares[0], args.duration, None, start_at)]
    else:
        parts = [f.result() for f in [pool.submit(_drive_proc, *a, c, args.duration, None, start_at) for c in shares]]
    wall = max(p["wall_s"] for p in parts)
    ok, errors = sum(p["ok"] for p in parts), sum(p["errors"] for p in parts)
    lat = np.array([x for p in parts for x in p["lat"]] or [np.nan]) * 1000
    return {"concurrency": args.concurrency, "client_procs": procs, "duration_s": args.duration, "ok": ok,
            "errors": errors, "error_samples": [s for p in parts for s in p["error_samples"]][:3],
            "wall_s": round(wall, 3), "req_s": round(ok / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            # CPU seconds per wall second: 1.0 = one core fully busy
            "server_cpu": round((srv.cpu_s() - s_cpu) / wall, 2),
            "client_cpu": round(sum(p["client_cpu_s"] for p in parts) / wall, 2),
            "idle_server_cpu": round((idle.cpu_s() - i_cpu) / wall, 3)}


def usage_check(srv: Server, sent_ok: int) -> dict[str, Any]:
    """Wait for the meter to flush, then compare /v1/usage's request count with the 200s we received."""
    time.sleep(1.0)
    counted, by_status = -1, []
    for _ in range(10):  # a big backlog may take the meter a little longer than one flush interval
        r = httpx.get(f"{srv.url}/v1/usage", params={"group_by": "status"}, headers=srv.headers, timeout=30.0)
        if r.status_code != 200:
            return {"ok": False, "sent_ok": sent_ok, "error": f"GET /v1/usage -> {r.status_code}: {r.text[:300]}"}
        by_status = r.json()["data"]
        counted = int(r.json()["totals"]["requests"])
        if counted == sent_ok:
            break
        time.sleep(0.5)
    return {"ok": counted == sent_ok, "sent_ok": sent_ok, "metered_requests": counted, "by_status": by_status}


def med(rounds: list[dict[str, Any]], phase: str, key: str) -> float:
    return round(statistics.median(r[phase][key] for r in rounds), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 300 latency requests, 3 s throughput")
    ap.add_argument("--rounds", type=int, default=None, help="alternating off/on rounds [3; quick 1]")
    ap.add_argument("--requests", type=int, default=None, 
                    help="sequential latency requests per round [2000; quick 300]")
    ap.add_argument("--warmup", type=int, default=200, help="requests per server before measuring")
    ap.add_argument("--duration", type=float, default=None, help="seconds of throughput per round [10; quick 3]")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent clients in the throughput phase")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sharing --concurrency")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="raw asyncio HTTP/1.1 (cheap) or httpx (client-bound on 2 cores)")
    ap.add_argument("--no-budget", action="store_true", help="tenant and key without budgets (no reservation)")
    ap.add_argument("--output", type=Path, default=RESULTS / "gateway.json")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (300 if args.quick else 2000)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    load0 = [round(x, 2) for x in os.getloadavg()]

    # Both servers stay up, but only one is driven at a time (an idle one uses ~0 CPU: `idle_server_cpu` shows it),
    # and rounds alternate off/on then on/off, so that drift in the load of this shared machine hits both alike.
    off, on = Server("off", auth=False), Server("on", auth=True)
    servers = {"off": off, "on": on}
    rounds: list[dict[str, Any]] = []
    sent_ok = {"off": 0, "on": 0}
    setup: dict[str, Any] = {}
    pool = ProcessPoolExecutor(args.client_procs) if args.client_procs > 1 else None
    try:
        for s in (off, on):
            s.start()
        setup = on.setup_tenant(budget=not args.no_budget)
        for s in (off, on):
            w = latency(s, args.warmup, args.client)
            sent_ok[s.name] += w["ok"]
            if w["errors"]:
                print(f"[{s.name}] warm-up errors: {w['error_samples']}", flush=True)
        for i in range(args.rounds):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            rnd: dict[str, Any] = {}
            for name in order:
                srv, idle = servers[name], servers["on" if name == "off" else "off"]
                lat = latency(srv, args.requests, args.client)
                thr = throughput(srv, idle, args, pool)
                sent_ok[name] += lat["ok"] + thr["ok"]
                rnd[name] = {"latency": lat, "throughput": thr}
                print(f"[round {i + 1}/{args.rounds}] {name:>3}: p50 {lat['p50_ms']:.3f} ms, p95 {lat['p95_ms']:.3f} "
                      f"ms, {thr['req_s']:.0f} req/s (p50 {thr['p50_ms']} ms), errors {lat['errors'] + thr['errors']}, "
                      f"cpu server {thr['server_cpu']} client {thr['client_cpu']}", flush=True)
                for e in lat["error_samples"] + thr["error_samples"]:
                    print(f"    error: {e}", flush=True)
            rounds.append(rnd)
        metering = usage_check(on, sent_ok["on"])
    except Exception:
        for s in (off, on):
            print(f"[{s.name}] server log tail:\n  {s.log_tail()}", flush=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown()
        for s in (off, on):
            s.stop()
    errors = sum(r[n][p]["errors"] for r in rounds for n in r for p in ("latency", "throughput"))
    if errors:
        for s in (off, on):
            print(f"[{s.name}] server log tail:\n  {s.log_tail()}", flush=True)

    summary: dict[str, Any] = {}
    for name in ("off", "on"):
        rs = [r[name] for r in rounds]
        summary[name] = {"p50_ms": med(rs, "latency", "p50_ms"), "p95_ms": med(rs, "latency", "p95_ms"),
                         "mean_ms": med(rs, "latency", "mean_ms"), "req_s": med(rs, "throughput", "req_s"),
                         "loaded_p50_ms": med(rs, "throughput", "p50_ms"),
                         "server_cpu": med(rs, "throughput", "server_cpu"),
                         "client_cpu": med(rs, "throughput", "client_cpu"),
                         "errors": sum(r["latency"]["errors"] + r["throughput"]["errors"] for r in rs)}
    overhead = round(summary["on"]["p50_ms"] - summary["off"]["p50_ms"], 3)
    verdict = {
        "overhead_p50_ms": overhead, "overhead_p95_ms": round(summary["on"]["p95_ms"] - summary["off"]["p95_ms"], 3),
        "overhead_target_met": overhead <= TARGET_OVERHEAD_MS,
        "on_req_s": summary["on"]["req_s"], "throughput_target_met": summary["on"]["req_s"] >= TARGET_RPS,
        "req_s_ratio_on_off": round(summary["on"]["req_s"] / summary["off"]["req_s"], 3)
        if summary["off"]["req_s"] else None,
        "metering_ok": metering["ok"],
    }

    mode = "no budgets" if args.no_budget else "limits + budgets"
    print(f"\n== gateway benchmark: 1-token chat completion, fake backend, {args.rounds} round(s), medians; "
          f"auth on = {mode} ==")
    heads = ["server", "p50 ms", "p95 ms", "mean ms", "req/s", f"p50@{args.concurrency}", "errors", "srv cpu",
             "cli cpu"]
    print(" ".join(f"{h:>9}" for h in heads))
    for name in ("off", "on"):
        s = summary[name]
        print(" ".join(f"{v:>9}" for v in (name, s["p50_ms"], s["p95_ms"], s["mean_ms"], s["req_s"],
                                            s["loaded_p50_ms"], s["errors"], s["server_cpu"], s["client_cpu"])))
    print(f"\ngateway overhead p50 = {summary['on']['p50_ms']} - {summary['off']['p50_ms']} = {overhead} ms "
          f"(target <= {TARGET_OVERHEAD_MS} ms): {'MET' if verdict['overhead_target_met'] else 'MISSED'}")
    print(f"auth-on throughput = {summary['on']['req_s']} req/s (target >= {TARGET_RPS:.0f}): "
          f"{'MET' if verdict['throughput_target_met'] else 'MISSED'}; on/off ratio {verdict['req_s_ratio_on_off']}")
    print(f"client ({args.client}) and server share this machine's {os.cpu_count()} CPUs (cpu columns: cores busy in "
          f"the throughput phase, 1.0 = one core; load average at start {load0}, others may be using them too)")
    print(f"metering: /v1/usage counts {metering.get('metered_requests')} requests, the benchmark got "
          f"{metering['sent_ok']} 200s from the auth-on server: {'OK' if metering['ok'] else 'MISMATCH'}")

    doc = {
        "config": {"rounds": args.rounds, "requests": args.requests, "warmup": args.warmup,
                   "duration_s": args.duration, "concurrency": args.concurrency, "client_procs": args.client_procs,
                   "client": args.client, "budget": not args.no_budget, "quick": args.quick, "body": BODY,
                   "limits": NEVER, "server_cmd": on.cmd},
        "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "setup": setup, "rounds": rounds, "summary": summary, "verdict": verdict, "metering": metering,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.output}")
    if not metering["ok"]:
        sys.exit(f"FAIL: metered request count {metering.get('metered_requests')} != {metering['sent_ok']} "
                 f"200 responses ({metering.get('error', 'see by_status in the JSON')})")


if __name__ == "__main__":
    main()
