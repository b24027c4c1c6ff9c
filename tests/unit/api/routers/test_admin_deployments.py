"""/v1/admin/deployments in single-process mode (fake engine): each loaded model is one in-process replica;
replica and autoscaling changes are refused with 409 (they need Ray mode); DELETE unloads."""

from __future__ import annotations

from tests.unit.conftest import Admin, bearer


def test_the_in_process_deployment_shows_its_one_replica_and_its_load(client):
    r = client.get("/v1/admin/deployments")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "process"
    (d,) = body["data"]
    assert d["id"] == "fake-model" and d["status"] == "ready" and d["target_replicas"] == 1
    assert d["config"]["min_replicas"] == d["config"]["max_replicas"] == 1 and d["config"]["max_seqs"] == 4
    (rep,) = d["replicas"]
    assert rep == {"id": "local", "state": "running", "running": 0, "waiting": 0, "adapters": []}
    assert client.get("/v1/admin/deployments/fake-model").json()["replicas"] == d["replicas"]


def test_replica_changes_need_ray_mode_409_and_nothing_is_stored(client):
    r = client.put("/v1/admin/deployments/fake-model", json={"max_replicas": 4})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert "Ray mode" in err["message"] and err["param"] == "model"
    assert client.get("/v1/admin/deployments/fake-model").json()["config"]["max_replicas"] == 1
    assert "model.update" not in [e["action"] for e in client.get("/v1/admin/audit").json()["data"]]


def test_bad_deployment_bodies_are_400_naming_the_field(client):
    for body, field in [({"max_replicas": 0}, "max_replicas"), ({"min_replicas": -1}, "min_replicas"),
                        ({"replicas": 2}, "replicas"), ({"target_ongoing_requests": "x"}, "target_ongoing_requests")]:
        r = client.put("/v1/admin/deployments/fake-model", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in (r.json()["error"]["param"] or ""), (body, r.json())
    assert client.put("/v1/admin/deployments/fake-model", json={}).status_code == 400


def test_unknown_deployment_is_404_and_members_are_refused(client):
    assert client.get("/v1/admin/deployments/nope").status_code == 404
    admin = Admin(client)
    _, key = admin.key(admin.tenant("acme"), role="owner")
    r = client.get("/v1/admin/deployments", headers=bearer(key))
    assert r.status_code == 403


def test_delete_unloads_the_model(client):
    r = client.delete("/v1/admin/deployments/fake-model")
    assert r.status_code == 200 and r.json() == {"id": "fake-model", "object": "deployment.deleted", "deleted": True}
    assert client.get("/v1/admin/models/fake-model").json()["status"] == "unloaded"
    r = client.post("/v1/chat/completions",
                    json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert client.get("/v1/admin/deployments").json()["data"] == []
