"""The Responses API on the chat path: a request's items as chat messages, and a chat answer (or chunk
stream) with tool calls as function_call output items and events — in the shapes OpenAI's chat serving
of tool calls produces (`message.tool_calls`, `delta.tool_calls`), checked against the SDK's types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llmaas.control.auth.principal import Principal, Role
from llmaas.core.errors import EngineError
from llmaas.protocol.responses import ResponseCreateRequest
from llmaas.serving.response_events import response_events
from llmaas.serving.responses import Turn, chat_messages, chat_request, echo, output_items

EVENTS = TypeAdapter(ResponseStreamEvent)
TOOLS = [{"type": "function", "name": "weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}]


def _turn(**body) -> Turn:
    req = ResponseCreateRequest.model_validate({"model": "m", "input": "hi", "tools": TOOLS, **body})
    tools = req.function_tools()
    return Turn(req, Principal(key_id=None, tenant_id="t", role=Role.MEMBER),
                echo(req, tools, req.choice(tools), req.text_format()), req.input_items(), None)


def test_items_become_chat_messages():
    req = ResponseCreateRequest.model_validate({"model": "m", "instructions": "be brief", "input": [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "21C"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "25C"}]},
        {"type": "function_call", "call_id": "c3", "name": "weather", "arguments": "{}"}]})
    msgs = chat_messages(req.instructions, req.input_items())
    call = {"type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}, "id": "c1"}
    assert msgs[:3] == [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "weather in Paris and Rome?"},
                        {"role": "assistant", "content": "Let me look.", "tool_calls": [
                            call, {**call, "id": "c2", "function": {"name": "weather",
                                                                   "arguments": '{"city":"Rome"}'}}]}]
    assert msgs[3:5] == [{"role": "tool", "tool_call_id": "c1", "content": "21C"},
                         {"role": "tool", "tool_call_id": "c2", "content": "25C"}]
    assert msgs[5]["role"] == "assistant" and msgs[5]["content"] is None and msgs[5]["tool_calls"][0]["id"] == "c3"


def test_the_chat_request_carries_tools_choice_format_and_budget():
    req = ResponseCreateRequest.model_validate({
        "model": "m", "input": "hi", "tools": TOOLS, "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False, "max_output_tokens": 7, "temperature": 0.2, "stream": True,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}}})
    tools = req.function_tools()
    chat = chat_request(req, req.input_items(), tools, req.choice(tools), req.text_format())
    assert chat.tools[0].function.name == "weather" and chat.tools[0].function.strict is True
    assert chat.tool_choice.function.name == "weather" and chat.parallel_tool_calls is False
    assert chat.max_completion_tokens == 7 and chat.temperature == 0.2 and chat.store is False
    assert chat.response_format.json_schema.schema_ == {"type": "object"}
    assert chat.stream and chat.stream_options.include_usage  # response.completed carries the usage
    plain = ResponseCreateRequest.model_validate({"model": "m", "input": "hi"})
    chat = chat_request(plain, plain.input_items(), [], "auto", plain.text_format())
    assert chat.tools is None and chat.tool_choice is None and chat.response_format is None


def test_a_chat_answer_with_tool_calls_is_function_call_items():
    calls = [{"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]
    items = output_items({"role": "assistant", "content": None, "tool_calls": calls}, "completed")
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in items] == [
        ("function_call", "call_a", "weather", '{"city":"Oslo"}')]
    both = output_items({"role": "assistant", "content": "Checking.", "tool_calls": calls}, "completed")
    assert [i["type"] for i in both] == ["message", "function_call"]
    turn = _turn()
    r = Response.model_validate(turn.object("completed", both, None))
    assert r.output_text == "Checking." and r.output[1].call_id == "call_a" and r.tools[0].name == "weather"


async def _chunks(deltas: list[dict], finish: str, fail: bool = False) -> AsyncGenerator[dict, None]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    for d in deltas:
        yield {**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
    if fail:
        raise EngineError("the engine stopped")
    yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    yield {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                                            "prompt_tokens_details": {"cached_tokens": 0}}}


def _events(deltas: list[dict], finish: str, fail: bool = False) -> list[dict]:
    async def run() -> list[dict]:
        return [e async for e in response_events(_turn(), _chunks(deltas, finish, fail))]

    events = asyncio.run(run())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:
        EVENTS.validate_python(e)
    return events


def _call(index: int, call_id: str | None, name: str | None, args: str) -> dict:
    fn = {"arguments": args} if name is None else {"name": name, "arguments": args}
    return {"tool_calls": [{"index": index, **({"id": call_id, "type": "function"} if call_id else {}),
                            "function": fn}]}


def test_streamed_tool_calls_are_function_call_events():
    events = _events([{"content": "Sure."}, _call(0, "call_a", "weather", ""), _call(0, None, None, '{"city":'),
                      _call(0, None, None, '"Oslo"}'), _call(1, "call_b", "weather", '{"city":"Rome"}')],
                     "tool_calls")
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == "Sure."
    assert [(o.call_id, o.arguments, o.status) for o in final.output[1:]] == [
        ("call_a", '{"city":"Oslo"}', "completed"), ("call_b", '{"city":"Rome"}', "completed")]
    assert final.usage.output_tokens == 9
    first_call = events[8]["item"]
    assert first_call["arguments"] == "" and first_call["status"] == "in_progress"


def test_a_failure_midway_is_response_failed():
    events = _events([{"content": "par"}], "stop", fail=True)
    assert events[-1]["type"] == "response.failed"
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert failed.error.message == "the engine stopped"


def test_an_empty_answer_is_an_empty_message():
    events = _events([], "stop")
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert Response.model_validate(events[-1]["response"]).output_text == ""
