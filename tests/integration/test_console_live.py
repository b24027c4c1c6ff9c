"""The web console in real Chromium (Debian's /usr/bin/chromium through Playwright) against a live `llmaas serve`
with the real model: sign in, chat in the playground (streamed), usage moving, escaping of user content, CSRF,
and no JavaScript error on any page at phone and desktop widths.

Set LLMAAS_CONSOLE_SCREENSHOTS to a folder to have the tests save the pages there (docs/console/ holds the ones
the README shows)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from tests.data import data_lines
from tests.integration.conftest import LiveServer
from tests.integration.test_fine_tuning_flow import sentiment_rows

CHROMIUM = os.environ.get("LLMAAS_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("LLMAAS_CONSOLE_SCREENSHOTS")
XSS = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=1">']


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set LLMAAS_CHROMIUM)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _key(server: LiveServer, tenant_name: str, key_name: str) -> str:
    tenant = server.admin("POST", "/tenants", json={"name": tenant_name})["id"]
    return server.admin("POST", f"/tenants/{tenant}/keys", json={"role": "member", "name": key_name})["key"]


@pytest.fixture(scope="module")
def member(server: LiveServer) -> str:
    return _key(server, "Acme", "alice")


@pytest.fixture(scope="module")
def hostile(server: LiveServer) -> str:
    """A key whose own name and whose tenant's name are markup."""
    return _key(server, 'Acme "><img src=x onerror="window.__xss=1">', XSS[0])


class Page:
    """A browser page that records every JavaScript error and every failed script, style or fetch."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 860) -> None:
        self.ctx = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.ctx.new_page()
        self.url = url
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # A form answered 400 or 403 is a page the user should see; a script, style or fetch that fails is a bug.
        self.page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                     and self.errors.append(m.text))
        self.page.on("response", lambda r: r.status >= 400 and r.request.resource_type != "document"
                     and self.errors.append(f"{r.status} {r.url}"))

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.url}/console/login")
        self.page.fill("#api_key", key)
        self.page.click("button[type=submit]")
        self.page.wait_for_url("**/console/playground")

    def upload(self, name: str, data: bytes, purpose: str | None = None) -> None:
        """Fills the page's upload form (purpose, file) and submits it."""
        if purpose is not None:
            self.page.select_option("#purpose", purpose)
        self.page.set_input_files("#file", files=[{"name": name, "mimeType": "application/jsonl", "buffer": data}])
        self.page.click("form[enctype] button[type=submit]")

    def shot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            # The whole page in one viewport: Chromium's stitched full-page capture duplicated parts of pages with
            # charts.
            size = self.page.viewport_size
            height = self.page.evaluate("document.documentElement.scrollHeight")
            self.page.set_viewport_size({"width": size["width"], "height": height})
            self.page.wait_for_timeout(300)  # charts redrawn for the new size
            self.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))
            self.page.set_viewport_size(size)

    def close(self) -> None:
        self.ctx.close()


def until(page, expression: str, timeout_s: float = 30) -> None:
    """Waits until `expression` is true in the page. (Playwright's wait_for_function evaluates its predicate with
    eval, which the console's Content-Security-Policy forbids; page.evaluate is not subject to it.)"""
    for _ in range(int(timeout_s * 10)):
        if page.evaluate(expression):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"never true: {expression}")


def _ask(page, text: str) -> str:
    """Sends `text` in the playground; returns the answer's text once it has streamed in."""
    n = page.locator("#messages li.assistant").count()
    page.fill("#prompt", text)
    page.click("#send")
    answer = page.locator("#messages li.assistant").nth(n)
    answer.locator(".meta").wait_for(timeout=60_000)  # tokens and cost: written when the stream ends
    return answer.locator(".text").inner_text()


def test_sign_in_chat_and_see_usage_move(server: LiveServer, browser, member: str):
    p = Page(browser, server.url)
    try:
        p.page.goto(f"{server.url}/console/playground")
        p.page.wait_for_url("**/console/login")  # no session: the sign-in page
        p.shot("login")
        p.sign_in(member)
        assert member not in p.page.content()
        p.page.fill("#system", "You are a concise assistant.")
        p.page.fill("#max_tokens", "24")
        p.page.fill("#temperature", "0")
        answer = _ask(p.page, "What is the capital of France?")
        assert answer.strip()
        meta = p.page.locator("#messages li.assistant .meta").first.inner_text()
        assert "completion tokens" in meta and "$" in meta
        p.page.click("#messages li.assistant >> nth=0 >> button[aria-label='good answer']")
        p.page.wait_for_selector("#messages li.assistant >> nth=0 >> text=rated 👍")
        second = _ask(p.page, "And of Italy?")  # the conversation goes on with its history
        assert second.strip()
        p.page.click("#messages li.assistant >> nth=1 >> button[aria-label='bad answer']")
        p.page.fill("#messages li.assistant >> nth=1 >> textarea.correction", "Rome.")
        p.page.click("#messages li.assistant >> nth=1 >> button.send-rating")
        p.page.wait_for_selector("#messages li.assistant >> nth=1 >> text=rated 👎")
        p.shot("playground")
        p.page.click("nav >> text=Usage")
        for _ in range(20):  # usage is written by the meter a moment after each answer
            p.page.wait_for_selector("#usage-by-model tbody tr")
            cells = p.page.locator("#usage-by-model tbody tr td").all_inner_texts()
            if len(cells) > 1 and int(cells[1]) >= 2:
                break
            p.page.wait_for_timeout(300)
            p.page.reload()
        assert cells[0] == "SmolLM2-135M-Instruct" and int(cells[1]) == 2, cells
        until(p.page, "typeof Chart !== 'undefined' && ['usage-chart', 'usage-models', 'usage-keys']"
                      ".every(id => !!Chart.getChart(document.getElementById(id)))")
        per_model = p.page.evaluate("Chart.getChart(document.getElementById('usage-models')).data.labels")
        assert per_model == ["SmolLM2-135M-Instruct"]
        p.shot("usage")
        p.page.click("nav >> text=Feedback")
        rows = p.page.locator("#completions tr[data-id]")
        assert rows.count() == 2 and "correction: Rome." in p.page.inner_text("#completions")
        p.shot("feedback")
        p.page.click("#export")
        p.page.wait_for_url("**/console/files/file-*")
        assert "Rome." in p.page.inner_text(".preview")  # the correction, as the answer to fine-tune on
        p.page.click("nav >> text=Models")
        assert "SmolLM2-135M-Instruct" in p.page.inner_text("main")
        p.shot("models")
        p.page.click("text=Sign out")
        p.page.wait_for_url("**/console/login")
        p.page.goto(f"{server.url}/console/usage")
        p.page.wait_for_url("**/console/login")
        assert p.errors == []
    finally:
        p.close()


def test_user_content_never_runs(server: LiveServer, browser, hostile: str):
    """Script and markup in messages, the key's name and the tenant's name are shown as text; nothing runs."""
    p = Page(browser, server.url)
    try:
        p.sign_in(hostile)
        p.page.fill("#max_tokens", "8")
        for text in XSS:
            _ask(p.page, text)
        shown = p.page.locator("#messages li.user .text").all_inner_texts()
        assert shown == XSS
        header = p.page.inner_text("header")
        assert XSS[0] in header and 'Acme "><img src=x onerror="window.__xss=1">' in header  # as text
        assert p.page.evaluate("window.__xss") is None and p.page.locator("main img").count() == 0
        p.page.goto(f"{server.url}/console/files")  # a file name
        p.upload(XSS[1], b'{"text": "' + XSS[0].encode() + b'", "label": "a"}\n', "evals")
        p.page.wait_for_url("**/console/files/file-*")
        assert XSS[0] in p.page.inner_text(".preview")  # the file's content, as text
        p.page.goto(f"{server.url}/console/files")
        assert p.page.evaluate("window.__xss") is None
        assert p.page.locator("main img").count() == 0
        assert p.errors == []
    finally:
        p.close()


def test_state_changes_need_the_csrf_token(server: LiveServer, browser, member: str):
    p = Page(browser, server.url)
    try:
        p.sign_in(member)
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = p.page.request.post(f"{server.url}/console/playground/chat", data=body)  # the session cookie, no token
        assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed"
        r = p.page.request.post(f"{server.url}/console/logout", form={"csrf": "forged"})
        assert r.status == 403
        p.page.goto(f"{server.url}/console/playground")
        assert p.page.url.endswith("/console/playground")  # still signed in
    finally:
        p.close()


def test_pages_fit_a_phone_without_errors(server: LiveServer, browser, member: str):
    p = Page(browser, server.url, width=390, height=844)
    try:
        p.sign_in(member)
        for path in ("playground", "models", "files", "fine-tuning", "evals", "feedback", "batches", "usage"):
            p.page.goto(f"{server.url}/console/{path}")
            p.page.wait_for_load_state("networkidle")
            overflow = p.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"/console/{path} is {overflow}px wider than the phone"
            assert p.page.locator("nav a").count() == 8  # a member's pages: no Keys
        assert p.errors == []
    finally:
        p.close()


def test_a_wrong_key_shows_an_error_and_keeps_nothing(server: LiveServer, browser):
    p = Page(browser, server.url)
    try:
        p.page.goto(f"{server.url}/console/login")
        p.page.fill("#api_key", "sk-llmaas-wrong-key-000000000000000")
        p.page.click("button[type=submit]")
        assert "Incorrect API key" in p.page.inner_text(".error")
        assert "sk-llmaas-wrong-key" not in p.page.content()
        assert not [c for c in p.ctx.cookies() if c["name"] == "llmaas_session"]
    finally:
        p.close()


def test_upload_fine_tune_and_chat_with_the_result(server: LiveServer, browser, member: str):
    """The loop in the browser: upload a dataset, start a job, watch it train (status, loss chart, checkpoints)
    until it succeeds, open the fine-tuned model in the playground and chat with it, evaluate it against its base,
    and see its usage."""
    p = Page(browser, server.url)
    try:
        p.sign_in(member)
        p.page.fill("#max_tokens", "8")
        assert _ask(p.page, "Say hello.").strip()  # chat in the playground first
        p.page.click("nav >> text=Files")
        p.upload("sentiment.jsonl", sentiment_rows(16))
        p.page.wait_for_url("**/console/files/file-*")
        assert "sentiment.jsonl" in p.page.inner_text("h1") and "positive" in p.page.inner_text(".preview")
        p.page.click("text=Fine-tune on it")
        p.page.fill("#n_epochs", "1")
        p.page.fill("#rank", "8")
        p.page.fill("#suffix", "console")
        p.shot("fine-tuning")
        p.page.click("form.fields button[type=submit]")
        p.page.wait_for_url("**/console/fine-tuning/ftjob-*")
        for _ in range(600):  # the page polls the job itself; a function polled by Playwright would need eval
            status = p.page.inner_text("#job-status")
            if status in ("succeeded", "failed", "cancelled"):
                break
            p.page.wait_for_timeout(1000)
        assert status == "succeeded", p.page.inner_text("main")
        assert p.page.evaluate("Chart.getChart(document.getElementById('loss-chart')).data.datasets[0].data.length") > 0
        assert p.page.locator("#events li").count() > 2
        model = p.page.inner_text("#job-model code")
        assert model.startswith("ft:SmolLM2-135M-Instruct:")
        p.shot("job")
        p.page.click("#try-model")
        p.page.wait_for_url("**/console/playground?model=*")
        assert p.page.eval_on_selector("#model", "s => s.value") == model
        p.page.fill("#max_tokens", "4")
        assert _ask(p.page, "A wonderful, moving film.").strip()
        # ... then evaluate the fine-tuned model against its base, and see its usage
        p.page.click("nav >> text=Files")
        rows = b"".join(line.encode() + b"\n" for line in data_lines("rotten_tomatoes", "test", 6))
        p.upload("heldout.jsonl", rows, "evals")
        p.page.wait_for_url("**/console/files/file-*")
        p.page.click("nav >> text=Evals")
        p.page.select_option("#model", [model, "SmolLM2-135M-Instruct"])
        p.page.fill("#labels", "positive, negative")
        p.page.fill("#system", "Classify the sentiment of the movie review as positive or negative.")
        p.page.click("#eval-form button[type=submit]")
        p.page.wait_for_selector("#eval-status:text('succeeded')", timeout=300_000)
        assert p.page.locator("section.results").count() == 2  # the fine-tuned model and its base
        p.page.click("nav >> text=Usage")
        assert model in p.page.inner_text("#usage-by-model")
        assert p.errors == []
    finally:
        p.close()


def test_a_bad_upload_lists_its_line_errors(server: LiveServer, browser, member: str):
    p = Page(browser, server.url)
    try:
        p.sign_in(member)
        p.page.goto(f"{server.url}/console/files")
        p.upload("bad.jsonl", b'{"messages": []}\nnot json\n', "fine-tune")
        items = p.page.locator("#upload-errors li").all_inner_texts()
        assert len(items) >= 3 and any("line 2" in i for i in items), items
        assert p.page.eval_on_selector("#purpose", "s => s.value") == "fine-tune"
        assert p.errors == []
    finally:
        p.close()


def test_run_a_batch_and_download_its_results(server: LiveServer, browser, member: str):
    p = Page(browser, server.url)
    try:
        p.sign_in(member)
        p.page.click("nav >> text=Batches")
        lines = b"".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "SmolLM2-135M-Instruct", "max_tokens": 4,
                                              "messages": [{"role": "user", "content": f"Count to {i}."}]}}).encode()
                         + b"\n" for i in range(3))
        p.upload("batch.jsonl", lines)
        p.page.wait_for_url("**/console/batches/batch_*")
        p.page.wait_for_selector("#batch-status:text('completed')", timeout=120_000)  # htmx refreshes it
        assert "3 completed, 0 failed, 3 lines" in p.page.inner_text("#batch-counts")
        with p.page.expect_download() as dl:
            p.page.click("#batch-output")
        results = [json.loads(x) for x in Path(dl.value.path()).read_text().splitlines()]
        assert sorted(r["custom_id"] for r in results) == ["q0", "q1", "q2"]
        assert all(r["response"]["status_code"] == 200 for r in results)
        assert p.errors == []
    finally:
        p.close()


def test_run_an_eval_and_read_its_tables(server: LiveServer, browser, member: str):
    p = Page(browser, server.url)
    try:
        p.sign_in(member)
        p.page.goto(f"{server.url}/console/files")
        rows = b"".join(line.encode() + b"\n" for line in data_lines("rotten_tomatoes", "test", 8))
        p.upload("reviews.jsonl", rows, "evals")
        p.page.wait_for_url("**/console/files/file-*")
        p.page.click("nav >> text=Evals")
        p.page.select_option("#model", "SmolLM2-135M-Instruct")
        p.page.select_option("#task", "classification")
        p.page.fill("#labels", "positive, negative")
        p.page.fill("#system", "Classify the sentiment of the movie review as positive or negative.")
        p.page.fill("#name", "console")
        p.page.click("#eval-form button[type=submit]")
        p.page.wait_for_url("**/console/evals/eval*")
        p.page.wait_for_selector("#eval-status:text('succeeded')", timeout=300_000)  # htmx refreshes it
        confusion = p.page.locator("table.confusion td").all_inner_texts()
        assert len(confusion) == 4 and sum(int(x) for x in confusion) == 8
        assert p.page.locator("table.per-class tbody tr").count() == 2
        p.shot("eval")
        assert p.errors == []
    finally:
        p.close()


def test_the_admin_sees_tenants_models_deployments_and_the_audit_log(server: LiveServer, browser):
    from tests.integration.conftest import ADMIN_KEY

    p = Page(browser, server.url)
    try:
        p.sign_in(ADMIN_KEY)
        p.page.click("nav >> text=Admin")
        assert "SmolLM2-135M-Instruct" in p.page.inner_text("#catalog")
        assert p.page.locator("#deployments tbody tr").count() >= 1 and "running" in p.page.inner_text("#deployments")
        p.page.fill("#tenant_name", "Console Co")
        p.page.click("form[action='/console/admin/tenants'] button")
        p.page.wait_for_selector("#tenants >> text=Console Co")
        p.shot("admin")
        p.page.click("text=Audit log")
        p.page.fill("#a-action", "tenant.create")
        p.page.click("form[action='/console/admin/audit'] button")
        assert "tenant.create" in p.page.inner_text("#audit")
        assert p.errors == []
    finally:
        p.close()


def test_roles_a_reader_has_no_forms_a_member_no_admin_and_other_tenants_ids_are_missing(server: LiveServer, browser,
                                                                                       member: str):
    tenant = server.admin("POST", "/tenants", json={"name": "Readers"})["id"]
    reader = server.admin("POST", f"/tenants/{tenant}/keys", json={"role": "reader", "name": "rita"})["key"]
    p = Page(browser, server.url)
    try:
        p.sign_in(member)  # a member of Acme: a file of its own, then no admin page
        p.page.goto(f"{server.url}/console/files")
        p.upload("mine.jsonl", sentiment_rows(2))
        p.page.wait_for_url("**/console/files/file-*")
        file_url = p.page.url
        assert "Admin" not in p.page.inner_text("nav") and "Keys" not in p.page.inner_text("nav")
        assert p.page.goto(f"{server.url}/console/admin").status == 403
        p.ctx.clear_cookies()
        p.sign_in(reader)  # a reader of another tenant
        for path in ("files", "fine-tuning", "evals", "batches"):
            p.page.goto(f"{server.url}/console/{path}")
            assert p.page.locator("main form[method=post]").count() == 0, path  # read-only: no forms
        assert p.page.goto(file_url).status == 404  # Acme's file is not there for another tenant
    finally:
        p.close()
