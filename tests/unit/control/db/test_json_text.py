"""Rows stored before the edge refused lone surrogates: the JSON (de)serializer reads them as U+FFFD so every
list route answers, and migration 0005 rewrites them (lifting the audit log's append-only trigger only for
that). On SQLite, and on PostgreSQL when LLMAAS_TEST_DATABASE_URL is set."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from llmaas.control.db.database import MIGRATIONS, Database
from tests.unit.conftest import TRAIN, Admin, bearer, make_client

DAMAGED = '{"k": "a\\ud800b"}'  # JSON text as the old code stored it


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite'}"


def test_serializer_replaces_lone_surrogates_both_ways():
    from llmaas.control.db import json_text  # here, not at the top: the other tests run on code without it

    assert json_text.loads(DAMAGED) == {"k": "a\ufffdb"}
    assert json_text.loads('["\\udc00\\ud83d"]') == ["\ufffd\ufffd"]
    assert json.loads(json_text.dumps({"k": "x\ud800", "\udfff": 1})) == {"k": "x\ufffd", "\ufffd": 1}
    # valid pairs, escaped backslashes and ordinary text are untouched
    assert json_text.loads('"\\ud83d\\ude00"') == "\U0001F600"
    assert json_text.loads('"\\\\ud800"') == "\\ud800"
    assert json_text.dumps({"a": "\\ud800 é \U0001F600"}) == json.dumps({"a": "\\ud800 é \U0001F600"})


def _set_json(db: Database, table: str, col: str, row_id: str, value: str) -> None:
    cast = ":v" if db.is_sqlite else "CAST(:v AS JSON)"
    with db.engine.begin() as conn:
        n = conn.execute(sa.text(f'UPDATE {table} SET "{col}" = {cast} WHERE id = :id'), {"v": value, "id": row_id})
        assert n.rowcount == 1


def _damage_spec_metadata(db: Database, job_id: str) -> None:
    with db.engine.connect() as conn:
        spec = json.loads(conn.execute(sa.text("SELECT CAST(spec AS TEXT) FROM jobs WHERE id = :id"),
                                       {"id": job_id}).scalar_one())
    _set_json(db, "jobs", "spec", job_id, json.dumps({**spec, "metadata": {"k": "\ud800"}}))


def test_damaged_rows_read_back_and_every_list_answers(tmp_path, db_url):
    with make_client(data_dir=tmp_path, database_url=db_url) as c:
        a = Admin(c)
        tenant = a.tenant("acme")
        key_id, key = a.key(tenant, role="owner")
        h = bearer(key)
        r = c.post("/v1/chat/completions", headers=h, json={
            "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "store": True})
        assert r.status_code == 200, r.text
        fid = c.post("/v1/files", headers=h, files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()
        job = c.post("/v1/fine_tuning/jobs", headers=h, json={"model": "fake-model", "training_file": fid["id"]})
        ev = c.post("/v1/evals", headers=h,
                    json={"model": "fake-model", "file_id": fid["id"], "task": {"type": "loss"}})
        assert job.status_code == 200 and ev.status_code == 200, (job.text, ev.text)

        db: Database = c.app.state.control.db
        _set_json(db, "stored_completions", "metadata", r.json()["id"], DAMAGED)
        _set_json(db, "api_keys", "models", key_id, '["fake-model", "\\udfff"]')
        _set_json(db, "tenants", "metadata", tenant, DAMAGED)
        _damage_spec_metadata(db, job.json()["id"])
        _damage_spec_metadata(db, ev.json()["id"])
        cast = ":b" if db.is_sqlite else "CAST(:b AS JSON)"
        with db.engine.begin() as conn:  # the audit log takes inserts; only updates are refused
            conn.execute(sa.text(
                "INSERT INTO audit_log (at, actor, action, target_type, target_id, tenant_id, before) "
                f"VALUES (CURRENT_TIMESTAMP, 'cli', 'tenant.update', 'tenant', :t, :t, {cast})"),
                {"t": tenant, "b": DAMAGED})

        stored = c.get("/v1/chat/completions", headers=h)
        assert stored.status_code == 200 and stored.json()["data"][0]["metadata"] == {"k": "a\ufffdb"}
        jobs = c.get("/v1/fine_tuning/jobs", headers=h)
        assert jobs.status_code == 200 and jobs.json()["data"][0]["metadata"] == {"k": "\ufffd"}
        assert c.get("/v1/evals", headers=h).status_code == 200
        keys = c.get(f"/v1/admin/tenants/{tenant}/keys", headers=h)
        assert keys.status_code == 200
        assert any(k["models"] == ["fake-model", "\ufffd"] for k in keys.json()["data"])
        assert c.get(f"/v1/admin/tenants/{tenant}").status_code == 200
        audit = c.get("/v1/admin/audit", params={"tenant_id": tenant})
        assert audit.status_code == 200
        assert any(e.get("before") == {"k": "a\ufffdb"} for e in audit.json()["data"])


def _alembic(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_migration_0005_repairs_stored_text_and_keeps_the_audit_log_append_only(db_url):
    db = Database(db_url)
    try:
        _alembic(db, "0004")
        j = ":m" if db.is_sqlite else "CAST(:m AS JSON)"
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO tenants (id, name, created_at, metadata) "
                                 f"VALUES ('org-x', 'x', CURRENT_TIMESTAMP, {j})"), {"m": DAMAGED})
            conn.execute(sa.text(f"INSERT INTO api_keys (id, tenant_id, prefix, key_hash, role, models, created_at) "
                                 f"VALUES ('key-x', 'org-x', 'p', 'h', 'member', {j}, CURRENT_TIMESTAMP)"),
                         {"m": '["\\ud800", "\\\\ud800", "\\ud83d\\ude00"]'})
            conn.execute(sa.text(f"INSERT INTO audit_log (at, actor, action, target_type, target_id, after) "
                                 f"VALUES (CURRENT_TIMESTAMP, 'cli', 'a', 't', 'org-x', {j})"), {"m": DAMAGED})
        _alembic(db, "head")
        with db.engine.connect() as conn:
            def text_of(sql: str) -> str:
                return conn.execute(sa.text(sql)).scalar_one()

            assert json.loads(text_of("SELECT CAST(metadata AS TEXT) FROM tenants")) == {"k": "a\ufffdb"}
            assert json.loads(text_of("SELECT CAST(models AS TEXT) FROM api_keys")) == \
                ["\ufffd", "\\ud800", "\U0001F600"]
            assert json.loads(text_of("SELECT CAST(after AS TEXT) FROM audit_log")) == {"k": "a\ufffdb"}
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_log SET action = 'b'"))
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_log"))
    finally:
        db.close()
