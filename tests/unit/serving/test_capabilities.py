"""A model that only embeds (an encoder such as all-MiniLM-L6-v2): chat and completions on it are the
client's mistake, a 400 naming the model, and it still embeds."""

from __future__ import annotations

import pytest

from llmaas.engine.types import EMBEDDINGS_ONLY
from tests.unit.conftest import make_client

MODEL = "fake-model"


@pytest.fixture
def encoder():
    with make_client(capabilities=EMBEDDINGS_ONLY) as c:
        yield c


@pytest.mark.parametrize(("path", "body", "what"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "chat completions"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, "chat completions"),
    ("/v1/completions", {"prompt": "hi"}, "completions"),
    ("/v1/completions", {"prompt": "hi", "stream": True}, "completions"),
])
def test_generation_on_an_embeddings_only_model_is_a_400_on_the_model(encoder, path, body, what):
    r = encoder.post(path, json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "model"
    assert err["message"] == (f"the model '{MODEL}' only supports embeddings (/v1/embeddings), "
                              f"not {what} (/v1/{path[4:]})")


def test_an_embeddings_only_model_embeds(encoder):
    r = encoder.post("/v1/embeddings", json={"model": MODEL, "input": ["hello", "world"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2



def test_an_embeddings_only_model_is_not_offered_for_fine_tuning(encoder):
    r = encoder.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "file-none"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "model" and "fine-tunable models: none" in r.json()["error"]["message"]


def test_an_embeddings_only_model_cannot_be_evaluated(encoder):
    """Evals score log-probabilities, which a model that only embeds has none of: a 400 at creation, not a
    job that fails later."""
    r = encoder.post("/v1/evals", json={"model": MODEL, "file_id": "file-none", "task": {"type": "classification"}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "model" and "only supports embeddings" in r.json()["error"]["message"]
