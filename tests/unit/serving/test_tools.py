"""Tool calling's pure parts: the Hermes rendering of tools, calls and results; the grammar built from the
tools' schemas (valid GBNF, one call or many, lazy for `auto`); the streaming split of output into content and
OpenAI tool-call deltas; and every bad tool request a 400 naming the field (on the app, fake engine)."""

from __future__ import annotations

import json

import pytest

from llmaas.core.chat_jsonl import model_role
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.serving.tools import CLOSE, OPEN, ToolCallStream, ToolPlan
from tests.unit.conftest import Admin, make_client

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}


PARIS, ROME = '{"city": "Paris"}', '{"city": "Rome"}'


def req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", **{"messages": [{"role": "user", "content": "hi"}], **kw})


def test_tools_are_listed_in_the_system_message_and_history_round_trips():
    body = req(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ROME}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "24 C"}])
    msgs = ToolPlan.of(body, model_role).messages
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0].content.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in msgs[0].content
    assert msgs[2].content == (f'{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n{CLOSE}\n'
                               f'{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Rome"}}}}\n{CLOSE}')
    assert msgs[3].content == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response>"


def test_grammar_per_choice():
    required = ToolPlan.of(req(tools=[WEATHER, ADD], tool_choice="required"), model_role)
    assert required.active and required.grammar.startswith("root ::= ") and "free-text" not in required.grammar
    assert '"<tool_call>\\n" tool-call-json "\\n</tool_call>" ( "\\n"' in required.grammar  # parallel calls
    assert '\\"get_weather\\"' in required.grammar and '\\"add\\"' in required.grammar
    single = ToolPlan.of(req(tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False), model_role)
    assert "( \"\\n\"" not in single.grammar.splitlines()[0]
    named = ToolPlan.of(req(tools=[WEATHER, ADD], tool_choice={"type": "function", "function": {"name": "add"}}),
                        model_role)
    assert '\\"add\\"' in named.grammar and "get_weather" not in named.grammar.split("\n", 1)[1]
    auto = ToolPlan.of(req(tools=[WEATHER]), model_role)  # auto is the default with tools: calls or a text answer
    assert auto.grammar.startswith("root ::= tool-calls | free-text")
    none = ToolPlan.of(req(tools=[WEATHER], tool_choice="none"), model_role)
    assert not none.active and none.grammar is None and "# Tools" not in none.messages[0].content


def test_the_grammar_is_valid_gbnf_for_llama_cpp():
    from llama_cpp import llama_cpp as L

    from llmaas.core.model_files import bundled_gguf

    p = L.llama_model_default_params()
    p.vocab_only = True
    model = L.llama_model_load_from_file(str(bundled_gguf("smollm2")).encode(), p)
    try:
        vocab = L.llama_model_get_vocab(model)
        for choice in ("required", "auto"):
            g = ToolPlan.of(req(tools=[WEATHER, ADD], tool_choice=choice), model_role).grammar
            s = L.llama_sampler_init_grammar(vocab, g.encode(), b"root")
            assert s, g
            L.llama_sampler_free(s)
    finally:
        L.llama_model_free(model)


def test_stream_splits_content_and_calls_with_id_and_name_first():
    s = ToolCallStream()
    text = f'Let me check.{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n{CLOSE}\n' \
           f'{OPEN}\n{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}\n{CLOSE}'
    content, deltas = "", []
    for i in range(0, len(text), 3):  # token-sized pieces, markers split across them
        c, d = s.feed(text[i:i + 3])
        content += c
        deltas += d
    content += s.finish()
    assert content == "Let me check."
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]
    first, args = deltas[0], deltas[1]
    assert first["id"].startswith("call_") and first["type"] == "function" and first["function"] == {
        "name": "get_weather", "arguments": ""}
    assert json.loads(args["function"]["arguments"]) == {"city": "Paris"} and "id" not in args
    assert deltas[2]["id"] != first["id"] and json.loads(deltas[3]["function"]["arguments"]) == {"a": 1, "b": 2}


def test_text_that_only_looks_like_a_marker_stays_content():
    s = ToolCallStream()
    c1, _ = s.feed("a <tool")
    c2, _ = s.feed("box> b")
    assert c1 + c2 + s.finish() == "a <toolbox> b"
    s = ToolCallStream()  # a call cut short (max_tokens): its text is not lost
    c, d = s.feed(f'{OPEN}\n{{"name": "add", "argu')
    assert d == [] and c + s.finish() == f'{OPEN}\n{{"name": "add", "argu'


@pytest.mark.parametrize("kw,param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"$ref": "#/nowhere"}}}}}]}, "tools"),
])
def test_bad_tool_requests_are_400_naming_the_field(kw, param):
    with pytest.raises(InvalidRequestError) as e:
        ToolPlan.of(req(**kw), model_role)
    assert e.value.param == param


def test_the_api_refuses_bad_tools_with_400_and_serves_tools_on_the_fake_engine():
    with make_client(context_size=2048) as client:
        _api_checks(client)


def _api_checks(client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}],
                                                  "tools": [{"type": "function", "function": {"name": "bad name"}}]})
    assert r.status_code == 400 and "tools" in r.json()["error"]["param"]
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "tool_choice": "auto",
                                                  "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}],
                                                  "tools": [WEATHER], "max_tokens": 4})
    assert r.status_code == 200, r.text  # the fake model writes no call: plain content, finish "length"
    assert r.json()["choices"][0]["message"]["content"] and r.json()["choices"][0]["finish_reason"] == "length"


def test_fine_tuning_lines_with_tools_are_checked_and_trained_in_the_serving_format():
    from llmaas.core.chat_jsonl import check_example, normalise

    line = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C in Paris."}]}
    assert check_example(line) is None
    trained = normalise(line)["messages"]
    served = ToolPlan.of(req(tools=[WEATHER], messages=line["messages"][:3]), model_role).messages
    assert [(m["role"], m["content"]) for m in trained[:4]] == [(m.role, m.content) for m in served]
    assert trained[2]["content"].startswith(OPEN) and trained[4] == {"role": "assistant",
                                                                      "content": "It is 18 C in Paris."}
    bad = {"messages": [{"role": "user", "content": "x", "tool_calls": []}, {"role": "assistant", "content": "y"}]}
    assert "tool_calls" in check_example(bad)
    assert "tools" in check_example({**line, "tools": [{"type": "function"}]})


def test_a_stored_tool_call_exports_as_a_fine_tuning_line_with_its_tools():
    from llmaas.control.auth.principal import Context
    from llmaas.control.data.stored_completions import ExportFilter
    from llmaas.core.chat_jsonl import check_example

    with make_client() as c:
        cp = c.app.state.control
        admin = Admin(c)
        t = admin.tenant("tools")
        key_id, key = admin.key(t, role="owner")
        principal = cp.keys.authenticate(key, None)
        request = {"model": "fake-model", "tools": [WEATHER], "messages": [{"role": "user", "content": "Paris?"}]}
        call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}
        completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake-model",
                      "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
                          "role": "assistant", "content": None, "tool_calls": [call]}}], "usage": None}
        cp.stored.save(principal, completion, request, None)
        (line,) = [json.loads(x) for x in cp.stored.export_lines(Context(principal), ExportFilter())]
    assert line["tools"] == [WEATHER] and line["messages"][-1] == {"role": "assistant", "content": None,
                                                                    "tool_calls": [call]}
    assert check_example(line) is None  # a valid fine-tuning line as it stands
