"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response

from llmaas.api.completion_store import ChoiceCollector, store_completion, wants_store
from llmaas.api.deps import CurrentPrincipal, open_ticket
from llmaas.api.errors import sse_error
from llmaas.api.generation import (
    SSE_DONE,
    Metered,
    fan_out,
    max_tokens_for,
    new_id,
    now,
    resolve_model,
    sse,
    sse_response,
    until_disconnected,
)
from llmaas.engine.chat_template import ChatMessage
from llmaas.engine.types import TokenLogprob
from llmaas.protocol.openai import ChatCompletionRequest

router = APIRouter()


def _lp_entry(lp: TokenLogprob) -> dict:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token_bytes),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(b)} for t, b, v in lp.top],
    }


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, response: Response,
                                 principal: CurrentPrincipal):
    engine, adapter = await resolve_model(request, body.model, principal)
    # Role, model and request limits first: a refused caller costs no templating or tokenizing.
    ticket = await open_ticket(request, principal, body.model, "chat.completions")
    try:
        messages = [ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        prompt = await engine.tokenize_chat_async(messages)
        max_tokens = max_tokens_for(
            engine, len(prompt), body.requested_max_tokens(),
            "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        )
        params = body.sampling(max_tokens, body.logprobs_k(), body.grammar(), engine.token_id)
        await ticket.reserve(len(prompt), max_tokens * body.n)
    except BaseException:
        await ticket.abandon()
        raise
    cid, created = new_id("chatcmpl"), now()
    head = {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None}
    store = wants_store(request, body)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        try:
            engine.check_capacity(body.n)  # 503 now, before the 200 status line goes out
        except Exception:
            await ticket.settle("rejected")
            raise
        stream = fan_out(engine, [prompt], params, body.n, adapter)

        async def events() -> AsyncIterator[str]:
            async with Metered(ticket, len(prompt)) as meter:
                chunk = {**head, "object": "chat.completion.chunk"}
                completion, cached, started = 0, 0, set()
                kept = ChoiceCollector(body.n, params.logprobs is not None) if store else None
                try:
                    async for i, out in stream:
                        meter.add(i, out)
                        if kept is not None:
                            kept.add(i, out, [_lp_entry(x) for x in out.logprobs or ()])
                        if i not in started:
                            started.add(i)
                            yield sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                             "logprobs": None, "finish_reason": None}]})
                        if out.text or out.finished or out.logprobs:
                            lps = {"content": [_lp_entry(x) for x in out.logprobs]} if out.logprobs else None
                            delta = {"content": out.text} if out.text else {}
                            yield sse({**chunk, "choices": [{"index": i, "delta": delta, "logprobs": lps,
                                                             "finish_reason": out.finish_reason}]})
                        if out.finished:
                            completion += out.completion_tokens
                            cached = max(cached, out.cached_tokens)
                    if include_usage:
                        yield sse({**chunk, "choices": [], "usage": _usage(len(prompt), completion, cached)})
                    if kept is not None:
                        await store_completion(request, principal, body, {
                            **head, "choices": kept.choices(), "usage": _usage(len(prompt), completion, cached)})
                except Exception as e:
                    meter.status = "error"
                    yield sse_error(e)
                yield SSE_DONE

        return sse_response(events(), ticket.headers)

    async def collect(meter: Metered) -> dict:
        choices = ChoiceCollector(body.n, params.logprobs is not None)
        completion, cached = 0, 0
        async for i, out in fan_out(engine, [prompt], params, body.n, adapter):
            meter.add(i, out)
            choices.add(i, out, [_lp_entry(x) for x in out.logprobs or ()])
            if out.finished:
                completion += out.completion_tokens
                cached = max(cached, out.cached_tokens)
        return {**head, "choices": choices.choices(), "usage": _usage(len(prompt), completion, cached)}

    response.headers.update(ticket.headers)
    async with Metered(ticket, len(prompt)) as meter:
        result = await until_disconnected(request, collect(meter))
    if store:
        await store_completion(request, principal, body, result)
    return result
