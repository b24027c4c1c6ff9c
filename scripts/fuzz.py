#!/usr/bin/env python
"""Bounded, repeatable fuzz run of the llmaas HTTP API against a live `llmaas serve` it starts itself.

    python scripts/fuzz.py --backend fake                      # ~5 min: hostile inputs, then schemathesis
    python scripts/fuzz.py --backend llamacpp --time-budget 360 --report fuzz-llamacpp.json

Two phases, both checked with the same rules:

1. hostile: every JSON body field of the main routes (found in a valid baseline body per route, plus the
   top-level fields of the route's OpenAPI schema), every query parameter of the GET routes and every path
   parameter, each replaced by values from a list per type (empty/NUL/lone-surrogate/100 KB/RTL/format-string
   strings, 2**63 and 10**30 and NaN and 1e400 numbers, 10,000-item and 1000-deep lists and objects, null,
   wrong types). Bodies are sent as raw bytes, so invalid escapes and NaN/Infinity tokens reach the server.
   Also: whole-body junk, /v1/files multipart (hostile purpose, filename, content and structure), headers.
2. schemathesis over /openapi.json, positive and negative data: the tenant routes with a member key, the
   /v1/admin routes with an admin key.

A failure is a 5xx (a 503 with Retry-After is a legitimate refusal), an error without the OpenAI envelope
{"error": {"message", "type", "param", "code"}}, a connection error or timeout, a failed GET /health after a
case, or a failed chat probe (a real completion every --probe-every cases). Uvicorn's own plain-text
`400 Invalid HTTP request received.` (before the app sees the request) counts as `http_parser_rejections`.
schemathesis's response-schema conformance is counted, not failed. Exit code 1 on any failure.

Needs the `fuzz` extra: pip install -e '.[fuzz]' (schemathesis, httpx). The server runs with --workers 0, so
accepted fine-tuning and eval jobs stay queued instead of training on the CPUs the fuzzer shares.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

REPO = Path(__file__).resolve().parent.parent
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
        rec = {"group": group, "method": method, "route": route, "path": _short(path, 200), "input": desc,
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


def _short(x: Any, n: int = 160) -> str:
    s = x if isinstance(x, str) else repr(x)
    return s if len(s) <= n else f"{s[:n - 30]}…(+{len(s) - n + 30} chars)"


# ------------------------------------------------------------------------------------- hostile value lists


def _nest_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nest_obj(depth: int) -> bytes:
    return b'{"a":' * depth + b"{}" + b"}" * depth


BIG_STR = b'"' + b"A" * 100_000 + b'"'
V_STRINGS = [
    ("empty", b'""'), ("lone_high_surrogate", b'"\\ud800"'), ("lone_low_surrogate", b'"\\udfff"'),
    ("reversed_surrogates", b'"x\\udfff\\ud800"'), ("nul", b'"\\u0000"'), ("nul_inside", b'"a\\u0000b"'),
    ("str_100KB", BIG_STR),
    ("rtl_emoji", json.dumps("\u202egnp.exe 😀👨‍👩‍👧 مرحبا \u200b", ensure_ascii=False).encode()),
    ("fmt_class", b'"{0.__class__}"'), ("fmt_printf", b'"%s%n%x%d"'), ("jinja", b'"{{ 7*7 }}{% raw %}"'),
    ("path_traversal", b'"../../etc/passwd"'), ("sql", b'"\'; DROP TABLE tenants;--"'),
    ("control_chars", b'"\\u0001\\u001b[31m\\r\\n\\t"'), ("raw_invalid_utf8", b'"\xff\xfe\xed\xa0\x80"'),
    ("invalid_escape", b'"\\x41"'),
]
V_INTS = [
    ("-1", b"-1"), ("0", b"0"), ("2**31", b"2147483648"), ("2**63", b"9223372036854775808"),
    ("-2**63-1", b"-9223372036854775809"), ("10**30", b"1" + b"0" * 30), ("1e308", b"1e308"),
    ("1e400", b"1e400"), ("5000_digits", b"9" * 5000), ("NaN", b"NaN"), ("float_1.5", b"1.5"),
    ("-0", b"-0"), ("int_as_string", b'"1"'),
]
V_FLOATS = [
    ("-1e308", b"-1e308"), ("1e-320", b"1e-320"), ("Infinity", b"Infinity"), ("-Infinity", b"-Infinity"),
    ("NaN", b"NaN"), ("1e400", b"1e400"), ("-0.0", b"-0.0"), ("float_as_string", b'"0.5"'),
    ("2**63", b"9223372036854775808"),
]
V_BOOLS = [("0", b"0"), ("1", b"1"), ("bool_as_string", b'"true"'), ("2", b"2")]
V_LISTS = [
    ("empty_list", b"[]"), ("list_of_null", b"[null]"), ("nested_list_1000", _nest_list(1000)),
    ("list_10000_str", b"[" + b",".join([b'"x"'] * 10_000) + b"]"),
    ("list_10000_int", b"[" + b",".join([b"1"] * 10_000) + b"]"),
]
V_OBJECTS = [
    ("empty_object", b"{}"), ("nested_object_1000", _nest_obj(1000)),
    ("object_10000_keys", b"{" + b",".join(b'"k%d":"v"' % i for i in range(10_000)) + b"}"),
    ("proto_key", b'{"__proto__":{"x":1},"constructor":"x"}'), ("object_nul_key", b'{"\\u0000":"x","\\ud800":"y"}'),
]
V_ANY = [("null", b"null"), ("wrong_string", b'"x"'), ("wrong_int", b"1"), ("wrong_bool", b"true"),
         ("wrong_list", b"[]"), ("wrong_object", b"{}")]

BY_TYPE = {"string": V_STRINGS, "integer": V_INTS, "number": V_FLOATS, "boolean": V_BOOLS, "array": V_LISTS,
           "object": V_OBJECTS, "null": []}

Q_VALUES = [  # query values, already URL-encoded (sent as is)
    ("empty", ""), ("%ff", "%ff"), ("%00", "%00"), ("lone_surrogate_utf8", "%ed%a0%80"), ("overlong_slash", "%c0%af"),
    ("-1", "-1"), ("0", "0"), ("2**31", "2147483648"), ("2**63", "9223372036854775808"),
    ("-2**63-1", "-9223372036854775809"), ("10**30", "1" + "0" * 30), ("5000_digits", "9" * 5000),
    ("1e308", "1e308"), ("NaN", "NaN"), ("Infinity", "Infinity"), ("true", "true"), ("null", "null"),
    ("json_object", "%7B%22a%22%3A1%7D"), ("path_traversal", "..%2F..%2Fetc%2Fpasswd"),
    ("sql", "%27%3B%20DROP%20TABLE%20x%3B--"), ("fmt", "%25s%25n%7B0.__class__%7D"), ("str_8KB", "A" * 8000),
    ("emoji_rtl", "%F0%9F%98%80%E2%80%AE"), ("iso_date_garbage", "2024-13-45T99:99:99"),
    ("date_year_0", "0000-01-01"), ("date_year_99999", "99999-01-01"), ("unix_1e20", "100000000000000000000"),
]
P_VALUES = [  # path segment values, already URL-encoded
    ("%ff", "%ff"), ("%00", "%00"), ("lone_surrogate_utf8", "%ed%a0%80"), ("dotdot", "%2e%2e"),
    ("encoded_traversal", "..%2f..%2fetc%2fpasswd"), ("str_10KB", "A" * 10_000), ("-1", "-1"),
    ("5000_digits", "9" * 5000), ("2**63", "9223372036854775808"), ("null", "null"), ("space", "%20"),
    ("emoji", "%F0%9F%98%80"), ("sql", "%27%3B%20DROP%20TABLE%20x%3B--"), ("fmt", "%25s%25n%7B0.__class__%7D"),
    ("nul_suffix", "ft-%00x"), ("crlf", "x%0d%0aX-Injected:%201"),
]


def values_for(types: set[str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for t in sorted(types) + ["*"]:
        for label, raw in BY_TYPE.get(t, V_ANY if t == "*" else []):
            if raw not in seen:
                seen.add(raw)
                out.append((label, raw))
    return out


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _spec_types(schema: dict, comps: dict, depth: int = 0) -> set[str]:
    if depth > 8 or not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        return _spec_types(comps.get(schema["$ref"].rsplit("/", 1)[-1], {}), comps, depth + 1)
    out: set[str] = set()
    for k in ("anyOf", "oneOf", "allOf"):
        for s in schema.get(k, []):
            out |= _spec_types(s, comps, depth + 1)
    t = schema.get("type")
    out |= set(t) if isinstance(t, list) else ({t} if t else set())
    if "properties" in schema and not t:
        out.add("object")
    return out


def _leaf_paths(v: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every node below the root (objects' values and the first element of lists), depth-first."""
    out: list[tuple[tuple, Any]] = []
    if isinstance(v, dict):
        for k, x in v.items():
            out.append(((*prefix, k), x))
            out += _leaf_paths(x, (*prefix, k))
    elif isinstance(v, list) and v:
        out.append(((*prefix, 0), v[0]))
        out += _leaf_paths(v[0], (*prefix, 0))
    return out


SENTINEL = "\x01FUZZ\x01"


def _substitute(baseline: Any, path: tuple, raw: bytes) -> bytes:
    doc = json.loads(json.dumps(baseline))
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = SENTINEL
    text = json.dumps(doc).encode()
    return text.replace(json.dumps(SENTINEL).encode(), raw, 1)


# ------------------------------------------------------------------------------------------------- phase 1


@dataclass
class Case:
    group: str
    method: str
    route: str
    path: str
    desc: str
    who: str = "member"
    content: bytes | None = None
    headers: dict | None = None
    auth: bool = True
    reset: tuple | None = None  # (method, path, body) sent with the admin key after the case


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"fuzzB0undary7") -> bytes:
    out = b""
    for head, body in parts:
        out += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + body + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name + b'"', value


def _filepart(filename: bytes, content: bytes, name: bytes = b"file") -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
            b"Content-Type: application/jsonl", content)


def file_cases(train_line: bytes) -> list[Case]:
    mp = {"Content-Type": "multipart/form-data; boundary=fuzzB0undary7"}
    good_file = train_line * 4
    cases: list[Case] = []

    def add(desc: str, body: bytes, headers: dict | None = None) -> None:
        cases.append(Case("hostile", "POST", "/v1/files (multipart)", "/v1/files", desc, content=body,
                          headers=headers or mp))

    raw_strings = [("empty", b""), ("nul", b"\x00"), ("lone_surrogate_utf8", b"\xed\xa0\x80"),
                   ("invalid_utf8", b"\xff\xfe"), ("str_100KB", b"A" * 100_000),
                   ("rtl_emoji", "\u202e😀 مرحبا".encode()), ("fmt", b"{0.__class__}%s%n"),
                   ("path_traversal", b"../../etc/passwd"), ("sql", b"'; DROP TABLE files;--"),
                   ("crlf", b"fine-tune\r\nX-Injected: 1")]
    for label, v in [*raw_strings, ("batch", b"batch"), ("evals", b"evals")]:
        add(f"purpose={label}", _multipart([_field(b"purpose", v), _filepart(b"t.jsonl", good_file)]))
    for label, v in [*raw_strings, ("quote", b'a"b.jsonl'), ("abs_path", b"/etc/passwd"), ("dev_null", b"/dev/null"),
                     ("windows_reserved", b"CON"), ("dot", b".")]:
        add(f"filename={label}", _multipart([_field(b"purpose", b"fine-tune"), _filepart(v, good_file)]))
    contents = [("empty", b""), ("nul_bytes", b"\x00" * 100), ("invalid_utf8", b"\xff\xfe\xfd\n"),
                ("not_json", b"{not json}\n"), ("empty_messages", b'{"messages": []}\n'),
                ("line_100KB", b'{"messages":[{"role":"user","content":"' + b"A" * 100_000 + b'"}]}\n'),
                ("lines_10000", train_line * 10_000), ("lone_surrogate", b'{"messages":[{"role":"user","content":'
                                                                         b'"\\ud800"}]}\n'),
                ("nested_1000", _nest_obj(1000) + b"\n"), ("nan", b'{"messages": NaN}\n'),
                ("json_array_line", b"[1,2,3]\n"), ("no_trailing_newline", train_line.rstrip(b"\n")),
                ("crlf_lines", train_line.replace(b"\n", b"\r\n") * 3)]
    for label, v in contents:
        for purpose in (b"fine-tune", b"evals"):
            add(f"content={label} purpose={purpose.decode()}",
                _multipart([_field(b"purpose", purpose), _filepart(b"t.jsonl", v)]))
    b = b"fuzzB0undary7"
    structures = [
        ("missing_file", _multipart([_field(b"purpose", b"fine-tune")]), mp),
        ("missing_purpose", _multipart([_filepart(b"t.jsonl", good_file)]), mp),
        ("two_files", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"a.jsonl", good_file),
                                  _filepart(b"b.jsonl", good_file)]), mp),
        ("two_purposes", _multipart([_field(b"purpose", b"fine-tune"), _field(b"purpose", b"evals"),
                                     _filepart(b"t.jsonl", good_file)]), mp),
        ("file_without_filename", _multipart([_field(b"purpose", b"fine-tune"), _field(b"file", good_file)]), mp),
        ("no_boundary_param", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)]),
         {"Content-Type": "multipart/form-data"}),
        ("wrong_boundary", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)]),
         {"Content-Type": "multipart/form-data; boundary=other"}),
        ("boundary_200_chars", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)],
                                          b"B" * 200), {"Content-Type": "multipart/form-data; boundary=" + "B" * 200}),
        ("truncated", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)])[:-40], mp),
        ("only_closing", b"--" + b + b"--\r\n", mp),
        ("empty_body", b"", mp),
        ("garbage", os.urandom(4096), mp),
        ("part_without_disposition", _multipart([(b"Content-Type: text/plain", b"x"),
                                                 _field(b"purpose", b"fine-tune"),
                                                 _filepart(b"t.jsonl", good_file)]), mp),
        ("part_header_100KB", _multipart([_field(b"purpose", b"fine-tune"),
                                          (b'Content-Disposition: form-data; name="file"; filename="'
                                           + b"A" * 100_000 + b'"', good_file)]), mp),
        ("10000_fields", _multipart([_field(b"f%d" % i, b"x") for i in range(10_000)]
                                    + [_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)]), mp),
        ("multipart_mixed", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)]),
         {"Content-Type": "multipart/mixed; boundary=fuzzB0undary7"}),
        ("urlencoded", b"purpose=fine-tune&file=%ff", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("no_content_type", _multipart([_field(b"purpose", b"fine-tune"), _filepart(b"t.jsonl", good_file)]), {}),
        ("filename_star_surrogate", _multipart([_field(b"purpose", b"fine-tune"),
                                                (b"Content-Disposition: form-data; name=\"file\"; "
                                                 b"filename*=UTF-8''%ed%a0%80.jsonl", good_file)]), mp),
    ]
    for label, body, hdrs in structures:
        add(f"multipart={label}", body, hdrs)
    return cases


def whole_body_cases(route: str, method: str, path: str, baseline: dict, who: str, big: bool) -> list[Case]:
    base = json.dumps(baseline).encode()
    j = {"Content-Type": "application/json"}
    items = [("empty", b"", j), ("null", b"null", j), ("list", b"[]", j), ("number", b"0", j), ("string", b'"x"', j),
             ("truncated", base[:-1], j), ("trailing_comma", base[:-1] + b",}", j), ("NaN", b"NaN", j),
             ("bom", b"\xef\xbb\xbf" + base, j), ("utf16", json.dumps(baseline).encode("utf-16"), j),
             ("invalid_utf8", base[:-1] + b',"\xff":1}', j), ("duplicate_keys", base[:-1] + b',"model":"x"}', j),
             ("nested_list_100000", _nest_list(100_000), j), ("nested_object_100000", _nest_obj(100_000), j),
             ("text_plain", base, {"Content-Type": "text/plain"}), ("no_content_type", base, {}),
             ("form_urlencoded", base, {"Content-Type": "application/x-www-form-urlencoded"}),
             ("json_charset_utf16", base, {"Content-Type": "application/json; charset=utf-16"}),
             ("gzip_lie", base, {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
             ("multipart_no_boundary", base, {"Content-Type": "multipart/form-data"})]
    if big:
        items.append(("body_20MB", b'{"model":"' + b"A" * 20_000_000 + b'"}', j))
    return [Case("hostile", method, route, path, f"body={label}", who=who, content=body, headers=hdrs)
            for label, body, hdrs in items]


def header_cases(model: str, member_key: str) -> list[Case]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    j = {"Content-Type": "application/json"}
    items: list[tuple[str, dict]] = [
        ("no_auth", {}), ("bearer_only", {"Authorization": "Bearer"}), ("bearer_empty", {"Authorization": "Bearer "}),
        ("bearer_100KB", {"Authorization": "Bearer " + "x" * 100_000}),
        ("basic", {"Authorization": "Basic Zm9vOmJhcg=="}),
        ("lowercase_scheme", {"Authorization": f"bearer {member_key}"}),
        ("key_plus_junk", {"Authorization": f"Bearer {member_key} junk"}),
        ("latin1_key", {"Authorization": b"Bearer sk-\xe9\xff"}),
        ("utf8_surrogate_key", {"Authorization": b"Bearer \xed\xa0\x80"}),
        ("nul_in_key", {"Authorization": b"Bearer sk-\x00"}), ("del_in_key", {"Authorization": b"Bearer sk-\x7f"}),
        ("two_auth_headers", {"Authorization": f"Bearer {member_key}", "authorization": "Bearer other"}),
        ("api_key_100_times", {"Authorization": "Bearer " + member_key * 100}),
    ]
    cases = [Case("hostile", "POST", "/v1/chat/completions", "/v1/chat/completions", f"header {label}",
                  content=body, headers={**j, **h}, auth=False) for label, h in items]
    for label, h in [("x_request_id_100KB", {"X-Request-Id": "r" * 100_000}),
                     ("accept_garbage", {"Accept": "\u00e9/\u00e9"}),
                     ("openai_beta_crlf", {"OpenAI-Beta": b"x\r\nX-Injected: 1"})]:
        cases.append(Case("hostile", "POST", "/v1/chat/completions", "/v1/chat/completions", f"header {label}",
                          content=body, headers={**j, **h}))
    return cases


def build_hostile(spec: dict, ctx: dict) -> list[Case]:
    """All phase-1 cases, interleaved across routes so that a cut-off run still covers every route."""
    comps = spec.get("components", {}).get("schemas", {})
    m = ctx["model"]
    ft, evf, cid, victim, vkey, rkey = (ctx["ft_file"], ctx["evals_file"], ctx["completion_id"], ctx["victim"],
                                        ctx["victim_key"], ctx["rotate_key"])
    limits = {"rpm": 100000, "tpm": 100000000, "max_parallel": 1000, "budget_usd": "1000", "budget_period": "daily",
              "budget_alert_fraction": 0.9}
    body_routes: list[tuple[str, str, str, str, dict, tuple | None]] = [
        # (method, route template, concrete path, who, baseline, reset)
        ("POST", "/v1/chat/completions", "/v1/chat/completions", "member", {
            "model": m, "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "u"}],
            "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "n": 1, "stream": False, "stream_options": None,
            "stop": ["\n\n"], "presence_penalty": 0.1, "frequency_penalty": 0.1, "logit_bias": {"13": 1},
            "seed": 7, "user": "u1", "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": False,
            "logprobs": True, "top_logprobs": 2, "response_format": {"type": "text"}, "store": False,
            "metadata": {"k": "v"}}, None),
        ("POST", "/v1/chat/completions (stream)", "/v1/chat/completions", "member", {
            "model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True}}, None),
        ("POST", "/v1/chat/completions (json_schema)", "/v1/chat/completions", "member", {
            "model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "r", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                                                        "required": ["a"]}}}}, None),
        ("POST", "/v1/completions", "/v1/completions", "member", {
            "model": m, "prompt": "Once upon", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "n": 1,
            "stream": False, "stop": "\n", "presence_penalty": 0.1, "frequency_penalty": 0.1, "logit_bias": {"13": 1},
            "seed": 7, "user": "u1", "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": False,
            "logprobs": 2, "echo": False, "suffix": None, "best_of": 1}, None),
        ("POST", "/v1/completions (token prompt)", "/v1/completions", "member",
         {"model": m, "prompt": [[1, 2, 3]], "max_tokens": 2}, None),
        ("POST", "/v1/embeddings", "/v1/embeddings", "member",
         {"model": m, "input": ["hello", "world"], "encoding_format": "float", "dimensions": 8, "user": "u1"}, None),
        ("POST", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs", "member", {
            "model": m, "training_file": ft, "validation_file": ft, "suffix": "fz", "seed": 1, "metadata": {"k": "v"},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}}},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
            "eval": {"file_id": evf, "task": {"type": "loss", "system": "s"}, "max_rows": 2}}, None),
        ("POST", "/v1/evals", "/v1/evals", "member", {
            "model": m, "file_id": evf, "name": "e", "max_rows": 2, "metadata": {"k": "v"},
            "task": {"type": "classification", "labels": ["a", "b"], "prompt_template": "{text}",
                     "text_field": "text", "label_field": "label", "normalization": "sum", "system": "s"}}, None),
        ("POST", "/v1/evals (generation)", "/v1/evals", "member",
         {"model": [m], "file_id": evf, "task": {"type": "generation", "max_tokens": 4}}, None),
        ("POST", "/v1/feedback", "/v1/feedback", "member",
         {"completion_id": cid, "rating": 1, "correction": "better", "comment": "ok"}, None),
        ("POST", "/v1/chat/completions/{completion_id}", f"/v1/chat/completions/{cid}", "member",
         {"metadata": {"k": "v"}}, None),
        ("POST", "/v1/files (json source)", "/v1/files", "member", {
            "purpose": "fine-tune", "filename": "x.jsonl", "source": {
                "type": "stored_completions", "model": m, "created_after": 0, "created_before": 4102444800,
                "min_rating": -1, "include_corrected": True, "metadata": {"k": "v"}}}, None),
        ("POST", "/v1/admin/tenants", "/v1/admin/tenants", "admin",
         {"name": "t", "limits": limits, "metadata": {"k": "v"}, "store_retention_days": 30}, None),
        ("PATCH", "/v1/admin/tenants/{tenant_id}", f"/v1/admin/tenants/{victim}", "admin",
         {"name": "victim", "disabled": False, "limits": limits, "metadata": {"k": "v"}, "store_retention_days": 30},
         None),
        ("POST", "/v1/admin/tenants/{tenant_id}/keys", f"/v1/admin/tenants/{victim}/keys", "admin",
         {"name": "k", "role": "member", "models": [m], "expires_in_days": 1.5, "limits": limits}, None),
        ("POST", "/v1/admin/tenants/{tenant_id}/keys (expires_at)", f"/v1/admin/tenants/{victim}/keys", "admin",
         {"name": "k", "role": "reader", "expires_at": 4102444800}, None),
        ("PATCH", "/v1/admin/tenants/{tenant_id}/keys/{key_id}", f"/v1/admin/tenants/{victim}/keys/{vkey}", "admin",
         {"name": "k2", "role": "member", "models": [m], "limits": limits}, None),
        ("POST", "/v1/admin/tenants/{tenant_id}/keys/{key_id}/rotate",
         f"/v1/admin/tenants/{victim}/keys/{rkey}/rotate", "admin", {"grace_seconds": 60}, None),
        ("PUT", "/v1/admin/models/{model}", f"/v1/admin/models/{m}", "admin",
         {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": "0.2", "training_usd_per_mtok": 1},
         ("PUT", f"/v1/admin/models/{m}", {"input_usd_per_mtok": 0, "output_usd_per_mtok": 0,
                                           "training_usd_per_mtok": 0})),
    ]
    per_route: dict[str, list[Case]] = collections.defaultdict(list)
    spec_bodies = {}
    for path_t, ops in spec.get("paths", {}).items():
        for meth, op in ops.items():
            sch = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if sch:
                spec_bodies[(meth.upper(), path_t)] = sch
    hdr = {"Content-Type": "application/json"}
    for method, route, path, who, baseline, reset in body_routes:
        cases = per_route[route]
        paths = _leaf_paths(baseline)
        # top-level fields the spec knows and the baseline leaves out
        sch = spec_bodies.get((method, route.split(" (")[0]))
        extra: dict[str, set[str]] = {}
        if sch:
            resolved = sch
            if "$ref" in sch:
                resolved = comps.get(sch["$ref"].rsplit("/", 1)[-1], {})
            for name, ps in resolved.get("properties", {}).items():
                if name not in baseline:
                    extra[name] = _spec_types(ps, comps)
        for fpath, value in paths:
            types = {_json_type(value)}
            if len(fpath) == 1 and sch and "properties" in comps.get(sch.get("$ref", "").rsplit("/", 1)[-1], {}):
                types |= _spec_types(comps[sch["$ref"].rsplit("/", 1)[-1]]["properties"].get(fpath[0], {}), comps)
            for label, raw in values_for(types):
                content = _substitute(baseline, fpath, raw)
                cases.append(Case("hostile", method, route, path, f"{'.'.join(map(str, fpath))}={label}", who=who,
                                  content=content, headers=hdr, reset=reset))
        for name, types in extra.items():
            for label, raw in values_for(types):
                content = json.dumps(baseline).encode()[:-1] + b", " + json.dumps(name).encode() + b": " + raw + b"}"
                cases.append(Case("hostile", method, route, path, f"{name}(unset in baseline)={label}", who=who,
                                  content=content, headers=hdr, reset=reset))
        cases.append(Case("hostile", method, route, path, "unknown_field=1", who=who,
                          content=json.dumps({**baseline, "zz_unknown": 1}).encode(), headers=hdr, reset=reset))
        if " (" not in route:
            cases += whole_body_cases(route, method, path, baseline, who, big=route == "/v1/chat/completions")
    per_route["/v1/files (multipart)"] = file_cases(ctx["train_line"])
    per_route["headers"] = header_cases(m, ctx["member_key"])

    # query parameters of the GET routes, path parameters of every route
    ids = {"model_id": m, "model": m, "file_id": ft, "job_id": ctx["job_id"], "eval_id": ctx["eval_id"],
           "completion_id": cid, "tenant_id": victim, "key_id": vkey}
    for path_t, ops in spec.get("paths", {}).items():
        if path_t in ("/metrics",):
            continue
        for meth, op in ops.items():
            method = meth.upper()
            who = "admin" if path_t.startswith("/v1/admin") else "member"
            params = op.get("parameters", [])
            pnames = [p["name"] for p in params if p.get("in") == "path"]
            if method == "DELETE" and path_t in ("/v1/admin/tenants/{tenant_id}",
                                                 "/v1/admin/tenants/{tenant_id}/keys/{key_id}"):
                fixed = {**ids, "tenant_id": "org-does-not-exist", "key_id": "key-does-not-exist"}
            else:
                fixed = ids
            concrete = path_t
            for n in pnames:
                concrete = concrete.replace("{" + n + "}", fixed.get(n, "x"))
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            route = f"{path_t} [query]"
            if method == "GET":
                for p in params:
                    if p.get("in") != "query":
                        continue
                    for label, raw in Q_VALUES:
                        per_route[route].append(Case("hostile", method, path_t, f"{concrete}?{p['name']}={raw}",
                                                     f"?{p['name']}={label}", who=who))
                    per_route[route].append(Case("hostile", method, path_t, f"{concrete}?{p['name']}=1&{p['name']}=2",
                                                 f"?{p['name']} repeated", who=who))
                    per_route[route].append(Case("hostile", method, path_t, f"{concrete}?{p['name']}%5B%5D=1",
                                                 f"?{p['name']}[]", who=who))
                per_route[route].append(Case("hostile", method, path_t, f"{concrete}?%ff=%ff&&=&%00", "?junk keys",
                                             who=who))
            for n in pnames:
                for label, raw in P_VALUES:
                    concrete_h = path_t
                    for n2 in pnames:
                        concrete_h = concrete_h.replace("{" + n2 + "}", raw if n2 == n else fixed.get(n2, "x"))
                    per_route[f"{path_t} [path]"].append(
                        Case("hostile", method, path_t, concrete_h, f"{{{n}}}={label}", who=who, content=body,
                             headers=hdr if body else None))
    # round-robin across routes, and within a route across its fields (a case's field: its desc up to "=")
    return _interleave([_interleave(list(_by_field(v).values())) for v in per_route.values()])


def _by_field(cases: list[Case]) -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = collections.defaultdict(list)
    for c in cases:
        out[c.desc.split("=", 1)[0]].append(c)
    return out


def _interleave(lists: list[list[Case]]) -> list[Case]:
    queues = [collections.deque(v) for v in lists if v]
    out: list[Case] = []
    while queues:
        for q in list(queues):
            out.append(q.popleft())
            if not q:
                queues.remove(q)
    return out


def run_hostile(run: Run, cases: list[Case], deadline: float, start: int = 0) -> int:
    """Cases[start:] until the deadline; returns the index of the first case not run."""
    done = start
    run.groups["hostile"].skipped_out_of_time = 0
    for c in cases[start:]:
        if time.monotonic() >= deadline:
            run.groups["hostile"].skipped_out_of_time = len(cases) - done
            break
        run.send(c.group, c.method, c.route, c.path, c.desc, who=c.who, content=c.content, headers=c.headers,
                 auth=c.auth)
        if c.reset:
            with contextlib.suppress(httpx.HTTPError):
                run.client.request(c.reset[0], c.reset[1], json=c.reset[2], headers=run.auth("admin"))
        done += 1
    return done


# ------------------------------------------------------------------------------------------------- phase 2


CHECK_FAILED = (Exception, BaseExceptionGroup)  # schemathesis raises Failure or FailureGroup (an exception group)


def _make_case_runner(run: Run, g: Group, group: str, op: Any, mode: str, op_deadline: float, url: str,
                      session: Any, headers: dict):
    """The hypothesis test body for one (operation, data mode): send the case, classify, check conformance."""
    import requests
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    def one(case) -> None:
        if time.monotonic() >= op_deadline:
            return
        off = run.server.log_size()
        method = op.method.upper()
        desc = _short(f"{mode}: path={case.path_parameters} query={case.query} body={case.body!r}", 300)
        try:
            resp = case.call(base_url=url, session=session, headers=headers, timeout=run.timeout)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            run.record(group, method, op.path, op.path, desc, None, {}, b"",
                       f"{type(e).__name__}: {_short(str(e), 200)}", off)
            return
        except Exception:  # noqa: BLE001 - a request the client cannot build (invalid header, bad URL)
            g.unsendable += 1
            return
        hdrs = {k.lower(): (v[0] if isinstance(v, list) and v else v) for k, v in resp.headers.items()}
        try:  # schemathesis's check, counted as a cross-check of `classify` (the same rule bar Retry-After)
            case.validate_response(resp, checks=[not_a_server_error])
        except CHECK_FAILED:
            g.st_not_a_server_error += 1
        for check, counter in ((response_schema_conformance, run.conformance),
                               (status_code_conformance, run.undocumented)):
            try:  # counted, not failed: the spec does not document every status yet
                case.validate_response(resp, checks=[check])
            except CHECK_FAILED as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                counter[(method, op.path, resp.status_code, _short(first, 160))] += 1
                if check is response_schema_conformance:
                    g.schema_conformance_violations += 1
                else:
                    g.undocumented_status += 1
        run.record(group, method, op.path, resp.request.path_url, desc, resp.status_code, hdrs, resp.content, None,
                   off)

    return one


def run_schemathesis(run: Run, group: str, who: str, admin_routes: bool, max_examples: int, deadline: float,
                     seed: int) -> None:
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, settings
    from schemathesis import GenerationMode

    g = run.groups[group]
    schema = schemathesis.openapi.from_url(f"{run.server.url}/openapi.json")
    ops = []
    for res in schema.get_all_operations():
        try:
            op = res.ok()
        except Exception as e:  # noqa: BLE001 - an operation schemathesis cannot load is reported, not fatal
            g.generation_errors += 1
            print(f"  schemathesis could not load an operation: {_short(str(e), 200)}", file=sys.stderr)
            continue
        if op.path == "/metrics" or op.path.startswith("/v1/admin") != admin_routes:
            continue
        ops.append(op)
    session = requests.Session()
    headers = run.auth(who)
    url = run.server.url
    jobs = [(op, mode) for op in ops for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for i, (op, mode) in enumerate(jobs):
        if time.monotonic() >= deadline:
            g.skipped_out_of_time += len(jobs) - i
            break
        # an equal share of what is left for each remaining (operation, mode)
        op_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(jobs) - i)
        test = hypothesis.given(op.as_strategy(generation_mode=mode))(
            _make_case_runner(run, g, group, op, mode.value, op_deadline, url, session, headers))
        test = settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                        report_multiple_bugs=False, print_blob=False)(test)
        test = hypothesis.seed(seed + i)(test)
        try:
            test()
        except hypothesis.errors.Unsatisfiable:
            g.no_data_for_mode += 1  # e.g. no negative data exists for an operation whose inputs are all free strings
        except CHECK_FAILED as e:  # schemathesis serialization errors and the like
            g.generation_errors += 1
            print(f"  {op.method.upper()} {op.path} [{mode.value}]: {type(e).__name__}: {_short(str(e), 200)}",
                  file=sys.stderr)


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


def check_baselines(run: Run, cases: list[Case]) -> dict[str, int]:
    """Status of each body route's unfuzzed baseline (an 'unknown_field' case minus that field is not kept, so
    send the baseline itself): a fuzzed field only tests that field when the rest of the body is accepted."""
    out = {}
    for c in cases:
        if c.desc != "unknown_field=1":
            continue
        body = json.loads(c.content)
        body.pop("zz_unknown")
        try:
            r = run.client.request(c.method, c.path, json=body, headers=run.auth(c.who))
            out[f"{c.method} {c.route}"] = r.status_code
        except httpx.HTTPError as e:
            out[f"{c.method} {c.route}"] = f"{type(e).__name__}"
        if c.reset:
            run.client.request(c.reset[0], c.reset[1], json=c.reset[2], headers=run.auth("admin"))
    return out


# --------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["fake", "llamacpp"], default="fake")
    ap.add_argument("--time-budget", type=float, default=300,
                    help="seconds for both phases, server start-up and setup not counted (default 300)")
    ap.add_argument("--max-examples", type=int, default=25,
                    help="schemathesis examples per operation and data mode (default 25)")
    ap.add_argument("--hostile-share", type=float, default=0.55,
                    help="part of the budget phase 1 may take; phase 2 gets the rest (default 0.55)")
    ap.add_argument("--probe-every", type=int, default=50, help="a real chat completion every N cases (default 50)")
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads of the server (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (schemathesis phase)")
    ap.add_argument("--skip-hostile", action="store_true")
    ap.add_argument("--skip-schemathesis", action="store_true")
    ap.add_argument("--report", type=Path, help="write the JSON report here (and the server log next to it)")
    args = ap.parse_args()

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="llmaas-fuzz-"))
    server = Server(args.backend, workdir, args.threads)

    def on_term(signum, frame):  # SIGTERM: unwind through the finally below like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    run: Run | None = None
    interrupted = False
    report: dict[str, Any] = {}
    try:
        print(f"starting llmaas serve --backend {args.backend} (log {server.log_path}) ...", flush=True)
        server.start()
        ctx = setup(server)
        start = time.monotonic()
        deadline = start + args.time_budget
        run = Run(server, ctx["member_key"], ctx["admin_key"], ctx["model"], deadline, args.probe_every,
                  args.request_timeout)
        spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
        hostile_cases: list[Case] = []
        next_case = 0
        baselines: dict[str, Any] = dict(ctx["baseline_status"])
        if not args.skip_hostile:
            hostile_cases = build_hostile(spec, ctx)
            baselines.update(check_baselines(run, hostile_cases))
            print(f"phase 1: {len(hostile_cases)} hostile cases (model {ctx['model']})", flush=True)
            hostile_deadline = deadline if args.skip_schemathesis else start + args.time_budget * args.hostile_share
            next_case = run_hostile(run, hostile_cases, hostile_deadline)
            run.probe("hostile")
        if not args.skip_schemathesis:
            left = deadline - time.monotonic()
            print(f"phase 2: schemathesis, {left:.0f} s left", flush=True)
            run_schemathesis(run, "schemathesis_member", "member", False, args.max_examples,
                             time.monotonic() + left * 0.7, args.seed)
            run.probe("schemathesis_member")
            run_schemathesis(run, "schemathesis_admin", "admin", True, args.max_examples, deadline, args.seed + 10_000)
            run.probe("schemathesis_admin")
            if next_case < len(hostile_cases) and not run.out_of_time():  # schemathesis left time over
                print(f"phase 1 again from case {next_case}, {deadline - time.monotonic():.0f} s left", flush=True)
                run_hostile(run, hostile_cases, deadline, next_case)
                run.probe("hostile")
        report["baseline_status"] = baselines
        report["hostile_cases_planned"] = len(hostile_cases)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; stopping the server", file=sys.stderr)
    finally:
        server_alive_at_end = server.alive()
        server.stop()
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(server.log_path, args.report.with_suffix(".server.log"))
        shutil.rmtree(workdir, ignore_errors=True)
    if run is None:
        return 1
    wall = time.monotonic() - t0
    groups = {name: {"cases": g.cases, "statuses": dict(sorted(g.statuses.items())), "failures": g.failures,
                     "http_parser_rejections": g.http_parser_rejections, "unsendable": g.unsendable,
                     "schema_conformance_violations": g.schema_conformance_violations,
                     "undocumented_status": g.undocumented_status,
                     "schemathesis_not_a_server_error": g.st_not_a_server_error,
                     "generation_errors": g.generation_errors, "no_data_for_mode": g.no_data_for_mode,
                     "skipped_out_of_time": g.skipped_out_of_time}
              for name, g in run.groups.items()}
    statuses: collections.Counter = collections.Counter()
    for g in run.groups.values():
        statuses.update(g.statuses)
    distinct = sorted(run.distinct.values(), key=lambda d: -d["count"])
    report.update({
        "backend": args.backend, "model": run.model, "time_budget_s": args.time_budget,
        "max_examples": args.max_examples, "seed": args.seed, "interrupted": interrupted,
        "cases": sum(g.cases for g in run.groups.values()), "groups": groups,
        "statuses": dict(sorted(statuses.items())), "failures_total": run.failure_count,
        "distinct_failures": [{k: d[k] for k in ("count", "group", "method", "route", "status", "reason", "inputs",
                                                 "body", "exception", "where", "server_log")}
                              for d in distinct],
        "failures": run.failures, "chat_probes_ok": run.probes_ok, "chat_probes_failed": run.probes_failed,
        "health_checks_failed": run.health_failed, "server_restarts": server.restarts,
        "server_alive_at_end": server_alive_at_end,
        "http_parser_rejections": sum(g.http_parser_rejections for g in run.groups.values()),
        "schema_conformance": [{"method": k[0], "path": k[1], "status": k[2], "message": k[3], "count": n}
                               for k, n in run.conformance.most_common()],
        "undocumented_statuses": [{"method": k[0], "path": k[1], "status": k[2], "count": n}
                                  for k, n in run.undocumented.most_common()],
        "wall_time_s": round(wall, 1),
    })
    print_summary(report)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"report: {args.report}  (server log: {args.report.with_suffix('.server.log')})")
    return 1 if run.failure_count or interrupted else 0


def print_summary(r: dict) -> None:
    print()
    print(f"{'group':<22}{'cases':>7}{'2xx':>7}{'4xx':>7}{'5xx':>6}{'fail':>6}{'parser':>8}{'unsend':>8}"
          f"{'schema!':>9}{'skipped':>9}")
    for name, g in r["groups"].items():
        st = g["statuses"]
        n2 = sum(v for k, v in st.items() if k.startswith("2"))
        n4 = sum(v for k, v in st.items() if k.startswith("4"))
        n5 = sum(v for k, v in st.items() if k.startswith("5"))
        print(f"{name:<22}{g['cases']:>7}{n2:>7}{n4:>7}{n5:>6}{g['failures']:>6}{g['http_parser_rejections']:>8}"
              f"{g['unsendable']:>8}{g['schema_conformance_violations']:>9}{g['skipped_out_of_time']:>9}")
    print(f"statuses: {r['statuses']}")
    print(f"chat probes ok/failed: {r['chat_probes_ok']}/{r['chat_probes_failed']}   health failures: "
          f"{r['health_checks_failed']}   server restarts: {r['server_restarts']}   wall: {r['wall_time_s']} s")
    print(f"failures: {r['failures_total']} ({len(r['distinct_failures'])} distinct)")
    for d in r["distinct_failures"][:40]:
        print(f"  x{d['count']:<4} {d['method']} {d['route']} -> {d['status']} {d['reason']}; "
              f"e.g. {_short(d['inputs'][0] if d['inputs'] else '', 100)}"
              + (f"\n         {d['exception'][:150]}" if d["exception"] else "")
              + (f"\n         at {d['where']}" if d["where"] else ""))


if __name__ == "__main__":
    sys.exit(main())
