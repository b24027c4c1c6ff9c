"""Phase 2: schemathesis (its Python API, 4.x) in three parts; every case is sent, classified (`server.classify`:
no 5xx, every error in the OpenAI envelope) and checked.

* operations: every operation of /openapi.json, positive and negative data: the tenant routes with a member key,
  /v1/admin with an admin key. A response outside the schema the spec documents for its status, or a status the
  operation does not document, is a failure.
* console: /console is kept out of /openapi.json (HTML pages and forms, not API), so its spec is built here from
  the console's own routers, and its cases are sent signed in (session cookie) with the session's CSRF token (the
  `csrf` form field and the X-CSRF-Token header) on positive cases. A page answers HTML, and a refused form is its
  page again with the error's status, so the checks there are: no 5xx, a JSON error in the envelope. Sign-in and
  sign-out are left out: random keys at the sign-in form trip the per-client bad-key throttle (then every key of
  this client gets 429 for a minute), and signing out ends the session the rest runs in.
* stateful: schemathesis's state machine over the operations the spec links (POST /v1/files -> fine-tuning job ->
  cancel / events; -> eval -> cancel / items; -> batch -> cancel; -> the file's get, content, delete), checked as
  above. On most positive cases a root upload becomes a valid file of its purpose and a linked create gets the
  served model: random bytes are never a valid training file, so otherwise no chain gets past its first step.
"""

from __future__ import annotations

import collections
import copy
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .server import REPO, Group, Run, short

CHECK_FAILED = (Exception, BaseExceptionGroup)  # schemathesis raises Failure or FailureGroup (an exception group)
STATEFUL_PATHS = r"^/v1/(files|fine_tuning/jobs|evals|batches)"
CONSOLE_LEFT_OUT = {"POST /console/login": "random keys trip the per-client bad-key throttle",
                    "POST /console/logout": "ends the session the other console cases run in"}
PATCH_SHARE = 0.8  # positive stateful cases whose upload / linked create is made valid


class _Enough(Exception):
    """Stops hypothesis for one (operation, mode) once its share of the time is spent (after its first case)."""


class _Stop(Exception):
    """Ends the stateful run: out of time, or the server did not answer."""


@dataclass
class Coverage:
    """What phase 2 reached, for the report: operations per spec and cases sent to each, the stateful chains."""

    spec_operations: list[str] = field(default_factory=list)  # "METHOD /path" of /openapi.json
    sent: collections.Counter = field(default_factory=collections.Counter)  # cases sent per operation
    console_operations: list[str] = field(default_factory=list)
    console_sent: collections.Counter = field(default_factory=collections.Counter)
    console_relogins: int = 0
    stateful: dict[str, Any] = field(default_factory=lambda: {
        "scenarios": 0, "steps": 0, "linked_steps": 0, "linked_steps_2xx": 0, "chains": collections.Counter(),
        "runs_cut_short": 0})
    # 400s whose envelope names no field (param null), per "METHOD /path code: message"
    param_missing: collections.Counter = field(default_factory=collections.Counter)
    # 4xx envelopes naming a field the operation does not have
    param_unknown: collections.Counter = field(default_factory=collections.Counter)

    def report(self) -> dict[str, Any]:
        st = dict(self.stateful)
        st["chains"] = [{"chain": k, "count": n} for k, n in st["chains"].most_common()]
        return {"operations_in_spec": len(self.spec_operations),
                "operations_fuzzed": sum(1 for op in self.spec_operations if self.sent[op]),
                "operations_not_fuzzed": [op for op in self.spec_operations if not self.sent[op]],
                "cases_per_operation": dict(sorted(self.sent.items())),
                "console_operations": len(self.console_operations),
                "console_operations_fuzzed": sum(1 for op in self.console_operations if self.console_sent[op]),
                "console_operations_not_fuzzed": [op for op in self.console_operations if not self.console_sent[op]],
                "console_left_out": CONSOLE_LEFT_OUT, "console_relogins": self.console_relogins,
                "stateful": st,
                "errors_without_param": [{"where": k, "count": n} for k, n in self.param_missing.most_common()],
                "errors_naming_unknown_field": [{"where": k, "count": n}
                                                for k, n in self.param_unknown.most_common()]}


# ------------------------------------------------------------------------------------------ one case, checked


def _headers(resp: Any) -> dict[str, str]:
    return {k.lower(): (v[0] if isinstance(v, list) and v else v) for k, v in resp.headers.items()}


def _failure_text(e: BaseException) -> str:
    """A schemathesis failure (or the first of a group) as "title: the message's first lines"."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    title, message = getattr(e, "title", ""), getattr(e, "message", None) or str(e)
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()][:3]
    return f"{title}: {' '.join(lines)}" if title else " ".join(lines) or type(e).__name__


def send_case(run: Run, cov: Coverage, group: str, case: Any, mode: str, *, api: bool, headers: dict,
              cookies: dict | None = None) -> Any:
    """Send one schemathesis case, record it, run the checks; returns the response (None: none came)."""
    import requests
    from schemathesis.checks import not_a_server_error

    g = run.groups[group]
    op = case.operation
    method, label = op.method.upper(), f"{op.method.upper()} {op.path}"
    off = run.server.log_size()
    desc = short(f"{mode}: path={case.path_parameters} query={case.query} body={case.body!r}", 300)
    try:
        resp = case.call(base_url=run.server.url, headers=headers, cookies=cookies, timeout=run.timeout,
                         allow_redirects=False)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
        run.record(group, method, op.path, op.path, desc, None, {}, b"", f"{type(e).__name__}: {short(str(e), 200)}",
                   off)
        return None
    except Exception:  # noqa: BLE001 - a request the client cannot build (invalid header, bad URL)
        g.unsendable += 1
        return None
    (cov.sent if api else cov.console_sent)[label] += 1
    hdrs = _headers(resp)
    try:  # schemathesis's own 5xx check, counted as a cross-check of `classify` (the same rule bar Retry-After)
        case.validate_response(resp, checks=[not_a_server_error])
    except CHECK_FAILED:
        g.st_not_a_server_error += 1
    violations = _conformance(run, g, case, resp) if api else []
    if api and 400 <= resp.status_code < 500:
        _param_named(cov, case, label, resp.status_code, resp.content)
    ctype = hdrs.get("content-type", "")
    if not api and 400 <= resp.status_code < 500 and ctype.startswith("text/html"):
        # a console form refused: its page again, with the error (the JSON errors still go through `classify`)
        g.cases += 1
        g.statuses[str(resp.status_code)] += 1
        run.after_case(group)
    else:
        run.record(group, method, op.path, resp.request.path_url, desc, resp.status_code, hdrs, resp.content, None,
                   off)
    for reason in violations:
        g.failures += 1
        run.fail(group, method, op.path, resp.request.path_url, desc, resp.status_code, resp.content, reason, off)
    return resp


def _conformance(run: Run, g: Group, case: Any, resp: Any) -> list[str]:
    """The response against the spec: its schema for the status, and the status documented at all."""
    from schemathesis.checks import response_schema_conformance, status_code_conformance

    out = []
    method, path = case.operation.method.upper(), case.operation.path
    for check, counter in ((response_schema_conformance, run.conformance), (status_code_conformance, run.undocumented)):
        try:
            case.validate_response(resp, checks=[check])
        except CHECK_FAILED as e:
            first = short(_failure_text(e), 240)
            counter[(method, path, resp.status_code, first)] += 1
            if check is response_schema_conformance:
                g.schema_conformance_violations += 1
                out.append(f"response violates the documented schema: {first}")
            else:
                g.undocumented_status += 1
                out.append(f"status {resp.status_code} is not documented: {first}")
    return out


def _param_named(cov: Coverage, case: Any, label: str, status: int, body: bytes) -> None:
    """Which field a 4xx envelope names: none for a 400 (counted), or one the operation does not have (counted)."""
    import json

    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return  # `classify` fails it
    if not isinstance(err, dict):
        return
    param = err.get("param")
    if param is None:
        if status == 400:
            cov.param_missing[f"{label} {err.get('code')}: {short(str(err.get('message')), 90)}"] += 1
        return
    sent = {*(case.body if isinstance(case.body, dict) else {}), *(case.query or {})}  # a negative case's extras
    param = str(param)
    if not re.match(r"[A-Za-z_]\w*([.\[]|$)", param, re.ASCII):
        return  # a generated junk key, named as sent (or nested where this cannot tell)
    if not any(param == k or param.startswith((f"{k}.", f"{k}[")) for k in {*_fields(case.operation), *sent}):
        cov.param_unknown[f"{label} {status} param={short(param, 40)} (code {err.get('code')})"] += 1


def _fields(op: Any) -> set[str]:
    """The names a request of `op` can carry: its parameters and the top-level properties of its bodies."""
    names = {p.name for p in op.iter_parameters()}
    components = op.schema.raw_schema.get("components", {}).get("schemas", {})
    for body in op.body:
        schema = getattr(body, "resolved_schema", None) or {}
        for alt in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
            if isinstance(alt, dict) and str(alt.get("$ref", "")).startswith("#/components/schemas/"):
                alt = components.get(alt["$ref"].rsplit("/", 1)[1], {})
            if isinstance(alt, dict):
                names.update(alt.get("properties", {}))
    return names


# ------------------------------------------------------------------------------------- per-operation runs


def _operations(schema: Any, g: Group) -> list[Any]:
    ops = []
    for res in schema.get_all_operations():
        try:
            ops.append(res.ok())
        except Exception as e:  # noqa: BLE001 - an operation schemathesis cannot load is reported, not fatal
            g.generation_errors += 1
            print(f"  schemathesis could not load an operation: {short(str(e), 200)}", file=sys.stderr)
    return ops


def _fuzz_operations(run: Run, cov: Coverage, group: str, ops: list[Any], max_examples: int, deadline: float,
                     seed: int, *, api: bool, headers: dict, cookies: dict | None = None,
                     prepare: Any = None, after: Any = None) -> None:
    """Each operation with positive data, then each with negative data, an equal share of the time left each and at
    least one case each: a budget too short for all (the real model's slow completions) still reaches every
    operation once before any gets a second mode."""
    import hypothesis
    import hypothesis.errors
    from hypothesis import HealthCheck, Phase, Verbosity, settings
    from schemathesis import GenerationMode

    g = run.groups[group]
    jobs = [(op, mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) for op in ops]
    for i, (op, mode) in enumerate(jobs):
        if time.monotonic() >= deadline:
            g.skipped_out_of_time += len(jobs) - i
            break
        op_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(jobs) - i)

        def case_runner(mode: Any, op_deadline: float) -> Any:
            sent = 0

            def one(case: Any) -> None:
                nonlocal sent
                if sent and time.monotonic() >= op_deadline:
                    raise _Enough
                if prepare is not None:
                    prepare(case, mode)
                sent += 1
                resp = send_case(run, cov, group, case, mode.value, api=api, headers=headers, cookies=cookies)
                if after is not None and resp is not None:
                    after(resp)

            return one

        test = hypothesis.given(op.as_strategy(generation_mode=mode))(case_runner(mode, op_deadline))
        test = settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                        report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet)(test)
        test = hypothesis.seed(seed + i)(test)
        try:
            test()
        except _Enough:
            pass
        except hypothesis.errors.Unsatisfiable:
            g.no_data_for_mode += 1  # e.g. no negative data exists for an operation whose inputs are all free strings
        except CHECK_FAILED as e:  # schemathesis serialization errors and the like
            g.generation_errors += 1
            print(f"  {op.method.upper()} {op.path} [{mode.value}]: {type(e).__name__}: {short(str(e), 200)}",
                  file=sys.stderr)


def spec_operations(spec: dict) -> list[str]:
    return [f"{m.upper()} {p}" for p, item in spec.get("paths", {}).items() for m in item
            if m in ("get", "put", "post", "delete", "patch", "head", "options", "trace")]


def run_schemathesis(run: Run, cov: Coverage, group: str, who: str, admin_routes: bool, max_examples: int,
                     deadline: float, seed: int) -> None:
    """The operations of /openapi.json under /v1/admin (admin_routes) or all the others, with `who`'s key."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{run.server.url}/openapi.json")
    ops = [op for op in _operations(schema, run.groups[group]) if op.path.startswith("/v1/admin") == admin_routes]
    _fuzz_operations(run, cov, group, ops, max_examples, deadline, seed, api=True, headers=run.auth(who))


# ------------------------------------------------------------------------------------------------ console


def console_spec() -> dict:
    """An OpenAPI spec of the console's routes, built from its routers (they are left out of /openapi.json)."""
    from fastapi.openapi.utils import get_openapi

    if str(REPO / "src") not in sys.path:  # the server's code, as the server runs it
        sys.path.insert(0, str(REPO / "src"))
    from llmaas.console import account, admin, batches, evals, feedback, work
    from llmaas.console import routes as pages

    routes = []
    for router in (pages.router, work.router, evals.router, feedback.router, batches.router, account.router,
                   admin.router):  # console.app.mount's order
        for route in router.routes:
            shown = copy.copy(route)
            shown.include_in_schema = True
            routes.append(shown)
    return get_openapi(title="llmaas console", version="fuzz", routes=routes)


@dataclass
class ConsoleSession:
    cookie: str
    csrf: str


def console_sign_in(run: Run, key: str) -> ConsoleSession:
    """Sign in as a browser does: the sign-in form's CSRF cookie and token, the key, then a page's session token."""
    c = run.client
    page = c.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    if page.status_code != 200 or token is None:
        raise RuntimeError(f"console sign-in page: {page.status_code} {page.text[:300]}")
    r = c.post("/console/login", data={"api_key": key, "csrf": token.group(1)},
               cookies={"llmaas_login_csrf": page.cookies.get("llmaas_login_csrf", "")})
    session = r.cookies.get("llmaas_session")
    if r.status_code != 303 or not session:
        raise RuntimeError(f"console sign-in: {r.status_code} {r.text[:300]}")
    page = c.get("/console/files", cookies={"llmaas_session": session})
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    if csrf is None:
        raise RuntimeError(f"console page without a CSRF token: {page.status_code} {page.text[:300]}")
    c.cookies.clear()
    return ConsoleSession(session, csrf.group(1))


def run_console(run: Run, cov: Coverage, group: str, key: str, max_examples: int, deadline: float,
                seed: int) -> None:
    """The console's routes (signed in with `key`), positive and negative data; see the module docstring."""
    import schemathesis
    from schemathesis import GenerationMode

    spec = console_spec()
    cov.console_operations = [op for op in spec_operations(spec) if op not in CONSOLE_LEFT_OUT]
    schema = schemathesis.openapi.from_dict(spec)
    ops = [op for op in _operations(schema, run.groups[group])
           if f"{op.method.upper()} {op.path}" not in CONSOLE_LEFT_OUT]
    sess = console_sign_in(run, key)
    cookies = {"llmaas_session": sess.cookie}
    headers = {"X-CSRF-Token": sess.csrf}

    def prepare(case: Any, mode: Any) -> None:
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "csrf" in case.body:
            case.body["csrf"] = headers["X-CSRF-Token"]

    def after(resp: Any) -> None:
        # Sent to the sign-in page: the session ended (a case revoked its key, say); sign in again.
        if resp.status_code == 401 or _headers(resp).get("location", "").startswith("/console/login"):
            cov.console_relogins += 1
            new = console_sign_in(run, key)
            cookies["llmaas_session"], headers["X-CSRF-Token"] = new.cookie, new.csrf

    _fuzz_operations(run, cov, group, ops, max_examples, deadline, seed, api=False, headers=headers,
                     cookies=cookies, prepare=prepare, after=after)


# ------------------------------------------------------------------------------------------------ stateful


def _valid_upload(ctx: dict, purpose: str) -> bytes:
    import json

    if purpose == "evals":
        return b"".join((json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n").encode() for i in range(4))
    if purpose == "batch":
        return b"".join((json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": ctx["model"], "max_tokens": 2,
                                              "messages": [{"role": "user", "content": f"hi {i}"}]}}) + "\n").encode()
                        for i in range(2))
    return ctx["train_line"] * 8


def run_stateful(run: Run, cov: Coverage, group: str, ctx: dict, deadline: float, seed: int,
                 steps: int = 6) -> None:
    """schemathesis's state machine over the linked operations (STATEFUL_PATHS), member key, until `deadline`."""
    import hypothesis
    import hypothesis.errors
    import schemathesis
    from hypothesis import HealthCheck, Phase, Verbosity, settings
    from schemathesis import GenerationMode
    from schemathesis.generation.stateful.state_machine import StepInput, StepOutput

    schema = schemathesis.openapi.from_url(f"{run.server.url}/openapi.json").include(path_regex=STATEFUL_PATHS)
    base = schema.as_state_machine()
    rnd = random.Random(seed)
    st = cov.stateful
    headers = run.auth("member")
    purposes = ("fine-tune", "evals", "batch")

    class Machine(base):  # type: ignore[valid-type, misc]
        def setup(self) -> None:
            st["scenarios"] += 1
            self.chains: dict[str, list[str]] = {}  # case id -> "METHOD /path status" of each step up to it

        def before_call(self, case: Any) -> None:
            linked = self._linked
            if case.meta is not None and case.meta.generation.mode != GenerationMode.POSITIVE:
                return
            if rnd.random() >= PATCH_SHARE:
                return
            label = f"{case.operation.method.upper()} {case.operation.path}"
            body = case.body if isinstance(case.body, dict) else None
            if label == "POST /v1/files" and not linked and case.media_type == "multipart/form-data":
                purpose = body.get("purpose") if body and body.get("purpose") in purposes else rnd.choice(purposes)
                case.body = {"file": _valid_upload(ctx, purpose), "purpose": purpose}
            elif linked and body is not None and label == "POST /v1/fine_tuning/jobs":
                case.body = ({"model": ctx["model"], "training_file": body.get("training_file")}
                             if rnd.random() < 0.5 else {**body, "model": ctx["model"]})
            elif linked and body is not None and label == "POST /v1/evals":
                case.body = ({"model": ctx["model"], "file_id": body.get("file_id"),
                              "task": {"type": "classification", "labels": ["a", "b"]}}
                             if rnd.random() < 0.5 else {**body, "model": ctx["model"]})
            elif linked and body is not None and label == "POST /v1/batches":
                case.body = {**body, "endpoint": "/v1/chat/completions", "completion_window": "24h"}

        def step(self, input: StepInput) -> StepOutput:  # noqa: A002 - schemathesis's name
            if time.monotonic() >= deadline:
                raise _Stop
            case = input.case
            self._linked = input.transition is not None and input.is_applied
            self.before_call(case)
            mode = case.meta.generation.mode.value if case.meta is not None else "stateful"
            resp = send_case(run, cov, group, case, f"stateful {mode}", api=True, headers=headers)
            if resp is None:
                raise _Stop
            self.after_call(resp, case)  # the recorder: schemathesis's stateful checks look earlier steps up
            st["steps"] += 1
            step = f"{case.operation.method.upper()} {case.operation.path} {resp.status_code}"
            chain = [*self.chains.get(input.transition.parent_id, []), step] if self._linked else [step]
            self.chains[case.id] = chain
            if self._linked:
                st["linked_steps"] += 1
                if all(s.rsplit(" ", 1)[1].startswith("2") for s in chain):
                    st["linked_steps_2xx"] += 1
                st["chains"][" -> ".join(chain)] += 1
            return StepOutput(resp, case)

    Machine._linked = False
    machine_settings = settings(max_examples=8, stateful_step_count=steps, deadline=None, database=None,
                                suppress_health_check=list(HealthCheck), phases=[Phase.generate],
                                report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet)
    while time.monotonic() < deadline:
        try:
            Machine.run(settings=machine_settings)
        except _Stop:
            break
        except (hypothesis.errors.Unsatisfiable, hypothesis.errors.InvalidDefinition) as e:
            st["runs_cut_short"] += 1
            print(f"  stateful: {type(e).__name__}: {short(str(e), 200)}", file=sys.stderr)
            break
        except CHECK_FAILED as e:
            # hypothesis's own complaints (e.g. FlakyStrategyDefinition: the bundles hold server responses, which
            # differ between a scenario and its replay): the run so far counts, and a new one starts
            st["runs_cut_short"] += 1
            print(f"  stateful: {type(e).__name__}: {short(str(e), 300)}", file=sys.stderr)
