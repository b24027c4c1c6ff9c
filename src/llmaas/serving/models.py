"""What the handlers serve from: the engines by model id and the control plane (auth limits, metering,
tenants' fine-tuned models). Model resolution, context checks and admission live here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmaas.control.admission import Ticket
from llmaas.control.auth.principal import Principal
from llmaas.control.billing.catalog import base_model
from llmaas.control.plane import ControlPlane
from llmaas.core.errors import ContextLengthExceededError, ModelCapabilityError, ModelNotFoundError
from llmaas.engine.client import EngineClient

if TYPE_CHECKING:
    from llmaas.serving.catalog import ModelLoader

# Runs the generation phase of a non-streamed request, e.g. cancelling it when the client goes away
# (the API's until_disconnected). Admission is never under it: a ticket is opened or refused whole.
Watch = Callable[[Awaitable[Any]], Awaitable[Any]]


@dataclass
class Served:
    """A handler's answer: `body` (a response dict) or `stream` (chunk dicts), never both."""

    headers: dict[str, str] = field(default_factory=dict)  # the ticket's rate-limit headers
    body: dict | None = None
    stream: AsyncGenerator[dict, None] | None = None


class Unmetered:
    """The ticket of a request when the control plane is off: records usage nowhere."""

    headers: dict[str, str] = {}

    def usage(self, prompt: int, completion: int, cached: int = 0) -> None:
        pass

    async def reserve(self, prompt_tokens: int, max_tokens: int) -> None:
        pass

    async def abandon(self) -> None:
        pass

    async def settle(self, status: str = "ok") -> None:
        pass


AnyTicket = Ticket | Unmetered


def engine_capabilities(engine: EngineClient) -> tuple[str, ...]:
    """What a loaded model can do: what its engine reports, plus LoRA fine-tuning for a causal LM."""
    caps = engine.info.capabilities
    return (*caps, "fine_tuning") if "completions" in caps else caps


class ServedModels:
    """The engines (keyed by model id), the control plane (None with auth disabled) and the loader that adds
    and removes engines at run time (None when the model set is fixed, as in unit tests)."""

    def __init__(self, engines: dict[str, EngineClient], control: ControlPlane | None,
                 loader: ModelLoader | None = None) -> None:
        self.engines, self.control, self.loader = engines, control, loader

    def visible(self, model: str, principal: Principal | None) -> bool:
        """Whether this key may use `model`: its key's model list and the catalog entry's tenants."""
        if principal is None:
            return True
        if not principal.can_use_model(model):
            return False
        entry = self.control.models.entry(base_model(model)) if self.control is not None else None
        return entry is None or entry.visible_to(principal.tenant_id, principal.is_admin)

    def capabilities(self, model: str) -> tuple[str, ...]:
        """What a model can serve: its catalog entry's declaration, else what its engine reports."""
        base = base_model(model)
        entry = self.control.models.entry(base) if self.control is not None else None
        engine = self.engines.get(base)
        if entry is not None:  # what the admin declared, within what the loaded model can do
            caps = tuple(c for c in entry.capabilities if engine is None or c in engine_capabilities(engine))
        else:
            caps = engine.info.capabilities if engine is not None else ()
        return tuple(c for c in caps if c != "fine_tuning") if model != base else caps

    def offering(self, principal: Principal, capability: str) -> list[str]:
        """Base models this key may use for `capability` (fine-tuning, evals): the catalog's, loaded or not,
        and any served model outside it."""
        ids = set(self.engines) | ({e.id for e in self.control.models.entries()} if self.control else set())
        return sorted(m for m in ids if capability in self.capabilities(m) and self.visible(m, principal))

    def require(self, model: str, capability: str) -> None:
        caps = self.capabilities(model)
        if capability not in caps:
            raise ModelCapabilityError(model, capability, caps)

    def get(self, model: str, principal: Principal | None = None, capability: str | None = None) -> EngineClient:
        """The engine serving `model`, or 404 — also when this key may not use it (same answer, no leak);
        503 + Retry-After while it loads; 400 when it cannot serve `capability`."""
        if not self.visible(model, principal):
            raise ModelNotFoundError(model)
        engine = self.engines.get(model)
        if engine is None:
            if self.loader is not None:
                self.loader.check_ready(model)
            raise ModelNotFoundError(model)
        if capability is not None:
            self.require(model, capability)
        return engine

    async def resolve(self, model: str, principal: Principal,
                      capability: str | None = None) -> tuple[EngineClient, str | None]:
        """(engine, adapter name) serving `model`: a base model, or a tenant's fine-tuned `ft:` model — its
        LoRA adapter on the running base model, loaded on first use. 404 for anything this key may not use."""
        if model in self.engines or not model.startswith("ft:") or self.control is None:
            engine = self.get(model, principal, capability)
            await engine.ready()
            return engine, None
        registry = self.control.registry
        r = registry.resolve_tenant_model(principal.tenant_id, model) if registry.cached(principal.tenant_id, model) \
            else await asyncio.to_thread(registry.resolve_tenant_model, principal.tenant_id, model)
        if r is None or not self.visible(model, principal):
            raise ModelNotFoundError(model)
        engine = self.engines.get(r.base_model)
        if engine is None:
            if self.loader is not None:
                self.loader.check_ready(r.base_model)
            raise ModelNotFoundError(model)
        if capability is not None:
            self.require(model, capability)
        if not engine.has_adapter(r.adapter):
            engine.register_adapter(r.adapter, str(r.adapter_path))
        await engine.ready()
        return engine, r.adapter

    async def open_ticket(self, principal: Principal, model: str, endpoint: str, request_id: str) -> AnyTicket:
        """First phase of admission (role, model, request limits), before any work on the prompt; the caller
        then reserves tokens with `ticket.reserve(prompt_tokens, max_tokens)`, or `abandon`s the ticket."""
        if self.control is None:
            return Unmetered()
        return await self.control.admission.open(principal, model, endpoint, request_id)


def max_tokens_for(engine: EngineClient, prompt_len: int, requested: int | None, param: str) -> int:
    """The completion budget of a prompt: what was requested, or the rest of the context; 400 if over."""
    ctx = engine.info.context_size
    wanted = requested if requested is not None else ctx - prompt_len
    if prompt_len + max(wanted, 1) > ctx:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_len + wanted} tokens ({prompt_len} in the prompt, {wanted} for the completion). "
            "Please reduce the length of the prompt or of max_tokens.",
            param=param if requested is not None and prompt_len < ctx else "messages",
        )
    return wanted


def in_vocab(engine: EngineClient, token_ids: list[int]) -> bool:
    """Whether every id is a token of the engine's model (ids given directly: prompts, embedding inputs)."""
    n = engine.info.n_vocab
    return all(0 <= t < n for t in token_ids)
