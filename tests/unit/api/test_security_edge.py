"""Security at the edge: forwarded-for headers only from trusted proxies, /metrics behind a key and without
per-tenant series by default, metadata limits on every object, eval templates without format tricks, and a
private data dir and SQLite database."""

from __future__ import annotations

import os
import stat

import pytest
from fastapi.testclient import TestClient

from tests.unit.conftest import ADMIN_KEY, TRAIN, Admin, bearer, chat, make_client

# --- X-Forwarded-For and the bad-key limiter ---


def _bad_key_statuses(c: TestClient, n: int) -> list[int]:
    return [c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong", "X-Forwarded-For": f"198.51.100.{i}"})
            .status_code for i in range(n)]


def test_forwarded_for_from_an_untrusted_client_does_not_change_the_limited_ip():
    with make_client(settings={"auth_failures_per_minute": 2}) as c:
        assert _bad_key_statuses(c, 3) == [401, 401, 429]


def test_forwarded_for_from_a_trusted_proxy_is_the_client_ip():
    with make_client(settings={"auth_failures_per_minute": 2, "trusted_proxies": "10.0.0.0/8"}) as c:
        via_proxy = TestClient(c.app, client=("10.1.2.3", 40000))  # the app (and its lifespan) is c's
        assert _bad_key_statuses(via_proxy, 4) == [401, 401, 401, 401]  # four different clients
        direct = TestClient(c.app, client=("192.0.2.7", 40000))  # not a proxy: the header is ignored
        assert _bad_key_statuses(direct, 3) == [401, 401, 429]


def test_trusted_proxies_must_be_ips_or_networks():
    from llmaas.core.config import Settings

    assert Settings(trusted_proxies="127.0.0.1, 10.0.0.0/8").trusted_proxy_list() == ["127.0.0.1", "10.0.0.0/8"]
    with pytest.raises(ValueError):
        Settings(trusted_proxies="proxy.example")


def test_serve_runs_uvicorn_without_its_own_proxy_headers(monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    from llmaas.api.drain import DrainingServer
    from llmaas.cli.main import app

    seen: dict = {}
    # uvicorn.Config sets up logging on CliRunner's stderr, which is closed once the command returns.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    monkeypatch.setattr(DrainingServer, "run", lambda self: seen.update(proxy_headers=self.config.proxy_headers,
                                                                        drain_s=self.drain_s))
    result = CliRunner().invoke(app, ["serve", "--backend", "fake", "--data-dir", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert seen == {"proxy_headers": False, "drain_s": 30.0}


# --- /metrics ---


def test_metrics_need_the_metrics_key_or_an_admin_key_when_one_is_set():
    with make_client(settings={"metrics_key": "scrape-secret"}) as c:
        a = Admin(c)
        _, member = a.key(a.tenant("acme"))
        anon = TestClient(c.app)
        r = anon.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert anon.get("/metrics", headers=bearer(member)).status_code == 401
        assert anon.get("/metrics", headers=bearer("wrong")).status_code == 401
        assert anon.get("/metrics", headers=bearer("scrape-secret")).status_code == 200
        assert anon.get("/metrics", headers=bearer(ADMIN_KEY)).text.startswith("#")
        assert anon.get("/health").status_code == 200  # only /metrics is guarded


def test_metrics_are_open_without_a_key_and_carry_no_tenant_by_default():
    with make_client() as c:
        a = Admin(c)
        t = a.tenant("acme")
        _, key = a.key(t)
        assert chat(c, key).status_code == 200
        text = TestClient(c.app).get("/metrics").text
        assert 'llmaas:requests_total{model="fake-model",status="ok"}' in text
        assert t not in text and "tenant=" not in text


def test_tenant_labels_are_opt_in():
    with make_client(settings={"metrics_tenant_labels": True}) as c:
        a = Admin(c)
        t = a.tenant("acme")
        _, key = a.key(t)
        assert chat(c, key).status_code == 200
        assert f'tenant="{t}"' in c.get("/metrics").text


# --- metadata limits on every object ---

TOO_MANY = {f"k{i}": "v" for i in range(17)}
LONG_KEY = {"k" * 65: "v"}
LONG_VALUE = {"k": "v" * 513}


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path) as c:
        a = Admin(c)
        tenant = a.tenant("acme")
        _, key = a.key(tenant)
        h = bearer(key)
        fid = c.post("/v1/files", headers=h, files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        yield c, h, tenant, fid.json()["id"]


@pytest.mark.parametrize("metadata", [TOO_MANY, LONG_KEY, LONG_VALUE])
def test_metadata_limits_apply_to_every_object(env, metadata):
    c, h, tenant, fid = env
    requests = [
        c.post("/v1/fine_tuning/jobs", headers=h, json={"model": "fake-model", "training_file": fid,
                                                        "metadata": metadata}),
        c.post("/v1/evals", headers=h, json={"model": "fake-model", "file_id": fid, "task": {"type": "loss"},
                                             "metadata": metadata}),
        c.post("/v1/admin/tenants", json={"name": "meta", "metadata": metadata}),
        c.patch(f"/v1/admin/tenants/{tenant}", json={"metadata": metadata}),
        c.post("/v1/files", headers=h, json={"purpose": "fine-tune", "source": {
            "type": "stored_completions", "metadata": metadata}}),
        chat(c, h["Authorization"][7:], store=True, metadata=metadata),
    ]
    for r in requests:
        assert r.status_code == 400, (r.request.url, r.text)
        assert r.json()["error"]["param"].endswith("metadata"), r.json()
    assert c.get("/v1/fine_tuning/jobs", headers=h).json()["data"] == []
    assert c.get("/v1/evals", headers=h).json()["data"] == []


def test_metadata_at_the_limits_is_accepted(env):
    c, h, _, fid = env
    ok = {**{f"k{i}": "v" for i in range(15)}, "k" * 64: "v" * 512}
    r = c.post("/v1/fine_tuning/jobs", headers=h, json={"model": "fake-model", "training_file": fid, "metadata": ok})
    assert r.status_code == 200, r.text


# --- eval prompt templates ---


@pytest.mark.parametrize("template", ["{text:>200000000}", "{text!r}", "{text.__class__}", "{text[0]}", "{0}", "{}",
                                      "{text", "}{text}"])
def test_eval_prompt_template_allows_plain_fields_only(env, template):
    c, h, _, fid = env
    task = {"type": "classification", "labels": ["a", "b"], "prompt_template": template}
    r = c.post("/v1/evals", headers=h, json={"model": "fake-model", "file_id": fid, "task": task})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task.prompt_template", r.text
    r = c.post("/v1/fine_tuning/jobs", headers=h, json={"model": "fake-model", "training_file": fid,
                                                        "eval": {"file_id": fid, "task": task}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "eval.task.prompt_template", r.text


def test_eval_template_runtime_substitution_is_plain():
    from llmaas.evals.tasks import TaskError, _fill

    assert _fill("Q: {text} {{literal}} {label}", {"text": "hi", "label": 3}, 1) == "Q: hi {literal} 3"
    for bad in ("{text:>9}", "{text!r}", "{text.upper}"):
        with pytest.raises(TaskError):
            _fill(bad, {"text": "hi"}, 1)


# --- file modes ---


def test_new_data_dir_and_sqlite_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "fresh"
        with make_client(data_dir=data) as c:
            a = Admin(c)
            _, key = a.key(a.tenant("acme"))
            assert chat(c, key).status_code == 200
            db = data / "llmaas.db"
            files = [db, db.with_name("llmaas.db-wal"), db.with_name("llmaas.db-shm")]
            assert all(f.exists() for f in files)
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            assert stat.S_IMODE((data / "artifacts").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_an_existing_database_is_tightened(tmp_path):
    from llmaas.control.db.database import Database

    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Database(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
