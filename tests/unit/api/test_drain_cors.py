"""While the server drains to stop, new work gets 503 + Retry-After in the OpenAI envelope and /ready turns
503, while probes still answer; CORS is off unless origins are configured."""

from __future__ import annotations

import asyncio

from llmaas.api.drain import Drain, DrainMiddleware
from tests.unit.conftest import ADMIN_KEY, chat, make_client


def test_a_draining_server_refuses_new_work_with_retry_after_and_is_not_ready():
    with make_client() as c:
        assert c.get("/ready").status_code == 200
        c.app.state.drain.begin()
        r = chat(c, ADMIN_KEY)
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.headers["x-request-id"]
        assert r.json()["error"]["code"] == "server_shutting_down" and r.json()["error"]["type"] == "server_error"
        assert c.get("/v1/models").status_code == 503
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


async def test_drain_waits_for_requests_in_flight_up_to_its_deadline():
    d = Drain()
    assert await d.idle(0.01)
    d.enter()
    assert not await d.idle(0.05)  # deadline passed with one in flight

    async def finish() -> None:
        await asyncio.sleep(0.05)
        d.leave()

    task = asyncio.create_task(finish())
    assert await d.idle(5)
    await task


async def test_requests_still_in_flight_at_the_deadline_are_cancelled_and_run_their_clean_up():
    """What the drain cuts unwinds while the event loop still runs: a stream's clean-up meters what it produced."""
    d = Drain()
    cleaned: list[int] = []

    async def app(scope, receive, send) -> None:
        try:
            await asyncio.Event().wait()  # a stream that would run on
        finally:
            await asyncio.sleep(0)  # clean-up that awaits, as metering does
            cleaned.append(1)

    mw = DrainMiddleware(app, d)
    tasks = [asyncio.create_task(mw({"type": "http", "path": "/v1/chat/completions"}, None, None)) for _ in range(3)]
    await asyncio.sleep(0.01)
    d.begin()
    assert d.inflight == 3 and not await d.idle(0.01)
    d.cancel_all()
    assert await d.idle(5)
    assert cleaned == [1, 1, 1] and d.inflight == 0
    await asyncio.gather(*tasks, return_exceptions=True)


def test_cors_is_off_by_default():
    with make_client() as c:
        r = c.options("/v1/chat/completions", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": "https://a.example"}).headers


def test_cors_allows_only_the_configured_origins():
    with make_client(settings={"cors_origins": "https://app.example.com"}) as c:
        pre = c.options("/v1/chat/completions", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "access-control-allow-credentials" not in pre.headers
        r = c.get("/v1/models", headers={"Origin": "https://app.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in r.headers["access-control-expose-headers"]
        other = c.options("/v1/chat/completions", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
