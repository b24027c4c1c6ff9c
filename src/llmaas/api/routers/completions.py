"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response

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
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.types import GenerationOutput
from llmaas.protocol.openai import CompletionRequest

router = APIRouter()


class _Logprobs:
    """OpenAI's legacy logprobs shape: parallel lists of tokens, logprobs, top alternatives, offsets."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []
        self._offset = 0

    def add(self, out: GenerationOutput) -> None:
        for lp in out.logprobs or []:
            self.tokens.append(lp.token)
            self.token_logprobs.append(lp.logprob)
            self.top_logprobs.append({t: v for t, _, v in lp.top})
            self.text_offset.append(self._offset)
            self._offset += len(lp.token)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs,
                "top_logprobs": self.top_logprobs, "text_offset": self.text_offset}


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, response: Response,
                            principal: CurrentPrincipal):
    engine, adapter = await resolve_model(request, body.model, principal)
    if body.echo or body.suffix or (body.best_of or 1) > 1:
        param = "echo" if body.echo else "suffix" if body.suffix else "best_of"
        raise InvalidRequestError(f"'{param}' is not supported by this server", param=param)
    ticket = await open_ticket(request, principal, body.model, "completions")
    try:
        items = body.prompts()
        texts = [p for p in items if isinstance(p, str)]
        encoded = iter(await engine.tokenize_many(texts, special=True))
        prompts: list[list[int]] = []
        for p in items:
            if isinstance(p, str):
                prompts.append(next(encoded))
            else:
                if any(engine.token_id(str(t)) is None for t in p):
                    raise InvalidRequestError("prompt contains a token id outside the vocabulary", param="prompt")
                prompts.append(list(p))
        if any(not t for t in prompts):
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        max_tokens = min(max_tokens_for(engine, len(t), body.max_tokens, "max_tokens") for t in prompts)
        params = body.sampling(max_tokens, body.logprobs, None, engine.token_id)
        n_choices = len(prompts) * body.n
        prompt_tokens = sum(len(t) for t in prompts)
        await ticket.reserve(prompt_tokens, max_tokens * n_choices)
    except BaseException:
        await ticket.abandon()
        raise
    cid, created = new_id("cmpl"), now()
    head = {"id": cid, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": None}
    want_lp = body.logprobs is not None

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        try:
            engine.check_capacity(n_choices)
        except Exception:
            await ticket.settle("rejected")
            raise
        stream = fan_out(engine, prompts, params, body.n, adapter)

        async def events() -> AsyncIterator[str]:
            async with Metered(ticket, prompt_tokens) as meter:
                completion = 0
                try:
                    async for i, out in stream:
                        meter.add(i, out)
                        if out.text or out.finished:
                            lp = None
                            if want_lp:
                                acc = _Logprobs()
                                acc.add(out)
                                lp = acc.as_dict()
                            yield sse({**head, "choices": [{"index": i, "text": out.text, "logprobs": lp,
                                                            "finish_reason": out.finish_reason}]})
                        if out.finished:
                            completion += out.completion_tokens
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": {
                            "prompt_tokens": prompt_tokens, "completion_tokens": completion,
                            "total_tokens": prompt_tokens + completion}})
                except Exception as e:
                    meter.status = "error"
                    yield sse_error(e)
                yield SSE_DONE

        return sse_response(events(), ticket.headers)

    async def collect(meter: Metered) -> dict:
        texts = [""] * n_choices
        lps = [_Logprobs() for _ in range(n_choices)]
        finish: list[str | None] = [None] * n_choices
        completion = 0
        async for i, out in fan_out(engine, prompts, params, body.n, adapter):
            meter.add(i, out)
            texts[i] += out.text
            lps[i].add(out)
            if out.finished:
                finish[i] = out.finish_reason
                completion += out.completion_tokens
        choices = [{"index": i, "text": texts[i], "logprobs": lps[i].as_dict() if want_lp else None,
                    "finish_reason": finish[i]} for i in range(n_choices)]
        return {**head, "choices": choices, "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}}

    response.headers.update(ticket.headers)
    async with Metered(ticket, prompt_tokens) as meter:
        return await until_disconnected(request, collect(meter))
