"""Phase 1: the hostile cases (each body field of each route's baseline, whole-body junk, multipart /v1/files,
headers, query and path parameters), interleaved across routes and fields, and the loop that sends them."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from dataclasses import dataclass

import httpx

from .server import Run
from .values import P_VALUES, Q_VALUES, json_type, leaf_paths, nest_list, nest_obj, spec_types, substitute, values_for


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
                ("nested_1000", nest_obj(1000) + b"\n"), ("nan", b'{"messages": NaN}\n'),
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
             ("nested_list_100000", nest_list(100_000), j), ("nested_object_100000", nest_obj(100_000), j),
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
        paths = leaf_paths(baseline)
        # top-level fields the spec knows and the baseline leaves out
        sch = spec_bodies.get((method, route.split(" (")[0]))
        extra: dict[str, set[str]] = {}
        if sch:
            resolved = sch
            if "$ref" in sch:
                resolved = comps.get(sch["$ref"].rsplit("/", 1)[-1], {})
            for name, ps in resolved.get("properties", {}).items():
                if name not in baseline:
                    extra[name] = spec_types(ps, comps)
        for fpath, value in paths:
            types = {json_type(value)}
            if len(fpath) == 1 and sch and "properties" in comps.get(sch.get("$ref", "").rsplit("/", 1)[-1], {}):
                types |= spec_types(comps[sch["$ref"].rsplit("/", 1)[-1]]["properties"].get(fpath[0], {}), comps)
            for label, raw in values_for(types):
                content = substitute(baseline, fpath, raw)
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
