"""Rate limits: requests per minute, tokens per minute and parallel requests, per tenant and per key.

Token buckets (capacity = the per-minute limit, refilled continuously) so bursts up to the limit pass
and the steady rate is the limit. Tokens are *reserved* at admission (prompt + max_tokens) and the
unused part is refunded when the request settles, so concurrent requests cannot overshoot TPM.
All scopes of a request are checked and charged atomically: all or nothing.

`MemoryLimiter` serves one process; `RedisLimiter` (ratelimit_redis.py) does the same in one Lua
script so that several gateway processes share the limits."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from llmaas.control.auth.principal import Limits

# A parallel-request slot is leased, not held forever: a process that dies mid-request frees its
# slots after this long (Redis) — long enough for any stream.
LEASE_TTL_S = 600.0


@dataclass(frozen=True)
class Scope:
    name: str  # "tenant:<id>" or "key:<id>"
    limits: Limits

    @property
    def active(self) -> bool:
        lim = self.limits
        return bool(lim.rpm or lim.tpm or lim.max_parallel)


@dataclass
class Decision:
    ok: bool
    reason: str | None = None  # requests | tokens | parallel
    scope: str | None = None
    retry_after_s: float = 0.0
    too_large: bool = False  # the request alone exceeds the TPM limit: retrying cannot help
    # per scope: (rpm, remaining requests, tpm, remaining tokens) after this request
    remaining: dict[str, tuple[int | None, float, int | None, float]] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the tightest scope of each kind."""
        h: dict[str, str] = {}
        req = [(rem, lim) for lim, rem, _, _ in self.remaining.values() if lim]
        tok = [(rem, lim) for _, _, lim, rem in self.remaining.values() if lim]
        if req:
            rem, lim = min(req)
            h.update({"x-ratelimit-limit-requests": str(lim), "x-ratelimit-remaining-requests": str(int(rem)),
                      "x-ratelimit-reset-requests": _duration((lim - rem) * 60 / lim)})
        if tok:
            rem, lim = min(tok)
            h.update({"x-ratelimit-limit-tokens": str(lim), "x-ratelimit-remaining-tokens": str(int(rem)),
                      "x-ratelimit-reset-tokens": _duration((lim - rem) * 60 / lim)})
        return h


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '120ms'."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s" if m else f"{s}s"


class Limiter(Protocol):
    async def acquire(self, scopes: list[Scope], tokens: int, lease: str, *, requests: int = 1) -> Decision:
        """Take `requests` (0 or 1: with 1, also a parallel lease) and `tokens` from every scope, or none."""
        ...

    async def release(self, scopes: list[Scope], refund_tokens: int, lease: str) -> None: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """In-process limits (one gateway process). Runs on the event loop thread only: no locks needed."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (level, at)
        self._parallel: dict[str, set[str]] = {}

    def _level(self, name: str, cap: int, now: float) -> float:
        level, at = self._buckets.get(name, (float(cap), now))
        return min(float(cap), level + (now - at) * cap / 60.0)

    async def acquire(self, scopes: list[Scope], tokens: int, lease: str, *, requests: int = 1) -> Decision:
        now = time.monotonic()
        levels: dict[str, float] = {}
        for sc in scopes:
            lim = sc.limits
            for kind, cap, cost in (("requests", lim.rpm, requests), ("tokens", lim.tpm, tokens)):
                if not cap or not cost:
                    continue
                name = f"{sc.name}:{kind}"
                level = levels[name] = self._level(name, cap, now)
                if cost > level:
                    too_large = cost > cap
                    return Decision(False, kind, sc.name, 60.0 if too_large else (cost - level) * 60 / cap,
                                    too_large=too_large)
            if requests and lim.max_parallel and len(self._parallel.get(sc.name, ())) >= lim.max_parallel:
                return Decision(False, "parallel", sc.name, 1.0)
        d = Decision(True)
        for sc in scopes:
            lim = sc.limits
            rem_r = rem_t = 0.0
            if lim.rpm:
                name = f"{sc.name}:requests"
                rem_r = levels[name] - requests if name in levels else self._level(name, lim.rpm, now)
                self._buckets[name] = (rem_r, now)
            if lim.tpm:
                name = f"{sc.name}:tokens"
                rem_t = levels[name] - tokens if name in levels else self._level(name, lim.tpm, now)
                self._buckets[name] = (rem_t, now)
            if requests and lim.max_parallel:
                self._parallel.setdefault(sc.name, set()).add(lease)
            d.remaining[sc.name] = (lim.rpm, rem_r, lim.tpm, rem_t)
        return d

    async def release(self, scopes: list[Scope], refund_tokens: int, lease: str) -> None:
        now = time.monotonic()
        for sc in scopes:
            if sc.limits.tpm and refund_tokens > 0:
                name = f"{sc.name}:tokens"
                self._buckets[name] = (min(float(sc.limits.tpm), self._level(name, sc.limits.tpm, now)
                                           + refund_tokens), now)
            if sc.limits.max_parallel:
                self._parallel.get(sc.name, set()).discard(lease)

    async def close(self) -> None:
        pass
