"""Soak: many concurrent streaming clients against one `llmaas serve` (real SmolLM2) for a while, then checks that
nothing leaked and nothing was lost.

The benchmark starts its own server on a fresh data dir (`--max-seqs` 16 slots, `--max-queued` 256, `--workers 0`
unless `--with-jobs`), makes a tenant and a key through the admin API (LLMAAS_ADMIN_KEY), and drives it with
`--clients` asyncio clients sharing one httpx.AsyncClient (a connection each). Every client loops: a streamed chat
(one of a few short prompts, max_tokens random in [--min-tokens, --max-tokens], stream_options.include_usage); a
`--disconnect-frac` of them closes the connection at a random point mid-stream; a refusal (429/503) waits its
Retry-After (with jitter) before the client's next request.

Phases: a `--warmup` s warm-up under the same load (streams still open at its end are cut), then, once the server
is idle, the baseline RSS and open file descriptors of the server process; then `--duration` s of load, after
which no new request starts and the open streams get `--drain` s to finish (those still open are cut). Streams are
only ever cut once their status line has arrived, so the client knows exactly which requests the server accepted.

Checks (PASS/FAIL per line, exit 1 on any FAIL), over both phases:
  - every accepted (200) stream the client did not cut ends with [DONE] or an error frame ({"error": ...});
  - in-stream `server_overloaded` error frames: 0 (capacity is taken at admission, before the 200);
  - every refusal is a 429 or a 503 with a Retry-After header; no other 4xx/5xx; no transport errors;
  - every stream that ended cleanly carried its usage chunk;
  - usage (GET /v1/usage of the tenant, grouped by status, after up to 10 s for the meter to flush): the records
    == the accepted requests exactly (cut ones included: they are billed for what they produced); a refusal, 429
    or 503, leaves none;
  - with the server's SQLite file at hand, every request id (sent as x-request-id) pairs with its record;
  - server RSS after the run <= 1.2x the baseline; open fds <= baseline + 5 within 10 s of the run's end;
  - /metrics llmaas:num_requests_running and llmaas:num_requests_waiting back to 0.
Reported: requests/s (accepted) and tokens/s of the measured phase, TTFT p50/p95 of accepted streams (queueing
included), refusals by status and code, and the server's CPU per output token with the load average: on a shared
machine tokens/s alone cannot tell a slower server from one that got less of the CPUs.

`--with-jobs` starts the server with one worker, and a fine-tuning job (48 rotten_tomatoes rows, 1 epoch) and a
classification eval (32 rows) from a second tenant just before the measured phase; their state at the end of the
run is reported, and they must succeed within `--jobs-wait` s after it.

    .venv/bin/python bench/soak.py                                  # 200 clients, 60 s (+ warm-up and drain)
    .venv/bin/python bench/soak.py --clients 50 --duration 20       # a shorter look
    .venv/bin/python bench/soak.py --with-jobs                      # with a fine-tune and an eval running
    .venv/bin/python bench/soak.py --max-seqs 4 --max-queued 8      # small capacity: 503s happen
    .venv/bin/python bench/soak.py --clients 30 --tenant-max-parallel 8   # 429s from the tenant's limit

Writes bench/results/soak.json (`--out`); the server log goes next to it (bench/results/soak.server.log).
tests/integration/test_load_live.py runs `soak()` against a small-capacity server in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "data"
PROMPTS = [
    "Say hello.",
    "What is the capital of France?",
    "Name three colors.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
    "Give me a tip for staying focused.",
    "Describe a cat in five words.",
    "Why is the sky blue? Answer briefly.",
    "Tell me a short joke.",
    "List two fruits that are red.",
    "What day comes after Monday?",
    "Suggest a name for a small boat.",
]
RSS_RATIO_MAX, FD_SLACK = 1.2, 5
GAUGES = ("llmaas:num_requests_running", "llmaas:num_requests_waiting")
SENTIMENT_SYSTEM = "Classify the sentiment of the movie review as positive or negative."


@dataclass
class LoadStats:
    """What the clients saw in one phase. `accepted` counts 200 status lines; each accepted stream ends in exactly
    one of done_ok, error_frame_streams, unterminated, cut_by_client, cut_at_deadline, stream_transport_errors."""

    seconds: float = 0.0
    requests: int = 0
    accepted: int = 0
    done_ok: int = 0
    error_frame_streams: int = 0
    error_frames: Counter = field(default_factory=Counter)  # by error code
    overload_frames: int = 0
    unterminated: int = 0
    cut_by_client: int = 0
    cut_at_deadline: int = 0
    stream_transport_errors: int = 0
    missing_usage: int = 0
    refusals: Counter = field(default_factory=Counter)  # by status
    refusal_codes: Counter = field(default_factory=Counter)  # "status code"
    refusals_without_retry_after: int = 0
    other_status: Counter = field(default_factory=Counter)
    transport_errors: int = 0  # before any status line
    cut_before_status: int = 0  # run_load gave up waiting for a status line: accepted or not, unknown
    completion_tokens: int = 0  # usage chunks; content frames for streams without one
    ttft_s: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # x-request-id -> how it ended

    def sample(self, what: str) -> None:
        if len(self.samples) < 8:
            self.samples.append(what[:400])

    def merge(self, other: LoadStats) -> LoadStats:
        out = LoadStats()
        for f in fields(self):  # not asdict(): it rebuilds a Counter from (key, count) pairs, counting the pairs
            a, b = getattr(self, f.name), getattr(other, f.name)
            # ints and floats add, Counters sum, lists concatenate, outcomes (distinct ids) unite
            setattr(out, f.name, a + b if not isinstance(a, dict) or isinstance(a, Counter) else {**a, **b})
        return out

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Counter):
                d[f.name] = {str(x): n for x, n in sorted(v.items())}
            elif f.name not in ("ttft_s", "outcomes"):
                d[f.name] = v
        d["refused"] = sum(self.refusals.values())
        d["ttft_p50_ms"], d["ttft_p95_ms"] = pct(self.ttft_s, 50), pct(self.ttft_s, 95)
        d["requests_per_s"] = round(self.accepted / self.seconds, 2) if self.seconds else None
        d["tokens_per_s"] = round(self.completion_tokens / self.seconds, 1) if self.seconds else None
        return d


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(1000 * s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 1)


# How an accepted (200) stream ended -> its LoadStats counter; then the ends of requests without a status line.
_ACCEPTED = {"done": "done_ok", "error frame": "error_frame_streams", "unterminated": "unterminated",
             "cut by client": "cut_by_client", "cut at deadline": "cut_at_deadline",
             "transport error mid-stream": "stream_transport_errors"}
_COUNTERS = {**_ACCEPTED, "transport error": "transport_errors", "cut before the status line": "cut_before_status"}


class _Client:
    """One looping client. `state` tells run_load when it may be cancelled: never while "waiting" for a status
    line (and a refusal's body), since the server may already have accepted (and will bill) a request whose 200
    the client has not read."""

    def __init__(self, i: int, http: httpx.AsyncClient, stats: LoadStats, body: dict[str, Any],
                 disconnect_frac: float, tokens: tuple[int, int], seed: int, tag: str) -> None:
        self.http, self.stats, self.body = http, stats, body
        self.disconnect_frac, self.tokens = disconnect_frac, tokens
        self.rng = random.Random(seed * 100_003 + i)
        self.state = "idle"
        self.prefix, self.n = f"soak-{tag}-{i}-", 0

    async def loop(self, deadline: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.5))  # not all at the same instant
        while time.monotonic() < deadline:
            wait = await self.one()
            self.state = "idle"
            if wait:
                await asyncio.sleep(wait)

    async def one(self) -> float:
        """One streamed chat; returns how long to wait before the next one (a refusal's Retry-After)."""
        st, rng = self.stats, self.rng
        max_tokens = rng.randint(*self.tokens)
        body = {**self.body, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
        cut_after = rng.randint(1, max(1, max_tokens - 1)) if rng.random() < self.disconnect_frac else None
        self.n += 1
        rid = f"{self.prefix}{self.n}"  # x-request-id: the usage record carries it, for matching up
        st.requests += 1
        outcome = "cut before the status line"  # only run_load's last resort cuts a request there
        frames, usage_tokens, first = 0, None, None
        t0 = time.perf_counter()
        self.state = "waiting"
        try:
            async with self.http.stream("POST", "/v1/chat/completions", json=body,
                                        headers={"x-request-id": rid}) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    wait, outcome = self._refused(resp, text)
                    return wait
                self.state = "streaming"
                st.accepted += 1
                outcome = "cut at deadline"  # until the stream ends otherwise
                done = error = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        continue  # read on to the end of the response, so the connection is reused
                    if first is None:
                        first = time.perf_counter() - t0
                    obj = json.loads(data)
                    if "error" in obj:
                        error = True
                        code = (obj["error"] or {}).get("code") or "none"
                        st.error_frames[code] += 1
                        st.overload_frames += int(code == "server_overloaded")
                        st.sample(f"error frame: {data}")
                    elif obj.get("usage"):
                        usage_tokens = obj["usage"]["completion_tokens"]
                    else:
                        frames += 1
                    if cut_after is not None and frames >= cut_after and not done and not error:
                        outcome = "cut by client"
                        break  # leaving the block closes the connection: the server sees the client go
                else:
                    outcome = "error frame" if error else "done" if done else "unterminated"
                    st.missing_usage += int(outcome == "done" and usage_tokens is None)
                    if outcome == "unterminated":
                        st.sample(f"{rid}: stream ended without [DONE] or an error frame after {frames} frames")
        except httpx.HTTPError as e:
            outcome = "transport error mid-stream" if outcome == "cut at deadline" else "transport error"
            st.sample(f"{rid}: {outcome} after {frames} frames: {e!r}")
        finally:
            st.outcomes[rid] = outcome
            if outcome in _COUNTERS:
                setattr(st, _COUNTERS[outcome], getattr(st, _COUNTERS[outcome]) + 1)
            if outcome in _ACCEPTED:
                st.completion_tokens += usage_tokens if usage_tokens is not None else frames
                if first is not None:
                    st.ttft_s.append(first)
        return 0.0

    def _refused(self, resp: httpx.Response, text: str) -> tuple[float, str]:
        """Counts a non-200; returns (seconds to wait, the outcome)."""
        st, status = self.stats, resp.status_code
        try:
            code = json.loads(text)["error"].get("code")
        except (ValueError, KeyError, TypeError, AttributeError):
            code = None
        if status not in (429, 503):
            st.other_status[status] += 1
            st.sample(f"{status}: {text}")
            return 1.0, f"status {status} {code}"
        st.refusals[status] += 1
        st.refusal_codes[f"{status} {code}"] += 1
        retry_after = resp.headers.get("retry-after")
        if not retry_after:
            st.refusals_without_retry_after += 1
            st.sample(f"{status} without Retry-After: {text}")
            return 1.0, f"refused {status} {code}"
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = 1.0
        # jitter: refused clients do not all come back in step
        return min(seconds, 5.0) * self.rng.uniform(0.5, 1.0), f"refused {status} {code}"


async def run_load(url: str, key: str, model: str, *, clients: int, duration: float, drain: float,
                   disconnect_frac: float = 0.1, tokens: tuple[int, int] = (8, 64), seed: int = 0,
                   timeout: float = 300.0, tag: str = "run") -> LoadStats:
    """`clients` looping streaming clients for `duration` s; then no new requests, `drain` s for the open streams,
    and the rest are cut (each once its status line has arrived)."""
    stats = LoadStats()
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=httpx.Timeout(timeout, connect=30.0)) as http:
        workers = [_Client(i, http, stats, body, disconnect_frac, tokens, seed, tag) for i in range(clients)]
        t0 = time.monotonic()
        tasks = {asyncio.create_task(w.loop(t0 + duration)): w for w in workers}
        _, pending = await asyncio.wait(tasks, timeout=duration + drain)
        give_up = time.monotonic() + 30
        while pending:
            for t in pending:
                if tasks[t].state != "waiting" or time.monotonic() > give_up:
                    t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        stats.seconds = time.monotonic() - t0
    return stats


# ---- the server side: admin API, usage, /metrics, the process ----

def admin(url: str, admin_key: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = httpx.request(method, f"{url}/v1/admin{path}", headers={"Authorization": f"Bearer {admin_key}"},
                      timeout=30, **kw)
    if r.status_code != 200:
        raise RuntimeError(f"{method} /v1/admin{path} -> {r.status_code}: {r.text[:500]}")
    return r.json()


def new_tenant(url: str, admin_key: str, name: str, limits: dict[str, Any] | None = None) -> tuple[str, str]:
    t = admin(url, admin_key, "POST", "/tenants",
              json={"name": f"{name}-{secrets.token_hex(3)}", **({"limits": limits} if limits else {})})["id"]
    return t, admin(url, admin_key, "POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]


def usage_totals(url: str, key: str) -> dict[str, Any]:
    """The key's tenant's /v1/usage totals, plus `by_status`: records per status (ok, error, cancelled)."""
    r = httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, params={"group_by": "status"},
                  timeout=30)
    r.raise_for_status()
    body = r.json()
    return {**body["totals"], "by_status": {row["status"]: row["requests"] for row in body["data"]}}


def gauges(url: str, admin_key: str) -> dict[str, float]:
    """The running/waiting gauges, summed over models (an admin key passes /metrics when LLMAAS_METRICS_KEY is set)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30).text
    out = dict.fromkeys(GAUGES, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def poll(probe: Callable[[], Any], ok: Callable[[Any], bool], seconds: float, every: float = 0.5) -> Any:
    """probe() until ok(value) or `seconds` have passed; the last value."""
    deadline = time.monotonic() + seconds
    value = probe()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = probe()
    return value


def records_vs_outcomes(db: Path, outcomes: dict[str, str]) -> dict[str, Any]:
    """The server's usage records (SQLite, read-only) against what the client saw, per x-request-id: a table of
    (client outcome, record status) counts, and the ids that do not pair up."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT request_id, status FROM usage_records WHERE request_id LIKE 'soak-%'").fetchall()
    finally:
        con.close()
    records: dict[str, list[str]] = {}
    for rid, status in rows:
        records.setdefault(rid, []).append(status)
    table: Counter = Counter()
    odd: list[str] = []
    for rid, outcome in outcomes.items():
        got = records.get(rid, [])
        table[f"{outcome} -> {'+'.join(got) or 'no record'}"] += 1
        if (outcome in _ACCEPTED) != (len(got) == 1) or len(got) > 1:
            odd.append(f"{rid}: client {outcome!r}, records {got}")
    odd += [f"{rid}: records {st} for a request the client did not send" for rid, st in records.items()
            if rid not in outcomes]
    return {"table": dict(sorted(table.items())), "mismatched": odd[:50], "mismatched_count": len(odd)}


def proc_snapshot(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)
    cpu = p.cpu_times()
    return {"rss": p.memory_info().rss, "fds": p.num_fds(), "cpu_s": round(cpu.user + cpu.system, 2)}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def soak(url: str, admin_key: str, pid: int, *, clients: int, duration: float, warmup: float, drain: float,
         disconnect_frac: float = 0.1, tokens: tuple[int, int] = (8, 64), seed: int = 0,
         tenant_limits: dict[str, Any] | None = None, before_run: Callable[[str], None] | None = None,
         db: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole soak against a running server (`pid`: its process): tenant, warm-up, baseline, measured phase,
    then the checks. `db`: the server's SQLite file, to pair every request id with its usage record.
    Returns {"checks": [Check], "warmup"/"run"/"total": LoadStats, ...}."""
    _, key = new_tenant(url, admin_key, "soak", tenant_limits)
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["data"]
    model = models[0]["id"]

    tag = secrets.token_hex(2)  # request ids unique across soaks on one server

    def phase(name: str, seconds: float, drain_s: float, phase_seed: int) -> LoadStats:
        return asyncio.run(run_load(url, key, model, clients=clients, duration=seconds, drain=drain_s,
                                    disconnect_frac=disconnect_frac, tokens=tokens, seed=phase_seed,
                                    tag=f"{tag}-{name}"))

    log(f"warm-up: {clients} clients for {warmup:g} s against {model}")
    warm = phase("warmup", warmup, 0.0, seed)  # streams still open at its end are cut
    idle = poll(lambda: gauges(url, admin_key), lambda g: not any(g.values()), 60)
    time.sleep(1.0)  # sockets the client just closed are released by the server
    base = proc_snapshot(pid)
    log(f"baseline: RSS {base['rss'] / 2**20:.1f} MiB, {base['fds']} fds (gauges {idle})")
    if before_run is not None:
        before_run(model)

    log(f"run: {clients} clients for {duration:g} s, then up to {drain:g} s for open streams")
    cpu0, load0 = proc_snapshot(pid)["cpu_s"], os.getloadavg()[0]
    run = phase("run", duration, drain, seed + 1)
    run_cpu_s, load1 = proc_snapshot(pid)["cpu_s"] - cpu0, os.getloadavg()[0]
    total = warm.merge(run)
    log(f"run done in {run.seconds:.1f} s: {run.accepted} accepted, {sum(run.refusals.values())} refused")

    # Every accepted request is one record; a refusal (429 for a rate limit, 503 for capacity) bills nothing and
    # records nothing.
    usage = poll(lambda: usage_totals(url, key), lambda u: u["requests"] >= total.accepted, 10)
    time.sleep(1.0)  # a surplus may still be on its way: look once more
    usage = usage_totals(url, key)
    by_status = usage["by_status"]
    g = poll(lambda: gauges(url, admin_key), lambda x: not any(x.values()), 10)
    after = poll(lambda: proc_snapshot(pid), lambda s: s["fds"] <= base["fds"] + FD_SLACK, 10)
    rss_ratio = after["rss"] / base["rss"]
    # The CPU the server used in the measured phase: on a shared machine, tokens/s alone does not say whether the
    # server got slower or got less of the CPUs.
    cpu = {"server_cpu_s": round(run_cpu_s, 1), "server_cores_busy": round(run_cpu_s / run.seconds, 2),
           "server_cpu_ms_per_token": round(1000 * run_cpu_s / run.completion_tokens, 2)
           if run.completion_tokens else None, "loadavg_1m_before_after": [round(load0, 2), round(load1, 2)]}

    cut = total.cut_by_client + total.cut_at_deadline
    checks = [
        Check("accepted streams end with [DONE] or an error frame",
              total.unterminated == 0 and total.stream_transport_errors == 0,
              f"{total.accepted} accepted: {total.done_ok} [DONE], {total.error_frame_streams} error frame, "
              f"{cut} cut by the client ({total.cut_by_client} mid-stream, {total.cut_at_deadline} at the deadline), "
              f"{total.unterminated} unterminated, {total.stream_transport_errors} transport errors mid-stream"),
        Check("in-stream server_overloaded frames", total.overload_frames == 0,
              f"{total.overload_frames} (error frames by code: {dict(total.error_frames) or 'none'})"),
        Check("refusals are 429/503 with Retry-After", total.refusals_without_retry_after == 0,
              f"{sum(total.refusals.values())} refused ({dict(total.refusal_codes) or 'none'}), "
              f"{total.refusals_without_retry_after} without Retry-After"),
        Check("no other 4xx/5xx", not total.other_status, f"{dict(total.other_status) or 'none'}"),
        Check("no transport errors", total.transport_errors + total.cut_before_status == 0,
              f"{total.transport_errors} before a status line, {total.cut_before_status} requests given up on "
              f"before theirs"),
        Check("clean streams carry the usage chunk", total.missing_usage == 0, f"{total.missing_usage} without"),
        Check("usage records == accepted requests", usage["requests"] == total.accepted,
              f"{usage['requests']} records ({by_status}) vs {total.accepted} accepted "
              f"({warm.accepted} warm-up + {run.accepted} run); {sum(total.refusals.values())} refusals"),
        Check(f"server RSS after <= {RSS_RATIO_MAX}x baseline", rss_ratio <= RSS_RATIO_MAX,
              f"{after['rss'] / 2**20:.1f} / {base['rss'] / 2**20:.1f} MiB = {rss_ratio:.3f}x"),
        Check(f"open fds back to <= baseline + {FD_SLACK}", after["fds"] <= base["fds"] + FD_SLACK,
              f"{after['fds']} vs baseline {base['fds']}"),
        Check("running/waiting gauges back to 0", not any(g.values()),
              ", ".join(f"{k.split(':')[1]} {v:g}" for k, v in g.items())),
    ]
    records = None
    if db is not None:
        records = records_vs_outcomes(db, total.outcomes)
        checks.insert(8, Check("every request id pairs with its usage record", not records["mismatched_count"],
                               f"{records['mismatched_count']} do not: {records['mismatched'][:5]}"))
    return {"model": model, "checks": checks, "warmup": warm, "run": run, "total": total, "usage": usage,
            "records": records, "gauges_after": g,
            "process": {"baseline": base, "after": after, "rss_ratio": round(rss_ratio, 4), **cpu}}


# ---- --with-jobs: a fine-tune and an eval from another tenant while the soak runs ----

def _rows(name: str, split: str, n: int) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (DATA / name / f"{split}.jsonl").read_text().splitlines()[:n]]


def _upload(url: str, key: str, name: str, rows: list[dict[str, Any]], purpose: str) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = httpx.post(f"{url}/v1/files", headers={"Authorization": f"Bearer {key}"}, files={"file": (name, data)},
                   data={"purpose": purpose}, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def start_jobs(url: str, admin_key: str, model: str) -> dict[str, str]:
    """A 48-row, 1-epoch LoRA fine-tune and a 32-row classification eval, for a tenant of their own (so that
    their usage records stay out of the soak tenant's count)."""
    _, key = new_tenant(url, admin_key, "soak-jobs")
    h = {"Authorization": f"Bearer {key}"}
    train = [{"messages": [{"role": "system", "content": SENTIMENT_SYSTEM}, {"role": "user", "content": r["text"]},
                           {"role": "assistant", "content": r["label"]}]}
             for r in _rows("rotten_tomatoes", "train", 48)]
    job = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=h, timeout=60, json={
        "model": model, "training_file": _upload(url, key, "soak-train.jsonl", train, "fine-tune"), "suffix": "soak",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}}})
    job.raise_for_status()
    ev = httpx.post(f"{url}/v1/evals", headers=h, timeout=60, json={
        "model": model, "name": "soak-eval", "file_id": _upload(url, key, "soak-eval.jsonl",
                                                                _rows("rotten_tomatoes", "test", 32), "evals"),
        "task": {"type": "classification", "labels": ["positive", "negative"],
                 "prompt_template": "Review: {text}\nIs this review positive or negative?"}})
    ev.raise_for_status()
    return {"key": key, "job": job.json()["id"], "eval": ev.json()["id"]}


def jobs_state(url: str, jobs: dict[str, str]) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {jobs['key']}"}
    job = httpx.get(f"{url}/v1/fine_tuning/jobs/{jobs['job']}", headers=h, timeout=30).json()
    events = httpx.get(f"{url}/v1/fine_tuning/jobs/{jobs['job']}/events", headers=h, params={"limit": 100},
                       timeout=30).json()["data"]
    ev = httpx.get(f"{url}/v1/evals/{jobs['eval']}", headers=h, timeout=30).json()
    return {"fine_tune": {"status": job["status"], "trained_tokens": job.get("trained_tokens"),
                          "metrics_events": sum(e.get("type") == "metrics" for e in events),
                          "error": job.get("error")},
            "eval": {"status": ev["status"], "progress": ev.get("progress"), "error": ev.get("error")}}


class Server:
    """`llmaas serve` with the real model, a fresh data dir and admin key, logging to bench/results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = args.port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "sk-llmaas-" + secrets.token_hex(15)
        self.data_dir = tempfile.mkdtemp(prefix="llmaas-soak-")
        self.log_path = args.out.with_name(args.out.stem + ".server.log")  # next to the JSON
        self.cmd = [sys.executable, "-m", "llmaas.cli", "serve", "--port", str(self.port), "--data-dir",
                    self.data_dir, "--max-seqs", str(args.max_seqs), "--max-queued", str(args.max_queued),
                    "--workers", "1" if args.with_jobs else "0", "--log-level", "warning",
                    *(["--threads", str(args.threads)] if args.threads else [])]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        print(f"starting: {' '.join(self.cmd)}  (log: {self.log_path})", flush=True)
        env = {**os.environ, "LLMAAS_ADMIN_KEY": self.admin_key}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"/ready not 200 within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def print_report(res: dict[str, Any]) -> None:
    rows = [("phase", "s", "requests", "accepted", "[DONE]", "err frame", "cut", "refused", "req/s", "tok/s",
             "TTFT p50 ms", "TTFT p95 ms")]
    for name in ("warmup", "run"):
        s = res[name].summary()
        rows.append((name, f"{s['seconds']:.1f}", s["requests"], s["accepted"], s["done_ok"],
                     s["error_frame_streams"], s["cut_by_client"] + s["cut_at_deadline"], s["refused"],
                     s["requests_per_s"], s["tokens_per_s"], s["ttft_p50_ms"], s["ttft_p95_ms"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)))
    run = res["run"]
    print(f"refusals by status (run): {dict(run.refusals) or 'none'}; by code: {dict(run.refusal_codes) or 'none'}")
    pr = res["process"]
    print(f"server CPU in the run: {pr['server_cpu_s']} s ({pr['server_cores_busy']} cores busy, "
          f"{pr['server_cpu_ms_per_token']} ms per output token); load average (1 min) before/after "
          f"{pr['loadavg_1m_before_after']} on {os.cpu_count()} CPUs")
    u = res["usage"]
    print(f"usage records (both phases): {u['requests']} requests by status {u['by_status']}, "
          f"{u.get('completion_tokens')} completion tokens billed; client-side {res['total'].completion_tokens}")
    if res.get("records"):
        print("client outcome -> usage record status, per request id:")
        for k, n in res["records"]["table"].items():
            print(f"  {n:6d}  {k}")
    for s in res["total"].samples:
        print(f"  sample: {s}")
    print()
    for c in res["checks"]:
        print(c.line())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    ap.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the measured phase")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of warm-up load before the baseline")
    ap.add_argument("--drain", type=float, default=240.0,
                    help="seconds the streams open at the end of the run get to finish before they are cut")
    ap.add_argument("--disconnect-frac", type=float, default=0.1,
                    help="fraction of requests whose client disconnects at a random point mid-stream")
    ap.add_argument("--min-tokens", type=int, default=8, help="smallest max_tokens of a request")
    ap.add_argument("--max-tokens", type=int, default=64, help="largest max_tokens of a request")
    ap.add_argument("--max-seqs", type=int, default=16, help="server slots (llmaas serve --max-seqs)")
    ap.add_argument("--max-queued", type=int, default=256, help="server queue (llmaas serve --max-queued)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads; none: all cores")
    ap.add_argument("--tenant-max-parallel", type=int, default=None,
                    help="a max_parallel limit on the soak tenant, so that 429s happen too")
    ap.add_argument("--with-jobs", action="store_true",
                    help="one worker; a fine-tune and an eval run during the soak and must succeed")
    ap.add_argument("--jobs-wait", type=float, default=600.0, help="seconds after the run for the jobs to finish")
    ap.add_argument("--port", type=int, default=None, help="server port; none: a free one")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clients' choices")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json", help="results JSON")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    load0 = [round(x, 2) for x in os.getloadavg()]
    srv = Server(args)
    jobs: dict[str, str] = {}
    res: dict[str, Any] = {}
    jobs_out: dict[str, Any] | None = None
    exit_code: int | None = None
    try:
        srv.start()
        assert srv.proc is not None

        def before_run(model: str) -> None:
            if args.with_jobs:
                jobs.update(start_jobs(srv.url, srv.admin_key, model))
                print(f"started fine-tune {jobs['job']} and eval {jobs['eval']}", flush=True)

        limits = {"max_parallel": args.tenant_max_parallel} if args.tenant_max_parallel else None
        res = soak(srv.url, srv.admin_key, srv.proc.pid, clients=args.clients, duration=args.duration,
                   warmup=args.warmup, drain=args.drain, disconnect_frac=args.disconnect_frac,
                   tokens=(args.min_tokens, args.max_tokens), seed=args.seed, tenant_limits=limits,
                   before_run=before_run, db=Path(srv.data_dir) / "llmaas.db", log=lambda m: print(m, flush=True))
        if args.with_jobs:
            at_end = jobs_state(srv.url, jobs)
            print(f"jobs at the end of the run: {json.dumps(at_end)}", flush=True)
            final = poll(lambda: jobs_state(srv.url, jobs),
                         lambda s: all(s[k]["status"] in ("succeeded", "failed", "cancelled") for k in s),
                         args.jobs_wait, every=2.0)
            jobs_out = {"at_end_of_run": at_end, "final": final}
            for k in ("fine_tune", "eval"):
                res["checks"].append(Check(f"{k} during the soak succeeds", final[k]["status"] == "succeeded",
                                           f"{at_end[k]['status']} at the end of the run, {final[k]['status']} "
                                           f"within {args.jobs_wait:g} s after ({json.dumps(final[k])})"))
    finally:
        if res and not all(c.ok for c in res["checks"]):
            print(f"server log tail:\n{srv.log_tail()}", flush=True)
        exit_code = srv.stop()
    print_report(res)
    doc = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_cmd": srv.cmd, "server_exit_code": exit_code, "model": res["model"],
        "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "warmup": res["warmup"].summary(), "run": res["run"].summary(), "usage": res["usage"],
        "gauges_after": res["gauges_after"], "process": res["process"], "jobs": jobs_out,
        "records_vs_outcomes": res["records"],
        "checks": [asdict(c) for c in res["checks"]],
        "ttft_ms": {"p50": pct(res["run"].ttft_s, 50), "p95": pct(res["run"].ttft_s, 95),
                    "mean": round(1000 * statistics.fmean(res["run"].ttft_s), 1) if res["run"].ttft_s else None},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")
    sys.exit(0 if all(c.ok for c in res["checks"]) else 1)


if __name__ == "__main__":
    main()
