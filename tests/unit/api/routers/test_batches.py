"""/v1/batches through the official SDK on the fake engine: create, retrieve, list, cancel; statuses and
request_counts; output and error files in OpenAI's line format; bad lines reported by line number; tenant
isolation; the batch price; resume after a crash without running or billing a line twice; expiry."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta

import openai
import pytest
from openai import OpenAI
from sqlalchemy import select, update

from llmaas.control.clock import utcnow
from llmaas.control.db.models import Batch, BatchLine, UsageRecord
from llmaas.serving.batches import BatchRunner
from tests.unit.conftest import TRAIN, Admin, make_client

FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(cid: str, text: str = "hi", max_tokens: int = 4, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "fake-model", "messages": [{"role": "user", "content": text}],
                     "max_tokens": max_tokens, "temperature": 0, **body}}


def jsonl(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def wait(sdk: OpenAI, batch_id: str, until=FINAL, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        b = sdk.batches.retrieve(batch_id)
        if b.status in until:
            return b
        assert time.monotonic() < deadline, f"batch still {b.status}: {b}"
        time.sleep(0.05)


def lines_of(sdk: OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in sdk.files.content(file_id).content.splitlines()]


@pytest.fixture
def env(tmp_path, request):
    opts = getattr(request, "param", {})
    db = request.getfixturevalue("pg_url") if opts.get("pg") else None  # skipped without PostgreSQL
    with make_client(data_dir=tmp_path, settings={"batch_poll_s": 0.05, **opts.get("settings", {})},
                     database_url=db, **opts.get("fake", {})) as c:
        a = Admin(c)
        t1, t2 = a.tenant("one"), a.tenant("two")
        sdk = {n: OpenAI(base_url="http://testserver/v1", api_key=a.key(t)[1], http_client=c, max_retries=0)
               for n, t in (("one", t1), ("two", t2))}
        yield c, sdk, a


def submit(sdk: OpenAI, rows: list, endpoint: str = "/v1/chat/completions", **kw):
    f = sdk.files.create(file=("batch.jsonl", jsonl(rows)), purpose="batch")
    return sdk.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kw)


def test_a_chat_batch_completes_and_bad_lines_are_reported_by_line_number(env):
    _, sdk, _ = env
    rows = [chat_line("a"), b"not json", chat_line("b", "hello"), chat_line("a"),
            {**chat_line("c"), "url": "/v1/completions"}, chat_line("d", max_tokens=0),
            {"custom_id": "e", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-model"}},
            chat_line("f", stream=True)]
    b = submit(sdk["one"], rows, metadata={"job": "nightly"})
    assert b.id.startswith("batch_") and b.object == "batch" and b.status == "validating"
    assert b.endpoint == "/v1/chat/completions" and b.completion_window == "24h" and b.metadata == {"job": "nightly"}
    assert b.expires_at - b.created_at == 24 * 3600
    b = wait(sdk["one"], b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (8, 2, 6)
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.output_file_id and b.error_file_id
    out = lines_of(sdk["one"], b.output_file_id)
    assert [x["custom_id"] for x in out] == ["a", "b"]
    for x in out:
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200 and x["response"]["request_id"].startswith("req_")
        body = x["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 4
    errors = {e["error"]["line"]: e for e in lines_of(sdk["one"], b.error_file_id)}
    assert sorted(errors) == [2, 4, 5, 6, 7, 8]
    assert errors[2]["error"]["message"] == "line 2: not valid JSON"
    assert errors[4]["custom_id"] == "a" and "duplicate custom_id" in errors[4]["error"]["message"]
    assert errors[5]["error"]["param"] == "url" and "/v1/chat/completions" in errors[5]["error"]["message"]
    assert errors[6]["error"]["param"] == "body.max_tokens"
    assert errors[7]["error"]["param"] == "body.messages"
    assert errors[8]["error"]["param"] == "body.stream"
    assert all(e["response"] is None and e["error"]["code"] == "invalid_request" for e in errors.values())
    files = {f.id: f.purpose for f in sdk["one"].files.list().data}
    assert files[b.output_file_id] == "batch_output" and files[b.error_file_id] == "batch_error"


def test_a_line_the_live_api_refuses_is_in_the_error_file_with_its_response(env):
    _, sdk, _ = env
    b = wait(sdk["one"], submit(sdk["one"], [chat_line("ok"), chat_line("big", max_tokens=10_000),
                                             {**chat_line("nope"), "body": {**chat_line("x")["body"],
                                                                            "model": "no-such-model"}}]).id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (1, 2)
    errs = {e["custom_id"]: e for e in lines_of(sdk["one"], b.error_file_id)}
    assert errs["big"]["response"]["status_code"] == 400
    assert errs["big"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert errs["nope"]["response"]["status_code"] == 404 and errs["nope"]["error"] is None


def test_completions_and_embeddings_batches(env):
    _, sdk, _ = env
    comp = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": "fake-model", "prompt": f"say {i}", "max_tokens": 3}} for i in range(3)]
    emb = [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "fake-model", "input": ["one", "two"]}}]
    b1 = wait(sdk["one"], submit(sdk["one"], comp, "/v1/completions").id)
    b2 = wait(sdk["one"], submit(sdk["one"], emb, "/v1/embeddings").id)
    assert b1.status == b2.status == "completed" and b1.request_counts.completed == 3
    assert all(x["response"]["body"]["object"] == "text_completion" for x in lines_of(sdk["one"], b1.output_file_id))
    [e] = lines_of(sdk["one"], b2.output_file_id)
    assert len(e["response"]["body"]["data"]) == 2 and b2.error_file_id is None


@pytest.mark.parametrize("kw, param", [
    ({"endpoint": "/v1/moderations"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"input_file_id": "file-doesnotexist"}, "input_file_id"),
    ({"input_file_id": "FOREIGN"}, "input_file_id"),
    ({"input_file_id": "FINETUNE"}, "input_file_id"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
])
def test_bad_create_requests_are_400_naming_the_field(env, kw, param):
    _, sdk, _ = env
    own = sdk["one"].files.create(file=("b.jsonl", jsonl([chat_line("a")])), purpose="batch").id
    files = {"FOREIGN": sdk["two"].files.create(file=("b.jsonl", jsonl([chat_line("a")])), purpose="batch").id,
             "FINETUNE": sdk["one"].files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id}
    args = {"input_file_id": own, "endpoint": "/v1/chat/completions", "completion_window": "24h", **kw}
    args["input_file_id"] = files.get(args["input_file_id"], args["input_file_id"])
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].batches.create(**args)
    assert e.value.param == param and param in e.value.message
    assert sdk["one"].batches.list().data == []


def test_list_retrieve_cancel_are_tenant_scoped(env):
    _, sdk, _ = env
    b = wait(sdk["one"], submit(sdk["one"], [chat_line("a")]).id)
    assert [x.id for x in sdk["one"].batches.list().data] == [b.id]
    assert sdk["two"].batches.list().data == []
    for call in (lambda: sdk["two"].batches.retrieve(b.id), lambda: sdk["two"].batches.cancel(b.id),
                 lambda: sdk["two"].files.content(b.output_file_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as e:  # it has ended
        sdk["one"].batches.cancel(b.id)
    assert e.value.param == "batch_id"


SLOW = {"settings": {"batch_concurrency": 1}, "fake": {"s_per_token": 0.01}}


@pytest.mark.parametrize("env", [SLOW], indirect=True)
def test_cancel_stops_within_a_few_lines_and_keeps_what_finished(env):
    _, sdk, _ = env
    b = submit(sdk["one"], [chat_line(f"l{i}", max_tokens=16) for i in range(30)])
    deadline = time.monotonic() + 20
    while sdk["one"].batches.retrieve(b.id).request_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    c = sdk["one"].batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at
    b = wait(sdk["one"], b.id)
    assert b.status == "cancelled" and b.cancelled_at
    done = b.request_counts.completed
    # The runner reads the status every second; at >= 0.16 s a line, one at a time, that is a few lines more.
    assert c.request_counts.completed <= done <= c.request_counts.completed + 8 and b.request_counts.total == 30
    assert [x["custom_id"] for x in lines_of(sdk["one"], b.output_file_id)] == [f"l{i}" for i in range(done)]


def test_a_batch_not_yet_validated_is_cancelled_at_once(env):
    c, sdk, _ = env
    c.portal.call(c.app.state.batch_runner.close)  # no runner: the batch stays validating
    b = submit(sdk["one"], [chat_line("a")])
    assert sdk["one"].batches.cancel(b.id).status == "cancelled"


def test_batch_lines_are_metered_at_the_batch_price(env):
    c, sdk, a = env
    a.price("fake-model", "1.00", "2.00")
    b = wait(sdk["one"], submit(sdk["one"], [chat_line("a", "hello there", max_tokens=6)]).id)
    [line] = lines_of(sdk["one"], b.output_file_id)
    live = sdk["one"].chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hello there"}],
                                              max_tokens=6, temperature=0)
    cp = c.app.state.control
    cp.meter.flush()
    with cp.db.session() as s:
        rows = {r.request_id: r for r in s.scalars(select(UsageRecord))}
    batch_row = rows[line["response"]["request_id"]]
    live_row = next(r for r in rows.values() if r.request_id != batch_row.request_id)
    assert (batch_row.prompt_tokens, batch_row.completion_tokens) == (live.usage.prompt_tokens, 6)
    assert live_row.cost_pico == live.usage.prompt_tokens * 1_000_000 + 6 * 2_000_000
    assert batch_row.cost_pico * 2 == live_row.cost_pico
    r = c.put("/v1/admin/models/fake-model", json={"batch_discount": 0.25})
    assert r.status_code == 200 and r.json()["batch_discount"] == 0.25


@pytest.mark.parametrize("env", [{"settings": {"batch_concurrency": 2}, "fake": {"s_per_token": 0.01}},
                                 {"settings": {"batch_concurrency": 2}, "fake": {"s_per_token": 0.01}, "pg": True}],
                         indirect=True, ids=["sqlite", "postgresql"])
def test_a_crashed_runner_is_resumed_without_running_or_billing_a_line_twice(env):
    c, sdk, _ = env
    cp = c.app.state.control
    n = 12
    b = submit(sdk["one"], [chat_line(f"l{i}", max_tokens=8) for i in range(n)])
    deadline = time.monotonic() + 20
    while sdk["one"].batches.retrieve(b.id).request_counts.completed < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runner = c.app.state.batch_runner

    async def crash() -> None:  # the process dies: its task stops mid-line and the lease is never handed back
        runner._task.cancel()
        with contextlib.suppress(BaseException):
            await runner._task
        runner._task = None

    c.portal.call(crash)
    with cp.db.session() as s:
        before = {r.line: r.response["request_id"] for r in s.scalars(select(BatchLine).where(
            BatchLine.batch_id == b.id, BatchLine.state == "done"))}
        assert s.get(Batch, b.id).lease_owner == runner.owner
        s.execute(update(Batch).where(Batch.id == b.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert 3 <= len(before) < n

    async def restart() -> None:
        c.app.state.batch_runner = BatchRunner(c.app.state.served, cp, c.app.state.settings)
        c.app.state.batch_runner.start()

    c.portal.call(restart)
    b = wait(sdk["one"], b.id)
    assert b.status == "completed" and b.request_counts.completed == n
    out = {int(x["custom_id"][1:]) + 1: x["response"]["request_id"] for x in lines_of(sdk["one"], b.output_file_id)}
    assert all(out[line] == rid for line, rid in before.items())  # lines done before the crash were not rerun
    cp.meter.flush()
    with cp.db.session() as s:
        billed = [r.request_id for r in s.scalars(select(UsageRecord).where(UsageRecord.model == "fake-model"))]
    assert sorted(billed) == sorted(out.values())  # one usage record per line, each for the run that was kept


def test_an_expired_batch_fails_its_pending_lines(env):
    c, sdk, _ = env
    c.portal.call(c.app.state.batch_runner.close)
    b = submit(sdk["one"], [chat_line("a"), chat_line("b")])
    cp = c.app.state.control
    with cp.db.session() as s:
        s.execute(update(Batch).where(Batch.id == b.id).values(expires_at=utcnow() - timedelta(seconds=1)))

    async def restart() -> None:
        c.app.state.batch_runner = BatchRunner(c.app.state.served, cp, c.app.state.settings)
        c.app.state.batch_runner.start()

    c.portal.call(restart)
    b = wait(sdk["one"], b.id)
    assert b.status == "expired" and b.expired_at and b.request_counts.failed == 2
    assert {e["error"]["code"] for e in lines_of(sdk["one"], b.error_file_id)} == {"batch_expired"}


def test_a_batch_over_the_line_limit_fails_validation_without_running_a_line(env, monkeypatch):
    from llmaas.serving import batches as runner

    monkeypatch.setattr(runner, "MAX_BATCH_LINES", 3)
    _, sdk, _ = env
    b = wait(sdk["one"], submit(sdk["one"], [chat_line(str(i)) for i in range(4)]).id)
    assert b.status == "failed" and b.errors.data[0].code == "too_many_lines", b
    assert "at most 3" in b.errors.data[0].message and b.request_counts.total == 0
