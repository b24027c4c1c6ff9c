"""No secret reaches the logs or an error body: API keys (the admin's, a tenant's, a rotated one, bad ones a
client sent) and the master key, through key creation, use, rotation, refusals and console sign-in."""

from __future__ import annotations

import base64
import logging

from tests.unit.conftest import ADMIN_KEY, TRAIN, Admin, bearer, chat, make_client


def test_keys_and_the_master_key_never_reach_the_logs_or_error_bodies(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with make_client(data_dir=tmp_path, console=True) as c:
        a = Admin(c)
        tenant = a.tenant("acme")
        key_id, key = a.key(tenant)
        assert chat(c, key).status_code == 200
        r = c.post("/v1/files", headers=bearer(key), files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200
        rotated = c.post(f"/v1/admin/tenants/{tenant}/keys/{key_id}/rotate").json()["key"]
        bad = "sk-llmaas-" + "b" * 40
        for k in (key, bad, rotated + "x"):  # revoked by the rotation, never valid, almost valid
            r = chat(c, k)
            assert r.status_code == 401
            bodies.append(r.text)
        bodies.append(c.post("/console/login", data={"api_key": bad, "csrf": "x"}, follow_redirects=False).text)
        master = (tmp_path / "master.key").read_bytes()
    secrets = [ADMIN_KEY, key, rotated, bad, master.decode(errors="replace").strip(),
               base64.b64encode(master).decode()]
    text = caplog.text + "\n".join(bodies)
    for s in secrets:
        assert s and s not in text, f"a secret ({s[:12]}...) is in the logs or an error body"
    assert key[:20] not in text and rotated[:20] not in text  # not even most of one
