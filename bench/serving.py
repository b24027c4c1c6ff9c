"""Serving benchmark: llmaas vs llama-cpp-python's own server (same GGUF, same threads), plus a native floor.

Drives any OpenAI-compatible server with streaming completions at several concurrency levels and reports
output tok/s, TTFT, inter-token latency, end-to-end latency, errors and the server's peak RSS.
Run `python bench/serving.py --help`; results go to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MAX_TOKENS = 128
EOS_BIAS = {"0": -100, "2": -100, "4": -100}  # SmolLM2 end-of-text ids, for servers without ignore_eos

PARAGRAPH = (
    "The city council met on Tuesday to discuss the proposed expansion of the public library. Supporters argued "
    "that the current building, constructed in 1962, no longer meets the needs of a growing population and lacks "
    "space for computer labs, study rooms and children's programs. Opponents raised concerns about the projected "
    "cost of twelve million dollars and the possible increase in property taxes. After three hours of debate, "
    "the council voted five to two to commission a detailed feasibility study before making a final decision."
)
PROMPTS: list[str] = [
    "What is the capital of France?", "Explain photosynthesis in simple terms.", "Write a haiku about the ocean.",
    "How do I reverse a list in Python?", "Give me three tips for better sleep.",
    "What is the difference between a virus and a bacterium?",
    f"Summarise the following paragraph in two sentences:\n\n{PARAGRAPH}",
    "Write a short story about a robot who learns to paint. Include a twist at the end and keep it under "
    "two hundred words.",
    "List the planets of the solar system in order from the sun, with one fact about each.", "Why is the sky blue?",
    "Translate 'Good morning, how are you?' into Spanish and French.",
    "Write a polite email to a colleague asking to reschedule a meeting from Monday to Wednesday afternoon.",
    "What are the main causes of inflation?", "Describe how a hash table works and what its average lookup cost is.",
    f"Read this text and list the arguments on each side:\n\n{PARAGRAPH}",
    "Suggest a name for a coffee shop run by cats.", "Explain recursion to a ten-year-old.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "What should I pack for a three-day hiking trip in the mountains?",
    "Compare electric cars and petrol cars in terms of cost, maintenance and environmental impact.",
    "Give a step-by-step recipe for pancakes.", "What is machine learning?",
    "Write a limerick about a cat who loves cheese.",
    "You are a helpful tutor. A student asks: 'Why do we need to learn algebra if calculators exist?' Answer "
    "kindly, with two concrete examples from everyday life.",
]
SYSTEM = ("You are a careful, friendly assistant for a public library. Answer in plain English, keep answers short "
          "and concrete, say when you are unsure, never invent sources, and suggest one follow-up question the "
          "reader could ask next. If a question is about opening hours or fees, refer to the front desk.")


def prompt_for(i: int, kind: str) -> str:
    """The i-th request's prompt. builtin: PROMPTS in turn (repeats hit the servers' prompt caches); unique:
    the same texts behind a per-request nonce, so no two prompts share a prefix; system: one shared system
    paragraph, then a nonce and the text (the shared part is cacheable, the rest never)."""
    text = PROMPTS[i % len(PROMPTS)]
    if kind == "unique":
        return f"[{secrets.token_hex(4)}] {text}"
    if kind == "system":
        return f"{SYSTEM}\n\n[{secrets.token_hex(4)}] {text}"
    return text


@dataclass
class ReqResult:
    ok: bool
    error: str = ""
    ttft: float = 0.0
    e2e: float = 0.0
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds between successive content chunks

    @property
    def tpot(self) -> float | None:  # mean time per output token after the first
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.ok and self.tokens > 1 else None


def pct(xs: list[float], q: float, scale: float = 1000.0) -> float | None:
    return round(float(np.percentile(xs, q)) * scale, 2) if xs else None


class RssPoller:
    """Peak RSS (MiB) of a process and its children, polled every 0.2 s in a thread."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:  # a child exiting mid-sample just yields 0, which max() ignores
            p = psutil.Process(self.pid)
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> RssPoller:
        if self.pid is not None:
            self.peak = self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_mib(self) -> float | None:
        return round(self.peak / 2**20, 1) if self.pid is not None else None


def payload(endpoint: str, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True, "logit_bias": EOS_BIAS,
    }
    key, val = ("messages", [{"role": "user", "content": prompt}]) if endpoint == "chat" else ("prompt", prompt)
    return {**body, key: val}


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> ReqResult:
    t0 = time.perf_counter()
    arrivals: list[float] = []
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:300]
                return ReqResult(False, f"HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    return ReqResult(False, f"stream error: {json.dumps(obj['error'])[:300]}")
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")
                for ch in obj.get("choices") or []:
                    text = ch.get("text") if "text" in ch else (ch.get("delta") or {}).get("content")
                    if text:
                        arrivals.append(time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return ReqResult(False, f"{type(e).__name__}: {e}")
    end = time.perf_counter()
    if not arrivals:
        return ReqResult(False, "no content chunks", e2e=end - t0)
    return ReqResult(
        True, ttft=arrivals[0] - t0, e2e=end - t0, tokens=usage_tokens or len(arrivals),
        gaps=[b - a for a, b in zip(arrivals, arrivals[1:], strict=False)],
    )


async def run_level(base: str, endpoint: str, model: str, conc: int, n: int, pid: int | None,
                    prompts: str = "builtin") -> dict[str, Any]:
    url = f"{base}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
    results: list[ReqResult] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=conc + 4, max_keepalive_connections=conc + 4)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            results.append(await one_request(client, url, payload(endpoint, model, prompt_for(i, prompts))))

    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0, connect=10.0), limits=limits,
                                 headers=auth_headers()) as client:
        with RssPoller(pid) as rss:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(conc)))
            wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    total = sum(r.tokens for r in ok)
    tpots = [t for r in ok if (t := r.tpot) is not None]
    return {
        "concurrency": conc, "requests": n, "ok": len(ok), "errors": len(errors), "error_samples": errors[:3],
        "short": sum(r.tokens < MAX_TOKENS for r in ok), "output_tokens": total, "wall_s": round(wall, 3),
        "tok_s": round(total / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": pct([r.ttft for r in ok], 50), "ttft_p95_ms": pct([r.ttft for r in ok], 95),
        "itl_p50_ms": pct([g for r in ok for g in r.gaps], 50), "tpot_p50_ms": pct(tpots, 50),
        "e2e_p50_ms": pct([r.e2e for r in ok], 50), "e2e_p95_ms": pct([r.e2e for r in ok], 95),
        "peak_rss_mib": rss.peak_mib,
    }


# llmaas serves with its gateway on (auth, limits, metering): the bench starts it with this admin key and
# sends it to every target (the peers ignore it). For a running server pass --api-key.
KEY = {"value": "sk-llmaas-" + secrets.token_hex(15)}


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY['value']}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf_path() -> str:
    from llmaas.core.model_files import bundled_gguf

    return str(bundled_gguf())


def pid_on_port(url: str) -> int | None:
    """PID of a local process listening on the URL's port (for RSS of an already-running server)."""
    u = urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost", "0.0.0.0") or u.port is None:
        return None
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == u.port and c.pid:
                return c.pid
    return None


def wait_ready(base: str, proc: subprocess.Popen[bytes] | None, timeout: float = 300.0) -> str:
    """Poll /v1/models until it answers; return the first model id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = httpx.get(f"{base}/v1/models", timeout=5.0, headers=auth_headers())
            if r.status_code == 200 and r.json().get("data"):
                return str(r.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base}/v1/models did not answer within {timeout:.0f}s")


def server_cmd(name: str, port: int, threads: int, data_dir: str, args: argparse.Namespace) -> list[str]:
    bindir = Path(sys.executable).parent
    if name.startswith("llama-server"):  # llama.cpp's C++ server (scripts/build-llama-server.sh), 2048 per slot
        n = args.llama_server_slots
        exe = args.llama_server_patched if name == "llama-server-patched" else args.llama_server
        return [exe, "--model", gguf_path(), "--threads", str(threads), "--threads-batch", str(threads),
                "--ctx-size", str(2048 * n), "--parallel", str(n), "--port", str(port), "--host", "127.0.0.1"]
    if name == "llmaas":
        exe = bindir / "llmaas"
        return [str(exe) if exe.exists() else "llmaas", "serve", "--port", str(port), "--threads", str(threads),
                "--max-seqs", "32", "--ctx-size", "2048", "--data-dir", data_dir, "--log-level", "warning"]
    return [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--n_threads", str(threads),
            "--n_ctx", "2048", "--port", str(port), "--interrupt_requests", "False"]


class Target:
    """A server under test: started here (or already running at `url`), warmed up, stopped at the end."""

    def __init__(self, name: str, url: str | None, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = RESULTS / f"{name}.server.log"
        self.out: dict[str, Any] = {"url": url, "command": None, "levels": []}
        self.model = ""

    def start(self) -> bool:
        url = self.out["url"]
        try:
            if url is None:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                data_dir = tempfile.mkdtemp(prefix="llmaas-bench-")
                cmd = server_cmd(self.name, port, self.args.threads, data_dir, self.args)
                self.out["command"] = cmd
                print(f"[{self.name}] starting: {' '.join(cmd)}  (log: {self.log_path})", flush=True)
                with open(self.log_path, "wb") as log:
                    env = {**os.environ, "LLMAAS_ADMIN_KEY": KEY["value"]}
                    self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            self.out["url"] = url = url.rstrip("/")
            t0 = time.perf_counter()
            self.model = wait_ready(url, self.proc)
            self.out.update(model=self.model, startup_s=round(time.perf_counter() - t0, 2) if self.proc else None)
            warm = asyncio.run(run_level(url, self.args.endpoint, self.model, 1, 1, None))  # warm-up, not reported
            if warm["errors"]:
                print(f"[{self.name}] warm-up failed: {warm['error_samples']}", flush=True)
            return True
        except Exception as e:  # report and carry on with the other targets
            self.out["error"] = f"{type(e).__name__}: {e}"
            print(f"[{self.name}] FAILED: {self.out['error']}", flush=True)
            self.stop()
            return False

    def run(self, conc: int, n: int, tag: str = "") -> dict[str, Any] | None:
        print(f"[{self.name}] concurrency {conc}, {n} requests{tag} ...", flush=True)
        try:
            pid = self.proc.pid if self.proc else pid_on_port(self.out["url"])
            res = asyncio.run(run_level(self.out["url"], self.args.endpoint, self.model, conc, n, pid,
                                        self.args.prompts))
        except Exception as e:
            self.out["error"] = f"{type(e).__name__}: {e}"
            print(f"[{self.name}] FAILED: {self.out['error']}", flush=True)
            return None
        if res["errors"]:
            print(f"[{self.name}]   {res['errors']} errors, e.g. {res['error_samples'][0]}", flush=True)
        return res

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if "error" in self.out or any(lv["errors"] for lv in self.out["levels"]):
            tail = self.log_path.read_text(errors="replace").splitlines()[-25:]
            self.out["server_log_tail"] = tail
            print(f"[{self.name}] server log tail:\n  " + "\n  ".join(tail), flush=True)


def median_level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's result over rounds: sums of counts, medians of the measurements, each round kept."""
    if len(runs) == 1:
        return runs[0]
    counts = ("requests", "ok", "errors", "short", "output_tokens")
    out = dict(runs[0])
    for k, v in runs[0].items():
        if k in counts:
            out[k] = sum(r[k] for r in runs)
        elif k != "concurrency" and (v is None or isinstance(v, int | float)):
            vals = [r[k] for r in runs if isinstance(r.get(k), int | float)]
            out[k] = round(float(np.median(vals)), 2) if vals else None
    out["error_samples"] = [e for r in runs for e in r["error_samples"]][:3]
    out["rounds"] = runs
    return out


def bench_servers(names: list[str], args: argparse.Namespace, levels: list[tuple[int, int]]) -> dict[str, Any]:
    """Every server target at every level. With --rounds N > 1 all targets are started first and each level
    is run N times, alternating targets (order rotated each round), so that a slow spell of a noisy machine
    hits every target alike; each metric is the median over rounds, and the ratios are medians of per-round
    (paired) ratios."""
    urls = {"llmaas": args.llmaas_url, "peer": args.peer_url}
    targets = [Target(n, urls.get(n), args) for n in names]
    try:
        if args.rounds <= 1:  # one server at a time: they never share the CPUs, even idle
            for t in targets:
                if t.start():
                    for conc, n in levels:
                        if (res := t.run(conc, n)) is not None:
                            t.out["levels"].append(res)
                t.stop()
            return {t.name: t.out for t in targets}
        live = [t for t in targets if t.start()]
        for conc, n in levels:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in live}
            for r in range(args.rounds):
                for t in live[r % len(live):] + live[: r % len(live)] if live else []:
                    if (res := t.run(conc, n, f", round {r + 1}/{args.rounds}")) is not None:
                        runs[t.name].append(res)
            for t in live:
                if runs[t.name]:
                    t.out["levels"].append(median_level(runs[t.name]))
    finally:
        for t in targets:
            t.stop()
    return {t.name: t.out for t in targets}


def bench_native(args: argparse.Namespace) -> dict[str, Any]:
    """In-process llama-cpp-python `Llama` streaming: ms per output token, excluding the first."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf_path(), n_threads=args.threads, n_ctx=2048, verbose=False)
    bias = {int(k): float(v) for k, v in EOS_BIAS.items()}
    runs: list[dict[str, Any]] = []
    for i, prompt in enumerate(PROMPTS[: 3 if args.quick else 6]):
        t0 = time.perf_counter()
        stamps: list[float] = []
        for chunk in llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
                                           logit_bias=bias):
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
        if i == 0 or len(stamps) < 2:
            continue  # first prompt is a warm-up
        runs.append({"tokens": len(stamps), "ttft_ms": round((stamps[0] - t0) * 1000, 2),
                     "ms_per_token": round((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000, 3)})
    del llm
    per_tok = [r["ms_per_token"] for r in runs]
    return {"runs": runs, "ms_per_token": round(float(np.median(per_tok)), 3) if per_tok else None,
            "tok_s": round(1000 / float(np.median(per_tok)), 2) if per_tok else None}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def print_table(name: str, res: dict[str, Any]) -> None:
    cols = ["concurrency", "ok", "errors", "short", "tok_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms",
            "tpot_p50_ms", "e2e_p50_ms", "e2e_p95_ms", "peak_rss_mib"]
    heads = ["conc", "ok", "err", "short", "tok/s", "ttft50", "ttft95", "itl50", "tpot50", "e2e50", "e2e95", "rssMiB"]
    print(f"\n== {name} ({res.get('url')}, model {res.get('model')}) ==")
    print(" ".join(f"{h:>8}" for h in heads))
    for lv in res["levels"]:
        print(" ".join(f"{'-' if lv[c] is None else lv[c]:>8}" for c in cols))


def level_ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """a/b for one metric; over rounds, the median of the per-round ratios (each pair ran back to back)."""
    if "rounds" in a and "rounds" in b:
        rs = [x for ra, rb in zip(a["rounds"], b["rounds"], strict=False) if (x := ratio(ra[key], rb[key])) is not None]
        return round(float(np.median(rs)), 3) if rs else None
    return ratio(a[key], b[key])


def compute_ratios(targets: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lm = {lv["concurrency"]: lv for lv in targets.get("llmaas", {}).get("levels", [])}
    for other, label in (("peer", "peer"), ("llama-server", "llama_server"),
                         ("llama-server-patched", "llama_server_patched")):
        them = {lv["concurrency"]: lv for lv in targets.get(other, {}).get("levels", [])}
        for c in sorted(set(lm) & set(them)):
            out[f"tok_s_llmaas_over_{label}@{c}"] = level_ratio(lm[c], them[c], "tok_s")
            out[f"ttft_p50_llmaas_over_{label}@{c}"] = level_ratio(lm[c], them[c], "ttft_p50_ms")
    native = targets.get("native", {}).get("ms_per_token")
    if 1 in lm and native:
        out["itl_p50@1_llmaas_over_native"] = ratio(lm[1]["itl_p50_ms"], native)
        out["tpot_p50@1_llmaas_over_native"] = ratio(lm[1]["tpot_p50_ms"], native)
        out["itl_target_met"] = bool(out["itl_p50@1_llmaas_over_native"] is not None
                                     and out["itl_p50@1_llmaas_over_native"] <= 1.1)
    peer = {lv["concurrency"]: lv for lv in targets.get("peer", {}).get("levels", [])}
    if 1 in peer and native:
        out["itl_p50@1_peer_over_native"] = ratio(peer[1]["itl_p50_ms"], native)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="llmaas,peer,native",
                    help="comma list of llmaas, peer, native, llama-server, llama-server-patched")
    ap.add_argument("--llama-server", default=os.path.expanduser("~/.cache/llmaas/llama-server/bin/llama-server"),
                    help="llama.cpp's C++ server as a user runs it, built by scripts/build-llama-server.sh")
    ap.add_argument("--llama-server-patched",
                    default=os.path.expanduser("~/.cache/llmaas/llama-server-patched/bin/llama-server"),
                    help="the same with llmaas's llama.cpp patches (scripts/build-llama-server.sh --patched): "
                         "separates what the kernels give from what the scheduler gives")
    ap.add_argument("--llama-server-slots", type=int, default=32, help="its --parallel slots (llmaas runs 32)")
    ap.add_argument("--prompts", choices=["builtin", "unique", "system"], default="builtin",
                    help="builtin: 24 prompts in turn (repeats hit prompt caches); unique: no two requests share "
                         "a prefix; system: a shared system paragraph, then a unique rest")
    ap.add_argument("--concurrency", default="1,4,16,32", help="comma list of concurrency levels")
    ap.add_argument("--requests", type=int, default=None, help="requests per level [default max(8, 2*c)]")
    ap.add_argument("--quick", action="store_true", help="smoke run: levels 1,4 and few requests")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run each level N times, alternating targets (all started at once); report medians and "
                         "median paired ratios. For a noisy machine. [default 1: one target at a time]")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads for every target")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--llmaas-url", default=None, help="use this running llmaas server instead of starting one")
    ap.add_argument("--peer-url", default=None, help="use this running peer server instead of starting one")
    ap.add_argument("--api-key", default=None, help="key for a running llmaas (--llmaas-url); default: a new admin key")
    ap.add_argument("--output", type=Path, default=RESULTS / "serving.json")
    args = ap.parse_args()
    if args.api_key:
        KEY["value"] = args.api_key

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    concs = [1, 4] if args.quick and args.concurrency == "1,4,16,32" else [int(c) for c in args.concurrency.split(",")]
    levels = [(c, args.requests or (max(2, c) if args.quick else max(8, 2 * c))) for c in concs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    unknown = [t for t in targets if t not in ("llmaas", "peer", "llama-server", "llama-server-patched", "native")]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r}")
    results: dict[str, Any] = bench_servers([t for t in targets if t != "native"], args, levels)
    if "native" in targets:
        print("[native] in-process llama_cpp.Llama streaming ...", flush=True)
        results["native"] = bench_native(args)

    for t in ("llmaas", "peer", "llama-server", "llama-server-patched"):
        if t in results:
            print_table(t, results[t])
    if "native" in results:
        nat = results["native"]
        print(f"\n== native single-stream: {nat['ms_per_token']} ms/token ({nat['tok_s']} tok/s), runs {nat['runs']}")
    ratios = compute_ratios(results)
    print("\n== ratios ==")
    for k, v in ratios.items():
        print(f"  {k:36} {v}")
    doc = {
        "config": {"max_tokens": MAX_TOKENS, "threads": args.threads, "endpoint": args.endpoint,
                   "levels": [{"concurrency": c, "requests": n} for c, n in levels], "quick": args.quick,
                   "rounds": args.rounds, "prompt_set": args.prompts, "llama_server_slots": args.llama_server_slots,
                   "gguf": gguf_path(), "prompts": len(PROMPTS), "eos_logit_bias": EOS_BIAS, "ignore_eos": True},
        "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                "llama_cpp_python": version("llama-cpp-python"), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "targets": results, "ratios": ratios,
        "notes": "itl = median gap between content chunks; tpot = per-request (e2e - ttft)/(tokens - 1); "
                 "short = successful requests with fewer than max_tokens output tokens.",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
