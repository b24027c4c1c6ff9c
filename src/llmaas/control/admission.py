"""Admission and settlement of every billable request: role and model access, rate limits, budget
reservation, then — whatever happens to the request — settlement of real usage and metering.

Admission has two phases, so that a request does no costly work before it is allowed to: `open` checks
the role, the model and the request-count limits (RPM, parallel) before the prompt is templated and
tokenized; `reserve` then takes the tokens (TPM) and the worst-case cost (budget), which need the count.

    ticket = await gateway.open(principal, model, "chat.completions", rid)
    prompt = tokenize(...)                  # may raise: the ticket is settled "rejected"
    await ticket.reserve(prompt_tokens, max_tokens)
    try: ... ticket.usage(prompt, completion, cached) ...
    finally: await ticket.settle(status)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from llmaas.control.auth.principal import SPENDERS, Principal
from llmaas.control.billing.budgets import Budgets, BudgetScope, Hold
from llmaas.control.billing.catalog import Catalog, Price
from llmaas.control.billing.metering import Meter, UsageEvent
from llmaas.control.billing.money import PICO_PER_USD
from llmaas.control.clock import utcnow
from llmaas.control.limits.ratelimit import Decision, Limiter, Scope
from llmaas.core.errors import ModelNotFoundError, QuotaExceededError, RateLimitError
from llmaas.core.metrics import ControlMetrics

_UNITS = {"requests": ("requests per minute (RPM)", "rpm"), "tokens": ("tokens per minute (TPM)", "tpm"),
          "parallel": ("parallel requests", "max_parallel")}


@dataclass
class Ticket:
    gateway: Admission
    principal: Principal
    model: str
    endpoint: str
    request_id: str
    lease: str
    reserved_tokens: int
    price: Price
    scopes: list[Scope]
    holds: list[Hold] | None
    headers: dict[str, str]
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    settled: bool = False
    # A batch line's ticket (serving/batches.py): priced with the catalog's batch discount, and its usage handed
    # to `on_usage` instead of the meter's queue, to be written with the line's result in one transaction.
    batch: bool = False
    on_usage: Callable[[UsageEvent], None] | None = None

    def usage(self, prompt: int, completion: int, cached: int = 0) -> None:
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = prompt, completion, cached

    async def abandon(self) -> None:
        """Close a ticket whose request was refused before it ran: return what it holds, meter nothing."""
        if not self.settled:
            self.settled = True
            await self.gateway.release(self)

    async def reserve(self, prompt_tokens: int, max_tokens: int) -> None:
        """Second phase of admission: tokens (TPM) and budget for `prompt_tokens + max_tokens`. On refusal
        the ticket is closed (its parallel lease returned, nothing metered) and the error raised."""
        try:
            await self.gateway.reserve(self, prompt_tokens, max_tokens)
        except BaseException:
            await self.abandon()
            raise

    async def settle(self, status: str = "ok") -> None:
        """Release what was reserved and meter what was used. Safe to call more than once."""
        if self.settled:
            return
        self.settled = True
        await self.gateway.settle(self, status)


class Admission:
    def __init__(self, limiter: Limiter, budgets: Budgets, meter: Meter, catalog: Catalog,
                 metrics: ControlMetrics) -> None:
        self.limiter, self.budgets, self.meter, self.catalog, self.metrics = limiter, budgets, meter, catalog, metrics

    async def open(self, p: Principal, model: str, endpoint: str, request_id: str, *, batch: bool = False) -> Ticket:
        """Phase one: role, model access, requests per minute and parallel requests. `batch`: a batch line,
        priced at the catalog's batch price."""
        p.require(*SPENDERS)
        if not p.can_use_model(model):
            raise ModelNotFoundError(model)
        scopes = [Scope(f"tenant:{p.tenant_id}", p.tenant_limits)]
        if p.key_id:
            scopes.append(Scope(f"key:{p.key_id}", p.key_limits))
        scopes = [s for s in scopes if s.active]
        lease = uuid.uuid4().hex  # never the client-supplied request id: leases must be unique
        decision = None
        if any(s.limits.rpm or s.limits.max_parallel for s in scopes):
            decision = await self.limiter.acquire(scopes, 0, lease)
            if not decision.ok:
                raise self._refused(p, model, decision, scopes, 0)
        headers = decision.headers() if decision else {}
        price = self.catalog.price(model)
        return Ticket(self, p, model, endpoint, request_id, lease, 0, price.for_batch() if batch else price, scopes,
                      [], headers, batch=batch)

    async def reserve(self, t: Ticket, prompt_tokens: int, max_tokens: int) -> None:
        """Phase two: tokens per minute and the budget, for the worst case of this request."""
        p, tokens = t.principal, prompt_tokens + max_tokens
        if any(s.limits.tpm for s in t.scopes):
            decision = await self.limiter.acquire(t.scopes, tokens, t.lease, requests=0)
            if not decision.ok:
                raise self._refused(p, t.model, decision, t.scopes, tokens)
            t.reserved_tokens = tokens
            t.headers.update({k: v for k, v in decision.headers().items() if k.endswith("-tokens")})
        budget_scopes = [BudgetScope("tenant", p.tenant_id, p.tenant_limits, p.tenant_id)]
        if p.key_id:
            budget_scopes.append(BudgetScope("key", p.key_id, p.key_limits, p.tenant_id))
        budget_scopes = [b for b in budget_scopes if b.limits.budget_pico is not None]
        if not budget_scopes:
            return
        t.holds = self.budgets.admit_cached(budget_scopes, t.price.cost(prompt_tokens, max_tokens))
        if t.holds is None:  # a grant must grow first: a database transaction, off the event loop
            try:
                t.holds, t.price = await asyncio.to_thread(self.budgets.admit, budget_scopes, t.model,
                                                           prompt_tokens, max_tokens, t.price)
                if t.batch:  # admit read the interactive price from the database
                    t.price = t.price.for_batch(self.catalog.price(t.model).batch_discount)
            except QuotaExceededError:
                t.holds = []
                self.metrics.rate_limited(p.tenant_id, "budget")
                self.metrics.request(t.model, p.tenant_id, "quota_exceeded")
                raise

    async def release(self, t: Ticket) -> None:
        """Return what a refused ticket holds (its parallel lease and reserved tokens), metering nothing."""
        if t.scopes:
            await self.limiter.release(t.scopes, t.reserved_tokens, t.lease)
        if t.holds:
            self.budgets.release(t.holds, 0)

    def _refused(self, p: Principal, model: str, decision: Decision, scopes: list[Scope],
                 tokens: int) -> RateLimitError:
        self.metrics.rate_limited(p.tenant_id, decision.reason or "")
        self.metrics.request(model, p.tenant_id, "rate_limited")
        return self._rate_error(decision.reason or "requests", decision.scope or "", scopes, tokens,
                                decision.retry_after_s, decision.too_large)

    def _rate_error(self, reason: str, scope: str, scopes: list[Scope], tokens: int, retry: float,
                    too_large: bool) -> RateLimitError:
        unit, attr = _UNITS[reason]
        lim = next((getattr(s.limits, attr) for s in scopes if s.name == scope), None)
        kind, _, sid = scope.partition(":")
        what = f"{kind} {sid}"
        if too_large:
            return RateLimitError(
                f"Request too large for {unit} on {what}: Limit {lim}, Requested {tokens}. "
                "Reduce the prompt or max_tokens.", retry, code="rate_limit_exceeded", error_type="tokens")
        requested = {"requests": 1, "tokens": tokens, "parallel": 1}[reason]
        return RateLimitError(
            f"Rate limit reached for {unit} on {what}: Limit {lim}, Requested {requested}. "
            f"Please try again in {retry:.3g}s.", retry, error_type=reason)

    async def settle(self, t: Ticket, status: str) -> None:
        used = t.prompt_tokens + t.completion_tokens
        if t.scopes:
            await self.limiter.release(t.scopes, t.reserved_tokens - used, t.lease)
        cost = t.price.cost(t.prompt_tokens, t.completion_tokens)
        self.budgets.release(t.holds or [], cost)
        (t.on_usage or self.meter.submit)(UsageEvent(
            request_id=t.request_id, tenant_id=t.principal.tenant_id, key_id=t.principal.key_id, model=t.model,
            endpoint=t.endpoint, prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
            cached_tokens=t.cached_tokens, cost_pico=cost, latency_ms=(time.perf_counter() - t.started) * 1000,
            status=status, at=utcnow(), holds=t.holds))
        self.metrics.request(t.model, t.principal.tenant_id, status)
        if cost:
            self.metrics.spend(t.principal.tenant_id, cost / PICO_PER_USD)
