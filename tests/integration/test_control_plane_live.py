"""The control plane under concurrency, on live `llmaas serve` processes (fake backend: these tests
are about admission, not the model) with SQLite, the real PostgreSQL, and two processes sharing the
real Redis. CI sets LLMAAS_TEST_DATABASE_URL and LLMAAS_TEST_REDIS_URL."""

from __future__ import annotations

import asyncio
import os
import uuid
from decimal import Decimal

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import ADMIN_KEY, LiveServer

FAKE = "fake-model"
MAX_TOKENS = 8
MSG = [{"role": "user", "content": "How much is this?"}]


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("LLMAAS_TEST_REDIS_URL")
    if not url:
        pytest.skip("LLMAAS_TEST_REDIS_URL is not set (CI sets it)")
    return url


def fake_server(tmp, env: dict[str, str] | None = None) -> LiveServer:
    return LiveServer(tmp, "--backend", "fake", "--max-seqs", "64", "--max-queued", "512", env=env)


def setup_budgeted_key(s: LiveServer, fits: int) -> tuple[str, str, Decimal]:
    """A tenant whose monthly budget fits exactly `fits` worst-case requests; returns (tenant, key, cost)."""
    s.admin("PUT", f"/models/{FAKE}", json={"input_usd_per_mtok": "3", "output_usd_per_mtok": "15"})
    probe = s.client().chat.completions.create(model=FAKE, messages=MSG, max_tokens=MAX_TOKENS,
                                               extra_body={"ignore_eos": True})
    cost = probe.usage.prompt_tokens * Decimal("0.000003") + MAX_TOKENS * Decimal("0.000015")
    t = s.admin("POST", "/tenants", json={"name": "t-" + uuid.uuid4().hex[:8],
                                          "limits": {"budget_usd": str(cost * fits)}})["id"]
    key = s.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
    return t, key, cost


async def burst(servers: list[LiveServer], key: str, n: int) -> list[int | str]:
    """n concurrent chat completions spread over the servers; returns status codes / error codes."""
    clients = [AsyncOpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0) for s in servers]

    async def one(i: int) -> int | str:
        try:
            r = await clients[i % len(clients)].chat.completions.create(
                model=FAKE, messages=MSG, max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == MAX_TOKENS
            return 200
        except openai.RateLimitError as e:
            return e.code or "429"

    try:
        return await asyncio.gather(*[one(i) for i in range(n)])
    finally:
        for c in clients:
            await c.close()


def spent(s: LiveServer, tenant: str) -> tuple[Decimal, Decimal, int]:
    usage = s.admin("GET", "/usage", params={"tenant_id": tenant})["totals"]  # first: settles in the same batch
    t = s.admin("GET", f"/tenants/{tenant}")
    return Decimal(t["budget"]["spent_usd"]), Decimal(t["limits"]["budget_usd"]), usage["requests"]


async def settled(s: LiveServer, tenant: str, expected_requests: int) -> tuple[Decimal, Decimal, int]:
    for _ in range(100):  # the meter writes in batches, a fraction of a second behind
        out = spent(s, tenant)
        if out[2] >= expected_requests:
            return out
        await asyncio.sleep(0.1)
    return spent(s, tenant)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_budget_never_overspent_under_50_concurrent_requests(db, tmp_path, request):
    env = {"LLMAAS_DATABASE_URL": request.getfixturevalue("pg_url")} if db == "postgresql" else {}
    s = fake_server(tmp_path, env)
    try:
        tenant, key, cost = setup_budgeted_key(s, fits=10)
        codes = asyncio.run(burst([s], key, 50))
        assert codes.count(200) == 10, codes
        assert set(codes) - {200} == {"insufficient_quota"}
        total, budget, n = asyncio.run(settled(s, tenant, 10))
        assert n == 10 and total == cost * 10 and total <= budget
    finally:
        s.stop()


def test_two_processes_share_limits_through_redis_and_budget_through_postgres(tmp_path, pg_url, redis_url):
    env = {"LLMAAS_DATABASE_URL": pg_url, "LLMAAS_REDIS_URL": redis_url}
    a = fake_server(tmp_path / "a", env)
    b = fake_server(tmp_path / "b", env)
    try:
        # Budget: 50 requests over both processes, budget for 10.
        tenant, key, cost = setup_budgeted_key(a, fits=10)
        codes = asyncio.run(burst([a, b], key, 50))
        assert codes.count(200) == 10, codes
        total, budget, n = asyncio.run(settled(b, tenant, 10))
        assert n == 10 and total == cost * 10 <= budget

        # RPM: one shared bucket of 10 requests per minute, whichever process is hit.
        t2 = a.admin("POST", "/tenants", json={"name": "rpm-" + uuid.uuid4().hex[:8]})["id"]
        k2 = b.admin("POST", f"/tenants/{t2}/keys", json={"limits": {"rpm": 10}})["key"]
        codes = asyncio.run(burst([a, b], k2, 30))
        assert codes.count(200) == 10 and codes.count("rate_limit_exceeded") == 20, codes

    finally:
        a.stop()
        b.stop()


def test_admin_key_from_env_and_usage_survives_restart(tmp_path):
    s = fake_server(tmp_path)
    try:
        tenant, key, _ = setup_budgeted_key(s, fits=100)
        ids = []
        for _ in range(5):
            r = s.client(key).chat.completions.with_raw_response.create(model=FAKE, messages=MSG, max_tokens=2)
            ids.append(r.headers["x-request-id"])
    finally:
        s.stop()  # SIGTERM: a clean stop flushes the meter
    s = fake_server(tmp_path)
    try:
        usage = httpx.get(f"{s.url}/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert usage["totals"]["requests"] == 5
        assert s.client(ADMIN_KEY).models.list().data
    finally:
        s.stop()
