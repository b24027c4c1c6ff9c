"""Who may call what: every route of the app — the /v1 API, /v1/admin, /health, /ready, /metrics and the web
console — called by every kind of caller, against the explicit table ROUTES below.

What it guarantees:
- every APIRoute of the app (console mounted) has a row in ROUTES and every row names a route the app has, so a
  route cannot be added, or a row left behind, without deciding who may call it;
- for each route x caller the outcome class is the table's: OK (the call got through: 2xx, or a redirect that is
  not to the sign-in page), UNAUTH (401; a console page redirects to /console/login), FORBIDDEN (403), HIDDEN
  (404: an object of another tenant answers exactly like an id that does not exist, never 403 or 200) and MISSING
  (400: another tenant's id in a request body reads as a file that does not exist);
- a HIDDEN answer is the same as the answer for a made-up id, and an answer to another tenant's owner that got
  through never contains an id of the first tenant's objects.

Callers: no credentials, a bad key (a forged session cookie for the console), a tenant's reader, member and owner
keys, another tenant's owner key and the platform admin key. Objects named by id (a file, a fine-tuning job, an
eval, a batch, a stored completion, a response, a key, the tenant) belong to the first tenant; console routes are
called through a session signed in with the same keys. One app serves the whole module; a case expected to delete,
cancel, rotate, revoke, disable or unload something gets its own fresh object, so no case depends on another's order.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.unit.conftest import ADMIN_KEY, TRAIN, bearer, make_client

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI lists every route, included ones too, flat in app.routes
    def iter_route_contexts(routes: Any) -> Any:
        return iter(routes)

# --- callers and outcome classes ---

NONE, BAD, READER, MEMBER, OWNER, OTHER, ADMIN = "none", "bad-key", "reader", "member", "owner", "other-owner", "admin"
ROLES = (NONE, BAD, READER, MEMBER, OWNER, OTHER, ADMIN)
OK, UNAUTH, FORBIDDEN, HIDDEN, MISSING = "ok", "unauthenticated", "forbidden", "hidden", "missing"

BAD_KEY = "sk-wrong-0000000000000000000000000000000000"
METRICS_KEY = "metrics-scraper-secret-0123456789"
SESSION = "llmaas_session"
FORGED_SESSION = "forged-session-token-that-no-one-was-given"


def allow(reader: str, member: str, owner: str, other: str, admin: str, *, anon: str = UNAUTH) -> dict[str, str]:
    """A table row: the outcome for each caller (no key and a bad key share `anon`)."""
    return {NONE: anon, BAD: anon, READER: reader, MEMBER: member, OWNER: owner, OTHER: other, ADMIN: admin}


PUBLIC = allow(OK, OK, OK, OK, OK, anon=OK)
ANY_KEY = allow(OK, OK, OK, OK, OK)  # any valid key; it names no object, or a shared one (a base model)
READ = allow(OK, OK, OK, HIDDEN, OK)  # reads of a tenant's object; the admin sees every tenant's
SPEND = allow(FORBIDDEN, OK, OK, OK, OK)  # inference and anything that creates or costs: members and owners
CHANGE = allow(FORBIDDEN, OK, OK, HIDDEN, OK)  # change or delete a tenant's object
# Jobs run in the caller's own tenant, so the file a create names must be the caller's: the first tenant's file
# reads as missing (400 naming the field) to another tenant and to the admin alike.
CREATE_FROM = allow(FORBIDDEN, OK, OK, MISSING, MISSING)
# Stored completions and responses hold a tenant's prompts: they are scoped to the calling key's tenant, the
# platform admin's included (ResponseStore._get and StoredCompletionService._get compare tenant ids).
STORED_READ = allow(OK, OK, OK, HIDDEN, HIDDEN)
STORED_CHANGE = allow(FORBIDDEN, OK, OK, HIDDEN, HIDDEN)
OWNERS = allow(FORBIDDEN, FORBIDDEN, OK, OK, OK)  # the audit trail, the console's Keys page
OWNERS_OF = allow(FORBIDDEN, FORBIDDEN, OK, HIDDEN, OK)  # a tenant's keys
# The console's Keys page acts on the signed-in key's own tenant: for the admin that is the platform tenant, so
# the first tenant's key reads as missing there as it does to another tenant.
CONSOLE_OWNERS_OF = allow(FORBIDDEN, FORBIDDEN, OK, HIDDEN, HIDDEN)
ADMINS = allow(FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK)
ADMINS_OF = allow(FORBIDDEN, FORBIDDEN, FORBIDDEN, HIDDEN, OK)  # change a tenant: another tenant's reads as missing
# With LLMAAS_METRICS_KEY set (as here) /metrics takes that key or an admin key; any other bearer gets 401.
METRICS = allow(UNAUTH, UNAUTH, UNAUTH, UNAUTH, OK)


# --- the objects the cases name ---

EVAL_ROWS = b'{"text": "great", "label": "pos"}\n{"text": "awful", "label": "neg"}\n'
BATCH_ROWS = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 2}}).encode() + b"\n"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Which kind of object a path parameter names (a route may say otherwise in Route.params).
PARAM_KINDS = {"tenant_id": "tenant", "key_id": "key", "file_id": "file", "job_id": "job",
               "fine_tuning_job_id": "job", "eval_id": "eval", "batch_id": "batch", "completion_id": "completion",
               "response_id": "response", "model": "model"}


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


@dataclass
class World:
    """One app with two tenants: `ids` holds the first tenant's shared objects by kind, `keys` each caller's key
    and `sessions` each caller's console session (cookie token, CSRF token)."""

    c: TestClient
    keys: dict[str, str | None]
    tenant: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    first_tenant_ids: set[str] = field(default_factory=set)  # none may appear in another tenant's answers
    sessions: dict[str, tuple[str, str]] = field(default_factory=dict)
    seq: Iterator[int] = field(default_factory=itertools.count)

    def as_(self, role: str) -> dict[str, str]:
        key = self.keys[role]
        return bearer(key) if key else {}

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.seq)}"

    def upload(self, data: bytes, purpose: str, role: str = MEMBER) -> str:
        return _ok(self.c.post("/v1/files", headers=self.as_(role), files={"file": ("d.jsonl", data)},
                               data={"purpose": purpose}))["id"]

    def make(self, kind: str) -> str:
        """A new object of `kind` in the first tenant (a tenant, or a catalog model, for those kinds)."""
        c, admin, member = self.c, self.as_(ADMIN), self.as_(MEMBER)
        if kind == "tenant":
            new = _ok(c.post("/v1/admin/tenants", headers=admin, json={"name": self.unique("spare")}))["id"]
        elif kind == "key":
            new = _ok(c.post(f"/v1/admin/tenants/{self.tenant}/keys", headers=admin, json={"role": "reader"}))["id"]
        elif kind == "model":
            new = _ok(c.post("/v1/admin/models", headers=admin,
                             json={"id": self.unique("spare-model"), "package": "smollm2", "load": False}))["id"]
        elif kind == "file":
            new = self.upload(TRAIN, "fine-tune")
        elif kind == "job":
            new = _ok(c.post("/v1/fine_tuning/jobs", headers=member,
                             json={"model": "fake-model", "training_file": self.ids["file"]}))["id"]
        elif kind == "eval":
            new = _ok(c.post("/v1/evals", headers=member, json={
                "model": "fake-model", "file_id": self.ids["evals_file"],
                "task": {"type": "classification", "labels": ["pos", "neg"]}}))["id"]
        elif kind == "batch":
            new = _ok(c.post("/v1/batches", headers=member, json={
                "input_file_id": self.ids["batch_file"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}))["id"]
        elif kind == "completion":
            new = _ok(c.post("/v1/chat/completions", headers=member, json={**CHAT, "store": True}))["id"]
        elif kind == "response":
            new = _ok(c.post("/v1/responses", headers=member,
                             json={"model": "fake-model", "input": "hi", "max_output_tokens": 2}))["id"]
        else:
            raise AssertionError(f"no maker for {kind}")
        if kind not in ("tenant", "model"):
            self.first_tenant_ids.add(new)
        return new

    def sign_in(self, role: str) -> tuple[str, str]:
        """Signs in on the console's form with the caller's key: (session cookie token, CSRF token)."""
        self.c.cookies.clear()
        csrf = re.search(r'name="csrf" value="([^"]+)"', self.c.get("/console/login").text).group(1)
        r = self.c.post("/console/login", data={"api_key": self.keys[role], "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303, r.text
        token = r.cookies[SESSION]
        self.c.cookies.clear()
        page = self.c.get("/console/playground", headers={"Cookie": f"{SESSION}={token}"})
        self.c.cookies.clear()
        return token, re.search(r'data-csrf="([^"]+)"', page.text).group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = {"metrics_key": METRICS_KEY,
                "auth_failures_per_minute": 1_000_000,  # the bad-key callers would otherwise be throttled (429)
                "batch_poll_s": 3600.0}  # batches stay cancellable: the runner does not pick them up
    data_dir: Path = tmp_path_factory.mktemp("route-roles")
    with make_client(console=True, data_dir=data_dir, settings=settings) as c:
        c.headers.pop("Authorization")  # every case says who it is
        w = World(c, {NONE: None, BAD: BAD_KEY, ADMIN: ADMIN_KEY})
        admin = w.as_(ADMIN)
        w.tenant = _ok(c.post("/v1/admin/tenants", headers=admin, json={"name": "first"}))["id"]
        other = _ok(c.post("/v1/admin/tenants", headers=admin, json={"name": "second"}))["id"]
        for role, tenant, grant in ((READER, w.tenant, "reader"), (MEMBER, w.tenant, "member"),
                                    (OWNER, w.tenant, "owner"), (OTHER, other, "owner")):
            w.keys[role] = _ok(c.post(f"/v1/admin/tenants/{tenant}/keys", headers=admin, json={"role": grant}))["key"]
        w.first_tenant_ids.add(w.tenant)
        w.ids["tenant"] = w.tenant
        w.ids["loaded"] = "fake-model"
        w.ids["batch_file"] = w.upload(BATCH_ROWS, "batch")
        w.ids["evals_file"] = w.upload(EVAL_ROWS, "evals")
        w.first_tenant_ids |= {w.ids["batch_file"], w.ids["evals_file"]}
        for kind in ("key", "model", "file", "job", "eval", "batch", "completion", "response"):
            w.ids[kind] = w.make(kind)
        # A rated stored completion in each caller's tenant, for the console's feedback export.
        _ok(c.post("/v1/feedback", headers=w.as_(MEMBER), json={"completion_id": w.ids["completion"], "rating": 1}))
        for role in (OTHER, ADMIN):
            done = _ok(c.post("/v1/chat/completions", headers=w.as_(role), json={**CHAT, "store": True}))
            _ok(c.post("/v1/feedback", headers=w.as_(role), json={"completion_id": done["id"], "rating": 1}))
        for role in (READER, MEMBER, OWNER, OTHER, ADMIN):
            w.sessions[role] = w.sign_in(role)
        yield w


# --- the table ---

Send = Callable[[World], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    expect: dict[str, str]
    send: Send | None = None  # the request's json / data / files / params, beyond the path
    destroys: bool = False  # a case expected to get through acts on a fresh object (or session) of its own
    params: dict[str, str] = field(default_factory=dict)  # path parameter -> object kind, beyond PARAM_KINDS
    also_ok: tuple[int, ...] = ()  # statuses that also mean "got through" (a refusal that is not about the caller)
    bugs: dict[str, str] = field(default_factory=dict)  # caller -> known authorization bug (strict xfail)


def _json(body: dict[str, Any]) -> Send:
    return lambda w: {"json": body}


def _upload(data: bytes, **form: str) -> Send:
    return lambda w: {"files": {"file": ("d.jsonl", data)}, "data": form}


ROUTES: dict[str, Route] = {
    # -- open and operator routes --
    "GET /health": Route(PUBLIC),
    "GET /ready": Route(PUBLIC),
    "GET /metrics": Route(METRICS),
    # -- models and inference --
    "GET /v1/models": Route(ANY_KEY),
    "GET /v1/models/{model:path}": Route(ANY_KEY, params={"model": "loaded"}),
    "POST /v1/chat/completions": Route(SPEND, _json(CHAT)),
    "POST /v1/completions": Route(SPEND, _json({"model": "fake-model", "prompt": "hi", "max_tokens": 2})),
    "POST /v1/embeddings": Route(SPEND, _json({"model": "fake-model", "input": "hi"})),
    "POST /v1/responses": Route(SPEND, _json({"model": "fake-model", "input": "hi", "max_output_tokens": 2})),
    # Filters naming the first tenant's key or tenant are ignored for another tenant: it sees only its own.
    "GET /v1/usage": Route(ANY_KEY, lambda w: {"params": {"key_id": w.ids["key"], "group_by": "key"}}),
    # -- files --
    "POST /v1/files": Route(SPEND, _upload(TRAIN, purpose="fine-tune")),
    "GET /v1/files": Route(ANY_KEY),
    "GET /v1/files/{file_id}": Route(READ),
    "GET /v1/files/{file_id}/content": Route(READ),
    "DELETE /v1/files/{file_id}": Route(CHANGE, destroys=True),
    # -- batches --
    "POST /v1/batches": Route(CREATE_FROM, lambda w: {"json": {
        "input_file_id": w.ids["batch_file"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}}),
    "GET /v1/batches": Route(ANY_KEY),
    "GET /v1/batches/{batch_id}": Route(READ),
    "POST /v1/batches/{batch_id}/cancel": Route(CHANGE, destroys=True),
    # -- fine-tuning --
    "POST /v1/fine_tuning/jobs": Route(CREATE_FROM, lambda w: {"json": {
        "model": "fake-model", "training_file": w.ids["file"]}}),
    "GET /v1/fine_tuning/jobs": Route(ANY_KEY),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": Route(READ),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": Route(CHANGE, destroys=True),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": Route(READ),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": Route(READ),
    # -- evals --
    "POST /v1/evals": Route(CREATE_FROM, lambda w: {"json": {
        "model": "fake-model", "file_id": w.ids["evals_file"], "task": {"type": "classification"}}}),
    "GET /v1/evals": Route(ANY_KEY),
    "GET /v1/evals/compare": Route(READ, lambda w: {"params": {"ids": w.ids["eval"]}}),
    "GET /v1/evals/{eval_id}": Route(READ),
    "POST /v1/evals/{eval_id}/cancel": Route(CHANGE, destroys=True),
    "GET /v1/evals/{eval_id}/items": Route(READ),
    "GET /v1/evals/{eval_id}/events": Route(READ),
    # -- stored completions, feedback and responses --
    "GET /v1/chat/completions": Route(ANY_KEY),
    "GET /v1/chat/completions/{completion_id}": Route(STORED_READ),
    "POST /v1/chat/completions/{completion_id}": Route(STORED_CHANGE, _json({"metadata": {"topic": "x"}})),
    "DELETE /v1/chat/completions/{completion_id}": Route(STORED_CHANGE, destroys=True),
    "GET /v1/chat/completions/{completion_id}/messages": Route(STORED_READ),
    "POST /v1/feedback": Route(STORED_CHANGE, lambda w: {"json": {"completion_id": w.ids["completion"],
                                                                   "rating": -1}}),
    "GET /v1/feedback": Route(STORED_READ, lambda w: {"params": {"completion_id": w.ids["completion"]}}),
    "GET /v1/responses/{response_id}": Route(STORED_READ),
    "DELETE /v1/responses/{response_id}": Route(STORED_CHANGE, destroys=True),
    "GET /v1/responses/{response_id}/input_items": Route(STORED_READ),
    # -- admin: tenants and keys --
    "POST /v1/admin/tenants": Route(ADMINS, lambda w: {"json": {"name": w.unique("tenant")}}),
    "GET /v1/admin/tenants": Route(ANY_KEY),  # each key sees its own tenant; the admin every tenant
    "GET /v1/admin/tenants/{tenant_id}": Route(READ),
    "PATCH /v1/admin/tenants/{tenant_id}": Route(ADMINS_OF, _json({"metadata": {"tier": "gold"}})),
    "DELETE /v1/admin/tenants/{tenant_id}": Route(ADMINS_OF, destroys=True),
    "POST /v1/admin/tenants/{tenant_id}/keys": Route(OWNERS_OF, _json({"role": "reader"})),
    "GET /v1/admin/tenants/{tenant_id}/keys": Route(OWNERS_OF),
    "GET /v1/admin/tenants/{tenant_id}/keys/{key_id}": Route(OWNERS_OF),
    "PATCH /v1/admin/tenants/{tenant_id}/keys/{key_id}": Route(OWNERS_OF, _json({"name": "renamed"})),
    "DELETE /v1/admin/tenants/{tenant_id}/keys/{key_id}": Route(OWNERS_OF, destroys=True),
    "POST /v1/admin/tenants/{tenant_id}/keys/{key_id}/rotate": Route(OWNERS_OF, destroys=True),
    "GET /v1/admin/usage": Route(ADMINS),
    "GET /v1/admin/audit": Route(OWNERS, lambda w: {"params": {"tenant_id": w.tenant}}),  # an owner: its own trail
    # -- admin: the model catalog and deployments --
    "GET /v1/admin/models": Route(ADMINS),
    "POST /v1/admin/models": Route(ADMINS, lambda w: {"json": {"id": w.unique("new-model"), "package": "smollm2",
                                                               "load": False}}),
    "GET /v1/admin/models/{model:path}": Route(ADMINS),
    "PUT /v1/admin/models/{model:path}": Route(ADMINS, _json({"input_usd_per_mtok": "0.5"})),
    "PATCH /v1/admin/models/{model:path}": Route(ADMINS, _json({"description": "spare"})),
    "POST /v1/admin/models/{model:path}/load": Route(ADMINS),
    "POST /v1/admin/models/{model:path}/unload": Route(ADMINS, destroys=True),
    "DELETE /v1/admin/models/{model:path}": Route(ADMINS, destroys=True),
    "GET /v1/admin/deployments": Route(ADMINS),
    "GET /v1/admin/deployments/{model:path}": Route(ADMINS, params={"model": "loaded"}),
    # Replica changes need Ray mode: the admin gets through to a 409 in this single-process app.
    "PUT /v1/admin/deployments/{model:path}": Route(ADMINS, _json({"max_replicas": 2}), params={"model": "loaded"},
                                                    also_ok=(409,)),
    "DELETE /v1/admin/deployments/{model:path}": Route(ADMINS, destroys=True),
    # -- console: signing in and out, pages --
    "GET /console": Route(PUBLIC),  # a redirect to the playground, which asks for the session
    "GET /console/login": Route(PUBLIC),
    "POST /console/login": Route(ANY_KEY),  # signs in with the caller's key (none: an empty form)
    "POST /console/logout": Route(ANY_KEY, destroys=True),
    "GET /console/playground": Route(ANY_KEY),
    "POST /console/playground/chat": Route(SPEND, _json(CHAT)),
    "GET /console/models": Route(ANY_KEY),
    "GET /console/usage": Route(ANY_KEY),
    "GET /console/usage/by-model": Route(ANY_KEY),
    "GET /console/usage.json": Route(ANY_KEY),
    # -- console: files, fine-tuning, evals, feedback, batches --
    "GET /console/files": Route(ANY_KEY),
    "POST /console/files": Route(SPEND, _upload(TRAIN, purpose="fine-tune")),
    "GET /console/files/{file_id}": Route(READ),
    "POST /console/files/{file_id}/delete": Route(CHANGE, destroys=True),
    "GET /console/files/{file_id}/download": Route(READ),
    "GET /console/fine-tuning": Route(ANY_KEY),
    "POST /console/fine-tuning": Route(CREATE_FROM, lambda w: {"data": {"model": "fake-model",
                                                                        "training_file": w.ids["file"]}}),
    "GET /console/fine-tuning/{job_id}": Route(READ),
    "GET /console/fine-tuning/{job_id}/live": Route(READ),
    "POST /console/fine-tuning/{job_id}/cancel": Route(CHANGE, destroys=True),
    "GET /console/evals": Route(ANY_KEY),
    "POST /console/evals": Route(CREATE_FROM, lambda w: {"data": {"model": "fake-model", "task": "classification",
                                                                  "file_id": w.ids["evals_file"]}}),
    "GET /console/evals/compare": Route(READ, lambda w: {"params": {"ids": w.ids["eval"]}}),
    "GET /console/evals/{eval_id}": Route(READ),
    "GET /console/evals/{eval_id}/progress": Route(READ),
    "POST /console/evals/{eval_id}/cancel": Route(CHANGE, destroys=True),
    "GET /console/feedback": Route(ANY_KEY),
    "POST /console/feedback/rate": Route(STORED_CHANGE, lambda w: {"json": {"completion_id": w.ids["completion"],
                                                                             "rating": 1}}),
    "POST /console/feedback/export": Route(SPEND, lambda w: {"data": {"min_rating": "1"}}),
    "GET /console/batches": Route(ANY_KEY),
    "POST /console/batches": Route(SPEND, _upload(BATCH_ROWS, endpoint="/v1/chat/completions")),
    "GET /console/batches/{batch_id}": Route(READ),
    "GET /console/batches/{batch_id}/progress": Route(READ),
    "POST /console/batches/{batch_id}/cancel": Route(CHANGE, destroys=True),
    # -- console: keys and the admin's pages --
    "GET /console/keys": Route(OWNERS),
    "POST /console/keys": Route(OWNERS, lambda w: {"data": {"name": "ci", "role": "reader"}}),
    "POST /console/keys/{key_id}/rotate": Route(CONSOLE_OWNERS_OF, destroys=True),
    "POST /console/keys/{key_id}/revoke": Route(CONSOLE_OWNERS_OF, destroys=True),
    "GET /console/admin": Route(ADMINS),
    "POST /console/admin/tenants": Route(ADMINS, lambda w: {"data": {"name": w.unique("console-tenant")}}),
    # Any refusal on an admin page is answered by the admin page, which is the admin's only: another tenant's
    # id gets the same 403 as its own, so nothing tells whether the id exists.
    "POST /console/admin/tenants/{tenant_id}/disabled": Route(ADMINS, lambda w: {"data": {"disabled": "true"}},
                                                              destroys=True),
    "POST /console/admin/models": Route(ADMINS, lambda w: {"data": {"kind": "package", "source": "smollm2",
                                                                    "model_id": w.unique("console-model")}}),
    "POST /console/admin/models/{model:path}/load": Route(ADMINS),
    "POST /console/admin/models/{model:path}/unload": Route(ADMINS, destroys=True),
    "POST /console/admin/models/{model:path}/price": Route(ADMINS, lambda w: {"data": {"input_usd_per_mtok": "1"}}),
    "GET /console/admin/audit": Route(ADMINS),
}

# Routes of the app that are not APIRoutes: the OpenAPI document and its viewers (public by design), and the
# console's static files.
PLAIN_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/console/static"}


# --- running one case ---

def _fill(w: World, path: str, route: Route, fresh: bool) -> str:
    """The path with the first tenant's ids; with `fresh`, a new object for the last parameter (the one the route
    acts on: the key in .../keys/{key_id}, not its tenant)."""
    names = re.findall(r"\{(\w+)(?::\w+)?\}", path)

    def one(m: re.Match[str]) -> str:
        kind = route.params.get(m.group(1), PARAM_KINDS[m.group(1)])
        return w.make(kind) if fresh and m.group(1) == names[-1] else w.ids[kind]

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def _ghost(value: Any, ids: set[str]) -> Any:
    """`value` with every id of the first tenant's objects changed into an id that does not exist."""
    if isinstance(value, str):
        for i in ids:
            value = value.replace(i, i[:-1] + ("0" if i[-1] != "0" else "1"))
        return value
    if isinstance(value, dict):
        return {k: _ghost(v, ids) for k, v in value.items()}
    return value


def _outcome(r: httpx.Response, key: str, also_ok: tuple[int, ...]) -> str:
    s = r.status_code
    to_login = s == 303 and r.headers.get("location") == "/console/login"
    if s == 401 or (to_login and key != "POST /console/logout"):  # signing out lands on the sign-in page
        return UNAUTH
    if 200 <= s < 400 or s in also_ok:
        return OK
    return {403: FORBIDDEN, 404: HIDDEN, 400: MISSING}.get(s, f"HTTP {s}")


def _error_code(r: httpx.Response) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None  # a console page


def _request(w: World, key: str, role: str, url: str, send: dict[str, Any], fresh: bool) -> httpx.Response:
    method, path = key.split(" ", 1)
    headers: dict[str, str] = {}
    w.c.cookies.clear()  # who calls is set below, never left over from another case
    if key == "POST /console/login":  # the caller's key goes into the sign-in form
        csrf = re.search(r'name="csrf" value="([^"]+)"', w.c.get("/console/login").text).group(1)
        r = w.c.post("/console/login", data={"api_key": w.keys[role] or "", "csrf": csrf}, follow_redirects=False)
        w.c.cookies.clear()
        return r
    if path.startswith("/console"):
        token, csrf = ((FORGED_SESSION, "forged") if role == BAD else ("", "") if role == NONE
                       else w.sign_in(role) if fresh and path == "/console/logout" else w.sessions[role])
        if token:
            headers["Cookie"] = f"{SESSION}={token}"
        if "json" in send:
            headers["X-CSRF-Token"] = csrf
        elif method == "POST":
            send = {**send, "data": {**send.get("data", {}), "csrf": csrf}}
    else:
        headers.update(w.as_(role))
    return w.c.request(method, url, headers=headers, follow_redirects=False, **send)


def _cases() -> list[Any]:
    # Routes that destroy run last: an unexpected success can then only disturb other destroying cases.
    keys = sorted(ROUTES, key=lambda k: ROUTES[k].destroys)
    return [pytest.param(k, role, id=f"{k} as {role}",
                         marks=[pytest.mark.xfail(strict=True, reason=ROUTES[k].bugs[role])]
                         if role in ROUTES[k].bugs else [])
            for k in keys for role in ROLES]


@pytest.mark.parametrize("key,role", _cases())
def test_route_answers_each_caller_as_the_table_says(world: World, key: str, role: str) -> None:
    route = ROUTES[key]
    method, path = key.split(" ", 1)
    want = route.expect[role]
    fresh = route.destroys and want == OK
    url = _fill(world, path, route, fresh)
    send = route.send(world) if route.send else {}
    r = _request(world, key, role, url, send, fresh)
    got = _outcome(r, key, route.also_ok)
    assert got == want, f"{method} {url} as {role}: expected {want}, got {got} ({r.status_code}): {r.text[:400]}"
    if want == HIDDEN:  # exactly what an id that does not exist gets: nothing says the object is there
        g = _request(world, key, role, _ghost(url, world.first_tenant_ids),
                     {k: _ghost(v, world.first_tenant_ids) for k, v in send.items()}, fresh)
        assert (g.status_code, _error_code(g)) == (r.status_code, _error_code(r)), (
            f"a made-up id got {g.status_code} {g.text[:200]}, the real one {r.status_code} {r.text[:200]}")
        if not path.startswith("/console"):  # the 404 names the parameter that holds the id it did not find
            named = {*re.findall(r"\{(\w+)(?::\w+)?\}", path), *send.get("params", {}), *send.get("json", {})}
            assert r.json()["error"]["param"] in named, f"{method} {url}: a 404 naming {r.text[:300]}, not {named}"
    if role == OTHER and 200 <= r.status_code < 300:
        leaked = sorted(i for i in world.first_tenant_ids if i in r.text)
        assert not leaked, f"{method} {url} showed another tenant the first tenant's {leaked}"


# --- the table and the app agree ---

def _routes(world: World) -> Iterator[tuple[bool, str, set[str]]]:
    """(is an APIRoute, full path, methods) of every route of the app, inside included routers too."""
    for r in iter_route_contexts(world.c.app.routes):
        yield isinstance(getattr(r, "original_route", r), APIRoute), r.path, set(r.methods or ())


def _app_routes(world: World) -> set[str]:
    return {f"{m} {path}" for api, path, methods in _routes(world) if api for m in methods}


def test_every_route_of_the_app_is_in_the_table(world: World) -> None:
    missing = sorted(_app_routes(world) - ROUTES.keys())
    assert not missing, f"routes nobody has decided who may call (add them to ROUTES): {missing}"


def test_every_route_in_the_table_is_in_the_app(world: World) -> None:
    stale = sorted(ROUTES.keys() - _app_routes(world))
    assert not stale, f"ROUTES names routes the app no longer has: {stale}"


def test_the_app_has_no_other_kind_of_route(world: World) -> None:
    plain = {path for api, path, _ in _routes(world) if not api}
    assert plain == PLAIN_ROUTES, f"routes this test does not call: {sorted(plain - PLAIN_ROUTES)}"
