"""Running the sequences of one request: fan-out of n choices per prompt, and metering as deltas arrive."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from llmaas.core.errors import EngineError, RetryLaterError
from llmaas.engine.client import EngineClient
from llmaas.engine.types import GenerationOutput, GenerationRequest, Places, SamplingParams
from llmaas.serving.models import AnyTicket, Served, Watch


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


async def fan_out(
    engine: EngineClient, prompts: list[list[int]], params: SamplingParams, n: int, adapter: str | None = None,
    priority: int = 0, places: Places | None = None,
) -> AsyncGenerator[tuple[int, GenerationOutput], None]:
    """Run n sequences per prompt concurrently; yield (choice index, delta) as they come.
    Closing this iterator (client gone) aborts every sequence still running. `priority`: the engine's
    admission order (GenerationRequest.priority; batch lines are 1). `places`: held for these sequences by
    engine.reserve (a stream's); without them capacity is checked here."""
    try:
        if places is None:
            engine.check_capacity(len(prompts) * n)
        base_id = uuid.uuid4().hex
        if len(prompts) * n == 1:  # one sequence: no task and queue in between (one wake-up per token, not two)
            gen = engine.generate(GenerationRequest(f"{base_id}-0", prompts[0], params, adapter, priority), places)
            try:
                async for out in gen:
                    if out.finish_reason == "error":
                        raise _failure(out)
                    yield 0, out
            finally:
                await gen.aclose()  # aborts the sequence if the consumer stopped early
            return
        async with aclosing(_fan_out_many(engine, prompts, params, n, adapter, priority, places, base_id)) as many:
            async for item in many:
                yield item
    finally:
        if places is not None:
            places.release()


async def _fan_out_many(
    engine: EngineClient, prompts: list[list[int]], params: SamplingParams, n: int, adapter: str | None,
    priority: int, places: Places | None, base_id: str,
) -> AsyncGenerator[tuple[int, GenerationOutput], None]:
    queue: asyncio.Queue[tuple[int, GenerationOutput | BaseException | None]] = asyncio.Queue()

    async def run(index: int, tokens: list[int]) -> None:
        p = params
        if params.seed is not None and index:
            p = SamplingParams(**{**_fields(params), "seed": params.seed + index})
        try:
            request = GenerationRequest(f"{base_id}-{index}", tokens, p, adapter, priority)
            async for out in engine.generate(request, places):
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


class Metered:
    """Settles a ticket whatever happens to the request (ok, error, client gone). Also counts usage
    as deltas arrive, so a cancelled request pays for the tokens it did generate, and no more."""

    def __init__(self, ticket: AnyTicket, prompt_tokens: int) -> None:
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
        if exc_type is not None and issubclass(exc_type, RetryLaterError) and not self._gen:
            # Refused for now (capacity, the engine's own check or a replica's; an outage) before a token was made:
            # like a rate limit, that bills nothing and records no usage, or a retried batch line would pay for
            # every try.
            await self.ticket.abandon()
            return
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


async def run_admitted(ticket: AnyTicket, engine: EngineClient, *, n_sequences: int, prompt_tokens: int,
                       stream: bool, chunks: Callable[[Places], AsyncGenerator[dict, None]],
                       fold: Callable[[Metered], Awaitable[dict]], watch: Watch | None) -> Served:
    """The last step every generating endpoint shares, for a request admitted with `ticket`: a stream (its
    places reserved first, so that a 503 comes before the 200 status line and never after it) or the folded
    answer, metered whatever happens to it. `watch` runs the fold (e.g. cancelling it when the client goes
    away)."""
    if stream:
        try:
            places = engine.reserve(n_sequences)
        except BaseException:
            await ticket.abandon()  # refused before it ran: nothing to bill, nothing to record
            raise
        return Served(ticket.headers, stream=await started(chunks(places)))
    async with Metered(ticket, prompt_tokens) as meter:
        work = fold(meter)
        return Served(ticket.headers, body=await (watch(work) if watch is not None else work))


async def started(chunks: AsyncGenerator[dict, None]) -> AsyncGenerator[dict, None]:
    """`chunks` with its first chunk already made, so that what refuses a stream at its start is raised before
    the 200 status line rather than sent as an error frame after it: an engine replica at capacity (a remote
    engine's places are its replicas' to give, not this process's), a grammar that does not compile."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return chunks
    except BaseException:
        await chunks.aclose()
        raise
    return _chain(first, chunks)


async def _chain(first: dict, rest: AsyncGenerator[dict, None]) -> AsyncGenerator[dict, None]:
    async with aclosing(rest):  # closing this closes the stream, which aborts its sequences
        yield first
        async for chunk in rest:
            yield chunk
