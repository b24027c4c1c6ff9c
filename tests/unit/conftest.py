from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from llmaas.api.app import create_app
from llmaas.console import mount
from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine

ADMIN_KEY = "sk-llmaas-unit-test-admin-key-000000000000"
# A small valid chat fine-tuning file, for the tests that upload one.
ROWS = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": f"{w}!"}]}
        for w in ("alpha", "bravo", "charlie")]
TRAIN = "\n".join(json.dumps(r) for r in ROWS).encode() + b"\n"
DEEP = b'{"messages": ' + b"[" * 1500 + b"]" * 1500 + b"}\n"  # a line json's decoder recurses 3000 levels into


def make_client(max_queued: int = 8, n_slots: int = 4, context_size: int = 256, *, data_dir: Path | None = None,
                auth: bool = True, database_url: str | None = None, settings: dict | None = None,
                console: bool = False, **fake) -> TestClient:
    """A TestClient on the real app with the fake engine; auth on, speaking as the platform admin."""
    registry = CollectorRegistry()
    runner = FakeRunner(n_slots=n_slots, context_size=context_size, max_batch_tokens=64, **fake)
    metrics = EngineMetrics(registry)
    engine = BatchingEngine(runner, max_queued, metrics)
    settings = Settings(backend="fake", data_dir=data_dir or Path(tempfile.mkdtemp(prefix="llmaas-unit-")),
                        auth=auth, admin_key=ADMIN_KEY, database_url=database_url,
                        **{"usage_flush_interval_s": 0.05, **(settings or {})})
    settings.prepare_dirs()
    app = create_app(settings, engines={runner.model_id: engine}, engine_metrics=metrics)
    if console:
        mount(app)
    return TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"})


@pytest.fixture
def client():
    with make_client() as c:
        yield c


class Admin:
    """Helpers that set up tenants and keys through the admin API, as a platform admin would."""

    def __init__(self, client: TestClient) -> None:
        self.c = client

    def tenant(self, name: str, **limits) -> str:
        r = self.c.post("/v1/admin/tenants", json={"name": name, "limits": limits})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def key(self, tenant_id: str, role: str = "member", **body) -> tuple[str, str]:
        r = self.c.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"role": role, **body})
        assert r.status_code == 200, r.text
        return r.json()["id"], r.json()["key"]

    def price(self, model: str, inp: str, out: str) -> None:
        r = self.c.put(f"/v1/admin/models/{model}", json={"input_usd_per_mtok": inp, "output_usd_per_mtok": out})
        assert r.status_code == 200, r.text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(client: TestClient, key: str, max_tokens: int = 4, model: str = "fake-model", **kw):
    return client.post("/v1/chat/completions", headers=bearer(key),
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": max_tokens, **kw})
