"""The two limiter implementations behave the same; two RedisLimiter instances (as in two gateway
processes) share one set of buckets and leases on the real Redis server."""

from __future__ import annotations

import os
import uuid

import pytest

from llmaas.control.auth.principal import Limits
from llmaas.control.limits.ratelimit import MemoryLimiter, Scope


def _redis_url() -> str:
    url = os.environ.get("LLMAAS_TEST_REDIS_URL")
    if not url:
        pytest.skip("LLMAAS_TEST_REDIS_URL is not set (CI sets it)")
    return url


async def _pair(kind: str):
    if kind == "memory":
        m = MemoryLimiter()
        return m, m
    from llmaas.control.limits.ratelimit_redis import RedisLimiter

    prefix = f"llmaas:test:{uuid.uuid4().hex}:"
    return RedisLimiter(_redis_url(), prefix), RedisLimiter(_redis_url(), prefix)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_buckets_and_leases_are_shared_and_all_or_nothing(kind):
    a, b = await _pair(kind)
    try:
        key = Scope("key:k1", Limits(rpm=3, tpm=1000, max_parallel=2))
        tenant = Scope("tenant:t1", Limits(tpm=500))
        # parallel: two leases, from either "process"; the third is refused until one is released
        d1 = await a.acquire([key], 10, "l1")
        d2 = await b.acquire([key], 10, "l2")
        assert d1.ok and d2.ok
        d3 = await a.acquire([key], 10, "l3")
        assert not d3.ok and d3.reason == "parallel"
        await b.release([key], 0, "l1")
        assert (await a.acquire([key], 10, "l3")).ok
        # rpm: 3 per minute, shared; retry-after is the time to refill one request (~20 s)
        d = await b.acquire([key], 10, "l4")
        assert not d.ok and d.reason in ("requests", "parallel")
        for lease in ("l2", "l3"):
            await a.release([key], 10, lease)
        d = await b.acquire([key], 10, "l5")
        assert not d.ok and d.reason == "requests" and 15 < d.retry_after_s <= 20.5
        # tpm across two scopes, all or nothing: the tenant bucket refuses, the key bucket is not charged
        other = Scope("key:k2", Limits(tpm=10_000))
        assert (await a.acquire([tenant, other], 400, "m1")).ok
        d = await b.acquire([tenant, other], 200, "m2")
        assert not d.ok and d.reason == "tokens" and d.scope == "tenant:t1"
        ok = await b.acquire([other], 100, "m3")
        assert ok.remaining["key:k2"][3] == pytest.approx(10_000 - 400 - 100, abs=5)
        # refunds: settling with fewer tokens than reserved gives the difference back
        await a.release([tenant, other], 300, "m1")
        assert (await b.acquire([tenant, other], 200, "m4")).ok
        # a request larger than the whole TPM can never pass: flagged so the error says so
        d = await a.acquire([tenant], 600, "m5")
        assert not d.ok and d.too_large
    finally:
        await a.close()
        if b is not a:
            await b.close()


async def test_decision_headers_follow_openai():
    m = MemoryLimiter()
    d = await m.acquire([Scope("key:k", Limits(rpm=60, tpm=6000))], 100, "x")
    h = d.headers()
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-limit-tokens"] == "6000" and h["x-ratelimit-remaining-tokens"] == "5900"
    assert h["x-ratelimit-reset-requests"] == "1s" and h["x-ratelimit-reset-tokens"] == "1s"
