"""What chat and text completions share: model lookup, context checks, fan-out of n choices,
disconnect handling and SSE framing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from llmaas.control.principal import Principal
from llmaas.core.errors import ContextLengthExceededError, EngineError, ModelNotFoundError
from llmaas.engine.engine import BatchingEngine
from llmaas.engine.types import GenerationOutput, GenerationRequest, SamplingParams


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


async def resolve_model(request: Request, model: str, principal: Principal) -> tuple[BatchingEngine, str | None]:
    """(engine, adapter name) serving `model`: a base model, or a tenant's fine-tuned `ft:` model — its
    LoRA adapter on the running base model, loaded on first use. 404 for anything this key may not use."""
    engines = request.app.state.engines
    if model in engines or not model.startswith("ft:") or request.app.state.control is None:
        return get_engine(request, model, principal), None
    registry = request.app.state.control.registry
    r = registry.resolve_tenant_model(principal.tenant_id, model) if registry.cached(principal.tenant_id, model) \
        else await asyncio.to_thread(registry.resolve_tenant_model, principal.tenant_id, model)
    engine = engines.get(r.base_model) if r else None
    if r is None or engine is None or not principal.can_use_model(model):
        raise ModelNotFoundError(model)
    if not engine.has_adapter(r.adapter):
        engine.register_adapter(r.adapter, str(r.adapter_path))
    return engine, r.adapter


def get_engine(request: Request, model: str, principal: Principal | None = None) -> BatchingEngine:
    """The engine serving `model`, or 404 — also when this key may not use it (same answer, no leak)."""
    engine = request.app.state.engines.get(model)
    if engine is None or (principal is not None and not principal.can_use_model(model)):
        raise ModelNotFoundError(model)
    return engine


def max_tokens_for(engine: BatchingEngine, prompt_len: int, requested: int | None, param: str) -> int:
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


async def fan_out(
    engine: BatchingEngine, prompts: list[list[int]], params: SamplingParams, n: int, adapter: str | None = None
) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """Run n sequences per prompt concurrently; yield (choice index, delta) as they come.
    Closing this iterator (client gone) aborts every sequence still running."""
    engine.check_capacity(len(prompts) * n)
    base_id = uuid.uuid4().hex
    if len(prompts) * n == 1:  # one sequence: no task and queue in between (one wake-up per token, not two)
        gen = engine.generate(GenerationRequest(f"{base_id}-0", prompts[0], params, adapter))
        try:
            async for out in gen:
                if out.finish_reason == "error":
                    raise _failure(out)
                yield 0, out
        finally:
            await gen.aclose()  # aborts the sequence if the consumer stopped early
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput | BaseException | None]] = asyncio.Queue()

    async def run(index: int, tokens: list[int]) -> None:
        p = params
        if params.seed is not None and index:
            p = SamplingParams(**{**_fields(params), "seed": params.seed + index})
        try:
            async for out in engine.generate(GenerationRequest(f"{base_id}-{index}", tokens, p, adapter)):
                queue.put_nowait((index, out))
        except BaseException as e:  # delivered to the consumer, which re-raises
            queue.put_nowait((index, e))
            return
        queue.put_nowait((index, None))

    tasks = [
        asyncio.create_task(run(i * n + j, toks)) for i, toks in enumerate(prompts) for j in range(n)
    ]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                if item.finish_reason == "error":
                    raise _failure(item)
                yield index, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _failure(out: GenerationOutput) -> Exception:
    """The error a failed sequence raises: its own (e.g. a 400 for a grammar) or an engine error."""
    return out.exc if out.exc is not None else EngineError(out.error or "generation failed")


def _fields(p: SamplingParams) -> dict[str, Any]:
    return {f: getattr(p, f) for f in p.__slots__}


async def until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (and so aborting its sequences) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.CancelledError("client disconnected")
    finally:
        watcher.cancel()


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_response(events: AsyncIterator[str], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


class Metered:
    """Settles a ticket whatever happens to the request (ok, error, client gone). Also counts usage
    as deltas arrive, so a cancelled request pays for the tokens it did generate, and no more."""

    def __init__(self, ticket: Any, prompt_tokens: int) -> None:
        self.ticket, self.prompt_tokens = ticket, prompt_tokens
        self.status: str | None = None
        self._gen: dict[int, int] = {}
        self._cached = 0
        ticket.usage(prompt_tokens, 0, 0)

    def add(self, index: int, out: GenerationOutput) -> None:
        if out.finished:
            self._gen[index] = out.completion_tokens
            self._cached = max(self._cached, out.cached_tokens)
        else:
            self._gen[index] = self._gen.get(index, 0) + len(out.token_ids)
        self.ticket.usage(self.prompt_tokens, sum(self._gen.values()), self._cached)

    async def __aenter__(self) -> Metered:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = self.status or "ok"
        elif issubclass(exc_type, asyncio.CancelledError | GeneratorExit):
            status = "cancelled"
        else:
            status = "error"
        # Shielded: the request's task may be cancelled (client gone) but the reservation must be released.
        task = asyncio.ensure_future(self.ticket.settle(status))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait({task})
            raise
