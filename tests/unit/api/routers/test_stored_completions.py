"""Stored chat completions (`store: true`), feedback on them, retention, and their export to a
fine-tuning file — through the official SDK and plain HTTP, with the fake engine."""

from __future__ import annotations

import json
from datetime import timedelta

import openai
import pytest
from openai import OpenAI

from llmaas.control.clock import utcnow
from llmaas.control.db.models import CompletionFeedback, StoredCompletion
from tests.unit.conftest import Admin, bearer, chat, make_client


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path) as c:
        a = Admin(c)
        t1, t2 = a.tenant("one"), a.tenant("two")
        keys = {"one": a.key(t1)[1], "two": a.key(t2)[1], "reader": a.key(t1, role="reader")[1]}
        sdk = {n: OpenAI(base_url="http://testserver/v1", api_key=k, http_client=c, max_retries=0)
               for n, k in keys.items()}
        yield c, keys, sdk, (t1, t2)


def _ask(sdk: OpenAI, text: str, **kw):
    return sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": text}],
                                       max_tokens=4, temperature=0, store=True, **kw)


def test_nothing_is_stored_by_default(env):
    c, keys, sdk, _ = env
    assert chat(c, keys["one"]).status_code == 200
    assert sdk["one"].chat.completions.list().data == []


def test_stored_completion_is_listed_and_retrieved_as_returned(env):
    c, keys, sdk, _ = env
    one = sdk["one"]
    r = one.chat.completions.create(model="fake-model", temperature=0.5, seed=3, max_tokens=4, store=True,
                                    metadata={"app": "demo"},
                                    messages=[{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "hi"}])
    got = one.chat.completions.retrieve(r.id)
    assert got.id == r.id and got.choices[0].message.content == r.choices[0].message.content
    assert got.usage.total_tokens == r.usage.total_tokens and got.metadata == {"app": "demo"}
    page = one.chat.completions.list()
    assert [x.id for x in page.data] == [r.id] and not page.has_more
    row = c.get(f"/v1/chat/completions/{r.id}", headers=bearer(keys["one"])).json()
    assert row["object"] == "chat.completion" and row["metadata"] == {"app": "demo"}
    msgs = one.chat.completions.messages.list(r.id).data
    assert [(m.id, m.role, m.content) for m in msgs] == [(f"{r.id}-0", "system", "be brief"),
                                                         (f"{r.id}-1", "user", "hi")]
    assert [m.id for m in one.chat.completions.messages.list(r.id, order="desc", limit=1).data] == [f"{r.id}-1"]
    assert [m.id for m in one.chat.completions.messages.list(r.id, after=f"{r.id}-0").data] == [f"{r.id}-1"]
    with c.app.state.control.db.session() as s:
        request = s.get(StoredCompletion, r.id).request
    assert request == {"model": "fake-model", "temperature": 0.5, "seed": 3, "max_tokens": 4,
                       "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


def test_streamed_completion_is_stored_with_the_streamed_text(env):
    _, _, sdk, _ = env
    one = sdk["one"]
    chunks = list(one.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "yo"}],
                                              max_tokens=5, temperature=0, n=2, stream=True, store=True))
    text = ["", ""]
    for ch in chunks:
        for choice in ch.choices:
            text[choice.index] += choice.delta.content or ""
    got = one.chat.completions.retrieve(chunks[0].id)
    assert [ch.message.content for ch in got.choices] == text and text[0]
    assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 10


def test_list_filters_and_paginates(env):
    _, _, sdk, _ = env
    one = sdk["one"]
    ids = [_ask(one, f"q{i}", metadata={"team": "a" if i % 2 else "b", "n": str(i)}).id for i in range(5)]
    assert [x.id for x in one.chat.completions.list().data] == ids  # oldest first by default
    assert [x.id for x in one.chat.completions.list(order="desc").data] == ids[::-1]
    assert [x.id for x in one.chat.completions.list(metadata={"team": "a"}).data] == [ids[1], ids[3]]
    assert [x.id for x in one.chat.completions.list(metadata={"team": "a", "n": "3"}).data] == [ids[3]]
    assert one.chat.completions.list(model="fake-model", limit=2).has_more
    assert one.chat.completions.list(model="other-model").data == []
    page = one.chat.completions.list(limit=2, after=ids[1])
    assert [x.id for x in page.data] == ids[2:4] and page.has_more
    assert [x.id for x in one.chat.completions.list(limit=2)] == ids  # the SDK's auto-pagination


def test_update_metadata_and_delete(env):
    c, keys, sdk, _ = env
    one = sdk["one"]
    r = _ask(one, "hi", metadata={"a": "1"})
    assert one.chat.completions.update(r.id, metadata={"b": "2"}).metadata == {"b": "2"}
    assert one.chat.completions.retrieve(r.id).metadata == {"b": "2"}
    assert one.chat.completions.list(metadata={"a": "1"}).data == []
    one.post("/feedback", body={"completion_id": r.id, "rating": 1}, cast_to=object)
    gone = one.chat.completions.delete(r.id)
    assert gone.deleted and gone.id == r.id and gone.object == "chat.completion.deleted"
    with pytest.raises(openai.NotFoundError):
        one.chat.completions.retrieve(r.id)
    with c.app.state.control.db.session() as s:
        assert s.query(CompletionFeedback).count() == 0
    assert c.delete(f"/v1/chat/completions/{r.id}", headers=bearer(keys["one"])).status_code == 404


def test_metadata_limits_are_400_naming_metadata(env):
    c, keys, _, _ = env
    for meta in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        r = chat(c, keys["one"], store=True, metadata=meta)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata", r.text


def test_feedback(env):
    c, keys, sdk, _ = env
    one = sdk["one"]
    r = _ask(one, "hi")
    post = lambda body, key="one": c.post("/v1/feedback", headers=bearer(keys[key]), json=body)  # noqa: E731
    up = post({"completion_id": r.id, "rating": 1, "comment": "good"}).json()
    assert up["id"].startswith("fb-") and up["object"] == "feedback" and up["rating"] == 1 and up["comment"] == "good"
    down = post({"completion_id": r.id, "rating": -1, "correction": "better"}).json()
    assert down["correction"] == "better" and down["completion_id"] == r.id
    listed = c.get("/v1/feedback", params={"completion_id": r.id}, headers=bearer(keys["one"])).json()
    assert [f["id"] for f in listed["data"]] == [down["id"], up["id"]]  # newest first
    page = c.get("/v1/feedback", params={"limit": 1, "after": down["id"]}, headers=bearer(keys["one"])).json()
    assert [f["id"] for f in page["data"]] == [up["id"]] and not page["has_more"]
    bad = post({"completion_id": r.id, "rating": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    long = post({"completion_id": r.id, "rating": 1, "comment": "x" * 2001})
    assert long.status_code == 400 and long.json()["error"]["param"] == "comment"
    assert post({"completion_id": "chatcmpl-nope", "rating": 1}).status_code == 404
    assert post({"completion_id": r.id, "rating": 1}, key="reader").status_code == 403
    assert c.get("/v1/feedback", headers=bearer(keys["reader"])).status_code == 200


def _export(c, key, **source):
    return c.post("/v1/files", headers=bearer(key),
                  json={"purpose": "fine-tune", "filename": "feedback.jsonl",
                        "source": {"type": "stored_completions", **source}})


def test_export_to_a_fine_tune_file(env):
    c, keys, sdk, _ = env
    one = sdk["one"]
    good, bad, unrated, corrected = (_ask(one, q, metadata={"set": "x"}) for q in ("good", "bad", "none", "fix"))
    fb = lambda cid, **kw: one.post("/feedback", body={"completion_id": cid, **kw}, cast_to=object)  # noqa: E731
    fb(good.id, rating=-1)
    fb(good.id, rating=1)  # the latest rating counts
    fb(bad.id, rating=1)
    fb(bad.id, rating=-1)
    fb(corrected.id, rating=-1, correction="The right answer.")
    r = _export(c, keys["one"], min_rating=1, metadata={"set": "x"})
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["object"] == "file" and f["purpose"] == "fine-tune" and f["filename"] == "feedback.jsonl"
    rows = [json.loads(line) for line in c.get(f"/v1/files/{f['id']}/content",
                                               headers=bearer(keys["one"])).content.splitlines()]
    assert rows == [
        {"messages": [{"role": "user", "content": "good"},
                      {"role": "assistant", "content": good.choices[0].message.content}]},
        {"messages": [{"role": "user", "content": "fix"}, {"role": "assistant", "content": "The right answer."}]},
    ]
    assert unrated.id and bad.id  # neither is in: no rating, and a latest rating of -1
    only_rated = _export(c, keys["one"], min_rating=1, include_corrected=False).json()
    assert len(c.get(f"/v1/files/{only_rated['id']}/content", headers=bearer(keys["one"])).content.splitlines()) == 1
    everything = _export(c, keys["one"]).json()
    assert len(c.get(f"/v1/files/{everything['id']}/content", headers=bearer(keys["one"])).content.splitlines()) == 4
    job = one.fine_tuning.jobs.create(model="fake-model", training_file=f["id"])
    assert job.status == "validating_files"


def test_export_with_nothing_matching_is_400(env):
    c, keys, sdk, _ = env
    _ask(sdk["one"], "hi")
    for source in ({"min_rating": 1}, {"model": "other"}, {"metadata": {"a": "b"}},
                   {"created_after": int(utcnow().timestamp()) + 3600}):
        r = _export(c, keys["one"], **source)
        assert r.status_code == 400 and r.json()["error"]["param"] == "source", r.text
    r = _export(c, keys["one"], min_ratin=1)  # a typo in a filter must not export everything
    assert r.status_code == 400 and r.json()["error"]["param"] == "source.min_ratin"
    assert sdk["one"].files.list().data == []


def test_multipart_upload_still_works(env):
    _, _, sdk, _ = env
    data = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    assert sdk["one"].files.create(file=("t.jsonl", data), purpose="fine-tune").status == "processed"


def test_retention_purge(env):
    c, keys, sdk, (t1, t2) = env
    r = c.patch(f"/v1/admin/tenants/{t1}", json={"store_retention_days": 1})
    assert r.status_code == 200 and r.json()["store_retention_days"] == 1
    old, recent = _ask(sdk["one"], "old"), _ask(sdk["one"], "recent")
    other = _ask(sdk["two"], "other")  # tenant two keeps the default 30 days
    sdk["one"].post("/feedback", body={"completion_id": old.id, "rating": 1}, cast_to=object)
    cp = c.app.state.control
    with cp.db.session() as s:
        for cid, age in ((old.id, 2), (other.id, 2)):
            s.get(StoredCompletion, cid).created_at = utcnow() - timedelta(days=age)
    assert cp.stored.purge_expired() == 1
    assert [x.id for x in sdk["one"].chat.completions.list().data] == [recent.id]
    assert [x.id for x in sdk["two"].chat.completions.list().data] == [other.id]
    with cp.db.session() as s:
        assert s.query(CompletionFeedback).count() == 0
    assert cp.stored.purge_expired(utcnow() + timedelta(days=31)) == 2
    audit = c.get("/v1/admin/audit", params={"action": "tenant.update", "target_id": t1}).json()["data"]
    assert audit[0]["after"]["store_retention_days"] == 1 and audit[0]["before"]["store_retention_days"] is None
    assert c.patch(f"/v1/admin/tenants/{t1}", json={"store_retention_days": 0}).status_code == 400
    assert c.patch(f"/v1/admin/tenants/{t1}", json={"store_retention_days": None}).json()[
        "store_retention_days"] is None
    assert c.post("/v1/admin/tenants", json={"name": "three", "store_retention_days": 7}).json()[
        "store_retention_days"] == 7


def test_other_tenants_completions_are_invisible(env):
    c, keys, sdk, _ = env
    r = _ask(sdk["one"], "secret", metadata={"k": "v"})
    two, h = sdk["two"], bearer(keys["two"])
    with pytest.raises(openai.NotFoundError):
        two.chat.completions.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        two.chat.completions.update(r.id, metadata={"x": "y"})
    with pytest.raises(openai.NotFoundError):
        two.chat.completions.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        two.chat.completions.messages.list(r.id)
    assert c.post("/v1/feedback", headers=h, json={"completion_id": r.id, "rating": 1}).status_code == 404
    assert c.get("/v1/feedback", headers=h, params={"completion_id": r.id}).status_code == 404
    assert two.chat.completions.list().data == [] and two.chat.completions.list(metadata={"k": "v"}).data == []
    assert c.get("/v1/chat/completions", headers=h, params={"after": r.id}).status_code == 400
    assert _export(c, keys["two"]).status_code == 400
    assert sdk["one"].chat.completions.retrieve(r.id).metadata == {"k": "v"}  # untouched


def test_store_is_ignored_without_the_control_plane(tmp_path):
    with make_client(data_dir=tmp_path, auth=False) as c:
        r = c.post("/v1/chat/completions", json={"model": "fake-model", "store": True, "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        assert c.get("/v1/chat/completions").status_code == 400
