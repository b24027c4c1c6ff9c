"""/v1/batches on the real model through the official SDK: upload a batch file, create, poll to completed,
download the output and error files; a line's answer is the one the live endpoint gives; lines are billed at
the batch price."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import httpx
import pytest

from tests.integration.conftest import MODEL, LiveServer

pytestmark = pytest.mark.integration

QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 2 + 2?", "Say hello."]


def _line(i: int, q: str) -> dict:
    return {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": q}], "max_tokens": 16,
                     "temperature": 0}}


def test_chat_batch_through_the_sdk(server: LiveServer):
    tenant = server.admin("POST", "/tenants", json={"name": f"batch-{time.time_ns()}"})["id"]
    key = server.admin("POST", f"/tenants/{tenant}/keys", json={"role": "member"})["key"]
    client = server.client(key)
    rows = [_line(i, q) for i, q in enumerate(QUESTIONS)]
    rows.append({**_line(9, "x"), "url": "/v1/embeddings"})  # wrong url: reported, the others run
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = client.files.create(file=("questions.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"run": "live"})
    assert b.status == "validating" and b.metadata == {"run": "live"}
    deadline = time.monotonic() + 180
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, b
        time.sleep(0.5)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (5, 4, 1)
    assert [x.id for x in client.batches.list().data] == [b.id]

    out = [json.loads(x) for x in client.files.content(b.output_file_id).content.splitlines()]
    assert [x["custom_id"] for x in out] == ["q0", "q1", "q2", "q3"]
    live = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                          max_tokens=16, temperature=0)
    first = out[0]["response"]
    assert first["status_code"] == 200 and first["body"]["object"] == "chat.completion"
    # Greedy decoding: the batch line's answer is the live endpoint's.
    assert first["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
    [err] = [json.loads(x) for x in client.files.content(b.error_file_id).content.splitlines()]
    assert err["custom_id"] == "q9" and err["error"]["line"] == 5 and err["error"]["param"] == "url"


    # Billed per line at the batch price: the 4 lines (not the refused one) and the live request, each
    # priced from its own tokens; the lines at half the interactive price.
    time.sleep(1.0)  # the meter writes in batches
    report = httpx.get(f"{server.url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    assert report["totals"]["requests"] == 5
    tokens = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out), \
        sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    price = server.admin("GET", "/models")["data"][0]
    per_tok_in = Decimal(price["input_usd_per_mtok"]) / 1_000_000
    per_tok_out = Decimal(price["output_usd_per_mtok"]) / 1_000_000
    lines_cost = (tokens[0] * per_tok_in + tokens[1] * per_tok_out) / 2
    live_cost = live.usage.prompt_tokens * per_tok_in + live.usage.completion_tokens * per_tok_out
    assert Decimal(report["totals"]["cost_usd"]) == pytest.approx(lines_cost + live_cost, rel=Decimal("1e-6"))
