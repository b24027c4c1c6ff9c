"""Tool calling on the real model through the official SDK (non-stream, stream, the SDK's stream helper) and
LangChain's ChatOpenAI running a two-step tool loop. Constrained decoding is what is tested: whatever the small
model would say, every call names a given tool and its arguments validate against that tool's schema."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.integration.conftest import ADMIN_KEY, MODEL

pytestmark = pytest.mark.integration
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def valid(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in SCHEMAS
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def test_required_named_and_single_calls_are_valid(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls and all(valid(c) is not None for c in choice.message.tool_calls)

    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "add" and set(valid(call)) == {"a", "b"}

    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=60, temperature=0.8, seed=5)
    assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].finish_reason == "tool_calls"
    valid(r.choices[0].message.tool_calls[0])


def test_integer_bounds_hold_whatever_the_model_would_say(client):
    """Asked for numbers outside the bounds, at a high temperature, the model still can only write in-range ones."""
    reminder = {"type": "function", "function": {
        "name": "set_reminder", "description": "Set a reminder",
        "parameters": {"type": "object", "properties": {
            "minutes": {"type": "integer", "minimum": 5, "maximum": 90},
            "priority": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3}},
            "required": ["minutes", "priority"], "additionalProperties": False}}}
    ask = [{"role": "user", "content": "Remind me in 1000 minutes, priority 99, or in 0 minutes, priority -50."}]
    for seed in range(4):
        r = client.chat.completions.create(model=MODEL, messages=ask, tools=[reminder], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=96, temperature=1.5, seed=seed)
        (call,) = r.choices[0].message.tool_calls
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, reminder["function"]["parameters"])
        assert 5 <= args["minutes"] <= 90 and -3 < args["priority"] < 3


def test_auto_answers_in_text_or_with_a_valid_call(client):
    for seed in range(2):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto",
                                           max_tokens=40, temperature=0.9, seed=seed)
        m = r.choices[0].message
        if m.tool_calls:
            assert r.choices[0].finish_reason == "tool_calls"
            for c in m.tool_calls:
                valid(c)
        else:
            assert m.content and "<tool_call>" not in m.content


def test_streamed_calls_carry_id_and_name_first_then_arguments(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                                 max_tokens=64, temperature=0, stream=True))
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    assert deltas, chunks
    firsts = {}
    for d in deltas:
        if d.index not in firsts:
            assert d.id and d.type == "function" and d.function.name and d.function.arguments == ""
            firsts[d.index] = d
        else:
            assert d.id is None and d.function.name is None
    assert sorted(firsts) == list(range(len(firsts)))  # parallel calls on distinct, consecutive indexes
    # Parallel calls allowed: the model may go on calling until max_tokens cuts the last one short.
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("tool_calls", "length")

    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=60, temperature=0) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls and all(valid(c) for c in final.choices[0].message.tool_calls)


def test_a_tool_result_goes_back_and_the_model_answers(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    history = [*ASK, r.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees celsius."}]
    r2 = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                        max_tokens=24, temperature=0)
    assert r2.choices[0].message.content and not r2.choices[0].message.tool_calls


def test_langchain_two_step_tool_loop(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key=ADMIN_KEY, temperature=0, max_tokens=48,
                     max_retries=0)
    messages = [HumanMessage("What is 19 plus 23? Use the add tool.")]
    ai = llm.bind_tools([add], tool_choice="add", parallel_tool_calls=False).invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "add"
    messages.append(ai)
    for tc in ai.tool_calls:
        messages.append(ToolMessage(str(add.invoke(tc["args"])), tool_call_id=tc["id"]))
    final = llm.bind_tools([add]).invoke(messages)  # auto: the model may answer now
    assert final.content or final.tool_calls
    for tc in final.tool_calls:
        jsonschema.validate(tc["args"], SCHEMAS["add"])


def test_auto_never_takes_the_server_down_when_the_model_echoes_its_tool_instructions(server, client):
    """With five tools, this prompt makes the model write `<tool_call></tool_call>` (its instructions, echoed):
    a lazily triggered grammar aborted the whole process there (llama.cpp#12597). Under `auto` the answer is
    a valid call or text, and the server keeps serving."""
    tools = json.loads((Path(__file__).resolve().parents[2] / "bench" / "data" / "tools.json").read_text())
    r = client.chat.completions.create(model=MODEL, tools=tools, tool_choice="auto", max_tokens=64, temperature=0,
                                       messages=[{"role": "user", "content": "In 45 minutes, remind me to check the "
                                                                             "oven."}])
    m = r.choices[0].message
    names = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for c in m.tool_calls or []:
        jsonschema.validate(json.loads(c.function.arguments), names[c.function.name])
    assert m.tool_calls or m.content
    assert httpx.get(f"{server.url}/health").status_code == 200
