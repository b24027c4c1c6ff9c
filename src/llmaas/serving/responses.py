"""The Responses API (POST /v1/responses), served on the chat path.

A Responses request becomes a chat request (instructions -> a system message; the stored conversation of
`previous_response_id`, then the input items -> messages; function tools -> chat tools; `text.format` ->
`response_format`; `max_output_tokens` -> `max_completion_tokens`) and runs through `ServingChat`, so that
admission, limits, metering and tool calling are the chat path's and nothing else's. Its answer (or its
chunk stream, see `response_events.py`) becomes output items: a `message` with `output_text`, and a
`function_call` per tool call. With `store` (the default) the response is kept in the database with the
conversation it continued.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from llmaas.control.auth.principal import Principal
from llmaas.control.data.responses import response_object
from llmaas.control.plane import ControlPlane
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.protocol.responses import ResponseCreateRequest, function_call_item, item_text, new_item_id, output_message
from llmaas.serving.chat import ServingChat
from llmaas.serving.models import Served, ServedModels, Watch
from llmaas.serving.response_events import response_events
from llmaas.serving.sequences import now

# A chat error's field, in the terms of the Responses request that caused it.
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
           "response_format": "text.format", "response_format.json_schema": "text.format.schema",
           "response_format.json_schema.schema": "text.format.schema"}


class ServingResponses:
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def create(self, body: ResponseCreateRequest, principal: Principal, request_id: str,
                     watch: Watch | None = None) -> Served:
        """Check `body`, run it as a chat completion, and answer a Response object (or its event stream)."""
        body.check_supported()
        tools = body.function_tools()
        choice = body.choice(tools)
        fmt = body.text_format()
        items = body.input_items()
        cp = self.models.control
        history: list[dict] = []
        if body.previous_response_id is not None:
            if cp is None:
                raise InvalidRequestError("previous_response_id needs stored responses, and this server runs without "
                                          "its control plane (LLMAAS_AUTH=false).", param="previous_response_id")
            history = await asyncio.to_thread(cp.responses.conversation, principal, body.previous_response_id)
        turn = Turn(body, principal, echo(body, tools, choice, fmt), [*history, *items],
                    cp if body.stored else None)
        chat = chat_request(body, turn.items, tools, choice, fmt)
        try:
            served = await ServingChat(self.models).create(chat, principal, request_id, watch)
        except InvalidRequestError as e:
            raise _in_responses_terms(e) from None
        if served.stream is not None:
            return Served(served.headers, stream=response_events(turn, served.stream))
        assert served.body is not None
        choice0 = served.body["choices"][0]
        status = "incomplete" if choice0["finish_reason"] == "length" else "completed"
        response = await turn.finish(status, output_items(choice0["message"], status), served.body["usage"])
        return Served(served.headers, body=response)


class Turn:
    """One response being made: its id, what it echoes, the items it answers, and where it is kept."""

    def __init__(self, body: ResponseCreateRequest, principal: Principal, echoed: dict, items: list[dict],
                 keep_in: ControlPlane | None) -> None:
        self.body, self.principal, self.echoed, self.items, self.keep_in = body, principal, echoed, items, keep_in
        self.id = new_item_id("resp")
        self.created_at = now()

    def object(self, status: str, output: list[dict], usage: dict | None) -> dict:
        return response_object(response_id=self.id, created_at=self.created_at, model=self.body.model,
                               status=status, request=self.echoed, output=output, usage=usage,
                               previous_response_id=self.body.previous_response_id, metadata=self.body.metadata)

    async def finish(self, status: str, output: list[dict], chat_usage: dict | None) -> dict:
        """The finished Response, stored first (when asked) so that a response the client got is one it can
        retrieve and continue."""
        response = self.object(status, output, response_usage(chat_usage))
        await self.keep(response)
        return response

    async def keep(self, response: dict) -> None:
        if self.keep_in is not None:
            await asyncio.to_thread(self.keep_in.responses.save, self.principal, response, self.echoed, self.items)


def echo(body: ResponseCreateRequest, tools: list[dict], choice: str | dict, fmt: dict) -> dict:
    """The request parameters a Response object carries (and a stored one keeps)."""
    return {"instructions": body.instructions, "tools": tools, "tool_choice": choice,
            "parallel_tool_calls": body.parallel_tool_calls is not False, "text": {"format": fmt},
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p, "max_output_tokens": body.max_output_tokens,
            "truncation": "disabled", "store": body.stored, "user": body.user}


def chat_messages(instructions: str | None, items: list[dict]) -> list[dict]:
    """Chat messages of the instructions and the items: a function_call joins the assistant message just
    before it (one assistant turn may say something and call tools), a function_call_output is a tool
    message answering its call_id."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": item_text(item)})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*(last.get("tool_calls") or []), call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def chat_request(body: ResponseCreateRequest, items: list[dict], tools: list[dict], choice: str | dict,
                 fmt: dict) -> ChatCompletionRequest:
    """The chat request a Responses request runs as (never stored as a chat completion: the response is)."""
    messages = chat_messages(body.instructions, items)
    if not messages:
        raise InvalidRequestError("There is nothing to answer: give 'input' (or 'instructions').", param="input")
    req: dict = {"model": body.model, "messages": messages, "stream": bool(body.stream),
                 "max_completion_tokens": body.max_output_tokens, "user": body.user}
    if body.stream:
        req["stream_options"] = {"include_usage": True}  # the usage of response.completed
    for key in ("temperature", "top_p"):
        if getattr(body, key) is not None:
            req[key] = getattr(body, key)
    if tools:
        req["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters",
                                                                           "strict") if t[k] is not None}}
                        for t in tools]
        req["parallel_tool_calls"] = body.parallel_tool_calls is not False
    if choice != "auto":
        req["tool_choice"] = choice if isinstance(choice, str) else {"type": "function",
                                                                     "function": {"name": choice["name"]}}
    if fmt["type"] == "json_object":
        req["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        req["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt["name"], "schema": fmt["schema"], "strict": fmt["strict"]}}
    try:
        return ChatCompletionRequest.model_validate(req)
    except ValidationError as e:  # checked above in the Responses' terms; this is a last guard, never a 500
        raise InvalidRequestError(f"The request cannot be served as a chat: {e.errors()[0]['msg']}",
                                  param="input") from None


def _in_responses_terms(e: InvalidRequestError) -> InvalidRequestError:
    """A chat path's 400 renamed: the field the Responses caller wrote, not the chat field it became."""
    if e.param in _PARAMS:
        e.param = _PARAMS[e.param]
    for chat_name in ("response_format.json_schema.schema", "max_tokens"):
        e.message = e.message.replace(chat_name, _PARAMS[chat_name])
    e.args = (e.message,)
    return e


def output_items(message: dict, status: str) -> list[dict]:
    """The output items of a chat answer: its text as a `message` (also when empty, unless the answer is
    only tool calls), then a `function_call` per tool call."""
    text, calls = message.get("content") or "", message.get("tool_calls") or []
    items = [output_message(new_item_id("msg"), text, status)] if text or not calls else []
    items += [function_call_item(new_item_id("fc"), c["id"], c["function"]["name"], c["function"]["arguments"],
                                 "completed") for c in calls]
    return items


def response_usage(chat: dict | None) -> dict | None:
    """A chat completion's usage in a Response's terms."""
    if chat is None:
        return None
    cached = (chat.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": chat["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": chat["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat["total_tokens"]}
