"""The web console with the fake engine: sign-in and sessions, CSRF on every state change, the pages a key sees,
the playground's streamed chat (the same admission and metering as the API), usage, and escaping. The browser
tests (tests/integration/test_console_live.py) run the same pages in Chromium with the real model."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.unit.conftest import ADMIN_KEY, TRAIN, Admin, bearer, make_client

TENANT: list[str] = []


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path, console=True, context_size=1024) as c:
        a = Admin(c)
        tenant = a.tenant('acme"><img src=x onerror="window.x=1">')
        TENANT[:] = [tenant]
        key_id, key = a.key(tenant, name='<script>alert("label")</script>')
        yield c, key, key_id, a


def _login_csrf(c) -> str:
    r = c.get("/console/login")
    assert r.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)


def sign_in(c, key: str) -> str:
    """Signs in; returns the session's CSRF token (from the page, as a browser would read it)."""
    r = c.post("/console/login", data={"api_key": key, "csrf": _login_csrf(c)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/playground", r.text
    page = c.get("/console/playground")
    assert page.status_code == 200
    return re.search(r'data-csrf="([^"]+)"', page.text).group(1)


def test_pages_need_a_session(env):
    c, *_ = env
    for path in ("/console/playground", "/console/models", "/console/usage", "/console"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] in ("/console/login", "/console/playground")
    r = c.get("/console/usage.json", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"


def test_sign_in_sets_a_session_cookie_and_never_writes_the_key_into_a_page(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    cookie = next(h for h in c.get("/console/login").headers.get_list("set-cookie") if "llmaas_login_csrf" in h)
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    for path in ("/console/playground", "/console/models", "/console/files", "/console/fine-tuning", "/console/evals",
                 "/console/feedback", "/console/batches", "/console/usage"):
        r = c.get(path)
        assert r.status_code == 200 and key not in r.text and key[:20] not in r.text
        head, _, body = r.text.partition("<body>")
        assert "<section" not in head and "<table" not in head and body.count("<main") == 1, path  # well formed
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
    assert csrf and len(csrf) >= 24


def test_the_session_cookie_is_httponly_and_samesite(tmp_path):
    with make_client(data_dir=tmp_path, console=True) as c:
        a = Admin(c)
        _, key = a.key(a.tenant("t"))
        r = c.post("/console/login", data={"api_key": key, "csrf": _login_csrf(c)}, follow_redirects=False)
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("llmaas_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain HTTP here; over TLS the cookie is Secure


def test_a_wrong_key_is_refused_without_echoing_it(env):
    c, *_ = env
    wrong = "sk-llmaas-not-a-real-key-0123456789"
    r = c.post("/console/login", data={"api_key": wrong, "csrf": _login_csrf(c)})
    assert r.status_code == 401 and "Incorrect API key" in r.text and wrong not in r.text
    assert "llmaas_session" not in c.cookies


def test_sign_in_without_its_csrf_token_is_refused(env):
    c, key, _, _ = env
    c.get("/console/login")
    r = c.post("/console/login", data={"api_key": key, "csrf": "forged"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"


def test_sign_out_needs_the_token_and_ends_the_session(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    token = c.cookies.get("llmaas_session")
    assert c.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    r = c.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    c.cookies.set("llmaas_session", token, path="/console")  # a copy of the old cookie is worth nothing now
    assert c.get("/console/playground", follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_its_sessions(env):
    c, key, key_id, _ = env
    sign_in(c, key)
    tenant = c.get("/v1/models", headers=bearer(key)).json()  # the key works until revoked
    assert tenant["data"]
    r = c.delete(f"/v1/admin/tenants/{TENANT[0]}/keys/{key_id}", headers=bearer(ADMIN_KEY))
    assert r.status_code == 200, r.text
    assert c.get("/console/playground", follow_redirects=False).status_code == 303


def _chat(c, csrf: str | None, **body):
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return c.post("/console/playground/chat", headers=headers,
                  json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                        **body})


def test_the_playground_streams_an_answer_with_its_usage_and_is_metered(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = _chat(c, csrf)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [json.loads(f[6:]) for f in r.text.split("\n\n") if f.startswith("data: {")]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in frames if ch["choices"])
    assert len(text) == 5 and frames[-1]["usage"]["completion_tokens"] == 5
    assert r.text.rstrip().endswith("data: [DONE]")
    for _ in range(50):  # the meter writes in the background
        usage = c.get("/console/usage.json").json()["days"]
        if usage["totals"]["requests"]:
            break
    assert usage["totals"]["requests"] == 1 and usage["totals"]["completion_tokens"] == 5
    assert len(usage["data"]) == 30 and usage["data"][-1]["requests"] == 1  # every day, today last
    table = c.get("/console/usage/by-model")
    assert table.status_code == 200 and "fake-model" in table.text and "<html" not in table.text


def test_the_playground_refuses_without_the_csrf_header(env):
    c, key, _, _ = env
    sign_in(c, key)
    r = _chat(c, None)
    assert r.status_code == 403 and r.json()["error"]["param"] == "csrf"


@pytest.mark.parametrize(("body", "param"), [({"temperature": 5}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                                             ({"model": "nope"}, "model")])
def test_bad_playground_input_is_a_clear_error_naming_the_field(env, body, param):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = _chat(c, csrf, **body)
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text


def test_user_content_is_escaped(env):
    c, key, _, _ = env
    sign_in(c, key)
    page = c.get("/console/playground").text
    assert '<script>alert("label")</script>' not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;label&#34;)&lt;/script&gt;" in page  # the key's name, shown as text
    assert "acme&#34;&gt;&lt;img src=x onerror=&#34;window.x=1&#34;&gt;" in page  # the tenant's name


def test_models_page_lists_what_the_key_may_use(env):
    c, key, _, _ = env
    sign_in(c, key)
    r = c.get("/console/models")
    assert r.status_code == 200 and "fake-model" in r.text and "No fine-tuned model yet" in r.text


def _member_and_reader(c, a: Admin) -> tuple[str, str]:
    tenant = TENANT[0]
    return a.key(tenant, role="member")[1], a.key(tenant, role="reader")[1]


def test_upload_a_file_preview_it_and_delete_it(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/files", data={"purpose": "fine-tune", "csrf": csrf},
               files={"file": ("train <b>.jsonl", TRAIN, "application/jsonl")}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get(r.headers["location"])
    assert page.status_code == 200 and "train &lt;b&gt;.jsonl" in page.text and "alpha" in page.text
    file_id = r.headers["location"].rsplit("/", 1)[1]
    assert file_id in c.get("/console/files").text
    assert c.post(f"/console/files/{file_id}/delete", data={"csrf": "x"}).status_code == 403
    r = c.post(f"/console/files/{file_id}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and file_id not in c.get("/console/files").text


def test_a_bad_file_shows_its_line_errors_and_keeps_nothing(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    bad = TRAIN + b'{"messages": "not a list"}\nnot json\n'
    r = c.post("/console/files", data={"purpose": "fine-tune", "csrf": csrf},
               files={"file": ("bad.jsonl", bad, "application/jsonl")})
    assert r.status_code == 400
    errors = re.search(r'<div class="error" role="alert" id="upload-errors">(.*?)</div>', r.text, re.S).group(1)
    assert errors.count("<li>") >= 3 and "line" in errors  # the summary, then one item per bad line
    assert "bad.jsonl" in errors and "No file yet." in r.text


def test_a_reader_sees_no_write_forms_and_cannot_write(env):
    c, _, _, a = env
    _, reader = _member_and_reader(c, a)
    csrf = sign_in(c, reader)
    for path in ("/console/files", "/console/fine-tuning"):
        page = c.get(path).text
        assert 'enctype="multipart/form-data"' not in page and 'action="/console/fine-tuning"' not in page
    r = c.post("/console/files", data={"purpose": "fine-tune", "csrf": csrf},
               files={"file": ("t.jsonl", TRAIN, "application/jsonl")})
    assert r.status_code == 403 and "No file yet." in r.text


def test_another_tenants_file_and_job_are_missing(env):
    c, key, _, a = env
    csrf = sign_in(c, key)
    r = c.post("/console/files", data={"purpose": "fine-tune", "csrf": csrf},
               files={"file": ("t.jsonl", TRAIN, "application/jsonl")}, follow_redirects=False)
    file_id = r.headers["location"].rsplit("/", 1)[1]
    r = c.post("/console/fine-tuning", data={"model": "fake-model", "training_file": file_id, "n_epochs": "1",
                                             "csrf": csrf}, follow_redirects=False)
    job_id = r.headers["location"].rsplit("/", 1)[1]
    other = a.key(a.tenant("other"))[1]
    c.cookies.clear()
    sign_in(c, other)
    for path in (f"/console/files/{file_id}", f"/console/fine-tuning/{job_id}", f"/console/fine-tuning/{job_id}/live"):
        assert c.get(path).status_code == 404, path


def test_start_watch_and_cancel_a_fine_tuning_job(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/files", data={"purpose": "fine-tune", "csrf": csrf},
               files={"file": ("t.jsonl", TRAIN, "application/jsonl")}, follow_redirects=False)
    file_id = r.headers["location"].rsplit("/", 1)[1]
    assert f'value="{file_id}" selected' in c.get(f"/console/fine-tuning?training_file={file_id}").text
    r = c.post("/console/fine-tuning", data={"model": "fake-model", "training_file": file_id, "n_epochs": "2",
                                             "rank": "8", "suffix": "demo", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    live = c.get(f"/console/fine-tuning/{job_id}/live").json()
    assert live["job"]["status"] in ("validating_files", "queued") and live["job"]["hyperparameters"]["n_epochs"] == 2
    assert live["events"][0]["message"].startswith("Validating training file")
    assert job_id in c.get("/console/fine-tuning").text
    r = c.post(f"/console/fine-tuning/{job_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get(f"/console/fine-tuning/{job_id}/live").json()["job"]["status"] == "cancelled"


def test_a_bad_job_form_is_refused_and_keeps_what_was_typed(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/fine-tuning", data={"model": "fake-model", "training_file": "file-nope", "n_epochs": "abc",
                                             "suffix": "keep-me", "csrf": csrf})
    assert r.status_code == 400 and "n_epochs" in r.text and 'value="keep-me"' in r.text and 'value="abc"' in r.text
    r = c.post("/console/fine-tuning", data={"model": "fake-model", "training_file": "file-nope", "csrf": csrf})
    assert r.status_code in (400, 404) and "file-nope" in r.text


def test_an_owner_creates_rotates_and_revokes_keys_and_sees_each_secret_once(env):
    c, _, _, a = env
    owner = a.key(TENANT[0], role="owner", name="boss")[1]
    csrf = sign_in(c, owner)
    assert 'href="/console/keys"' in c.get("/console/playground").text
    r = c.post("/console/keys", data={"name": "ci <bot>", "role": "reader", "csrf": csrf})
    assert r.status_code == 200
    secret = re.search(r'<code class="secret">([^<]+)</code>', r.text).group(1)
    assert secret.startswith("sk-llmaas-") and "ci &lt;bot&gt;" in r.text
    assert c.get("/v1/models", headers=bearer(secret)).status_code == 200  # the key works
    page = c.get("/console/keys").text
    assert secret not in page and "ci &lt;bot&gt;" in page  # never shown again
    key_id = re.search(r'action="/console/keys/([^/]+)/rotate"', page.split("ci &lt;bot&gt;")[1]).group(1)
    r = c.post(f"/console/keys/{key_id}/rotate", data={"csrf": csrf})
    rotated = re.search(r'<code class="secret">([^<]+)</code>', r.text).group(1)
    assert rotated != secret and c.get("/v1/models", headers=bearer(rotated)).status_code == 200
    for kid in re.findall(r'action="/console/keys/([^/]+)/revoke"', c.get("/console/keys").text):
        assert c.post(f"/console/keys/{kid}/revoke", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert c.get("/v1/models", headers=bearer(rotated)).status_code == 401
    assert c.get("/console/playground", follow_redirects=False).status_code == 200  # its own key is kept


def test_a_member_sees_no_keys_page(env):
    c, key, _, _ = env
    sign_in(c, key)
    assert 'href="/console/keys"' not in c.get("/console/playground").text
    assert c.get("/console/keys").status_code == 403


def test_a_bad_key_form_keeps_what_was_typed(env):
    c, _, _, a = env
    owner = a.key(TENANT[0], role="owner")[1]
    csrf = sign_in(c, owner)
    r = c.post("/console/keys", data={"name": "keep-me", "role": "member", "expires_in_days": "-3", "csrf": csrf})
    assert r.status_code == 400 and "expires_in_days" in r.text and 'value="keep-me"' in r.text


def test_start_a_batch_and_download_its_results(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    lines = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "fake-model", "max_tokens": 3,
                                          "messages": [{"role": "user", "content": "hi"}]}}).encode() + b"\n"
                     for i in range(3))
    r = c.post("/console/batches", data={"endpoint": "/v1/chat/completions", "csrf": csrf},
               files={"file": ("b.jsonl", lines, "application/jsonl")}, follow_redirects=False)
    assert r.status_code == 303, r.text
    batch_id = r.headers["location"].rsplit("/", 1)[1]
    for _ in range(300):
        part = c.get(f"/console/batches/{batch_id}/progress").text
        if "completed</strong>" in part:
            break
        time.sleep(0.05)
    assert "3 completed, 0 failed, 3 lines" in part and "<html" not in part
    out = re.search(r'id="batch-output" href="([^"]+)"', part).group(1)
    results = [json.loads(x) for x in c.get(out).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["r0", "r1", "r2"]
    assert batch_id in c.get("/console/batches").text


def test_a_bad_batch_file_is_refused_on_the_page(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/batches", data={"endpoint": "/v1/nope", "csrf": csrf},
               files={"file": ("b.jsonl", b"{}\n", "application/jsonl")})
    assert r.status_code == 400 and "endpoint" in r.text and 'id="batch-errors"' in r.text


EVAL_ROWS = b"".join(json.dumps({"text": t, "label": lab}).encode() + b"\n"
                     for t, lab in [("great", "positive"), ("awful", "negative"), ("fine", "positive")])


def _finish_eval(c, eval_id: str, model: str) -> None:
    """Stores what the eval worker stores when a run ends (the worker itself runs in the live tests)."""
    from llmaas.control.db.models import Job
    from llmaas.evals.metrics import classification_metrics, flatten_metrics

    m = classification_metrics(["positive", "negative", "positive"], ["positive", "positive", "positive"],
                               ["positive", "negative"])
    with c.app.state.control.db.session() as s:
        job = s.get(Job, eval_id)
        job.status, job.result = "succeeded", {"models": {model: {"metrics": m, "summary": flatten_metrics(m)}}}
        job.state = {"rows_total": 3, "rows_done": 3}


def test_start_an_eval_read_its_metrics_and_compare_runs(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/files", data={"purpose": "evals", "csrf": csrf},
               files={"file": ("sent.jsonl", EVAL_ROWS, "application/jsonl")}, follow_redirects=False)
    file_id = r.headers["location"].rsplit("/", 1)[1]
    ids = []
    for name in ("first", "second"):
        r = c.post("/console/evals", data={"model": "fake-model", "file_id": file_id, "task": "classification",
                                           "labels": "positive, negative", "name": name, "csrf": csrf},
                   follow_redirects=False)
        assert r.status_code == 303, r.text
        ids.append(r.headers["location"].rsplit("/", 1)[1])
    assert "queued" in c.get(f"/console/evals/{ids[0]}").text
    for eid in ids:
        _finish_eval(c, eid, "fake-model")
    page = c.get(f"/console/evals/{ids[0]}").text
    assert "succeeded" in page and "hx-trigger" not in page  # finished: no more polling
    per_class = re.search(r'<table class="per-class">(.*?)</table>', page, re.S).group(1)
    assert "<td>negative</td><td>0.0</td><td>0.0</td><td>0.0</td><td>1</td>" in per_class
    confusion = re.search(r'<table class="confusion">(.*?)</table>', page, re.S).group(1)
    assert "<th>positive</th><td>2</td><td>0</td>" in confusion and "<th>negative</th><td>1</td><td>0</td>" in confusion
    assert "<th>accuracy</th><td>0.6667</td>" in page
    table = c.get("/console/evals/compare", params=[("ids", ids[0]), ("ids", ids[1])]).text
    assert table.count("<tr>") == 3 and "macro_f1" in table and "0.4" in table


def test_a_bad_eval_form_keeps_what_was_typed(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    r = c.post("/console/evals", data={"file_id": "file-none", "task": "classification", "labels": "a, b",
                                       "name": "keep-me", "csrf": csrf})
    assert r.status_code == 400 and "model" in r.text and 'value="keep-me"' in r.text and 'value="a, b"' in r.text
    r = c.post("/console/evals", data={"model": "fake-model", "file_id": "file-none", "task": "classification",
                                       "prompt_template": "{text.__class__}", "csrf": csrf})
    assert r.status_code == 400 and "prompt_template" in r.text


def test_rate_review_and_export_the_rated_answers_to_a_fine_tuning_file(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    ids = []
    for prompt in ("first <q>", "second", "third"):
        r = c.post("/console/playground/chat", headers={"X-CSRF-Token": csrf},
                   json={"model": "fake-model", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4})
        ids.append(json.loads(r.text.split("\n\n")[0][6:])["id"])
    body = {"completion_id": ids[0], "rating": 1}
    assert c.post("/console/feedback/rate", json=body).status_code == 403  # no CSRF header
    assert c.post("/console/feedback/rate", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
    r = c.post("/console/feedback/rate", json={"completion_id": ids[1], "rating": -1, "correction": "better"},
               headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["correction"] == "better"
    bad = c.post("/console/feedback/rate", json={"completion_id": ids[2], "rating": 5}, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    page = c.get("/console/feedback").text
    assert page.count("<tr data-id=") == 3 and "first &lt;q&gt;" in page and "correction: better" in page
    assert c.get("/console/feedback?rated=good").text.count("<tr data-id=") == 1
    assert c.get("/console/feedback?rated=unrated").text.count("<tr data-id=") == 1
    r = c.post("/console/feedback/export", data={"min_rating": "1", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    file_page = c.get(r.headers["location"]).text
    assert "feedback.jsonl" in file_page and "better" in file_page and "Fine-tune on it" in file_page


def test_the_platform_admin_pages(env):
    c, key, _, _ = env
    csrf = sign_in(c, ADMIN_KEY)
    page = c.get("/console/admin")
    assert page.status_code == 200 and 'href="/console/admin"' in page.text
    assert "fake-model" in page.text and 'id="deployments"' in page.text and "<code>local</code>" in page.text
    r = c.post("/console/admin/tenants", data={"name": "new <co>", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "new &lt;co&gt;" in c.get("/console/admin").text
    r = c.post("/console/admin/models/fake-model/price", data={"input_usd_per_mtok": "-1", "output_usd_per_mtok": "2",
                                                              "csrf": csrf})
    assert r.status_code == 400 and "input_usd_per_mtok" in r.text and 'value="-1"' in r.text  # kept
    r = c.post("/console/admin/models/fake-model/price", data={"input_usd_per_mtok": "0.5",
                                                              "output_usd_per_mtok": "2", "csrf": csrf},
               follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/v1/admin/models/fake-model").json()["output_usd_per_mtok"] == "2.00"
    audit = c.get("/console/admin/audit", params={"action": "tenant.create"}).text
    assert "tenant.create" in audit and "model.price" not in audit
    assert "model" in c.get("/console/admin/audit").text


def test_the_admin_pages_are_the_admins_only(env):
    c, _, _, a = env
    owner = a.key(TENANT[0], role="owner")[1]
    sign_in(c, owner)
    assert 'href="/console/admin"' not in c.get("/console/playground").text
    assert c.get("/console/admin").status_code == 403 and c.get("/console/admin/audit").status_code == 403


def test_usage_shows_spend_by_key_and_the_limits_and_budgets(env):
    c, _, _, a = env
    tenant = a.tenant("budgeted", budget_usd="5", rpm=600)
    key_id, key = a.key(tenant, limits={"rpm": 60, "tpm": 10000})
    csrf = sign_in(c, key)
    _chat(c, csrf)
    for _ in range(50):
        page = c.get("/console/usage").text
        if f"<code>{key_id}</code> (this key)" in page:
            break
        time.sleep(0.05)
    limits = re.search(r'<table id="limits">(.*?)</table>', page, re.S).group(1)
    assert "<td>60</td><td>10000</td>" in limits and "<td>600</td>" in limits
    assert "5.00 USD monthly" in limits or "5 USD monthly" in limits
    assert f"<code>{key_id}</code> (this key)" in page


def test_a_key_made_with_limits_has_them(env):
    c, _, _, a = env
    owner = a.key(TENANT[0], role="owner")[1]
    csrf = sign_in(c, owner)
    r = c.post("/console/keys", data={"name": "limited", "role": "member", "rpm": "30", "tpm": "5000",
                                      "budget_usd": "2.5", "csrf": csrf})
    assert r.status_code == 200, r.text
    row = [t for t in r.text.split("<tr>") if "<td>limited</td>" in t][0]
    assert "30 rpm" in row and "5000 tpm" in row and "2.50 USD/monthly" in row
    r = c.post("/console/keys", data={"name": "bad", "role": "member", "rpm": "-1", "csrf": csrf})
    assert r.status_code == 400 and "rpm" in r.text and 'value="-1"' in r.text


def test_the_models_page_shows_a_fine_tuned_models_lineage(env):
    c, key, _, _ = env
    from llmaas.control.clock import utcnow
    from llmaas.control.db.models import TenantModel

    mid = f"ft:fake-model:{TENANT[0]}:demo:ftjob-x"
    with c.app.state.control.db.session() as s:
        s.add(TenantModel(id=mid, tenant_id=TENANT[0], base_model="fake-model", job_id="ftjob-x", step=8,
                          adapter_path="x", created_at=utcnow(),
                          lineage={"base": "fake-model", "job": "ftjob-x", "step": 8, "evals": [
                              {"eval_id": "eval-1", "name": "held-out <b>", "metrics": {"accuracy": 0.75}}]}))
    sign_in(c, key)
    page = c.get("/console/models").text
    row = [t for t in page.split("<tr>") if mid in t][0]
    assert 'href="/console/fine-tuning/ftjob-x"' in row and "<td>8</td>" in row and "final" in row
    assert "held-out &lt;b&gt;</a>: accuracy 0.75" in row


XSS = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=1">']


def test_hostile_file_names_metadata_and_eval_labels_are_escaped(env):
    c, key, _, _ = env
    csrf = sign_in(c, key)
    for name in XSS:
        r = c.post("/console/files", data={"purpose": "evals", "csrf": csrf},
                   files={"file": (name, EVAL_ROWS, "application/jsonl")}, follow_redirects=False)
        assert r.status_code == 303, r.text
    file_id = r.headers["location"].rsplit("/", 1)[1]
    r = c.post("/console/evals", data={"model": "fake-model", "file_id": file_id, "task": "classification",
                                       "labels": f"{XSS[0]}, {XSS[1]}", "name": XSS[1], "csrf": csrf},
               follow_redirects=False)
    eval_id = r.headers["location"].rsplit("/", 1)[1]
    from llmaas.control.db.models import Job
    from llmaas.evals.metrics import classification_metrics

    m = classification_metrics([XSS[0], XSS[1]], [XSS[1], XSS[1]], XSS)
    with c.app.state.control.db.session() as s:
        job = s.get(Job, eval_id)
        job.status, job.result = "succeeded", {"models": {"fake-model": {"metrics": m, "summary": {}}}}
    # metadata: a stored completion's, set through the API, shown nowhere raw either
    chat = c.post("/console/playground/chat", headers={"X-CSRF-Token": csrf},
                  json={"model": "fake-model", "messages": [{"role": "user", "content": XSS[0]}], "max_tokens": 2,
                        "metadata": {"k": XSS[1]}})
    assert chat.status_code == 200
    for path in ("/console/files", f"/console/files/{file_id}", "/console/evals", f"/console/evals/{eval_id}",
                 "/console/feedback", "/console/fine-tuning", "/console/playground"):
        page = c.get(path).text
        for raw in XSS:
            assert raw not in page, (path, raw)
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in c.get(f"/console/evals/{eval_id}").text
    assert "&gt;&lt;img src=x onerror=" in c.get("/console/files").text  # (the client sends quotes as %22)


def test_registering_a_model_that_is_not_there_is_refused_on_the_page(env):
    c, _, _, _ = env
    csrf = sign_in(c, ADMIN_KEY)
    r = c.post("/console/admin/models", data={"kind": "gguf_path", "source": "/nowhere/model.gguf",
                                             "description": "keep me", "csrf": csrf})
    assert r.status_code in (400, 404) and "gguf_path" in r.text and 'value="keep me"' in r.text
    r = c.post("/console/admin/models", data={"kind": "package", "source": "no-such-package", "csrf": csrf})
    assert r.status_code in (400, 404) and "no-such-package" in r.text


@pytest.mark.parametrize("forged", ["\x88ú", "é" * 32])
def test_a_forged_non_ascii_csrf_token_is_a_403_not_a_500(env, forged):
    c, key, _, _ = env
    _login_csrf(c)
    r = c.post("/console/login", data={"api_key": key, "csrf": forged}, follow_redirects=False)
    assert r.status_code in (400, 403) and r.json()["error"]["param"] in ("csrf", None), r.text
    sign_in(c, key)
    r = c.post("/console/files", data={"csrf": forged, "purpose": "fine-tune"}, follow_redirects=False)
    assert r.status_code in (400, 403), r.text
