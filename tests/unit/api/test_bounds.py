"""Numbers and filters that used to overflow into 500s (datetime, 64-bit SQLite integers, 32-bit PostgreSQL
columns, TypeErrors on odd JSON) are 400s naming the parameter."""

from __future__ import annotations

import pytest

from tests.unit.conftest import TRAIN, Admin, bearer, make_client

BIG = "1" + "0" * 29  # 30 digits


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path):
    # PostgreSQL too (when LLMAAS_TEST_DATABASE_URL is set): its int4 columns are where 2**63 used to land
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    with make_client(data_dir=tmp_path, database_url=url) as c:
        a = Admin(c)
        tenant = a.tenant("acme")
        _, key = a.key(tenant)
        h = bearer(key)
        fid = c.post("/v1/files", headers=h, files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        assert fid.status_code == 200, fid.text
        job = c.post("/v1/fine_tuning/jobs", headers=h,
                     json={"model": "fake-model", "training_file": fid.json()["id"], "metadata": {"team": "a"}})
        ev = c.post("/v1/evals", headers=h,
                    json={"model": "fake-model", "file_id": fid.json()["id"], "task": {"type": "loss"}})
        assert job.status_code == 200 and ev.status_code == 200, (job.text, ev.text)
        yield c, h, tenant, job.json()["id"], ev.json()["id"]


def assert_400(r, param: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize("after", [f"ftevent-{BIG}", f"ftevent-{2**31}", "ftevent-+5", "ftevent- 5", "ftevent-1_0"])
def test_fine_tuning_event_cursor_overflow_is_400(env, after):
    c, h, _, job, _ = env
    assert_400(c.get(f"/v1/fine_tuning/jobs/{job}/events", headers=h, params={"after": after}), "after")


def test_eval_item_and_event_cursors_overflow_is_400(env):
    c, h, _, _, ev = env
    assert_400(c.get(f"/v1/evals/{ev}/items", headers=h, params={"after": f"{ev}#{BIG}"}), "after")
    assert_400(c.get(f"/v1/evals/{ev}/items", headers=h, params={"after": f"{ev}#{2**31}"}), "after")
    assert_400(c.get(f"/v1/evals/{ev}/events", headers=h, params={"after": f"ftevent-{BIG}"}), "after")


def test_valid_cursors_still_page(env):
    c, h, _, job, ev = env
    events = c.get(f"/v1/fine_tuning/jobs/{job}/events", headers=h).json()["data"]
    r = c.get(f"/v1/fine_tuning/jobs/{job}/events", headers=h, params={"after": events[0]["id"]})
    assert r.status_code == 200
    assert c.get(f"/v1/evals/{ev}/items", headers=h, params={"after": f"{ev}#3"}).status_code == 200


@pytest.mark.parametrize(("param", "value"), [
    *((p, v) for p in ("since", "until") for v in (10**15, -(10**15), 10**30)),
    *(("after", v) for v in (10**15, -(10**15), 10**30, 2**31)),  # audit ids are 32-bit integer columns
])
def test_audit_time_and_cursor_bounds(env, param, value):
    c, *_ = env
    assert_400(c.get("/v1/admin/audit", params={param: str(value)}), param)


def test_audit_in_range_values_answer(env):
    c, *_ = env
    assert c.get("/v1/admin/audit", params={"since": 1, "until": 253402300799, "after": 2**31 - 1}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize("value", ["null", "[1,2]", '{"k": 1}', "3", "{not json"])
def test_metadata_query_must_be_an_object_of_strings(env, path, value):
    c, h, *_ = env
    assert_400(c.get(path, headers=h, params={"metadata": value}), "metadata")


def test_metadata_query_object_filters(env):
    c, h, _, job, _ = env
    r = c.get("/v1/fine_tuning/jobs", headers=h, params={"metadata": '{"team": "a"}'})
    assert r.status_code == 200 and [j["id"] for j in r.json()["data"]] == [job]
    assert c.get("/v1/fine_tuning/jobs", headers=h, params={"metadata[team]": "b"}).json()["data"] == []


@pytest.mark.parametrize(("body", "param"), [
    ({"expires_at": 10**18}, "expires_at"),
    ({"expires_at": -(10**18)}, "expires_at"),
    ({"expires_in_days": 1e12}, "expires_in_days"),
    ({"limits": {"rpm": 1e30}}, "limits.rpm"),
    ({"limits": {"tpm": 2**63}}, "limits.tpm"),
    ({"limits": {"max_parallel": 2**31}}, "limits.max_parallel"),
])
def test_key_expiry_and_limits_are_bounded(env, body, param):
    c, _, tenant, *_ = env
    assert_400(c.post(f"/v1/admin/tenants/{tenant}/keys", json=body), param)


@pytest.mark.parametrize("limits", [{"rpm": 1e30}, {"tpm": 2**63}])
def test_tenant_limits_are_bounded(env, limits):
    c, _, tenant, *_ = env
    assert_400(c.post("/v1/admin/tenants", json={"name": "big", "limits": limits}), f"limits.{next(iter(limits))}")
    assert_400(c.patch(f"/v1/admin/tenants/{tenant}", json={"limits": limits}), f"limits.{next(iter(limits))}")


def test_largest_int32_limit_is_accepted(env):
    c, _, tenant, *_ = env
    r = c.post(f"/v1/admin/tenants/{tenant}/keys", json={"limits": {"rpm": 2**31 - 1}, "expires_in_days": 36500})
    assert r.status_code == 200, r.text


def test_export_time_bounds(env):
    c, h, *_ = env
    r = c.post("/v1/files", headers=h, json={"purpose": "fine-tune", "source": {
        "type": "stored_completions", "created_after": 10**15}})
    assert_400(r, "source.created_after")


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/evals", "/v1/files", "/v1/batches"])
def test_an_unknown_after_cursor_on_a_list_is_400_naming_after(env, path):
    c, h = env[0], env[1]
    assert_400(c.get(path, headers=h, params={"after": "no-such-id"}), "after")
