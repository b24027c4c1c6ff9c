"""The same token buckets and parallel leases as MemoryLimiter, kept in Redis and updated by one
Lua script per request (atomic across gateway processes; time from the Redis server's clock)."""

from __future__ import annotations

from typing import Any

from llmaas.control.limits.ratelimit import LEASE_TTL_S, Decision, Scope

# KEYS: per scope i (1-based block b = 3*(i-1)): b+1 requests bucket, b+2 tokens bucket, b+3 parallel zset.
# ARGV: tokens, lease, lease_ttl_s, requests (0 or 1), then per scope: rpm, tpm, max_parallel (0 = no limit).
# With requests 0 only tokens are taken (no request, no parallel lease).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, lease, ttl, requests = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / 3
local levels = {}
for i = 0, n - 1 do
  local caps = {tonumber(ARGV[5 + i * 3]), tonumber(ARGV[6 + i * 3])}
  local costs = {requests, tokens}
  for j = 1, 2 do
    local cap = caps[j]
    if cap > 0 then
      local v = redis.call('HMGET', KEYS[i * 3 + j], 'l', 't')
      local level = tonumber(v[1]) or cap
      local at = tonumber(v[2]) or now
      level = math.min(cap, level + math.max(0, now - at) * cap / 60)
      levels[i * 3 + j] = level
      if costs[j] > level then
        local retry = (costs[j] - level) * 60 / cap
        if costs[j] > cap then retry = -1 end
        return {0, i, j, tostring(retry)}
      end
    end
  end
  local par = tonumber(ARGV[7 + i * 3])
  if par > 0 and requests > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i * 3 + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[i * 3 + 3]) >= par then return {0, i, 3, '1'} end
  end
end
local out = {1}
for i = 0, n - 1 do
  local costs = {requests, tokens}
  for j = 1, 2 do
    local level = levels[i * 3 + j]
    if level then
      level = level - costs[j]
      redis.call('HSET', KEYS[i * 3 + j], 'l', tostring(level), 't', tostring(now))
      redis.call('EXPIRE', KEYS[i * 3 + j], 120)
      table.insert(out, tostring(level))
    else
      table.insert(out, '0')
    end
  end
  if tonumber(ARGV[7 + i * 3]) > 0 and requests > 0 then
    redis.call('ZADD', KEYS[i * 3 + 3], now + ttl, lease)
    redis.call('EXPIRE', KEYS[i * 3 + 3], math.ceil(ttl) * 2)
  end
end
return out
"""

# KEYS: per scope: tokens bucket, parallel zset. ARGV: refund, lease, then per scope: tpm.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local refund, lease = tonumber(ARGV[1]), ARGV[2]
for i = 0, #KEYS / 2 - 1 do
  local cap = tonumber(ARGV[3 + i])
  if cap > 0 and refund > 0 then
    local v = redis.call('HMGET', KEYS[i * 2 + 1], 'l', 't')
    if v[1] then
      local level = math.min(cap, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * cap / 60 + refund)
      redis.call('HSET', KEYS[i * 2 + 1], 'l', tostring(level), 't', tostring(now))
      redis.call('EXPIRE', KEYS[i * 2 + 1], 120)
    end
  end
  redis.call('ZREM', KEYS[i * 2 + 2], lease)
end
return 1
"""

_KINDS = {1: "requests", 2: "tokens", 3: "parallel"}


class RedisLimiter:
    def __init__(self, url: str, prefix: str = "llmaas:rl:") -> None:
        import redis.asyncio as redis

        # Bounded: a Redis that hangs must cost a request 2 s and a clear 503, not the client's whole timeout.
        self._redis: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    async def ping(self) -> None:
        await self._redis.ping()

    async def acquire(self, scopes: list[Scope], tokens: int, lease: str, *, requests: int = 1) -> Decision:
        scopes = [s for s in scopes if s.active]
        if not scopes:
            return Decision(True)
        keys: list[str] = []
        args: list[Any] = [tokens, lease, LEASE_TTL_S, requests]
        for sc in scopes:
            p = f"{self.prefix}{sc.name}"
            keys += [f"{p}:requests", f"{p}:tokens", f"{p}:parallel"]
            args += [sc.limits.rpm or 0, sc.limits.tpm or 0, sc.limits.max_parallel or 0]
        res = await self._acquire(keys=keys, args=args)
        if int(res[0]) == 0:
            sc = scopes[int(res[1])]
            retry = float(res[3])
            return Decision(False, _KINDS[int(res[2])], sc.name, 60.0 if retry < 0 else retry, too_large=retry < 0)
        d = Decision(True)
        for i, sc in enumerate(scopes):
            rem_r, rem_t = float(res[1 + 2 * i]), float(res[2 + 2 * i])
            d.remaining[sc.name] = (sc.limits.rpm, rem_r, sc.limits.tpm, rem_t)
        return d

    async def release(self, scopes: list[Scope], refund_tokens: int, lease: str) -> None:
        scopes = [s for s in scopes if s.limits.tpm or s.limits.max_parallel]
        if not scopes:
            return
        keys: list[str] = []
        for sc in scopes:
            keys += [f"{self.prefix}{sc.name}:tokens", f"{self.prefix}{sc.name}:parallel"]
        await self._release(keys=keys, args=[max(0, refund_tokens), lease, *[s.limits.tpm or 0 for s in scopes]])

    async def close(self) -> None:
        await self._redis.aclose()
