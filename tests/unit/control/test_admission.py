"""Rate limits, budgets (reserve-then-settle), metering and usage reports, with the fake engine."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.unit.conftest import Admin, bearer, chat, make_client


@pytest.fixture
def admin(tmp_path):
    # per-tenant metric series are opt-in; these tests read them
    with make_client(data_dir=tmp_path, n_slots=8, settings={"metrics_tenant_labels": True}) as c:
        yield Admin(c)


def test_rpm_limit_gives_429_with_retry_after_and_openai_headers(admin):
    t = admin.tenant("acme")
    _, k = admin.key(t, limits={"rpm": 2, "tpm": 10_000})
    first = chat(admin.c, k)
    assert first.status_code == 200
    h = first.headers
    assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-limit-tokens"] == "10000"
    used = int(h["x-ratelimit-limit-tokens"]) - int(h["x-ratelimit-remaining-tokens"])
    prompt = first.json()["usage"]["prompt_tokens"]
    assert used == prompt + 4  # reserved prompt + max_tokens at admission
    assert h["x-ratelimit-reset-requests"].endswith("s") and "x-request-id" in h
    assert chat(admin.c, k).status_code == 200
    r = chat(admin.c, k)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"
    assert 1 <= int(r.headers["retry-after"]) <= 30
    m = admin.c.get("/metrics").text
    assert f'llmaas:rate_limited_total{{reason="requests",tenant="{t}"}} 1.0' in m


def test_tenant_limits_bind_all_its_keys_together(admin):
    t = admin.tenant("acme", rpm=3)
    _, k1 = admin.key(t)
    _, k2 = admin.key(t)
    codes = [chat(admin.c, k).status_code for k in (k1, k2, k1, k2)]
    assert codes == [200, 200, 200, 429]


def test_tpm_reserves_max_tokens_and_refunds_the_unused_part(tmp_path):
    with make_client(data_dir=tmp_path, eos_after=3) as c:  # the fake model stops early (EOS)
        a = Admin(c)
        _, k = a.key(a.tenant("acme"), limits={"tpm": 1000})
        r1 = chat(c, k, max_tokens=200)
        used1 = r1.json()["usage"]["total_tokens"]
        assert r1.json()["usage"]["completion_tokens"] < 10
        assert int(r1.headers["x-ratelimit-remaining-tokens"]) == 1000 - (r1.json()["usage"]["prompt_tokens"] + 200)
        r2 = chat(c, k, max_tokens=200)
        reserved2 = r2.json()["usage"]["prompt_tokens"] + 200
        # The first request's unused reservation came back (allow a few tokens of refill meanwhile).
        remaining = int(r2.headers["x-ratelimit-remaining-tokens"])
        assert 1000 - used1 - reserved2 <= remaining <= 1000 - used1 - reserved2 + 20
        _, small = a.key(a.tenant("small"), limits={"tpm": 100})
        big = chat(c, small, max_tokens=150)
        assert big.status_code == 429 and "too large" in big.json()["error"]["message"]
        assert big.json()["error"]["type"] == "tokens"


def test_max_parallel_limits_requests_in_flight(tmp_path):
    with make_client(data_dir=tmp_path, n_slots=8, settings={}) as c:
        a = Admin(c)
        t = a.tenant("acme")
        _, k = a.key(t, limits={"max_parallel": 1})
        results: list[int] = []
        started = threading.Event()

        def slow() -> None:
            with c.stream("POST", "/v1/chat/completions", headers=bearer(k), json={
                    "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150,
                    "stream": True}) as resp:
                for _ in resp.iter_lines():
                    started.set()
                results.append(resp.status_code)

        th = threading.Thread(target=slow)
        th.start()
        assert started.wait(10)
        r = chat(c, k)
        th.join()
        assert results == [200]
        assert r.status_code == 429 and "parallel" in r.json()["error"]["message"]
        assert chat(c, k).status_code == 200  # the slot was released when the stream ended


def test_budget_stops_spend_and_usage_is_exact(admin, tmp_path):
    admin.price("fake-model", "1000", "2000")  # USD per million tokens: 0.001 / 0.002 USD per token
    t = admin.tenant("acme")
    r = chat(admin.c, admin_key_for(admin, t, budget_usd=None), max_tokens=4)
    prompt = r.json()["usage"]["prompt_tokens"]
    worst = Decimal(prompt) * Decimal("0.001") + 4 * Decimal("0.002")
    # A key whose budget fits exactly 3 worst-case requests.
    kid, k = admin.key(t, limits={"budget_usd": str(worst * 3)})
    codes = [chat(admin.c, k, max_tokens=4).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    r = chat(admin.c, k, max_tokens=4)
    assert r.json()["error"]["code"] == "insufficient_quota" and r.json()["error"]["type"] == "insufficient_quota"
    _wait_flushed(admin)
    key = admin.c.get(f"/v1/admin/tenants/{t}/keys/{kid}").json()
    assert Decimal(key["budget"]["spent_usd"]) <= worst * 3 and Decimal(key["budget"]["reserved_usd"]) == 0
    usage = admin.c.get("/v1/admin/usage", params={"tenant_id": t, "key_id": kid}).json()["totals"]
    assert usage["requests"] == 3
    expected = Decimal(usage["prompt_tokens"]) * Decimal("0.001") + Decimal(usage["completion_tokens"]) * Decimal(
        "0.002")
    assert Decimal(usage["cost_usd"]) == expected == Decimal(key["budget"]["spent_usd"])


def admin_key_for(admin: Admin, tenant: str, **limits) -> str:
    return admin.key(tenant, limits={k: v for k, v in limits.items() if v is not None})[1]


def _wait_flushed(admin: Admin) -> None:
    cp = admin.c.app.state.control
    cp.meter.flush()


def test_soft_budget_alert_is_logged_and_audited_once(admin, caplog):
    admin.price("fake-model", "1000", "1000")
    t = admin.tenant("acme", budget_usd="1.00", budget_alert_fraction=0.05)
    _, k = admin.key(t)
    for _ in range(3):
        assert chat(admin.c, k).status_code == 200
        _wait_flushed(admin)
    alerts = admin.c.get("/v1/admin/audit", params={"action": "budget.alert"}).json()["data"]
    assert len(alerts) == 1 and alerts[0]["target"]["id"] == t
    assert any("budget alert" in m for m in caplog.messages)
    assert admin.c.get(f"/v1/admin/tenants/{t}").json()["budget"]["alerted"] is True


def test_usage_report_groups_by_model_key_and_day_scoped_to_the_tenant(admin):
    t1, t2 = admin.tenant("one"), admin.tenant("two")
    k1a, s1a = admin.key(t1)
    k1b, s1b = admin.key(t1)
    _, s2 = admin.key(t2)
    sent = {k1a: 0, k1b: 0}
    for kid, s, n in ((k1a, s1a, 2), (k1b, s1b, 1)):
        for _ in range(n):
            sent[kid] += chat(admin.c, s).json()["usage"]["total_tokens"]
    chat(admin.c, s2)
    _wait_flushed(admin)
    rep = admin.c.get("/v1/usage", headers=bearer(s1a), params={"group_by": "key,day"}).json()
    assert rep["tenant_id"] == t1 and rep["totals"]["requests"] == 3
    by_key = {row["key"]: row for row in rep["data"]}
    assert {k: r["total_tokens"] for k, r in by_key.items()} == sent
    assert all(row["day"] for row in rep["data"])
    # the other tenant's usage is invisible, even when asked for by key id
    assert admin.c.get("/v1/usage", headers=bearer(s2), params={"key_id": k1a}).json()["totals"]["requests"] == 0
    everyone = admin.c.get("/v1/admin/usage", params={"group_by": "tenant"}).json()
    assert {r["tenant"] for r in everyone["data"]} >= {t1, t2}
    bad = admin.c.get("/v1/usage", headers=bearer(s1a), params={"group_by": "tenant"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    # date range (inclusive, UTC days)
    today = datetime.now(UTC).date().isoformat()
    in_range = admin.c.get("/v1/usage", headers=bearer(s1a), params={"start_date": today, "end_date": today})
    assert in_range.json()["totals"]["requests"] == 3
    past = admin.c.get("/v1/usage", headers=bearer(s1a), params={"start_date": "2020-01-01", "end_date": "2020-12-31"})
    assert past.json()["totals"]["requests"] == 0
    reversed_ = admin.c.get("/v1/usage", headers=bearer(s1a), params={"start_date": today, "end_date": "2020-01-01"})
    assert reversed_.status_code == 400 and reversed_.json()["error"]["param"] == "end_date"
    bad_date = admin.c.get("/v1/usage", headers=bearer(s1a), params={"start_date": "yesterday"})
    assert bad_date.status_code == 400 and bad_date.json()["error"]["param"] == "start_date"
    metrics = admin.c.get("/metrics").text
    assert f'llmaas:requests_total{{model="fake-model",status="ok",tenant="{t1}"}} 3.0' in metrics
    assert f'llmaas:spend_usd_total{{tenant="{t1}"}}' in metrics


def test_usage_is_flushed_on_shutdown(tmp_path):
    # A flush interval far longer than the test: only the shutdown flush can write the records.
    with make_client(data_dir=tmp_path, settings={"usage_flush_interval_s": 3600}) as c:
        a = Admin(c)
        _, k = a.key(a.tenant("acme"))
        ids = [chat(c, k).headers["x-request-id"] for _ in range(7)]
    db = sqlite3.connect(tmp_path / "llmaas.db")
    stored = {r[0] for r in db.execute("select request_id from usage_records")}
    assert set(ids) <= stored


def test_a_cancelled_stream_pays_for_what_it_generated_and_releases_the_rest(admin):
    admin.price("fake-model", "1000", "1000")
    t = admin.tenant("acme")
    kid, k = admin.key(t, limits={"max_parallel": 1, "tpm": 100_000})
    with admin.c.stream("POST", "/v1/chat/completions", headers=bearer(k), json={
            "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
            "stream": True}) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i > 6:
                break
    # The parallel slot comes back once the server has seen the disconnect.
    deadline = time.monotonic() + 5
    while (code := chat(admin.c, k).status_code) == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code == 200
    _wait_flushed(admin)
    rows = admin.c.get("/v1/admin/usage", params={"key_id": kid, "group_by": "status"}).json()["data"]
    assert sum(r["requests"] for r in rows) == 2
    assert all(r["status"] in ("ok", "cancelled") for r in rows)


def test_a_budget_too_small_for_the_very_first_request_keeps_answering_429(admin):
    # The ledger row is created by the first reservation; a refusal must not roll it back from under the cache.
    admin.price("fake-model", "1000", "1000")
    t = admin.tenant("tiny", budget_usd="0.000001")
    _, k = admin.key(t)
    for _ in range(3):
        r = chat(admin.c, k)
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    assert admin.c.patch(f"/v1/admin/tenants/{t}", json={"limits": {"budget_usd": "10"}}).status_code == 200
    assert chat(admin.c, k).status_code == 200


def test_budget_holds_come_back_after_refusals_and_clients_that_leave_mid_stream(tmp_path):
    # 2 slots + 2 queued against 24 concurrent streams under a budget, every other client leaving after a few
    # chunks: every worst case held at admission is returned (refused, cut or whole), and what the ledger
    # spends is what the usage records cost.
    with make_client(data_dir=tmp_path, n_slots=2, max_queued=2, s_per_token=0.005) as c:
        a = Admin(c)
        a.price("fake-model", "1000", "1000")
        t = a.tenant("acme", budget_usd="100.00")
        _, k = a.key(t)
        outcomes: list[str] = []
        admitted = itertools.count()  # which admitted stream leaves goes by admission order, not thread order

        def client(i: int) -> None:
            body = {"model": "fake-model", "stream": True, "max_tokens": 40,
                    "messages": [{"role": "user", "content": f"hi {i}"}]}
            with c.stream("POST", "/v1/chat/completions", json=body, headers=bearer(k)) as r:
                if r.status_code != 200:
                    outcomes.append(str(r.status_code))
                    return
                leaves = next(admitted) % 2 == 0
                for n, _ in enumerate(r.iter_lines()):
                    if leaves and n > 4:
                        outcomes.append("left")
                        return
                outcomes.append("whole")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert "503" in outcomes and "left" in outcomes and "whole" in outcomes, outcomes

        grants = c.app.state.control.budgets.grants
        deadline = time.monotonic() + 5
        while any(g.held for g in grants._by_id.values()) and time.monotonic() < deadline:
            time.sleep(0.02)  # a cut stream settles once the server has seen its client leave
        assert grants._by_id and [g.held for g in grants._by_id.values()] == [0] * len(grants._by_id)
        _wait_flushed(a)
        usage = c.get("/v1/usage", headers=bearer(k)).json()["totals"]
        assert usage["requests"] == outcomes.count("left") + outcomes.count("whole")
        budget = c.get(f"/v1/admin/tenants/{t}").json()["budget"]
        assert Decimal(budget["spent_usd"]) == Decimal(usage["cost_usd"]) > 0, (budget, usage)
