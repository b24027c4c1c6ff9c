from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from llmaas.api.app import create_app
from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.engine import BatchingEngine


def make_client(max_queued: int = 8, n_slots: int = 4, context_size: int = 256, **fake) -> TestClient:
    registry = CollectorRegistry()
    runner = FakeRunner(n_slots=n_slots, context_size=context_size, max_batch_tokens=64, **fake)
    metrics = EngineMetrics(registry)
    engine = BatchingEngine(runner, max_queued, metrics)
    app = create_app(Settings(backend="fake"), engines={runner.model_id: engine}, engine_metrics=metrics)
    return TestClient(app)


@pytest.fixture
def client():
    with make_client() as c:
        yield c
