"""The live server under test and the bookkeeping of a fuzz run.

`Server` runs `llmaas serve` from this checkout in its own process group; `setup` creates the tenants, keys,
files and jobs the cases need; `Run` sends requests, checks liveness after each case and keeps the counts per
group (`Group`) and the failures; `classify` is the one rule that decides what counts as a failure.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

REPO = Path(__file__).resolve().parents[2]
PLATFORM_TENANT = "org-platform"
BODY_EXCERPT = 400
LOG_EXCERPT = 1800
MAX_FAILURES_KEPT = 400

# ---------------------------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`llmaas serve` from this checkout (src/ first on PYTHONPATH) in its own process group."""

    def __init__(self, backend: str, workdir: Path, threads: int) -> None:
        self.backend, self.workdir, self.threads = backend, workdir, threads
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "sk-llmaas-fuzz-" + secrets.token_hex(16)
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._logf = None

    def start(self, timeout: float = 180) -> None:
        cmd = [sys.executable, "-m", "llmaas.cli", "serve", "--backend", self.backend, "--port", str(self.port),
               "--data-dir", str(self.workdir / "data"), "--workers", "0", "--threads", str(self.threads),
               "--max-seqs", "8", "--ctx-size", "2048"]
        env = {**os.environ, "LLMAAS_ADMIN_KEY": self.admin_key,
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
        self._logf = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early (rc {self.proc.returncode}):\n{self.log_tail(4000)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{self.log_tail(4000)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group this script created for the server
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the server logged since `offset`, cut to the traceback if there is one."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read(2_000_000).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if '" 200 OK' not in ln]
        text = "\n".join(lines)
        frames = re.findall(r'File "[^"]*?/(llmaas/[^"]+)", line (\d+), in (\S+)', text)
        if frames:  # the innermost frame of ours, found before the excerpt cuts the middle out
            text = f"[innermost llmaas frame: {frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}]\n{text}"
        i = text.rfind("Traceback (most recent call last)")
        if i >= 0:
            text = (text.split("\n", 1)[0] + "\n" if frames else "") + text[i:]
            return text[:300] + "\n...\n" + text[-(LOG_EXCERPT - 300):] if len(text) > LOG_EXCERPT else text
        return text[-LOG_EXCERPT:]

    def log_tail(self, n: int) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------------------ the bookkeeping


@dataclass
class Group:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    failures: int = 0
    http_parser_rejections: int = 0
    unsendable: int = 0  # the HTTP client refused to build the request (e.g. a control char in a header)
    schema_conformance_violations: int = 0
    generation_errors: int = 0
    no_data_for_mode: int = 0
    undocumented_status: int = 0  # schemathesis status_code_conformance
    st_not_a_server_error: int = 0  # schemathesis not_a_server_error (5xx, whatever the headers)
    skipped_out_of_time: int = 0


class Run:
    def __init__(self, server: Server, member_key: str, admin_key: str, model: str, deadline: float,
                 probe_every: int, timeout: float) -> None:
        self.server, self.member_key, self.admin_key, self.model = server, member_key, admin_key, model
        self.deadline, self.probe_every = deadline, probe_every
        self.timeout = timeout
        self.client = httpx.Client(base_url=server.url, timeout=httpx.Timeout(timeout, connect=10))
        self.groups: dict[str, Group] = collections.defaultdict(Group)
        self.failures: list[dict] = []
        self.failure_count = 0
        self.distinct: dict[tuple, dict] = {}
        self.conformance: collections.Counter = collections.Counter()
        self.undocumented: collections.Counter = collections.Counter()
        self.probes_ok = self.probes_failed = 0
        self.health_failed = 0
        self.since_probe = 0

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if who == 'admin' else self.member_key}"}

    # --- outcome of one case

    def record(self, group: str, method: str, route: str, path: str, desc: str, status: int | None,
               headers: Any, body: bytes, error: str | None, log_offset: int) -> None:
        g = self.groups[group]
        g.cases += 1
        g.statuses[str(status) if status is not None else "error"] += 1
        verdict, reason = classify(status, headers, body, error)
        if verdict == "parser":
            g.http_parser_rejections += 1
        elif verdict == "fail":
            g.failures += 1
            self.fail(group, method, route, path, desc, status, body, reason, log_offset)
        self.after_case(group)

    def fail(self, group: str, method: str, route: str, path: str, desc: str, status: int | None, body: bytes,
             reason: str, log_offset: int) -> None:
        self.failure_count += 1
        time.sleep(0.05)  # let the server flush its traceback
        log = self.server.log_since(log_offset)
        rec = {"group": group, "method": method, "route": route, "path": short(path, 200), "input": desc,
               "status": status, "reason": reason, "body": body[:BODY_EXCERPT].decode("utf-8", "replace"),
               "server_log": log}
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(rec)
        exc_line = next((ln for ln in reversed(log.splitlines()) if ln and not ln.startswith((" ", "INFO", "..."))
                         and ("Error" in ln or "Exception" in ln)), "")
        m = re.match(r"\[innermost llmaas frame: (.*)\]", log)
        where = m.group(1) if m else ""
        key = (method, route, status, reason, exc_line.split(":", 1)[0][:120], where)  # exception type, not text
        d = self.distinct.setdefault(key, {**rec, "exception": exc_line[:300], "where": where, "count": 0,
                                           "inputs": []})
        d["count"] += 1
        if len(d["inputs"]) < 8 and desc not in d["inputs"]:
            d["inputs"].append(desc)

    def after_case(self, group: str) -> None:
        """GET /health after every case; a real chat completion every `probe_every` cases."""
        off = self.server.log_size()
        try:
            r = self.client.get("/health", timeout=15)
            ok, detail = r.status_code == 200, f"/health {r.status_code}"
        except httpx.HTTPError as e:
            ok, detail = False, f"/health {type(e).__name__}: {e}"
        if not ok:
            self.health_failed += 1
            self.fail(group, "GET", "/health", "/health", "liveness after the previous case", None, b"", detail, off)
            self.ensure_up(group)
        self.since_probe += 1
        if self.since_probe >= self.probe_every:
            self.probe(group)

    def probe(self, group: str) -> None:
        self.since_probe = 0
        off = self.server.log_size()
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
                "temperature": 0}
        try:
            r = self.client.post("/v1/chat/completions", json=body, headers=self.auth("member"), timeout=120)
            ok = r.status_code == 200 and bool(r.json().get("choices"))
            status, text = r.status_code, r.content
        except (httpx.HTTPError, ValueError) as e:
            ok, status, text = False, None, repr(e).encode()
        if ok:
            self.probes_ok += 1
            return
        self.probes_failed += 1
        self.fail(group, "POST", "/v1/chat/completions (probe)", "/v1/chat/completions", "chat probe, max_tokens 4",
                  status, text, "chat probe did not return 200", off)
        self.ensure_up(group)

    def ensure_up(self, group: str) -> None:
        if not self.server.alive():
            self.fail(group, "-", "(server)", "-", "server process exited", None, b"",
                      f"server exited with rc {self.server.proc.returncode if self.server.proc else '?'}", 0)
            self.server.restart()

    # --- raw requests (phase 1)

    def send(self, group: str, method: str, route: str, path: str, desc: str, *, who: str = "member",
             content: bytes | None = None, headers: dict | None = None, auth: bool = True) -> int | None:
        hdrs = {**(self.auth(who) if auth else {}), **(headers or {})}
        off = self.server.log_size()
        try:
            req = self.client.build_request(method, path, content=content, headers=hdrs)
        except (httpx.HTTPError, ValueError, TypeError, UnicodeError) as e:
            self.groups[group].unsendable += 1
            del e
            return None
        try:
            r = self.client.send(req)
            status, rh, body, err = r.status_code, r.headers, r.content, None
        except (h11.LocalProtocolError, httpx.LocalProtocolError):  # the client's own HTTP writer refused it
            self.groups[group].unsendable += 1
            return None
        except httpx.HTTPError as e:
            status, rh, body, err = None, {}, b"", f"{type(e).__name__}: {e}"
        self.record(group, method, route, path, desc, status, rh, body, err, off)
        return status


def classify(status: int | None, headers: Any, body: bytes, error: str | None) -> tuple[str, str]:
    """("ok" | "fail" | "parser", reason)."""
    if status is None:
        return "fail", f"no response: {error}"
    ctype = (headers.get("content-type") or "").lower() if headers else ""
    if status == 400 and body.startswith(b"Invalid HTTP request received.") and "json" not in ctype:
        return "parser", "uvicorn rejected the request line/headers"
    if status == 503 and headers and headers.get("retry-after"):
        return "ok", "refused with Retry-After"
    if status >= 500:
        return "fail", f"server error {status}"
    if status >= 400:
        try:
            err = json.loads(body)["error"]
            missing = [k for k in ("message", "type", "param", "code") if k not in err]
        except (ValueError, KeyError, TypeError):
            return "fail", "error body is not the OpenAI JSON envelope"
        if missing:
            return "fail", f"error envelope lacks {missing}"
        return "ok", ""
    if "event-stream" in ctype and b'"server_error"' in body:
        return "fail", "stream carried a server_error event"
    return "ok", ""


def short(x: Any, n: int = 160) -> str:
    s = x if isinstance(x, str) else repr(x)
    return s if len(s) <= n else f"{s[:n - 30]}…(+{len(s) - n + 30} chars)"


# -------------------------------------------------------------------------------------------------- setup


def setup(server: Server) -> dict:
    c = httpx.Client(base_url=server.url, timeout=120)
    env_admin = {"Authorization": f"Bearer {server.admin_key}"}

    def ok(r: httpx.Response) -> dict:
        if r.status_code != 200:
            raise RuntimeError(f"setup: {r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:500]}")
        return r.json()

    model = ok(c.get("/v1/models", headers=env_admin))["data"][0]["id"]
    tenant = ok(c.post("/v1/admin/tenants", json={"name": "fuzz-member"}, headers=env_admin))["id"]
    member_key = ok(c.post(f"/v1/admin/tenants/{tenant}/keys", json={"name": "fuzz", "role": "member"},
                           headers=env_admin))["key"]
    admin_key = ok(c.post(f"/v1/admin/tenants/{PLATFORM_TENANT}/keys", json={"name": "fuzz-admin", "role": "admin"},
                          headers=env_admin))["key"]
    victim = ok(c.post("/v1/admin/tenants", json={"name": "fuzz-victim"}, headers=env_admin))["id"]
    victim_key = ok(c.post(f"/v1/admin/tenants/{victim}/keys", json={"role": "member"}, headers=env_admin))["id"]
    rotate_key = ok(c.post(f"/v1/admin/tenants/{victim}/keys", json={"role": "member"}, headers=env_admin))["id"]
    mem = {"Authorization": f"Bearer {member_key}"}
    train_line = (json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Hello!"}]}) + "\n").encode()
    ft_file = ok(c.post("/v1/files", headers=mem, data={"purpose": "fine-tune"},
                        files={"file": ("train.jsonl", train_line * 8, "application/jsonl")}))["id"]
    eval_lines = b"".join((json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n").encode() for i in range(4))
    evals_file = ok(c.post("/v1/files", headers=mem, data={"purpose": "evals"},
                           files={"file": ("evals.jsonl", eval_lines, "application/jsonl")}))["id"]
    completion_id = ok(c.post("/v1/chat/completions", headers=mem, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "store": True}))["id"]
    baseline_status = {}
    r = c.post("/v1/fine_tuning/jobs", headers=mem, json={"model": model, "training_file": ft_file})
    baseline_status["POST /v1/fine_tuning/jobs"] = r.status_code
    job_id = r.json().get("id", "ftjob-missing") if r.status_code == 200 else "ftjob-missing"
    r = c.post("/v1/evals", headers=mem, json={"model": model, "file_id": evals_file,
                                               "task": {"type": "classification", "labels": ["a", "b"]}})
    baseline_status["POST /v1/evals"] = r.status_code
    eval_id = r.json().get("id", "eval-missing") if r.status_code == 200 else "eval-missing"
    c.close()
    return {"model": model, "tenant": tenant, "member_key": member_key, "admin_key": admin_key, "victim": victim,
            "victim_key": victim_key, "rotate_key": rotate_key, "ft_file": ft_file, "evals_file": evals_file,
            "completion_id": completion_id, "job_id": job_id, "eval_id": eval_id, "train_line": train_line,
            "baseline_status": baseline_status}
