"""Legacy text completions (POST /v1/completions), streamed or not.

As for chat: `_chunks` turns the engine's deltas into text_completion chunk dicts (a final one carries
the usage); a stream passes them on, a non-streamed request is their fold (`TextChoices`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from llmaas.control.auth.principal import Principal
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.client import EngineClient
from llmaas.engine.types import GenerationOutput, Places, SamplingParams
from llmaas.protocol.openai import CompletionRequest
from llmaas.serving.models import AnyTicket, Served, ServedModels, Watch, in_vocab, max_tokens_for
from llmaas.serving.sequences import Metered, fan_out, new_id, now, run_admitted


def _logprobs(out: GenerationOutput) -> dict:
    """OpenAI's legacy logprobs shape for one delta: parallel lists of tokens, logprobs, top alternatives
    and text offsets (from the start of the delta; `TextChoices` re-bases them on the whole text)."""
    tokens, offsets, offset = [], [], 0
    for lp in out.logprobs or []:
        tokens.append(lp.token)
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in out.logprobs or []],
            "top_logprobs": [{t: v for t, _, v in lp.top} for lp in out.logprobs or []], "text_offset": offsets}


class TextChoices:
    """The text_completion that a stream of its chunk dicts adds up to."""

    def __init__(self, head: dict, n: int, logprobs: bool) -> None:
        self.head = head
        self.texts = [""] * n
        self.lps: list[dict | None] = [
            {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} if logprobs else None
            for _ in range(n)
        ]
        self.finish: list[str | None] = [None] * n
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        if "usage" in chunk:
            self.usage = chunk["usage"]
        for c in chunk["choices"]:
            i = c["index"]
            self.texts[i] += c["text"]
            acc, lp = self.lps[i], c["logprobs"]
            if acc is not None and lp is not None:
                base = acc["text_offset"][-1] + len(acc["tokens"][-1]) if acc["tokens"] else 0
                for key in ("tokens", "token_logprobs", "top_logprobs"):
                    acc[key] += lp[key]
                acc["text_offset"] += [base + o for o in lp["text_offset"]]
            if c["finish_reason"] is not None:
                self.finish[i] = c["finish_reason"]

    def completion(self) -> dict:
        choices = [{"index": i, "text": text, "logprobs": self.lps[i], "finish_reason": self.finish[i]}
                   for i, text in enumerate(self.texts)]
        return {**self.head, "choices": choices, "usage": self.usage}


class ServingCompletion:
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def create(self, body: CompletionRequest, principal: Principal, request_id: str,
                     watch: Watch | None = None, *, priority: int = 0) -> Served:
        """Admit, tokenize and run `body` (see ServingChat.create for `watch` and `priority`)."""
        engine, adapter = await self.models.resolve(body.model, principal, "completions")
        if body.echo or body.suffix or (body.best_of or 1) > 1:
            param = "echo" if body.echo else "suffix" if body.suffix else "best_of"
            raise InvalidRequestError(f"'{param}' is not supported by this server", param=param)
        # Role, model and request limits first: a refused caller costs no tokenizing.
        ticket = await self.models.open_ticket(principal, body.model, "completions", request_id)
        try:
            prompts = await _prompt_tokens(engine, body)
            max_tokens = min(max_tokens_for(engine, len(t), body.max_tokens, "max_tokens") for t in prompts)
            params = body.sampling(max_tokens, body.logprobs, None, engine.token_id)
            await ticket.reserve(sum(len(t) for t in prompts), max_tokens * len(prompts) * body.n)
        except BaseException:
            await ticket.abandon()
            raise
        run = _Run(engine, adapter, body, ticket, prompts, params, priority)
        return await run_admitted(ticket, engine, n_sequences=run.n_choices, prompt_tokens=run.prompt_tokens,
                                  stream=body.stream, chunks=run.stream, fold=run.fold, watch=watch)


async def _prompt_tokens(engine: EngineClient, body: CompletionRequest) -> list[list[int]]:
    """The prompts as token ids: texts tokenized (special tokens parsed), token id lists checked."""
    items = body.prompts()
    encoded = iter(await engine.tokenize_many([p for p in items if isinstance(p, str)], special=True))
    prompts: list[list[int]] = []
    for p in items:
        if isinstance(p, str):
            prompts.append(next(encoded))
        else:
            if not in_vocab(engine, p):
                raise InvalidRequestError("prompt contains a token id outside the vocabulary", param="prompt")
            prompts.append(list(p))
    if any(not t for t in prompts):
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    return prompts


class _Run:
    """One admitted completion request: its engine, prompts and sampling parameters."""

    def __init__(self, engine: EngineClient, adapter: str | None, body: CompletionRequest, ticket: AnyTicket,
                 prompts: list[list[int]], params: SamplingParams, priority: int = 0) -> None:
        self.engine, self.adapter, self.body, self.ticket = engine, adapter, body, ticket
        self.priority = priority
        self.prompts, self.params = prompts, params
        self.n_choices = len(prompts) * body.n
        self.prompt_tokens = sum(len(t) for t in prompts)
        self.head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": body.model,
                     "system_fingerprint": None}

    async def _chunks(self, meter: Metered, places: Places | None = None) -> AsyncGenerator[dict, None]:
        """The chunks of this completion, the last one with no choices and the usage. A delta with
        logprobs but no text yet is a chunk too: the fold keeps its logprobs (a stream skips it)."""
        want_lp = self.body.logprobs is not None
        completion = 0
        deltas = fan_out(self.engine, self.prompts, self.params, self.body.n, self.adapter, self.priority, places)
        async with aclosing(deltas):  # closed at once when our consumer stops: that aborts the sequences
            async for i, out in deltas:
                meter.add(i, out)
                if out.text or out.finished or (want_lp and out.logprobs):
                    yield {**self.head, "choices": [{"index": i, "text": out.text,
                                                     "logprobs": _logprobs(out) if want_lp else None,
                                                     "finish_reason": out.finish_reason}]}
                if out.finished:
                    completion += out.completion_tokens
        yield {**self.head, "choices": [], "usage": {
            "prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion}}

    async def fold(self, meter: Metered) -> dict:
        choices = TextChoices(self.head, self.n_choices, self.body.logprobs is not None)
        async with aclosing(self._chunks(meter)) as chunks:
            async for chunk in chunks:
                choices.add(chunk)
        return choices.completion()

    async def stream(self, places: Places) -> AsyncGenerator[dict, None]:
        """The chunks a client gets: those with text or a finish reason, and the usage one only with
        stream_options.include_usage. Settles the ticket when it ends, however it ends."""
        body = self.body
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        async with Metered(self.ticket, self.prompt_tokens) as meter, aclosing(self._chunks(meter, places)) as chunks:
            async for chunk in chunks:
                if "usage" in chunk:
                    if include_usage:
                        yield chunk
                elif chunk["choices"][0]["text"] or chunk["choices"][0]["finish_reason"] is not None:
                    yield chunk
