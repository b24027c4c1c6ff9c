"""A chat completion's chunk stream as the Responses API's streaming events, in OpenAI's order.

response.created, response.in_progress, then per output item: response.output_item.added and, for a
message, response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done; for a function call, response.function_call_arguments.delta...,
response.function_call_arguments.done; then response.output_item.done. The stream ends with
response.completed (response.incomplete when out of output tokens), or response.failed if generation
fails once the stream has started. Every event carries `sequence_number`, 0, 1, 2, ...
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from llmaas.core.errors import LlmaasError
from llmaas.protocol.responses import function_call_item, new_item_id, output_message

if TYPE_CHECKING:
    from llmaas.serving.responses import Turn

log = logging.getLogger("llmaas.serving")


class _Events:
    """The output items being streamed and the events that build them, numbered as they are made."""

    def __init__(self) -> None:
        self.seq = 0
        self.items: list[dict] = []  # finished items, by output_index
        self.open: dict | None = None  # the item being streamed (the last output_index)
        self.text = ""
        self.call_index: int | None = None  # the chat tool-call index of an open function call

    def event(self, kind: str, **fields: Any) -> dict:
        ev = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return ev

    def _where(self) -> dict:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def open_message(self) -> list[dict]:
        evs = self.close("completed")
        self.open, self.text = output_message(new_item_id("msg"), None, "in_progress"), ""
        evs.append(self.event("response.output_item.added", output_index=len(self.items), item=self.open))
        evs.append(self.event("response.content_part.added", **self._where(), content_index=0, part=_part("")))
        return evs

    def text_delta(self, delta: str) -> list[dict]:
        evs = self.open_message() if self.open is None or self.open["type"] != "message" else []
        self.text += delta
        evs.append(self.event("response.output_text.delta", **self._where(), content_index=0, delta=delta,
                              logprobs=[]))
        return evs

    def tool_call_delta(self, call: dict) -> list[dict]:
        """A chat `delta.tool_calls` entry: the first of its index opens a function_call item."""
        evs = []
        fn = call.get("function") or {}
        if self.open is None or self.open["type"] != "function_call" or call.get("index") != self.call_index:
            evs += self.close("completed")
            self.call_index = call.get("index")
            self.open = function_call_item(new_item_id("fc"), call.get("id") or new_item_id("call"),
                                           fn.get("name") or "", "", "in_progress")
            evs.append(self.event("response.output_item.added", output_index=len(self.items), item=dict(self.open)))
        if fn.get("arguments"):
            self.open["arguments"] += fn["arguments"]
            evs.append(self.event("response.function_call_arguments.delta", **self._where(),
                                  delta=fn["arguments"]))
        return evs

    def close(self, status: str) -> list[dict]:
        """Finish the open item, if any (`status`: completed, or incomplete when out of tokens)."""
        item, evs = self.open, []
        if item is None:
            return evs
        where = self._where()
        if item["type"] == "message":
            evs.append(self.event("response.output_text.done", **where, content_index=0, text=self.text, logprobs=[]))
            evs.append(self.event("response.content_part.done", **where, content_index=0, part=_part(self.text)))
            item = output_message(item["id"], self.text, status)
        else:
            evs.append(self.event("response.function_call_arguments.done", **where, arguments=item["arguments"]))
            item = {**item, "status": "completed"}
        evs.append(self.event("response.output_item.done", output_index=len(self.items), item=item))
        self.items.append(item)
        self.open = None
        return evs


def _part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def _error(e: Exception) -> dict:
    """A Response's `error` for a failure after the stream started (a domain error says what it is)."""
    if isinstance(e, LlmaasError):
        code = {429: "rate_limit_exceeded", 400: "invalid_prompt"}.get(e.status_code, "server_error")
        return {"code": code, "message": e.message}
    log.error("response stream failed", exc_info=e)
    return {"code": "server_error", "message": "The server had an error while processing your request."}


async def response_events(turn: Turn, chunks: AsyncGenerator[dict, None]) -> AsyncGenerator[dict, None]:
    """The events of `turn`, from the chat chunks of its generation. Closing this closes the chunk stream,
    which aborts the generation (and settles its ticket)."""
    ev = _Events()
    yield ev.event("response.created", response=turn.object("in_progress", [], None))
    yield ev.event("response.in_progress", response=turn.object("in_progress", [], None))
    usage, finish = None, None
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                usage = chunk.get("usage") or usage
                for c in chunk["choices"]:
                    delta = c["delta"]
                    if delta.get("content"):
                        for e in ev.text_delta(delta["content"]):
                            yield e
                    for call in delta.get("tool_calls") or ():
                        for e in ev.tool_call_delta(call):
                            yield e
                    finish = c["finish_reason"] or finish
        status = "incomplete" if finish == "length" else "completed"
        if ev.open is None and not ev.items:  # nothing said: an empty message, as a non-streamed answer has
            for e in ev.open_message():
                yield e
        for e in ev.close(status):
            yield e
        response = await turn.finish(status, ev.items, usage)
    except Exception as e:  # the status line is long gone: the failure is an event, and kept as a failed response
        failed = {**turn.object("failed", ev.items, None), "error": _error(e)}
        try:
            await turn.keep(failed)
        except Exception:  # the database too: the client still gets the failure
            log.exception("storing failed response %s failed", failed["id"])
        yield ev.event("response.failed", response=failed)
        return
    yield ev.event("response.completed" if status == "completed" else "response.incomplete", response=response)
