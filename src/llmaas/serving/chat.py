"""Chat completions (POST /v1/chat/completions), streamed or not.

One place builds the answer: `_chunks` turns the engine's deltas into chat.completion.chunk dicts (a
final one carries the usage); a stream passes them on, a non-streamed request is their fold
(`ChatChoices`), and so is the completion kept with `store: true` in either case.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from llmaas.control.auth.principal import Principal
from llmaas.control.plane import ControlPlane
from llmaas.core.chat_jsonl import model_role
from llmaas.engine.client import EngineClient
from llmaas.engine.types import Places, SamplingParams, TokenLogprob
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.serving.completion_store import store_completion
from llmaas.serving.models import AnyTicket, Served, ServedModels, Watch, max_tokens_for
from llmaas.serving.sequences import Metered, fan_out, new_id, now, run_admitted
from llmaas.serving.tools import ToolCallStream, ToolPlan


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


class ChatChoices:
    """The chat.completion that a stream of chat.completion.chunk dicts adds up to."""

    def __init__(self, head: dict, n: int, logprobs: bool) -> None:
        self.head = head
        self.texts = [""] * n
        self.calls: list[list[dict]] = [[] for _ in range(n)]
        # With logprobs requested a choice has a list even if no token came with one.
        self.lps: list[list[dict] | None] = [[] if logprobs else None for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        if "usage" in chunk:
            self.usage = chunk["usage"]
        for c in chunk["choices"]:
            i = c["index"]
            self.texts[i] += c["delta"].get("content") or ""
            for d in c["delta"].get("tool_calls", ()):  # the first delta of a call has its id and name
                if "id" in d:
                    self.calls[i].append({"id": d["id"], "type": "function",
                                          "function": {"name": d["function"]["name"], "arguments": ""}})
                self.calls[i][d["index"]]["function"]["arguments"] += d["function"].get("arguments", "")
            lps = self.lps[i]
            if c["logprobs"] and lps is not None:
                lps += c["logprobs"]["content"]
            if c["finish_reason"] is not None:
                self.finish[i] = c["finish_reason"]

    def completion(self) -> dict:
        choices = [{"index": i, "message": self._message(i),
                    "logprobs": {"content": self.lps[i]} if self.lps[i] is not None else None,
                    "finish_reason": self.finish[i]}
                   for i in range(len(self.texts))]
        return {**self.head, "choices": choices, "usage": self.usage}

    def _message(self, i: int) -> dict:
        if not self.calls[i]:
            return {"role": "assistant", "content": self.texts[i], "refusal": None}
        # As OpenAI answers a turn that calls tools: content null unless the model also wrote text.
        return {"role": "assistant", "content": self.texts[i] or None, "refusal": None, "tool_calls": self.calls[i]}


class ServingChat:
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def create(self, body: ChatCompletionRequest, principal: Principal, request_id: str,
                     watch: Watch | None = None, *, priority: int = 0) -> Served:
        """Admit, template and run `body`. `watch` runs the generation of a non-streamed request (e.g.
        cancelling it when the client goes away); a stream's consumer stops it by closing the iterator.
        `priority`: the engine's admission order (0 interactive; batch lines pass 1, see serving/batches.py)."""
        engine, adapter = await self.models.resolve(body.model, principal, "chat")
        # Role, model and request limits first: a refused caller costs no templating or tokenizing.
        ticket = await self.models.open_ticket(principal, body.model, "chat.completions", request_id)
        try:
            plan = ToolPlan.of(body, model_role)
            prompt = await engine.tokenize_chat_async(plan.messages)
            max_tokens = max_tokens_for(
                engine, len(prompt), body.requested_max_tokens(),
                "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
            )
            params = body.sampling(max_tokens, body.logprobs_k(), plan.grammar or body.grammar(), engine.token_id)
            await ticket.reserve(len(prompt), max_tokens * body.n)
        except BaseException:
            await ticket.abandon()
            raise
        run = _Run(self.models, engine, adapter, body, principal, ticket, prompt, params, plan.active, priority)
        served = await run_admitted(ticket, engine, n_sequences=body.n, prompt_tokens=len(prompt),
                                    stream=body.stream, chunks=run.stream, fold=run.fold, watch=watch)
        if served.body is not None and run.keep_in is not None:  # a stream stores its own at its end
            await store_completion(run.keep_in, principal, body, served.body)
        return served


class _Run:
    """One admitted chat request: its engine, prompt and sampling parameters."""

    def __init__(self, models: ServedModels, engine: EngineClient, adapter: str | None, body: ChatCompletionRequest,
                 principal: Principal, ticket: AnyTicket, prompt: list[int], params: SamplingParams,
                 tools: bool = False, priority: int = 0) -> None:
        self.models, self.engine, self.adapter, self.body = models, engine, adapter, body
        self.tools = tools  # parse tool calls out of the output
        self.priority = priority
        self.principal, self.ticket, self.prompt, self.params = principal, ticket, prompt, params
        self.head = {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": body.model,
                     "system_fingerprint": None}
        # Where a `store: true` completion is kept: the control plane, if this server runs one.
        self.keep_in: ControlPlane | None = models.control if body.store else None

    def _choices(self) -> ChatChoices:
        return ChatChoices(self.head, self.body.n, self.params.logprobs is not None)

    async def _chunks(self, meter: Metered, places: Places | None = None) -> AsyncGenerator[dict, None]:
        """The chunks of this completion, the last one with no choices and the usage."""
        chunk = {**self.head, "object": "chat.completion.chunk"}
        completion, cached, started = 0, 0, set()
        calls = [ToolCallStream() for _ in range(self.body.n)] if self.tools else None
        deltas = fan_out(self.engine, [self.prompt], self.params, self.body.n, self.adapter, self.priority, places)
        async with aclosing(deltas):  # closed at once when our consumer stops: that aborts the sequences
            async for i, out in deltas:
                meter.add(i, out)
                if i not in started:
                    started.add(i)
                    yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]}
                text, tool_deltas, finish = out.text, [], out.finish_reason
                if calls is not None:
                    text, tool_deltas = calls[i].feed(out.text)
                    if out.finished:
                        text += calls[i].finish()
                        if calls[i].calls and finish == "stop":
                            finish = "tool_calls"
                for d in tool_deltas:
                    yield {**chunk, "choices": [{"index": i, "delta": {"tool_calls": [d]}, "logprobs": None,
                                                 "finish_reason": None}]}
                if text or out.finished or out.logprobs:
                    lps = {"content": [_lp_entry(x) for x in out.logprobs]} if out.logprobs else None
                    delta = {"content": text} if text else {}
                    yield {**chunk, "choices": [{"index": i, "delta": delta, "logprobs": lps,
                                                 "finish_reason": finish}]}
                if out.finished:
                    completion += out.completion_tokens
                    cached = max(cached, out.cached_tokens)
        yield {**chunk, "choices": [], "usage": _usage(len(self.prompt), completion, cached)}

    async def fold(self, meter: Metered) -> dict:
        choices = self._choices()
        async with aclosing(self._chunks(meter)) as chunks:
            async for chunk in chunks:
                choices.add(chunk)
        return choices.completion()

    async def stream(self, places: Places) -> AsyncGenerator[dict, None]:
        """The chunks a client gets: the usage one only with stream_options.include_usage. Settles the
        ticket when it ends, however it ends (an error raised, the iterator closed or cancelled)."""
        body = self.body
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        async with Metered(self.ticket, len(self.prompt)) as meter:
            kept = self._choices() if self.keep_in is not None else None
            async with aclosing(self._chunks(meter, places)) as chunks:
                async for chunk in chunks:
                    if kept is not None:
                        kept.add(chunk)
                    if include_usage or "usage" not in chunk:
                        yield chunk
            if kept is not None and self.keep_in is not None:
                await store_completion(self.keep_in, self.principal, body, kept.completion())
