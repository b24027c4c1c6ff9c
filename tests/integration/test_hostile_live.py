"""Requests a hostile tenant could send, against the real model behind a live server: none of them may stop
or freeze the service for anyone else."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def _member_key(server) -> str:
    tenant = server.admin("POST", "/tenants", json={"name": f"hostile-{time.monotonic_ns()}"})["id"]
    return server.admin("POST", f"/tenants/{tenant}/keys", json={"role": "member"})["key"]


def _health_while(server, send) -> tuple[httpx.Response, list[float]]:
    """Run `send()` while /health is polled; the response and every /health latency (seconds)."""
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as c:
            while not done.is_set():
                t = time.perf_counter()
                assert c.get(f"{server.url}/health").status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.1)
    try:
        r = send()
    finally:
        time.sleep(0.1)
        done.set()
        poller.join()
    return r, latencies


def _chat(server, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def test_5000_messages_are_refused_and_health_keeps_answering(server):
    key = _member_key(server)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "word"}] * 5000, "max_tokens": 4}
    r, lat = _health_while(server, lambda: _chat(server, key, body))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert lat and max(lat) < 0.1, f"/health took up to {max(lat) * 1000:.0f} ms"


def test_2048_long_messages_are_templated_off_the_loop(server):
    key = _member_key(server)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "many words here " * 8}] * 2048,
            "max_tokens": 4}
    r, lat = _health_while(server, lambda: _chat(server, key, body))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert len(lat) >= 3 and max(lat) < 0.1, f"/health took up to {max(lat) * 1000:.0f} ms ({len(lat)} polls)"


@pytest.mark.parametrize("extra", [{}, {"response_format": {"type": "json_object"}},
                                   {"frequency_penalty": 0.5, "response_format": {"type": "json_object"}}])
def test_negative_and_huge_seeds_on_the_real_model(server, extra):
    key = _member_key(server)
    outs = []
    for seed in (-1, -(2**63), 2**63 - 1, -1):
        r = _chat(server, key, {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}],
                                "max_tokens": 8, "temperature": 1.0, "seed": seed, **extra})
        assert r.status_code == 200, r.text
        outs.append(r.json()["choices"][0]["message"]["content"])
    assert outs[0] == outs[3]  # the same (negative) seed gives the same output
    assert httpx.get(f"{server.url}/health").status_code == 200
    r = _chat(server, key, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200


def test_embedding_token_ids_outside_the_vocabulary_are_400(server):
    key = _member_key(server)
    for ids in ([999999999], [-1], [[1, 2], [49152]]):
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": ids}, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    assert httpx.get(f"{server.url}/health").status_code == 200
