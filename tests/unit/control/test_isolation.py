"""Tenant isolation: walk every route that takes an id with another tenant's ids. The answer is
404 — exactly what a missing id gets — never 403 (which would confirm the id exists) and never the data."""

from __future__ import annotations

import pytest

from tests.unit.conftest import Admin, bearer, chat, make_client

BODIES = {"POST": {}, "PATCH": {"name": "stolen"}, "PUT": {}}


@pytest.fixture
def world(tmp_path):
    with make_client(data_dir=tmp_path) as c:
        a = Admin(c)
        ta, tb = a.tenant("alpha", rpm=100), a.tenant("beta", rpm=100)
        _, owner_a = a.key(ta, role="owner")
        kb, member_b = a.key(tb, role="member", limits={"rpm": 7})
        _, owner_b = a.key(tb, role="owner")
        chat(c, member_b)
        c.app.state.control.meter.flush()
        yield c, {"ta": ta, "tb": tb, "owner_a": owner_a, "kb": kb, "member_b": member_b, "owner_b": owner_b}


def _id_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the app that takes a tenant id, from its OpenAPI schema."""
    return [(m.upper(), path) for path, ops in app.openapi()["paths"].items() if "{tenant_id}" in path
            for m in ops]


def test_every_route_with_another_tenants_ids_is_404(world):
    c, w = world
    routes = _id_routes(c.app)
    assert len(routes) >= 9  # tenant get/patch/delete, keys create/list, key get/patch/delete, rotate
    for method, path in routes:
        for tenant, key in ((w["tb"], w["kb"]), (w["ta"], w["kb"])):  # B's ids, and B's key under A's tenant
            if "{key_id}" not in path and tenant == w["ta"]:
                continue  # A's own tenant: legitimately visible to A's owner
            url = path.replace("{tenant_id}", tenant).replace("{key_id}", key)
            r = c.request(method, url, headers=bearer(w["owner_a"]), json=BODIES.get(method))
            assert r.status_code == 404, (method, url, r.status_code, r.text)
            body = r.json()
            assert body["error"]["code"] == "not_found"
            assert w["kb"] not in r.text or key == w["kb"] and w["kb"] in body["error"]["message"]
            # Same answer as for an id that does not exist at all.
            ghost = path.replace("{tenant_id}", "org-doesnotexist").replace("{key_id}", "key-doesnotexist")
            g = c.request(method, ghost, headers=bearer(w["owner_a"]), json=BODIES.get(method))
            assert g.status_code == 404 and g.json()["error"]["type"] == body["error"]["type"]
    # B's data is untouched.
    b = c.get(f"/v1/admin/tenants/{w['tb']}/keys/{w['kb']}", headers=bearer(w["owner_b"])).json()
    assert b["status"] == "active" and b["limits"]["rpm"] == 7 and b["name"] == ""
    assert chat(c, w["member_b"]).status_code == 200
    assert c.get(f"/v1/admin/tenants/{w['tb']}").json()["name"] == "beta"


def test_lists_reports_and_audit_show_only_the_callers_tenant(world):
    c, w = world
    tenants = c.get("/v1/admin/tenants", headers=bearer(w["owner_a"])).json()["data"]
    assert [t["id"] for t in tenants] == [w["ta"]]
    usage = c.get("/v1/usage", headers=bearer(w["owner_a"]), params={"key_id": w["kb"]}).json()
    assert usage["tenant_id"] == w["ta"] and usage["totals"]["requests"] == 0 and usage["data"] == []
    b_usage = c.get("/v1/usage", headers=bearer(w["owner_b"])).json()
    assert b_usage["totals"]["requests"] == 1
    audit = c.get("/v1/admin/audit", headers=bearer(w["owner_a"]), params={"tenant_id": w["tb"]}).json()["data"]
    assert audit and all(e["target"]["tenant_id"] == w["ta"] for e in audit)
    assert w["kb"] not in str(audit)
