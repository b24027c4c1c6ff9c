"""One model's engine failing mid-stream, on the real model (two engines of SmolLM2 in one server, `model-a` and
`model-b`): the scheduler thread of model-a dies while it decodes two streams. Those streams end with an error
frame and [DONE] (never a hang), each is billed for exactly the tokens its client received, model-b's stream in
the same moment ends whole, and model-a's engine is replaced and serves the next request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from llmaas.api.app import create_app
from llmaas.control.db.database import Database
from llmaas.control.db.models import UsageRecord
from llmaas.core.config import Settings
from llmaas.core.metrics import EngineMetrics
from llmaas.engine.factory import build_engine
from tests.integration.conftest import ADMIN_KEY

pytestmark = pytest.mark.integration

MODELS = ("model-a", "model-b")
MAX_TOKENS = 48
KILL_AFTER = 6  # tokens model-a's first stream receives before its engine's scheduler dies


class _Crash(BaseException):
    """Not an Exception: gets past every per-request guard and ends the scheduler thread, as a bug would."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("fault"), admin_key=ADMIN_KEY, threads=1, max_seqs=4,
                        usage_flush_interval_s=0.05)
    settings.prepare_dirs()
    metrics = EngineMetrics(CollectorRegistry())
    engines = {m: build_engine(settings, settings.models[0], metrics, model_id=m) for m in MODELS}
    app = create_app(settings, engines=engines, engine_metrics=metrics)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c, settings


def _stream(c: TestClient, model: str, rid: str, on_token=None) -> dict:
    """One streamed chat; what its client saw: tokens (one logprobs entry each), error frames, [DONE]."""
    seen = {"tokens": 0, "errors": [], "done": False, "finish": None}
    body = {"model": model, "stream": True, "max_tokens": MAX_TOKENS, "ignore_eos": True, "logprobs": True,
            "messages": [{"role": "user", "content": "Count from one to one hundred in words."}]}
    with c.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": rid}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                seen["done"] = True
                break
            frame = json.loads(line[6:])
            if "error" in frame:
                seen["errors"].append(frame["error"])
                continue
            for choice in frame["choices"]:
                seen["tokens"] += len((choice.get("logprobs") or {}).get("content") or [])
                seen["finish"] = choice.get("finish_reason") or seen["finish"]
            if on_token is not None:
                on_token(seen["tokens"])
    return seen


def _records(settings: Settings, rids: list[str], timeout: float = 10.0) -> dict[str, UsageRecord]:
    db = Database(settings.resolved_database_url())
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            rows = {r.request_id: r for r in s.scalars(select(UsageRecord).where(UsageRecord.request_id.in_(rids)))}
            s.expunge_all()
        if len(rows) == len(rids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_an_engine_dying_mid_stream_ends_its_streams_bills_their_tokens_and_is_replaced(env):
    c, settings = env
    a = c.app.state.engines["model-a"]
    killed = threading.Event()

    def crash(out: list) -> None:
        raise _Crash("injected scheduler fault")

    def kill_at(tokens: int) -> None:
        if tokens >= KILL_AFTER and not killed.is_set():
            killed.set()
            a._scheduler._step = crash  # the next step of model-a's scheduler thread raises

    seen: dict[str, dict] = {}
    runs = {"a1": ("model-a", kill_at), "a2": ("model-a", None), "b1": ("model-b", None)}
    threads = [threading.Thread(target=lambda rid=rid, m=m, hook=hook: seen.__setitem__(rid, _stream(c, m, rid, hook)))
               for rid, (m, hook) in runs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    assert killed.is_set()

    for rid in ("a1", "a2"):  # model-a's streams: cut short, an error frame, then [DONE]
        s = seen[rid]
        assert s["done"] and [e["code"] for e in s["errors"]] == ["engine_error"], s
        assert s["tokens"] < MAX_TOKENS, s
    assert seen["a1"]["tokens"] >= KILL_AFTER
    b = seen["b1"]  # model-b's stream, decoding at the same moment: whole
    assert b["done"] and not b["errors"] and b["tokens"] == MAX_TOKENS and b["finish"] == "length", b

    rec = _records(settings, list(runs))
    assert set(rec) == set(runs), rec
    for rid in ("a1", "a2"):  # billed for what the client got, no more, no less
        assert rec[rid].status == "error" and rec[rid].completion_tokens == seen[rid]["tokens"], (rid, seen[rid])
        assert rec[rid].prompt_tokens > 0
    assert rec["b1"].status == "ok" and rec["b1"].completion_tokens == MAX_TOKENS

    deadline = time.monotonic() + 10  # model-a's engine is replaced and serves again
    while not a.healthy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.healthy() and not a.stopped()
    again = _stream(c, "model-a", "a3")
    assert again["done"] and not again["errors"] and again["tokens"] == MAX_TOKENS
    assert c.get("/health").status_code == 200
