"""From a serving handler's answer to an HTTP response: SSE framing, rate-limit headers, and cancelling
work whose client has gone away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from functools import partial
from typing import Any

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from llmaas.api.errors import sse_error
from llmaas.serving.models import Served, ServedModels, Watch

SSE_DONE = "data: [DONE]\n\n"


def served_models(request: Request) -> ServedModels:
    return request.app.state.served


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


def disconnect_watch(request: Request) -> Watch:
    """What a handler runs a non-streamed generation under: cancelled when this client goes away. (A
    stream needs none: Starlette stops iterating it when the client disconnects.)"""
    return partial(until_disconnected, request)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def sse_events(chunks: AsyncGenerator[dict, None]) -> AsyncIterator[str]:
    """The SSE frames of a chunk stream: one per chunk, an error frame if it fails midway (the status line
    is long gone), then [DONE]. Closing this closes the chunk stream, which aborts its sequences."""
    try:
        try:
            async for chunk in chunks:
                yield sse(chunk)
        except Exception as e:
            yield sse_error(e)
        yield SSE_DONE
    finally:
        await chunks.aclose()


async def sse_typed_events(events: AsyncGenerator[dict, None]) -> AsyncIterator[str]:
    """The SSE frames of events that carry their type (the Responses API): an `event:` line named after it,
    then its data, and no [DONE], as OpenAI frames them. The events report their own failures; an error
    escaping anyway still ends the stream with an error frame."""
    try:
        try:
            async for ev in events:
                yield f"event: {ev['type']}\n" + sse(ev)
        except Exception as e:
            yield "event: error\n" + sse_error(e)
    finally:
        await events.aclose()


def sse_response(events: AsyncIterator[str], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


def respond(served: Served, response: Response) -> dict | StreamingResponse:
    """A streamed answer as SSE, else its body (FastAPI serialises it) with the ticket's headers."""
    if served.stream is not None:
        return sse_response(sse_events(served.stream), served.headers)
    response.headers.update(served.headers)
    assert served.body is not None
    return served.body
