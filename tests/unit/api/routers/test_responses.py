"""The Responses API (/v1/responses) with the fake engine: create (plain and streamed), retrieve, delete,
input items, `store`, `previous_response_id`, tenant isolation, retention, and a 400 naming the field for
every bad input — through the official SDK (which must parse every object and event) and plain HTTP."""

from __future__ import annotations

import json
from datetime import timedelta

import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llmaas.control.clock import utcnow
from llmaas.control.db.models import StoredResponse
from tests.unit.conftest import Admin, bearer, make_client

EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    # eos_after: the fake model stops by itself at that position, so a short conversation completes (a long
    # one may stop at once) rather than running out of tokens
    with make_client(data_dir=tmp_path, database_url=url, context_size=2048, eos_after=1000) as c:
        a = Admin(c)
        t1, t2 = a.tenant("one"), a.tenant("two")
        keys = {"one": a.key(t1)[1], "two": a.key(t2)[1], "reader": a.key(t1, role="reader")[1]}
        sdk = {n: OpenAI(base_url="http://testserver/v1", api_key=k, http_client=c, max_retries=0)
               for n, k in keys.items()}
        yield c, keys, sdk


def _post(c, key: str, **body):
    return c.post("/v1/responses", headers=bearer(key), json={"model": "fake-model", **body})


def assert_400(r, param: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert err["message"]


def _sse(c, key: str, **body) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE frame of a streamed create."""
    frames = []
    with c.stream("POST", "/v1/responses", headers=bearer(key),
                  json={"model": "fake-model", "stream": True, **body}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for block in r.read().decode().split("\n\n"):
            if block.strip():
                lines = dict(line.split(": ", 1) for line in block.split("\n"))
                frames.append((lines["event"], json.loads(lines["data"])))
    return frames


def test_create_from_a_string_then_retrieve_it(env):
    c, keys, sdk = env
    one = sdk["one"]
    r = one.responses.create(model="fake-model", input="hi", instructions="be brief", metadata={"app": "demo"})
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.output_tokens > 0 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "be brief" and r.metadata == {"app": "demo"} and r.store is not False
    got = one.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.usage == r.usage and got.metadata == {"app": "demo"}
    assert got.output[0].id == r.output[0].id
    # Exactly what OpenAI's schema allows, strictly validated (not only what the SDK tolerates).
    body = c.get(f"/v1/responses/{r.id}", headers=bearer(keys["one"])).json()
    assert Response.model_validate(body).id == r.id
    items = one.responses.input_items.list(r.id).data  # instructions are not an input item
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "hi")]


def test_create_from_items_keeps_them_as_input_items(env):
    _, _, sdk = env
    one = sdk["one"]
    given = [{"role": "developer", "content": "answer in letters"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is "},
                                                             {"type": "input_text", "text": "the weather?"}]},
             {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": '{"temp":21}'},
             {"role": "assistant", "content": "It is 21."},
             {"role": "user", "content": "thanks"}]
    r = one.responses.create(model="fake-model", input=given,
                             tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}}])
    assert r.output_text and r.tools[0].name == "weather" and r.tool_choice == "auto"
    items = one.responses.input_items.list(r.id, order="asc").data
    assert [i.type for i in items] == ["message", "message", "function_call", "function_call_output", "message",
                                       "message"]
    assert items[1].content[1].text == "the weather?" and items[2].call_id == "call_1"
    assert items[3].output == '{"temp":21}' and items[4].content[0].type == "output_text"
    assert len({i.id for i in items}) == 6


def test_input_items_are_paged_like_openai(env):
    c, keys, sdk = env
    one = sdk["one"]
    r = one.responses.create(model="fake-model", input=[{"role": "user", "content": f"m{i}"} for i in range(5)])
    desc = one.responses.input_items.list(r.id, limit=2)  # newest first by default, as on OpenAI
    assert [i.content[0].text for i in desc.data] == ["m4", "m3"] and desc.has_more
    nxt = one.responses.input_items.list(r.id, limit=2, after=desc.data[-1].id)
    assert [i.content[0].text for i in nxt.data] == ["m2", "m1"]
    every = [i.content[0].text for i in one.responses.input_items.list(r.id, limit=2, order="asc")]  # auto-paging
    assert every == [f"m{i}" for i in range(5)]
    page = c.get(f"/v1/responses/{r.id}/input_items?limit=5&order=asc", headers=bearer(keys["one"])).json()
    assert page["object"] == "list" and not page["has_more"]
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
    assert_400(c.get(f"/v1/responses/{r.id}/input_items?after=msg_nope", headers=bearer(keys["one"])), "after")
    assert_400(c.get(f"/v1/responses/{r.id}/input_items?limit=0", headers=bearer(keys["one"])), "limit")


def test_previous_response_id_continues_the_conversation(env):
    _, _, sdk = env
    one = sdk["one"]
    first = one.responses.create(model="fake-model", input="my name is Ada", instructions="first rules")
    second = one.responses.create(model="fake-model", input="what is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage.input_tokens > first.usage.input_tokens  # the earlier turn was in the prompt
    items = one.responses.input_items.list(second.id, order="asc").data
    assert [(i.role, i.content[0].text) for i in items] == [("user", "my name is Ada"),
                                                             ("assistant", first.output_text),
                                                             ("user", "what is my name?")]
    assert items[1].id == first.output[0].id
    third = one.responses.create(model="fake-model", input="again", previous_response_id=second.id)
    assert len(one.responses.input_items.list(third.id).data) == 5


def test_store_false_keeps_nothing(env):
    c, keys, sdk = env
    one = sdk["one"]
    r = one.responses.create(model="fake-model", input="hi", store=False)
    assert r.output_text and r.store is False
    with pytest.raises(openai.NotFoundError):
        one.responses.retrieve(r.id)
    assert_400(_post(c, keys["one"], input="more", previous_response_id=r.id), "previous_response_id")
    with c.app.state.control.db.session() as s:
        assert s.get(StoredResponse, r.id) is None


def test_delete(env):
    c, keys, sdk = env
    one = sdk["one"]
    r = one.responses.create(model="fake-model", input="hi")
    forbidden = c.delete(f"/v1/responses/{r.id}", headers=bearer(keys["reader"]))
    assert forbidden.status_code == 403, forbidden.text
    assert sdk["reader"].responses.retrieve(r.id).id == r.id  # a reader reads
    d = c.delete(f"/v1/responses/{r.id}", headers=bearer(keys["one"]))
    assert d.json() == {"id": r.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        one.responses.retrieve(r.id)
    assert c.delete(f"/v1/responses/{r.id}", headers=bearer(keys["one"])).status_code == 404


def test_another_tenants_response_is_a_missing_one(env):
    c, keys, sdk = env
    r = sdk["one"].responses.create(model="fake-model", input="secret")
    for method, path in (("GET", f"/v1/responses/{r.id}"), ("DELETE", f"/v1/responses/{r.id}"),
                         ("GET", f"/v1/responses/{r.id}/input_items")):
        theirs = c.request(method, path, headers=bearer(keys["two"]))
        ghost = c.request(method, path.replace(r.id, "resp_doesnotexist"), headers=bearer(keys["two"]))
        assert theirs.status_code == ghost.status_code == 404 and "secret" not in theirs.text
        assert theirs.json()["error"]["code"] == ghost.json()["error"]["code"] == "not_found"
    assert_400(_post(c, keys["two"], input="go on", previous_response_id=r.id), "previous_response_id")
    assert sdk["one"].responses.retrieve(r.id).id == r.id  # still there for its owner


def test_stream_events_in_openais_order(env):
    c, keys, _ = env
    frames = _sse(c, keys["one"], input="hi", metadata={"k": "v"})
    names = [name for name, _ in frames]
    assert all(name == data["type"] for name, data in frames)
    assert [d["sequence_number"] for _, d in frames] == list(range(len(frames)))
    for _, data in frames:  # each event as OpenAI's schema defines it
        EVENTS.validate_python(data)
    deltas = names.count("response.output_text.delta")
    assert deltas >= 1 and names == ["response.created", "response.in_progress", "response.output_item.added",
                                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                                     "response.output_text.done", "response.content_part.done",
                                     "response.output_item.done", "response.completed"]
    text = "".join(d["delta"] for n, d in frames if n == "response.output_text.delta")
    done = frames[-1][1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == text
    assert frames[0][1]["response"]["status"] == "in_progress" and frames[0][1]["response"]["id"] == done["id"]
    assert done["usage"]["output_tokens"] > 0 and done["metadata"] == {"k": "v"}
    assert frames[-2][1]["item"] == done["output"][0]
    stored = c.get(f"/v1/responses/{done['id']}", headers=bearer(keys["one"])).json()
    assert stored["output"] == done["output"]


def test_a_stream_that_fails_midway_is_kept_as_a_failed_response(tmp_path):
    # The fake engine's 4th decode fails: the prompt's prefill and two tokens have streamed by then.
    with make_client(data_dir=tmp_path, context_size=2048, fail_at_decode=4) as c:
        a = Admin(c)
        key = a.key(a.tenant("one"))[1]
        frames = _sse(c, key, input="hi", max_output_tokens=50)
        name, data = frames[-1]
        assert name == "response.failed" and "response.output_text.delta" in [n for n, _ in frames]
        failed = Response.model_validate(data["response"])
        assert failed.status == "failed" and failed.error.code == "server_error"
        stored = Response.model_validate(c.get(f"/v1/responses/{failed.id}", headers=bearer(key)).json())
        assert (stored.status, stored.error, stored.output) == ("failed", failed.error, failed.output)


def test_stream_with_the_sdk_helper(env):
    _, _, sdk = env
    one = sdk["one"]
    with one.responses.stream(model="fake-model", input="hi") as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text and one.responses.retrieve(final.id).output_text == final.output_text
    events = list(one.responses.create(model="fake-model", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_out_of_tokens_is_incomplete(env):
    c, keys, sdk = env
    r = sdk["one"].responses.create(model="fake-model", input="hi", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.usage.output_tokens == 2 and r.max_output_tokens == 2
    frames = _sse(c, keys["one"], input="hi", max_output_tokens=2)
    assert frames[-1][0] == "response.incomplete" and frames[-1][1]["response"]["status"] == "incomplete"


def test_text_format_json_schema_is_accepted_and_echoed(env):
    _, _, sdk = env
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    r = sdk["one"].responses.create(model="fake-model", input="hi",
                                    text={"format": {"type": "json_schema", "name": "thing", "schema": schema}})
    assert r.text.format.type == "json_schema" and r.text.format.name == "thing"
    assert r.text.format.schema_ == schema


BAD = [
    ({"input": None}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": ["hi"]}, "input[0]"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input[0].output"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "bad name", "arguments": "{}"}]},
     "input[0].name"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": ["v"]}]},
     "tools[1].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "no"}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": [{"type": "function", "name": "f"}]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "g"}, "tools": [{"type": "function", "name": "f"}]},
     "tool_choice.name"),
    ({"tool_choice": {"type": "function", "name": ["f"]}, "tools": [{"type": "function", "name": "f"}]},
     "tool_choice.name"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict"),
    ({"input": [{"type": ["message"], "role": "user", "content": "x"}]}, "input[0].type"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format.name"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wat"}}}}, "text.format.schema"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"truncation": "auto"}, "truncation"),
    ({"max_tool_calls": 3}, "max_tool_calls"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 100_000}, "max_output_tokens"),  # beyond the context: renamed from the chat field
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"previous_response_id": "resp_doesnotexist"}, "previous_response_id"),
    ({"previous_response_id": ""}, "previous_response_id"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p + "-" + json.dumps(b)[:40] for b, p in BAD])
def test_bad_input_is_a_400_naming_the_field(env, body, param):
    c, keys, _ = env
    assert_400(_post(c, keys["one"], **{"input": "hi", **body}), param)


def test_unknown_model_and_unknown_fields(env):
    c, keys, _ = env
    r = c.post("/v1/responses", headers=bearer(keys["one"]), json={"model": "nope", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert_400(c.post("/v1/responses", headers=bearer(keys["one"]), json={"input": "hi"}), "model")
    # Fields that ask for nothing pass, as do ones OpenAI does not define (as on every OpenAI-shaped body).
    ok = _post(c, keys["one"], input="hi", background=False, truncation="disabled", include=[], reasoning=None,
               service_tier="auto", user="u1", safety_identifier="s", prompt_cache_key="p", made_up_field=1)
    assert ok.status_code == 200, ok.text
    assert_400(c.get("/v1/responses/resp_x?stream=true", headers=bearer(keys["one"])), "stream")


def test_stored_responses_survive_a_restart_and_expire_with_the_store_retention(tmp_path):
    with make_client(data_dir=tmp_path, context_size=1024, eos_after=300) as c:
        a = Admin(c)
        short, default = a.tenant("short"), a.tenant("default")
        assert c.patch(f"/v1/admin/tenants/{short}", json={"store_retention_days": 2}).status_code == 200
        k_short, k_default = a.key(short)[1], a.key(default)[1]
        first = _post(c, k_short, input="remember me").json()["id"]
        kept = _post(c, k_default, input="hi").json()["id"]
    with make_client(data_dir=tmp_path, context_size=1024, eos_after=300) as c:  # a new process on the same database
        assert c.get(f"/v1/responses/{first}", headers=bearer(k_short)).json()["status"] == "completed"
        r = _post(c, k_short, input="who?", previous_response_id=first)
        assert r.status_code == 200, r.text
        responses = c.app.state.control.responses
        assert responses.purge_expired(utcnow() + timedelta(days=1)) == 0
        assert responses.purge_expired(utcnow() + timedelta(days=3)) == 2  # the short tenant's two
        assert c.get(f"/v1/responses/{first}", headers=bearer(k_short)).status_code == 404
        assert c.get(f"/v1/responses/{kept}", headers=bearer(k_default)).status_code == 200
        assert responses.purge_expired(utcnow() + timedelta(days=31)) == 1  # the platform default: 30 days
